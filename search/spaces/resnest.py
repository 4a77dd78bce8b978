"""The Pi-NAS ResNeSt search space and its single-path supernet: 16 layers x 4 split-attention blocks.

Pi-NAS (Peng, Zhang et al., arXiv 2108.09671) section 4.1; official ``OpenSelfSup/openselfsup/models/backbones/
super_resnest.py`` (``SuperResNet``) and ``configs/pinas_learning.py`` at github.com/Ernie1/Pi-NAS commit 203b832;
../shared/specs/pinas.md section 1:

* ResNeSt-50-D skeleton: deep stem of width 32 (3 -> 32 -> 32 -> 64, max-pool), stages [3, 4, 6, 3] of bottleneck
  widths 64/128/256/512, avg-down shortcuts, "avd" after the split-attention conv in stride-2 blocks;
* each of the 16 layers picks one of the four candidate blocks of ``backbones.resnest.CANDIDATES`` (``1s1x64d``,
  ``2s1x64d``, ``1s2x42d``, ``2s2x40d``), layer by layer, so the space has 4^16 = 4,294,967,296 networks;
* downsample sharing (paper section 4.1, official ``downsample_share=True``): the four candidates of a stage's first
  layer share one avg-down shortcut module (``share_downsample=False``: one each, the "w/o DS" row of Table 7);
* initialisation: Kaiming-normal (fan-out) convolutions, BN 1/0 and a zero-initialised last BN (``bn3``) in every
  block: timm's ``ResNet.init_weights(zero_init_last=True)``, what the official ``zero_init_last_bn=True`` does.

Every path is a network of the ``resnest`` backbone family, and the supernet is *made of* those networks: it builds,
with the family's own builder (``backbones.resnest.build``), one network per candidate (every layer taking that
candidate) and keeps their blocks as the candidates, the first network's stem and head, and the first network's
shortcut of each stage for all four candidates. So names, shapes, avd placement, the official attention width and
the initialisation of a path are by construction those of ``zoo.create_model(space.to_spec(arch))``, and its
forward is bit-identical (tested).

The shared shortcut is one module registered under all four candidates of the layer: ``parameters()`` yields it once
(so optimizers and parameter-wise EMAs touch it once), while ``state_dict()`` lists it under each candidate's key
(``layer2.0.<c>.downsample.*``, one tensor); an EMA or average over ``state_dict()`` items would update it four
times, so use ``parameters()`` or :meth:`ResNeStSupernet.path_modules`.

``cost(arch, 'flops')`` is the paper's rule, the conv + FC MACs x 1.009 (mmcv's counter adds BN, pooling and
activations; zoo/catalog.py ``PINAS_RULE``); ``macs`` and ``params`` are counted on the zoo network of the path.

``pinas_tiny`` is the same structure with stem 8, widths [16, 16, 32, 32] and [2, 2, 2, 1] blocks (7 layers, 4^7 =
16,384 networks; the spec's optional ``stem_width`` / ``channels`` / ``layers`` fields), for tests and CPU demos at
32x32.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cache
from typing import Any

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from backbones import resnest as resnest_family
from backbones._flops import count_params

from ..protocols import COST_METRICS, Arch
from .base import ChoiceSpace, measured_latency

__all__ = ['PAPER_FLOPS_FACTOR', 'SPACES', 'ResNeStSpace', 'ResNeStSupernet', 'get_space']

#: Pi-NAS FLOPs are conv + FC MACs x ~1.009 (mmcv's counter; zoo/catalog.py PINAS_RULE, ResNeSt-50 5.371G -> 5.42G).
PAPER_FLOPS_FACTOR = 1.009


@dataclass(frozen=True)
class ResNeStSpace(ChoiceSpace):
    """Per-layer choice among the four split-attention candidates on a ResNeSt-D skeleton.

    An architecture is one index into ``backbones.resnest.CANDIDATES`` per layer (``sum(layers)`` decisions).
    """

    name: str = 'pinas'
    layers: tuple[int, ...] = tuple(resnest_family.DEFAULTS['layers'])
    channels: tuple[int, ...] = tuple(resnest_family.DEFAULTS['channels'])
    stem_width: int = resnest_family.DEFAULTS['stem_width']
    img_size: int = 224
    #: one shortcut per stage for all candidates of its first layer (paper's DS); False: Table 7's "w/o DS"
    share_downsample: bool = True

    def __post_init__(self) -> None:
        stages = len(resnest_family.LAYERS)
        if len(self.layers) != stages or len(self.channels) != stages:
            raise ValueError(
                f'space {self.name!r}: layers and channels need {stages} entries (stages), got '
                f'{list(self.layers)} and {list(self.channels)}'
            )
        try:
            resnest_family.validate_spec(self._spec((0,) * sum(self.layers)))
        except ValueError as err:
            raise ValueError(f'space {self.name!r}: {err}') from None
        if not isinstance(self.share_downsample, bool):
            raise ValueError(
                f'space {self.name!r}: share_downsample must be true or false, got {self.share_downsample!r}'
            )
        if self.img_size < 32:
            raise ValueError(f'space {self.name!r}: img_size {self.img_size} is below 32 (the network reduces 32x)')

    # -- decisions ----------------------------------------------------------------------------------------------
    @property
    def positions(self) -> tuple[tuple[int, int, str], ...]:
        """Per layer: (stage index, index in the stage, module prefix ``layer<s>.<j>`` in the zoo network)."""
        return tuple((s, j, f'layer{s + 1}.{j}') for s, n in enumerate(self.layers) for j in range(n))

    @property
    def num_choices(self) -> tuple[int, ...]:
        return (len(resnest_family.CANDIDATES),) * sum(self.layers)

    # -- specs --------------------------------------------------------------------------------------------------
    def _spec(self, arch: Sequence[int]) -> dict:
        spec: dict[str, Any] = {
            'family': resnest_family.FAMILY,
            'version': resnest_family.SPEC_VERSION,
            'choices': list(arch),
        }
        # only the fields that differ from the paper's skeleton: a path of 'pinas' is a plain catalog-style spec
        for field, value in (('stem_width', self.stem_width), ('channels', self.channels), ('layers', self.layers)):
            value = list(value) if isinstance(value, tuple | list) else value
            if value != resnest_family.DEFAULTS[field]:
                spec[field] = value
        return spec

    def to_spec(self, arch: Sequence[int]) -> dict:
        """The ``resnest`` spec of ``arch``; ``zoo.create_model(spec)`` builds exactly the path's network."""
        return resnest_family.validate_spec(self._spec(self.check(arch)))

    def from_spec(self, spec: dict) -> Arch:
        """The architecture whose :meth:`to_spec` is ``spec``; a spec of another skeleton raises naming the fields."""
        spec = resnest_family.validate_spec(spec)
        choices = spec['choices']
        if len(choices) != len(self.num_choices):
            raise ValueError(f'spec has {len(choices)} layers, space {self.name!r} has {len(self.num_choices)}')
        arch = self.check(choices)
        self.check_path_spec(spec, self.to_spec(arch))
        return arch

    # -- costs --------------------------------------------------------------------------------------------------
    def cost(self, arch: Sequence[int], metric: str) -> float:
        """``flops`` (the paper's rule: MACs x 1.009), ``macs``, ``params`` (1000 classes) or ``latency`` (seconds:
        the zoo network, CPU, batch 1, median of 10 runs, measured once per architecture)."""
        if metric not in COST_METRICS:
            raise ValueError(f'cost metric {metric!r}: expected one of {COST_METRICS}')
        arch = self.check(arch)
        if metric == 'latency':
            return measured_latency(self, arch, lambda: resnest_family.build(self.to_spec(arch)), self.img_size)
        table = _cost_table(self)
        index = 1 if metric == 'params' else 0
        total = table['fixed'][index] + sum(table['layers'][i][c][index] for i, c in enumerate(arch))
        return total * PAPER_FLOPS_FACTOR if metric == 'flops' else float(total)

    def extremes(self) -> tuple[Arch, Arch]:
        """(fewest, most) MACs: a layer's input and output do not depend on its choice, so per layer the cheapest /
        dearest candidate (ties: the lower index)."""
        rows = _cost_table(self)['layers']
        low = tuple(min(self.allowed(i), key=lambda c, r=r: r[c][0]) for i, r in enumerate(rows))
        high = tuple(max(self.allowed(i), key=lambda c, r=r: (r[c][0], -c)) for i, r in enumerate(rows))
        return low, high

    def build_supernet(self, num_classes: int = 1000, **options: Any) -> ResNeStSupernet:
        """The weight-sharing supernet (``options``: ``in_chans``, ``drop_rate`` of the classifier;
        ``num_classes=0``: no classifier, the supernet returns pooled features)."""
        return ResNeStSupernet(self, num_classes=num_classes, **options)


