"""The NASViT search space and its dynamic (OFA / AttentiveNAS-style) supernet, over the ``nasvit`` backbone family.

Space (specs §1, the official ``misc/config.py``; paper Tab. 1 differs where specs §1.1 says): one resolution and,
per stage, one width, depth, kernel and expansion, shared by the stage's layers (AttentiveNAS subnet form). An
:data:`~search.protocols.Arch` is 31 choice indices: ``[resolution] + width[9] + depth[7] + kernel_size[7] +
expand_ratio[7]``, each an index into the space's sorted choices of that position (a position with one choice is a
decision with one option). Every decision changes the network, so the size is the product of the choice counts:

* ``nasvit``: the official space, 48,157,949,952 subnets; extremes ``nasvit_min`` (189.8M FLOPs) and
  ``nasvit_max`` (1881.7M), the catalog specs;
* ``nasvit_tiny``: a reduced space for CPU tests and the search demo (192 px, the smallest widths but MBConv-1
  and Transformer-4, small depths), 64 subnets; its supernet does not resize inputs (``resize_input=False``), so it
  trains on small images (32-64 px) while its specs stay valid ``nasvit`` specs (their resolution is 192). A
  ``nasvit`` spec always has seven stages, so "few stages" means the smallest depths.

Sampling (:meth:`~search.spaces.base.ChoiceSpace.sample`) draws every decision uniformly and independently, as the
official ``_sample_active_subnet`` (``random.choice`` per dimension); :meth:`NASViTSpace.extremes` gives the min and
max subnets (``sample_min_subnet`` / ``sample_max_subnet``: every choice smallest / largest, which is also the
fewest / most FLOPs and parameters since each grows with every choice).

Supernet (:class:`NASViTSearchSupernet`): the weights and slicing rule of
:class:`backbones.nasvit_supernet.NASViTSupernet` (``path_state_dict``; the converter of the authors' checkpoint
uses the same class) plus the dynamic forward, which runs the backbone's own blocks (timm MBConvs with the NASViT
shortcut, :class:`backbones.nasvit.TransformerLayer`) on sliced weights: every conv, linear, BN and norm is replaced
in place by a slimmable twin (:mod:`search.spaces.slimmable`: first-k channels, centre kernel, one BN whose first
channels serve every width, as the official ``DynamicBatchNorm2d``), the first ``depth[i]`` layers of each stage
run, the layer scale of each transformer layer is its switchable row (``layer_scale='code'`` default, or
``'paper'``: see backbones/nasvit_supernet.py), and with ``resize_input`` (the official supernet's behaviour) the
input is resized bicubically to the path's resolution. The path is numerically the ``nasvit`` backbone built from
``space.to_spec(arch)`` with ``path_state_dict(arch)`` loaded (tested in eval mode).

Costs: ``flops`` and ``macs`` are the official counting rule (:func:`backbones.nasvit.official_flops`, multiply-adds
at the spec's resolution), which equals torch's flop counter / 2 on the built network at the space's resolutions
(tested); ``params`` is the exact parameter count of the built backbone (1000 classes), summed from per-part counts
of the backbone's own modules; ``latency`` the measured CPU time of the built backbone at its resolution.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn as nn
from timm.layers import ConvNormAct, create_conv2d, make_divisible

from backbones import nasvit as family
from backbones._flops import count_params
from backbones.nasvit_supernet import FIELDS, LAYER_SCALES, NASViTSupernet, check_choices

from ..protocols import COST_METRICS, Arch
from .base import ChoiceSpace, measured_latency
from .slimmable import SlicedBatchNorm2d, SlimConv2d, SlimDepthwiseConv2d, SlimLinear

__all__ = ['COST_CLASSES', 'SPACES', 'NASViTSearchSupernet', 'NASViTSpace', 'get_space']

#: The classes the parameter cost is counted with (ImageNet).
COST_CLASSES = 1000
_POSITIONS = {'width': 9, 'depth': 7, 'kernel_size': 7, 'expand_ratio': 7}


@dataclass(frozen=True)
class NASViTSpace(ChoiceSpace):
    """The choices of every position (sorted subsets of the family's), the layer-scale key and the input resize."""

    name: str = 'nasvit'
    resolutions: tuple[int, ...] = family.RESOLUTIONS
    widths: tuple[tuple[int, ...], ...] = family.WIDTHS
    depths: tuple[tuple[int, ...], ...] = family.DEPTHS
    kernels: tuple[tuple[int, ...], ...] = family.KERNELS
    expansions: tuple[tuple[int, ...], ...] = family.EXPANSIONS
    layer_scale: str = 'code'
    resize_input: bool = True

    def __post_init__(self) -> None:
        try:
            choices = check_choices(self.choices())
        except ValueError as err:
            raise ValueError(f'space {self.name!r}: {err}') from None
        for attr, field in zip(('resolutions', 'widths', 'depths', 'kernels', 'expansions'), FIELDS, strict=True):
            object.__setattr__(self, attr, choices[field])
        if self.layer_scale not in LAYER_SCALES:
            raise ValueError(
                f'space {self.name!r}: layer_scale must be one of {LAYER_SCALES}, got {self.layer_scale!r}'
            )
        if not isinstance(self.resize_input, bool):
            raise ValueError(f'space {self.name!r}: resize_input must be a bool, got {self.resize_input!r}')

    def choices(self) -> dict[str, Any]:
        """``{field: choices}`` in the form of :func:`backbones.nasvit_supernet.family_choices`."""
        return {
            'resolution': self.resolutions,
            'width': self.widths,
            'depth': self.depths,
            'kernel_size': self.kernels,
            'expand_ratio': self.expansions,
        }

    def _options(self) -> list[tuple[int, ...]]:
        """The options of every decision, in :data:`Arch` order."""
        c = self.choices()
        return [c['resolution'], *(opts for field in FIELDS[1:] for opts in c[field])]

    @property
    def num_choices(self) -> tuple[int, ...]:
        return tuple(len(opts) for opts in self._options())

    # -- specs --------------------------------------------------------------------------------------------------
    def to_spec(self, arch: Sequence[int]) -> dict:
        """The ``nasvit`` spec of ``arch``; ``zoo.create_model(spec)`` builds exactly the path's network."""
        values = [opts[i] for opts, i in zip(self._options(), self.check(arch), strict=True)]
        spec: dict[str, Any] = {'family': family.FAMILY, 'version': family.SPEC_VERSION, 'resolution': values[0]}
        start = 1
        for field in FIELDS[1:]:
            spec[field] = values[start : start + _POSITIONS[field]]
            start += _POSITIONS[field]
        return family.validate_spec(spec)

    def from_spec(self, spec: dict) -> Arch:
        """The architecture whose :meth:`to_spec` is ``spec``; a value outside the space raises naming it."""
        spec = family.validate_spec(spec)
        values = [spec['resolution'], *(v for field in FIELDS[1:] for v in spec[field])]
        names = ['resolution', *(f'{field}[{i}]' for field in FIELDS[1:] for i in range(_POSITIONS[field]))]
        found = zip(names, values, self._options(), strict=True)
        bad = [f'{n}={v} (space: {opts})' for n, v, opts in found if v not in opts]
        if bad:
            raise ValueError(f'spec is not a path of space {self.name!r}: {", ".join(bad)}')
        arch = tuple(opts.index(v) for v, opts in zip(values, self._options(), strict=True))
        self.check_path_spec(spec, self.to_spec(arch))
        return arch

    # -- costs --------------------------------------------------------------------------------------------------
    def cost(self, arch: Sequence[int], metric: str) -> float:
        """``flops`` = ``macs`` (official rule, multiply-adds at the spec's resolution), ``params`` (exact, 1000
        classes) or ``latency`` (seconds: the backbone, CPU, batch 1, median of 10 runs, once per architecture)."""
        if metric not in COST_METRICS:
            raise ValueError(f'cost metric {metric!r}: expected one of {COST_METRICS}')
        arch = self.check(arch)
        spec = self.to_spec(arch)
        if metric == 'latency':
            return measured_latency(self, arch, lambda: family.build(spec), spec['resolution'])
        if metric == 'params':
            return float(spec_params(spec))
        return family.official_flops(spec)

    def extremes(self) -> tuple[Arch, Arch]:
        """(min subnet, max subnet): every choice smallest / largest."""
        return tuple(0 for _ in self.num_choices), tuple(n - 1 for n in self.num_choices)

    def build_supernet(self, num_classes: int = 1000, **options: Any) -> NASViTSearchSupernet:
        """The dynamic supernet (``options``: ``in_chans``, ``drop_rate`` of the classifier)."""
        return NASViTSearchSupernet(self, num_classes=num_classes, **options)


# -- exact parameter counts from the backbone's own modules, per part (cached) ----------------------------------
@functools.cache
def _part_params(kind: str, *args: Any) -> int:
    with torch.device('meta'):
        if kind == 'stem':
            module: nn.Module = ConvNormAct(3, args[0], 3, stride=2, act_layer=nn.SiLU)
        elif kind == 'mbconv':
            module = family.MBConvBlock(*args)
        elif kind == 'transformer':
            module = family.TransformerLayer(args[0])
        else:  # head: final 1x1 conv + BN to 6C, 1x1 conv to the head width, classifier
            c, hidden = args
            module = nn.ModuleList(
                [
                    ConvNormAct(c, family.HEAD_EXPANSION * c, 1, act_layer=nn.SiLU),
                    create_conv2d(family.HEAD_EXPANSION * c, hidden, 1),
                    nn.Linear(hidden, COST_CLASSES),
                ]
            )
    return count_params(module)


def spec_params(spec: dict) -> int:
    """Parameters of the ``nasvit`` backbone built from ``spec`` with 1000 classes (tested equal to the built model)."""
    width, depth = spec['width'], spec['depth']
    total, c_in = _part_params('stem', width[0]), width[0]
    for i in range(len(family.STAGE_NAMES)):
        c = width[i + 1]
        args = (spec['kernel_size'][i], family.STRIDES[i], spec['expand_ratio'][i], family.USE_SE[i])
        total += _part_params('mbconv', c_in, c, *args)
        if i < family.NUM_CONV_STAGES:
            total += (depth[i] - 1) * _part_params('mbconv', c, c, args[0], 1, *args[2:])
        else:
            total += (depth[i] - 1) * _part_params('transformer', c)
        c_in = c
    return total + _part_params('head', c_in, width[8])


# -- the dynamic supernet --------------------------------------------------------------------------------------
def _twin(cls: type, module: nn.Module) -> nn.Module:
    """A ``cls`` that shares ``module``'s parameters, buffers and children (only its forward differs)."""
    twin = cls.__new__(cls)
    twin.__dict__ = module.__dict__
    return twin


class _SlimJointLayerNorm(family.JointLayerNorm):
    """The joint layer norm on the first ``x.shape[-1]`` channels of its affine."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        chs = x.shape[-1]
        return torch.nn.functional.layer_norm(x, x.shape[1:], eps=self.eps) * self.weight[:chs] + self.bias[:chs]


class _SwitchableLayer(family.TransformerLayer):
    """A transformer layer whose layer scales are rows ``slot`` of its tables (set per path)."""

    slot: tuple[int, ...] = ()

    def layer_scales(self, chs: int) -> tuple[torch.Tensor, torch.Tensor]:
        factor = 8 / chs
        return self.gamma_attn[self.slot][:chs] * factor, self.gamma_mlp[self.slot][:chs] * factor


class _ShortcutConv(SlimConv2d):
    """The shortcut's 1x1 conv, the identity when the path keeps the width (the backbone has no conv there)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if x.shape[1] == self.out_active else super().forward(x)


def _make_dynamic(module: nn.Module) -> None:
    """Replace, in place, every module below ``module`` by its slimmable twin (names and tensors unchanged)."""
    for name, child in list(module.named_children()):
        if isinstance(child, family.TransformerLayer):
            child = _twin(_SwitchableLayer, child)
        elif isinstance(child, family.JointLayerNorm):
            child = _twin(_SlimJointLayerNorm, child)
        elif isinstance(child, nn.BatchNorm2d):
            child = SlicedBatchNorm2d.of(child)
        elif isinstance(child, nn.Conv2d) and child.groups > 1:
            child = SlimDepthwiseConv2d.of(child)
        elif isinstance(child, nn.Conv2d):
            child = _twin(_ShortcutConv, child) if isinstance(module, family.Shortcut) else SlimConv2d.of(child)
        elif isinstance(child, nn.Linear):
            child = SlimLinear.of(child)
        setattr(module, name, child)
        _make_dynamic(child)


class NASViTSearchSupernet(NASViTSupernet):
    """``supernet(x, arch)`` runs one path; ``path_state_dict(arch)`` is keyed like ``zoo.create_model(to_spec)``.

    ``arch`` may also be a ``nasvit`` spec of the space. The path's running BN statistics are the first channels of
    the shared ones (update in training mode; used in eval mode, where the official supernet refuses to run and
    builds the static subnet instead: the same numbers).
    """

    def __init__(self, space: NASViTSpace, num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.0) -> None:
        super().__init__(
            space.choices(),
            num_classes=num_classes,
            in_chans=in_chans,
            layer_scale=space.layer_scale,
            resize_input=space.resize_input,
            drop_rate=drop_rate,
        )
        self.space = space
        _make_dynamic(self)

    def _spec(self, arch: Sequence[int] | Mapping[str, Any]) -> dict:
        return self.check_spec(arch) if isinstance(arch, Mapping) else self.space.to_spec(arch)

    def set_arch(self, arch: Sequence[int] | Mapping[str, Any]) -> dict:
        """Set every output width, kernel and layer-scale row of the path; returns its spec."""
        spec = self._spec(arch)
        width, kernel, expand = spec['width'], spec['kernel_size'], spec['expand_ratio']
        self.stem.conv.out_active = width[0]
        c_in = width[0]
        for i, stage in enumerate(self.stages):
            c = width[i + 1]
            slot = self.scale_slot(spec, i) if i >= family.NUM_CONV_STAGES else ()
            for j in range(spec['depth'][i]):
                block = stage[j]
                if isinstance(block, family.MBConvBlock):
                    self._set_mbconv(block, c_in if j == 0 else c, c, kernel[i], expand[i])
                else:
                    attn = block.attn
                    for linear, out in ((attn.q, c), (attn.k, c), (attn.v, family.V_EXPANSION * c), (attn.proj, c)):
                        linear.out_active = out
                    attn.proj_l.out_active = attn.proj_w.out_active = c // family.HEAD_DIM
                    for mlp in (block.mlp1, block.mlp2):
                        mlp.fc1.out_active = mlp.fc2.out_active = c
                    block.slot = slot
            c_in = c
        self.final_conv.conv.out_active = family.HEAD_EXPANSION * c_in
        self.conv_head.out_active = width[8]
        return spec

    @staticmethod
    def _set_mbconv(block: nn.Module, c_in: int, c_out: int, kernel: int, expand: int) -> None:
        conv = block.conv
        conv.conv_dw.kernel_active = kernel
        if expand == 1:  # timm DepthwiseSeparableConv: conv_dw on c_in, conv_pw to c_out
            conv.conv_pw.out_active = c_out
        else:  # timm InvertedResidual (its own mid and SE widths)
            mid = make_divisible(c_in * expand)
            conv.conv_pw.out_active = mid
            if isinstance(conv.se, nn.Module) and hasattr(conv.se, 'conv_reduce'):
                conv.se.conv_reduce.out_active = make_divisible(mid * 0.25)
                conv.se.conv_expand.out_active = mid
            conv.conv_pwl.out_active = c_out
        if isinstance(block.shortcut, family.Shortcut) and isinstance(block.shortcut.conv, SlimConv2d):
            block.shortcut.conv.out_active = c_out

    def forward(self, x: torch.Tensor, arch: Sequence[int] | Mapping[str, Any]) -> torch.Tensor:  # type: ignore[override]
        """Logits of the path ``arch`` (resized to its resolution first when the space says ``resize_input``)."""
        spec = self.set_arch(arch)
        if self.resize_input:
            x = family.resize_to(x, spec['resolution'])
        x = self.stem(x)
        for stage, depth in zip(self.stages, spec['depth'], strict=True):
            for block in stage[:depth]:
                x = block(x)
        return family.NASViT.forward_head(self, self.final_conv(x))  # type: ignore[arg-type]

    def path_state_dict(self, arch: Sequence[int] | Mapping[str, Any]) -> dict[str, torch.Tensor]:  # type: ignore[override]
        """The path's weights, keyed and shaped as the ``nasvit`` backbone of ``space.to_spec(arch)``."""
        return super().path_state_dict(self._spec(arch))


#: Named spaces: the official one, and a 64-subnet one for CPU tests (see the module docstring).
SPACES: dict[str, NASViTSpace] = {
    'nasvit': NASViTSpace('nasvit'),
    'nasvit_tiny': NASViTSpace(
        'nasvit_tiny',
        resolutions=(192,),
        widths=((16,), (16, 24), (24,), (32,), (64, 72), (112,), (160,), (208,), (1792,)),
        depths=((1, 2), (3,), (3,), (3,), (3, 4), (3,), (3,)),
        kernels=((3, 5), (3,), (3,), (3,), (3,), (3,), (3,)),
        expansions=((1,), (4, 6), (4,), (4,), (4,), (6,), (6,)),
        resize_input=False,
    ),
}


def get_space(name: str | NASViTSpace = 'nasvit', **options: Any) -> NASViTSpace:
    """A space of :data:`SPACES`; ``options`` replace its fields (``layer_scale='paper'``, ``resize_input``...)."""
    if isinstance(name, NASViTSpace):
        space = name
    elif name not in SPACES:
        raise KeyError(f'unknown NASViT space {name!r}; known: {sorted(SPACES)}')
    else:
        space = SPACES[name]
    if options:
        fields = set(NASViTSpace.__dataclass_fields__) - {'name'}
        unknown = sorted(set(options) - fields)
        if unknown:
            raise ValueError(f'space {space.name!r}: unknown option(s) {unknown}; known: {sorted(fields)}')
        space = replace(space, **options)
    return space
