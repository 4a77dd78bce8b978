"""NAS-Bench-201 cell networks: the CIFAR-style macro network of "Inter-choice dependent super-network weights".

Papers: Dong & Yang, "NAS-Bench-201: Extending the Scope of Reproducible Neural Architecture Search" (ICLR 2020,
arXiv 2001.00326), for the cell and its ops; Laube & Zell, "Inter-choice dependent super-network weights" (arXiv
2104.11522), section 3.1.1 and Table 3, for the macro network and its parameter counts. Official code:
github.com/D-X-Y/AutoDL-Projects (``xautodl/models/cell_operations.py``, ``cell_infers/tiny_network.py``) and
github.com/cogsys-tuebingen/uninas (``uninas/modules/primitives/bench201.py``, ``experiments/configs/networks/
search/bench201.run_config``).

Network (``C`` = ``channels``, ``N`` = ``cells_per_stage``)::

    stem: Conv3x3(3 -> C) + BN                                     (no activation)
    stage 0: N cells on C channels           (resolution 1/1)
    stage 1: reduction block C -> 2C, N cells (1/2)
    stage 2: reduction block 2C -> 4C, N cells (1/4)
    head: BN + ReLU (ends forward_features), global average pool, dropout, linear

* The cell has 4 nodes and 6 edges, in NAS-Bench-201 arch-string order e0 (0->1), e1 (0->2), e2 (1->2),
  e3 (0->3), e4 (1->3), e5 (2->3); node j is the sum of its incoming edges, the cell's output is node 3. All
  normal cells share the spec's six ops (the topology is shared, as in NAS-Bench-201 and the paper).
* Ops, in the official order (the index a search space uses): ``none`` (Zero: ``x * 0``), ``skip_connect``,
  ``nor_conv_1x1`` and ``nor_conv_3x3`` (ReLU - Conv (no bias) - BN), ``avg_pool_3x3`` (3x3, stride 1, padding 1,
  ``count_include_pad=False`` as NAS-Bench-201's ``POOLING``; uninas counts the padding).
* BN inside the cell ops is not affine (``affine=False``), the search cells of NAS-Bench-201 and uninas; this is
  what paper Table 3 counts (16,896 parameters per cell at C = 16), and it keeps a supernet path and the network
  of its spec identical.
* Reduction block: NAS-Bench-201's ``ResNetBasicblock``: ReLU-Conv3x3(s2)-BN - ReLU-Conv3x3-BN (affine BN), plus a
  shortcut AvgPool2x2 + Conv1x1 (no BN), no activation after the sum. The shortcut pool uses ``ceil_mode=True``:
  identical on even sizes, and odd sizes run (NAS-Bench-201's floor would not match the conv's output).

Decision, Skip (field ``skip``): Table 3's total of 782,938 parameters holds only if Skip is a learned C x C 1x1
conv (no bias, no BN): ScarletNAS' "linear transformer" skip, uninas ``Bench201LTsPrimitives``, which uninas turns
into a plain skip in a stand-alone network. The paper's NAS-Bench-201 config names ``Bench201Primitives``, whose
Skip is the identity, as in NAS-Bench-201 itself: 718,426 parameters. The default is the identity (``'skip':
'identity'``, the benchmark's cell and the configured primitives); ``'skip': 'linear'`` builds the Table 3 reading.
Both totals are tested (C = 16, N = 2, 10 classes).

Spec (family ``nb201``, version 1)::

    {"family": "nb201", "version": 1, "channels": 16, "cells_per_stage": 2,
     "edges": ["nor_conv_3x3", "nor_conv_3x3", "nor_conv_3x3", "skip_connect", "nor_conv_3x3", "nor_conv_3x3"]}

plus the optional ``"skip": "identity" | "linear"``. NAS-Bench-201's own networks use C = 16, N = 5.
Features (``features_only`` / ``forward_intermediates``): the outputs of the three stages (strides 1, 2, 4).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import create_classifier
from timm.models import checkpoint_seq, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices

from ._builder import FamilyBuilder
from ._spec import check_choice, check_header, check_int, check_list

__all__ = [
    'EDGES',
    'FAMILY',
    'NUM_FEATURE_LEVELS',
    'OPS',
    'SKIPS',
    'SPECS',
    'SPEC_VERSION',
    'CifarCellNet',
    'NB201Cell',
    'NB201Net',
    'ReLUConvBN',
    'ResNetReduction',
    'build',
    'make_op',
    'validate_spec',
]

FAMILY = 'nb201'
SPEC_VERSION = 1
NUM_FEATURE_LEVELS = 3  # the three stages: strides 1, 2, 4

#: The candidate ops in the official order (NAS-Bench-201 names; uninas ``Bench201Primitives.get_order``).
OPS = ('none', 'skip_connect', 'nor_conv_1x1', 'nor_conv_3x3', 'avg_pool_3x3')
#: (from node, to node) of the six edges, in NAS-Bench-201 arch-string order.
EDGES = ((0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3))
#: ``identity``: plain skip (NAS-Bench-201, uninas ``Bench201Primitives``); ``linear``: a 1x1 conv (paper Table 3).
SKIPS = ('identity', 'linear')
DEFAULT_SKIP = 'identity'
#: CIFAR-10 mean / std of NAS-Bench-201's data pipeline (``xautodl/datasets/get_dataset_with_transform.py``).
CIFAR_MEAN = tuple(x / 255 for x in (125.3, 123.0, 113.9))
CIFAR_STD = tuple(x / 255 for x in (63.0, 62.1, 66.7))

# Bounds (docs/models.md, "Spec bounds"): far above NAS-Bench-201 (C 16, N 5) and NATS-Bench's size space (C <= 64);
# at the bounds the network has about 330M weights.
MAX_CHANNELS = 128
MAX_CELLS_PER_STAGE = 16
_FIELDS = ('channels', 'cells_per_stage', 'edges')
_OPTIONAL_FIELDS = ('skip',)


def _spec(edges: str, channels: int = 16, cells_per_stage: int = 2) -> dict:
    return {
        'family': FAMILY,
        'version': SPEC_VERSION,
        'channels': channels,
        'cells_per_stage': cells_per_stage,
        'edges': edges.split(),
    }


SPECS: dict[str, dict] = {
    # The cell NATS-Bench fixes for its size search space (AutoDL-Projects exps/NATS-Bench/main-sss.py), in the
    # paper's macro network (C 16, 2 cells a stage, Table 3).
    'nb201': _spec('nor_conv_3x3 nor_conv_3x3 nor_conv_3x3 skip_connect nor_conv_3x3 nor_conv_3x3'),
}


def validate_spec(spec: Any) -> dict:
    """Validate an ``nb201`` spec and return a normalised deep copy (raises :class:`SpecError`)."""
    optional = tuple(f for f in _OPTIONAL_FIELDS if isinstance(spec, Mapping) and f in spec)
    spec = check_header(spec, FAMILY, SPEC_VERSION, _FIELDS + optional)
    check_int(spec['channels'], 'channels', minimum=1, maximum=MAX_CHANNELS)
    check_int(spec['cells_per_stage'], 'cells_per_stage', minimum=1, maximum=MAX_CELLS_PER_STAGE)
    edges = check_list(spec['edges'], 'edges', length=len(EDGES))
    spec['edges'] = [check_choice(op, OPS, f'edges[{i}]') for i, op in enumerate(edges)]
    if 'skip' in spec:
        check_choice(spec['skip'], SKIPS, 'skip')
    return spec


class ReLUConvBN(nn.Sequential):
    """NAS-Bench-201's ``ReLUConvBN``: ReLU, conv without bias, BN (not affine inside cells)."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, stride: int = 1, affine: bool = True) -> None:
        super().__init__(
            nn.ReLU(inplace=False),  # the cell's nodes feed several edges: never in place
            nn.Conv2d(in_chs, out_chs, kernel_size, stride=stride, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(out_chs, affine=affine),
        )


class Zero(nn.Module):
    """NAS-Bench-201's ``Zero`` (stride 1): ``x * 0``, so the graph and its shapes stay those of the input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mul(0.0)


def make_op(name: str, channels: int, skip: str = DEFAULT_SKIP) -> nn.Module:
    """One candidate op of a normal cell on ``channels`` channels (stride 1), by its NAS-Bench-201 name."""
    if name == 'none':
        return Zero()
    if name == 'skip_connect':
        return nn.Identity() if skip == 'identity' else nn.Conv2d(channels, channels, 1, bias=False)
    if name == 'nor_conv_1x1':
        return ReLUConvBN(channels, channels, 1, affine=False)
    if name == 'nor_conv_3x3':
        return ReLUConvBN(channels, channels, 3, affine=False)
    if name == 'avg_pool_3x3':
        return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
    raise ValueError(f'unknown NAS-Bench-201 op {name!r}; one of {OPS}')


class NB201Cell(nn.Module):
    """The NAS-Bench-201 cell: ``edges[e]`` is the op of edge ``e`` (see :data:`EDGES`); output = node 3."""

    def __init__(self, edges: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(edges) != len(EDGES):
            raise ValueError(f'a NAS-Bench-201 cell has {len(EDGES)} edges, got {len(edges)}')
        self.edges = nn.ModuleList(edges)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        node1 = self.edges[0](x)
        node2 = self.edges[1](x) + self.edges[2](node1)
        return self.edges[3](x) + self.edges[4](node1) + self.edges[5](node2)


class ResNetReduction(nn.Module):
    """NAS-Bench-201's ``ResNetBasicblock`` with stride 2 (the fixed reduction cell of paper Table 3)."""

    def __init__(self, in_chs: int, out_chs: int) -> None:
        super().__init__()
        self.conv_a = ReLUConvBN(in_chs, out_chs, 3, stride=2)
        self.conv_b = ReLUConvBN(out_chs, out_chs, 3)
        self.downsample = nn.Sequential(
            nn.AvgPool2d(2, stride=2, ceil_mode=True, count_include_pad=False),
            nn.Conv2d(in_chs, out_chs, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsample(x) + self.conv_b(self.conv_a(x))


class CifarCellNet(nn.Module):
    """The CIFAR-style macro network of the cell families (``nb201``, ``nats_size``): everything but the build.

    A subclass builds ``stem``, ``stages`` (one ``nn.Sequential`` per resolution, strides 1, 2, 4) and
    ``feature_info`` and then calls :meth:`_init_head`, which adds ``final_act`` (BN + ReLU), ``global_pool`` and
    ``fc``; the timm contract (features, intermediates, pruning, checkpointing, classifier) lives here once.
    """

    def __init__(self, num_classes: int, drop_rate: float) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.grad_checkpointing = False

    def _init_head(self, in_chs: int, global_pool: str) -> None:
        self.num_features = self.head_hidden_size = in_chs
        self.final_act = nn.Sequential(nn.BatchNorm2d(in_chs), nn.ReLU(inplace=True))
        self.global_pool, self.fc = create_classifier(self.num_features, self.num_classes, pool_type=global_pool)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Parameter groups (stem, per-stage or per-cell) for layer-wise LR decay."""
        return dict(
            stem=r'^stem',
            blocks=[(r'^stages\.(\d+)' if coarse else r'^stages\.(\d+)\.(\d+)', None), (r'^final_act', (99999,))],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute every cell in the backward pass (forward_features and forward_intermediates)."""
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        if global_pool is None:
            global_pool = self.global_pool.pool_type
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=global_pool)

    def _run_stage(self, stage: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(stage, x)
        return stage(x)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = 'NCHW',
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Outputs of the stages at ``indices`` (0..2, strides 1/2/4); ``norm`` applies the final BN + ReLU to the
        last stage's output."""
        assert output_fmt == 'NCHW', 'Output format must be NCHW.'
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        intermediates = []
        x = self.stem(x)
        last = len(self.stages) - 1
        stages = self.stages if torch.jit.is_scripting() or not stop_early else self.stages[: max_index + 1]
        for i, stage in enumerate(stages):
            x = self._run_stage(stage, x)
            if i in take_indices:
                intermediates.append(self.final_act(x) if norm and i == last else x)
        if intermediates_only:
            return intermediates
        return self.final_act(x), intermediates

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the stages after the last requested one (and the final BN + ReLU with them, or when
        ``prune_norm``), and the head; returns the kept indices."""
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        levels = len(self.stages)
        self.stages = self.stages[: max_index + 1]
        if prune_norm or max_index < levels - 1:
            self.final_act = nn.Identity()
            self.num_features = self.head_hidden_size = self.feature_info[max_index]['num_chs']
        if prune_head or max_index < levels - 1:
            self.reset_classifier(0, '')
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Stem, the three stages and the final BN + ReLU: a (B, C_last, H/4, W/4) map."""
        x = self.stem(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            for stage in self.stages:
                x = checkpoint_seq(stage, x)
        else:
            x = self.stages(x)
        return self.final_act(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        if self.drop_rate > 0.0:
            x = F.dropout(x, p=float(self.drop_rate), training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class NB201Net(CifarCellNet):
    """A network of NAS-Bench-201 cells from a validated ``nb201`` spec; keeps the spec as ``self.spec``.

    Modules: ``stem``; ``stages[s]`` = (for s > 0, a :class:`ResNetReduction` first, then) ``N`` :class:`NB201Cell`;
    ``final_act`` (BN + ReLU); ``global_pool`` and ``fc``. Edge ``e`` of a cell is built by :meth:`make_edge`, which
    a supernet overrides to put every candidate there (``search.spaces.nb201``).
    """

    def __init__(
        self,
        spec: dict,
        num_classes: int = 10,
        in_chans: int = 3,
        global_pool: str = 'avg',
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__(num_classes, drop_rate)
        spec = validate_spec(spec)
        self.spec = spec
        chs, cells = spec['channels'], spec['cells_per_stage']
        skip = spec.get('skip', DEFAULT_SKIP)

        self.stem = nn.Sequential(nn.Conv2d(in_chans, chs, 3, padding=1, bias=False), nn.BatchNorm2d(chs))
        stages, self.feature_info = [], []
        in_chs = chs
        for s in range(NUM_FEATURE_LEVELS):
            out_chs = chs * 2**s
            blocks: list[nn.Module] = [] if s == 0 else [ResNetReduction(in_chs, out_chs)]
            for _ in range(cells):
                blocks.append(NB201Cell([self.make_edge(e, op, out_chs, skip) for e, op in enumerate(spec['edges'])]))
            stages.append(nn.Sequential(*blocks))
            self.feature_info.append(dict(num_chs=out_chs, reduction=2**s, module=f'stages.{s}'))
            in_chs = out_chs
        self.stages = nn.Sequential(*stages)
        self._init_head(in_chs, global_pool)

    def make_edge(self, index: int, op: str, channels: int, skip: str) -> nn.Module:
        """The module of edge ``index`` (op ``op``) of a cell on ``channels`` channels."""
        return make_op(op, channels, skip)


# features_only: timm's FeatureGetterNet (forward_intermediates, parameter names under 'model.')
_create = FamilyBuilder(NB201Net, SPECS, validate_spec, NUM_FEATURE_LEVELS, feature_cfg={'feature_cls': 'getter'})


def build(spec: dict, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Build any ``nb201`` spec (``timm.create_model('nb201', spec=spec)``)."""
    return _create('nb201', pretrained=pretrained, spec=spec, **kwargs)


default_cfgs = generate_default_cfgs(
    {
        'nb201': {
            'hf_hub_id': None,
            'num_classes': 10,
            'input_size': (3, 32, 32),
            'pool_size': (8, 8),
            'crop_pct': 1.0,
            'interpolation': 'bilinear',
            'mean': CIFAR_MEAN,
            'std': CIFAR_STD,
            'first_conv': 'stem.0',
            'classifier': 'fc',
            'license': 'mit',
            'paper_ids': 'arXiv:2104.11522',
            'paper_name': 'Inter-choice dependent super-network weights',
            'origin_url': 'https://github.com/cogsys-tuebingen/uninas',
            'notes': (
                'Generic NAS-Bench-201 cell space (arXiv:2001.00326) in the macro network of arXiv:2104.11522 '
                'Table 3; pass spec=... (no published weights)',
            ),
        }
    }
)


@register_model
def nb201(pretrained: bool = False, spec: dict | None = None, **kwargs: Any) -> NB201Net:
    """Any network of the NAS-Bench-201 cell space, from ``spec``; without one, NATS-Bench's fixed cell (C 16, N 2)."""
    return _create('nb201', pretrained, spec=spec, **kwargs)