def _uniform_net(space: ResNeStSpace, choice: int, num_classes: int, **kwargs: Any) -> nn.Module:
    """The zoo network whose every layer takes candidate ``choice`` (drop path off: a supernet path has none)."""
    spec = space.to_spec((choice,) * len(space.num_choices))
    return resnest_family.build(spec, num_classes=num_classes, drop_path_rate=0.0, **kwargs)


@cache
def _cost_table(space: ResNeStSpace) -> dict:
    """(MACs, params) of the fixed parts (1000 classes) and of every (layer, candidate), counted on the real timm
    modules (torch's flop counter, FLOPs / 2, as ``backbones._flops.count_macs``) on the meta device."""
    layers: list[list[tuple[int, int]]] = [[] for _ in space.positions]
    fixed = None
    for c in range(len(resnest_family.CANDIDATES)):
        with torch.device('meta'):
            net = _uniform_net(space, c, 1000).eval()
            x = torch.zeros(1, 3, space.img_size, space.img_size)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            net(x)
        counts = counter.get_flop_counts()
        root = type(net).__name__
        for i, (*_, prefix) in enumerate(space.positions):
            macs = sum(counts.get(f'{root}.{prefix}', {}).values()) // 2
            layers[i].append((macs, count_params(net.get_submodule(prefix))))
        if fixed is None:
            total = sum(counts['Global'].values()) // 2, count_params(net)
            fixed = (total[0] - sum(r[0][0] for r in layers), total[1] - sum(r[0][1] for r in layers))
    return {'fixed': fixed, 'layers': layers}


