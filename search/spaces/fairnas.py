"""The FairNAS-style single-path MBConv space of "Inter-choice dependent super-network weights" and its supernet.

Laube & Zell, arXiv 2104.11522, section 3.1.2, Table 4; official uninas ``experiments/configs/networks/search/
fairnas.run_config`` (``MobileNetV2Stem``, ``MobileNetV2Primitives``, ``FeatureMixClassificationHead``):

* stem conv3x3 s2 (32) - BN - ReLU6, then the fixed DW3x3 (32) - BN - ReLU6 - PW (16) - BN layer;
* 19 searchable layers in six stages of (width, layers, first stride) (32, 2, 2), (40, 4, 2), (80, 4, 2),
  (96, 4, 1), (192, 4, 2), (320, 1, 1); each layer chooses one of six MBConv ops, in the official index order
  k3e3, k5e3, k7e3, k3e6, k5e6, k7e6 (PW expand - BN - ReLU6 - DW kxk - BN - ReLU6 - PW project - BN, residual when
  stride 1 and widths match, no squeeze-excite); candidates share no weights;
* head conv1x1 (1280) - BN - ReLU6 - average pool - linear.

With 100 classes the supernet has 14,839,700 parameters, the paper's Table 4 total (tested). Every path is a network
of the ``mbconv`` backbone family (``act_layer: relu6``, blocks without ``se``), and the supernet is *made of* those
networks: it builds, with the backbone family's own builder, one network per op (every layer taking that op) and
keeps their layers as the candidates and the first one's stem, fixed layer and head. So parameter names, shapes,
padding and initialisation of a path are by construction those of ``zoo.create_model(space.to_spec(arch))``.

Initialisation is timm's EfficientNet one (conv N(0, sqrt(2 / (k^2 C_out))), BN 1/0, linear uniform with the
classifier's fan-out); uninas' ``FairNasInitializer`` equals it except for the linear layer's bound (fan-in).
``cost(arch, 'flops')`` is the MAC count: the paper states no FLOPs rule, and FairNAS reports multiply-adds.

``build_supernet(interchoice={'variant': 'bias', 'depth': 1})`` adds the inter-choice dependent weights of
:mod:`search.interchoice` (one site per searchable layer, in order): 61,056 bias parameters for depth 1 with 100
classes (tested).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cache
from typing import Any, ClassVar

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from backbones import mbconv as mbconv_family
from backbones._flops import count_params

from ..interchoice import ChoiceSite, InterChoice, parse_options
from ..protocols import COST_METRICS, Arch
from .base import ChoiceSpace, measured_latency

__all__ = ['FAIRNAS_OPS', 'FAIRNAS_STAGES', 'SPACES', 'SinglePathMBConvSpace', 'SinglePathSupernet', 'get_space']

#: The op of each choice index (uninas ``MobileNetV2Primitives`` order).
FAIRNAS_OPS = ('k3e3', 'k5e3', 'k7e3', 'k3e6', 'k5e6', 'k7e6')
#: (output width, layers, stride of the first layer) per stage (paper Table 4).
FAIRNAS_STAGES = ((32, 2, 2), (40, 4, 2), (80, 4, 2), (96, 4, 1), (192, 4, 2), (320, 1, 1))

_OP = re.compile(r'^k(\d)e(\d)$')
_LAYER = re.compile(r'^ir_r1_k(\d)_s(\d)_e(\d)_c(\d+)(?:_se([\d.]+))?$')


def _parse_op(op: str) -> tuple[int, int]:
    m = _OP.match(op)
    if m is None or int(m[1]) not in mbconv_family.KERNELS or int(m[2]) not in mbconv_family.EXPANSIONS:
        raise ValueError(
            f'op {op!r} is not "k<kernel>e<expansion>" with kernel in {mbconv_family.KERNELS} and expansion in '
            f'{mbconv_family.EXPANSIONS}'
        )
    return int(m[1]), int(m[2])


@dataclass(frozen=True)
class SinglePathMBConvSpace(ChoiceSpace):
    """A single-path MBConv space: fixed stem and DS layer, one op choice per layer of fixed-width stages, fixed head.

    An architecture is one index into ``ops`` per searchable layer (``len(layers)`` decisions).
    """

    name: str = 'fairnas'
    stages: tuple[tuple[int, int, int], ...] = FAIRNAS_STAGES
    ops: tuple[str, ...] = FAIRNAS_OPS
    stem_size: int = 32
    ds_width: int = 16
    num_features: int = 1280
    act_layer: str = 'relu6'
    se: bool = False
    img_size: int = 224
    #: its supernet takes the ``interchoice`` option (:mod:`search.interchoice`)
    supports_interchoice: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.act_layer not in mbconv_family.ACTIVATIONS:
            raise ValueError(
                f'space {self.name!r}: act_layer {self.act_layer!r} is not one of {mbconv_family.ACTIVATIONS}'
            )
        if not self.ops or not self.stages:
            raise ValueError(f'space {self.name!r} needs at least one op and one stage')
        for op in self.ops:
            _parse_op(op)
        for width, layers, stride in self.stages:
            if layers < 1 or width < 1 or stride not in mbconv_family.STRIDES or width % 8:
                raise ValueError(
                    f'space {self.name!r}: stage (width {width}, layers {layers}, stride {stride}) needs >= 1 layer, '
                    f'a width that is a multiple of 8 and a stride in {mbconv_family.STRIDES}'
                )

    # -- decisions ----------------------------------------------------------------------------------------------
    @property
    def layers(self) -> tuple[tuple[int, int, int, str], ...]:
        """Per searchable layer: (stage index in the spec, index in the stage, stride, spec prefix ``blocks.s.j``)."""
        out = []
        for s, (_, n, stride) in enumerate(self.stages):
            out += [(s + 1, j, stride if j == 0 else 1, f'blocks.{s + 1}.{j}') for j in range(n)]
        return tuple(out)

    @property
    def num_choices(self) -> tuple[int, ...]:
        return (len(self.ops),) * len(self.layers)

    # -- specs --------------------------------------------------------------------------------------------------
    def _layer_arch(self, op: str, width: int, stride: int) -> str:
        kernel, expansion = _parse_op(op)
        return f'ir_r1_k{kernel}_s{stride}_e{expansion}_c{width}' + ('_se0.25' if self.se else '')

    def to_spec(self, arch: Sequence[int]) -> dict:
        """The ``mbconv`` spec of ``arch``; ``zoo.create_model(spec)`` builds exactly the path's network."""
        arch = self.check(arch)
        stages = [[f'ds_r1_k3_s1_c{self.ds_width}' + ('_se0.25' if self.se else '')]]
        i = 0
        for width, n, stride in self.stages:
            ops = [self.ops[x] for x in arch[i : i + n]]
            stages.append([self._layer_arch(op, width, stride if j == 0 else 1) for j, op in enumerate(ops)])
            i += n
        spec = {
            'family': mbconv_family.FAMILY,
            'version': mbconv_family.SPEC_VERSION,
            'stem_size': self.stem_size,
            'num_features': self.num_features,
            'act_layer': self.act_layer,
            'stages': stages,
        }
        return mbconv_family.validate_spec(spec)

    def from_spec(self, spec: dict) -> Arch:
        """The architecture whose :meth:`to_spec` is ``spec``; a spec outside the space raises naming what differs."""
        spec = mbconv_family.validate_spec(spec)
        layers = [b for stage in spec['stages'][1:] for b in stage]
        if len(layers) != len(self.layers):
            raise ValueError(f'spec has {len(layers)} searchable layers, space {self.name!r} has {len(self.layers)}')
        arch = []
        for i, block in enumerate(layers):
            m = _LAYER.match(block)
            op = f'k{m[1]}e{m[3]}' if m else None
            if op not in self.ops:
                raise ValueError(f'spec layer {i} {block!r} is none of the ops {self.ops} of space {self.name!r}')
            arch.append(self.ops.index(op))
        arch = tuple(arch)
        if self.to_spec(arch) != spec:
            raise ValueError(
                f'spec is not a path of space {self.name!r}: stem, widths, strides, SE or act_layer differ '
                f'(expected e.g. {self.to_spec(arch)})'
            )
        return arch

    # -- costs --------------------------------------------------------------------------------------------------
    def cost(self, arch: Sequence[int], metric: str) -> float:
        """``flops`` = ``macs`` (multiply-adds), ``params`` (1000 classes) or ``latency`` (seconds: the zoo network,
        CPU, batch 1, median of 10 runs, measured once per architecture)."""
        if metric not in COST_METRICS:
            raise ValueError(f'cost metric {metric!r}: expected one of {COST_METRICS}')
        arch = self.check(arch)
        if metric == 'latency':
            return measured_latency(self, arch, lambda: mbconv_family.build(self.to_spec(arch)), self.img_size)
        table = _cost_table(self)
        index = 1 if metric == 'params' else 0
        return float(table['fixed'][index] + sum(table['layers'][i][c][index] for i, c in enumerate(arch)))

    def extremes(self) -> tuple[Arch, Arch]:
        """(fewest, most) multiply-adds: layers are independent, so the cheapest / dearest op of each layer."""
        rows = _cost_table(self)['layers']
        low = tuple(min(self.allowed(i), key=lambda c, r=r: r[c][0]) for i, r in enumerate(rows))
        high = tuple(max(self.allowed(i), key=lambda c, r=r: r[c][0]) for i, r in enumerate(rows))
        return low, high

    def build_supernet(self, num_classes: int = 1000, **options: Any) -> SinglePathSupernet:
        """The weight-sharing supernet (``options``: ``in_chans``, ``drop_rate`` of the classifier, ``interchoice``:
        the options of :func:`search.interchoice.parse_options`)."""
        return SinglePathSupernet(self, num_classes=num_classes, **options)