class ResNeStSupernet(nn.Module):
    """``supernet(x, arch)`` runs one path; ``path_state_dict(arch)`` is keyed like ``zoo.create_model(to_spec)``.

    ``layer<s>[j][c]`` is candidate ``c`` of block ``j`` of stage ``s`` (a timm ``ResNestBottleneck``);
    ``conv1`` / ``bn1`` / ``act1`` / ``maxpool`` (the deep stem), ``global_pool`` and ``fc`` (``num_classes=0``:
    identity, pooled features) are shared by all paths, as is each stage's shortcut (module docstring).
    """

    def __init__(self, space: ResNeStSpace, num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.0):
        super().__init__()
        self.space = space
        self.num_classes = num_classes
        nets = [
            _uniform_net(space, c, num_classes, in_chans=in_chans, drop_rate=drop_rate)
            for c in range(len(resnest_family.CANDIDATES))
        ]
        base = nets[0]
        self.conv1, self.bn1, self.act1, self.maxpool = base.conv1, base.bn1, base.act1, base.maxpool
        for s, n in enumerate(space.layers):
            stage = nn.ModuleList(
                nn.ModuleList(net.get_submodule(f'layer{s + 1}')[j] for net in nets) for j in range(n)
            )
            if space.share_downsample:  # one shortcut for the stage's first layer
                for candidate in stage[0]:
                    candidate.downsample = stage[0][0].downsample
            self.add_module(f'layer{s + 1}', stage)
        self.global_pool, self.fc, self.drop_rate = base.global_pool, base.fc, base.drop_rate
        self.num_features = base.num_features

    def path_modules(self, arch: Sequence[int]) -> list[tuple[str, nn.Module]]:
        """(zoo-network prefix, module) of every part that ``arch`` runs, in order (stem, its blocks, classifier):
        what a path-restricted update (Pi-NAS's mean teacher) or :meth:`path_state_dict` walks."""
        arch = self.space.check(arch)
        stem = [('conv1', self.conv1), ('bn1', self.bn1)]
        blocks = [
            (prefix, self.get_submodule(f'layer{s + 1}')[j][arch[i]])
            for i, (s, j, prefix) in enumerate(self.space.positions)
        ]
        return stem + blocks + [('fc', self.fc)]

    def forward_features(self, x: torch.Tensor, arch: Sequence[int]) -> torch.Tensor:
        """The last stage's feature map of path ``arch`` (timm ``ResNet.forward_features``)."""
        arch = self.space.check(arch)
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        for i, (s, j, _) in enumerate(self.space.positions):
            x = self.get_submodule(f'layer{s + 1}')[j][arch[i]](x)
        return x

    def forward(self, x: torch.Tensor, arch: Sequence[int]) -> torch.Tensor:
        """Logits of path ``arch`` (timm ``ResNet.forward``: features, pool, dropout, classifier)."""
        x = self.global_pool(self.forward_features(x, arch))
        if self.drop_rate:
            x = nn.functional.dropout(x, p=float(self.drop_rate), training=self.training)
        return self.fc(x)

    def path_state_dict(self, arch: Sequence[int]) -> dict[str, torch.Tensor]:
        """The weights (and BN buffers) of the path, named as in the zoo network of ``space.to_spec(arch)``."""
        return {f'{prefix}.{n}': t for prefix, mod in self.path_modules(arch) for n, t in mod.state_dict().items()}


#: Named spaces: the paper's, and a tiny one (same structure, narrow and shallow) for tests and CPU demos.
SPACES: dict[str, ResNeStSpace] = {
    'pinas': ResNeStSpace('pinas'),
    'pinas_tiny': ResNeStSpace('pinas_tiny', layers=(2, 2, 2, 1), channels=(16, 16, 32, 32), stem_width=8, img_size=32),
}


def get_space(name: str | ResNeStSpace = 'pinas', **options: Any) -> ResNeStSpace:
    """A space of :data:`SPACES`; ``options`` replace its fields (``img_size=64`` changes its costs)."""
    if isinstance(name, ResNeStSpace):
        space = name
    elif name not in SPACES:
        raise KeyError(f'unknown ResNeSt space {name!r}; known: {sorted(SPACES)}')
    else:
        space = SPACES[name]
    if options:
        fields = set(ResNeStSpace.__dataclass_fields__) - {'name'}
        unknown = sorted(set(options) - fields)
        if unknown:
            raise ValueError(f'space {space.name!r}: unknown option(s) {unknown}; known: {sorted(fields)}')
        options = {k: tuple(v) if k in ('layers', 'channels') else v for k, v in options.items()}
        space = replace(space, **options)
    return space