def _uniform_net(space: SinglePathMBConvSpace, op: int, num_classes: int, **kwargs: Any) -> nn.Module:
    """The zoo network whose every searchable layer takes op ``op`` (drop path off: a supernet path has none)."""
    arch = (op,) * len(space.layers)
    return mbconv_family.build(space.to_spec(arch), num_classes=num_classes, drop_path_rate=0.0, **kwargs)


@cache
def _cost_table(space: SinglePathMBConvSpace) -> dict:
    """(MACs, params) of the fixed parts (1000 classes) and of every (layer, op), counted on the real timm modules.

    Counted like ``backbones._flops.count_macs`` (torch's flop counter, FLOPs / 2) but per module and on the meta
    device, one pass per op: no arithmetic runs, so even the 224-pixel table takes well under a second.
    """
    layers: list[list[tuple[int, int]]] = [[] for _ in space.layers]
    fixed = None
    for c in range(len(space.ops)):
        with torch.device('meta'):
            net = _uniform_net(space, c, 1000).eval()
            x = torch.zeros(1, 3, space.img_size, space.img_size)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            net(x)
        counts = counter.get_flop_counts()
        root = type(net).__name__
        for i, (*_, prefix) in enumerate(space.layers):
            macs = sum(counts.get(f'{root}.{prefix}', {}).values()) // 2
            layers[i].append((macs, count_params(net.get_submodule(prefix))))
        if fixed is None:
            total = sum(counts['Global'].values()) // 2, count_params(net)
            fixed = (total[0] - sum(r[0][0] for r in layers), total[1] - sum(r[0][1] for r in layers))
    return {'fixed': fixed, 'layers': layers}


class SinglePathSupernet(nn.Module):
    """``supernet(x, arch)`` runs one path; ``path_state_dict(arch)`` is keyed like ``zoo.create_model(to_spec)``.

    ``choices[i][c]`` is op ``c`` of searchable layer ``i``; ``conv_stem``, ``bn1``, ``ds``, ``conv_head``, ``bn2``,
    ``global_pool`` and ``classifier`` are the fixed parts (``num_classes=0``: no classifier, pooled features);
    ``interchoice`` holds the inter-choice dependent weights when asked for (else ``None``).
    """

    def __init__(
        self,
        space: SinglePathMBConvSpace,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        interchoice: dict | None = None,
    ) -> None:
        super().__init__()
        self.space = space
        self.num_classes = num_classes
        options = parse_options(interchoice)  # before the build: a bad option fails fast
        nets = [
            _uniform_net(space, c, num_classes, in_chans=in_chans, drop_rate=drop_rate) for c in range(len(space.ops))
        ]
        base = nets[0]
        self.conv_stem, self.bn1, self.ds = base.conv_stem, base.bn1, base.blocks[0][0]
        self.conv_head, self.bn2, self.global_pool = base.conv_head, base.bn2, base.global_pool
        self.drop_rate, self.classifier = base.drop_rate, base.classifier
        self.choices = nn.ModuleList(
            nn.ModuleList(net.get_submodule(prefix) for net in nets) for *_, prefix in space.layers
        )
        self.interchoice = None if options is None else InterChoice(self.interchoice_sites(), space, options)

    def interchoice_sites(self) -> list[ChoiceSite]:
        """One site per searchable layer, in order: its input width is the previous layer's output width."""
        widths = [self.space.ds_width] + [w for w, n, _ in self.space.stages for _ in range(n)]
        return [ChoiceSite(i, widths[i], self.choices[i]) for i in range(len(self.choices))]

    def _op(self, i: int, arch: Arch) -> nn.Module:
        return self.choices[i][arch[i]] if self.interchoice is None else self.interchoice.candidate(i, arch)

    def _path(self, arch: Sequence[int]) -> list[tuple[str, nn.Module]]:
        arch = self.space.check(arch)
        fixed = [('conv_stem', self.conv_stem), ('bn1', self.bn1), ('blocks.0.0', self.ds)]
        layers = [(prefix, self._op(i, arch)) for i, (*_, prefix) in enumerate(self.space.layers)]
        return fixed + layers + [('conv_head', self.conv_head), ('bn2', self.bn2), ('classifier', self.classifier)]

    def forward(self, x: torch.Tensor, arch: Sequence[int]) -> torch.Tensor:
        """Logits of the path ``arch`` (timm ``EfficientNet.forward``: trunk, head, pool, dropout, classifier); the
        inter-choice bias of layer ``i`` is added to that layer's input."""
        arch = self.space.check(arch)
        path = self._path(arch)
        first = 3  # the searchable layers follow conv_stem, bn1 and the DS layer
        for j, (_, mod) in enumerate(path[:-1]):
            if self.interchoice is not None and first <= j < first + len(arch):
                x = self.interchoice.add_bias(j - first, x, arch)
            x = mod(x)
        x = self.global_pool(x)
        if self.drop_rate > 0.0:
            x = nn.functional.dropout(x, p=self.drop_rate, training=self.training)
        return self.classifier(x)

    def path_state_dict(self, arch: Sequence[int]) -> dict[str, torch.Tensor]:
        """The weights (and BN buffers) of the path, named as in the zoo network of ``space.to_spec(arch)`` (after
        an inter-choice split: the copies this path runs; the bias tables belong to the supernet only)."""
        return {f'{prefix}.{n}': t for prefix, mod in self._path(arch) for n, t in mod.state_dict().items()}


#: Named spaces: the paper's, and a tiny one (same structure, narrow and shallow) for tests and CPU demos.
SPACES: dict[str, SinglePathMBConvSpace] = {
    'fairnas': SinglePathMBConvSpace('fairnas'),
    'fairnas_tiny': SinglePathMBConvSpace(
        'fairnas_tiny',
        stages=((16, 1, 2), (16, 2, 2), (24, 2, 2), (32, 1, 1)),
        ops=FAIRNAS_OPS,
        stem_size=8,
        ds_width=8,
        num_features=64,
        img_size=32,
    ),
}


def get_space(name: str | SinglePathMBConvSpace = 'fairnas', **options: Any) -> SinglePathMBConvSpace:
    """A space of :data:`SPACES`; ``options`` replace its fields (``img_size=160`` changes its costs)."""
    if isinstance(name, SinglePathMBConvSpace):
        space = name
    elif name not in SPACES:
        raise KeyError(f'unknown single-path MBConv space {name!r}; known: {sorted(SPACES)}')
    else:
        space = SPACES[name]
    if options:
        fields = set(SinglePathMBConvSpace.__dataclass_fields__) - {'name'}
        unknown = sorted(set(options) - fields)
        if unknown:
            raise ValueError(f'space {space.name!r}: unknown option(s) {unknown}; known: {sorted(fields)}')
        options = {
            k: tuple(map(tuple, v)) if k == 'stages' else tuple(v) if k == 'ops' else v for k, v in options.items()
        }
        space = replace(space, **options)
    return space
