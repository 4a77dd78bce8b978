"""NATS-Bench size-space networks: a fixed NAS-Bench-201 cell with a searched width per layer.

Papers: Dong et al., "NATS-Bench: Benchmarking NAS Algorithms for Architecture Topology and Size" (TPAMI 2021,
arXiv 2009.00437), size search space S_S; BossNAS (arXiv 2103.12424, appendix A.2, section 5.3) searches it.
Official code: github.com/D-X-Y/AutoDL-Projects (``xautodl/models/shape_infers/InferTinyCellNet.py``
``DynamicShapeTinyNet``, ``cell_infers/cells.py`` ``InferCell``, ``cell_operations.py``) and, for the supernet,
github.com/changlin31/BossNAS (``searching/bossnas/models/supernets/nats_supernet.py``, ``operations/nats_ops.py``).

Network (``channels`` = ``[c_0, ..., c_{3N+1}]``, one width per layer; NATS-Bench's size space has ``N = 1``)::

    stem: Conv3x3(3 -> c_0) + BN                               (no activation)
    stage 0: N cells                                           (resolution 1/1)
    stage 1: ResNet reduction block, N cells                   (1/2)
    stage 2: ResNet reduction block, N cells                   (1/4)
    head: BN + ReLU (ends forward_features), global average pool, dropout, linear

With ``N = 1`` these are the five searched layers of S_S: cell, stride-2 block, cell, stride-2 block, cell, each
with its own width in {8, 16, ..., 64} (8^5 = 32,768 networks). Layer ``i`` maps ``c_{i-1} -> c_i`` (``c_{-1}`` =
``c_0``: the stem already has the first layer's width).

* The cell is NATS-Bench's fixed genotype :data:`GENOTYPE` (= the ``nb201`` default cell), built from the ``nb201``
  family's :class:`~backbones.nb201.NB201Cell`, :class:`~backbones.nb201.ReLUConvBN` and
  :class:`~backbones.nb201.ResNetReduction`. Edges leaving node 0 map ``c_in -> c_out``, the others stay on
  ``c_out``. Unlike the ``nb201`` search cells, the BN inside the cells is affine (NATS-Bench's ``InferCell`` and the
  BossNAS supernet both use affine BN).
* The skip edge (node 0 -> node 3) is the identity when ``c_in == c_out``, else a projection. **Decision,
  field ``skip_proj``:** NATS-Bench's ``FactorizedReduce`` at stride 1 is Conv1x1 + BN (no ReLU: its ReLU runs only at
  stride 2), the BossNAS supernet's own ``FactorizedReduce`` puts a ReLU first. The default ``'conv_bn'`` is the
  benchmark's network (whose accuracies the NATS-Bench ratings refer to); ``'relu_conv_bn'`` builds the BossNAS
  reading. Both keep the parameter names (``<edge>.1`` conv, ``<edge>.2`` BN).

Spec (family ``nats_size``, version 1)::

    {"family": "nats_size", "version": 1, "channels": [64, 64, 64, 64, 64]}

plus the optional ``"skip_proj": "conv_bn" | "relu_conv_bn"``. Features: the outputs of the three stages (strides 1,
2, 4), with the widths of the last layer of each stage.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch.nn as nn
from timm.models import generate_default_cfgs, register_model

from ._builder import FamilyBuilder
from ._spec import SpecError, check_choice, check_header, check_int, check_list
from .nb201 import CIFAR_MEAN, CIFAR_STD, EDGES, CifarCellNet, NB201Cell, ReLUConvBN, ResNetReduction

__all__ = [
    'CELL_EDGES',
    'FAMILY',
    'GENOTYPE',
    'NUM_FEATURE_LEVELS',
    'SKIP_PROJS',
    'SPECS',
    'SPEC_VERSION',
    'NATSSizeNet',
    'SkipProjection',
    'build',
    'layer_names',
    'parse_genotype',
    'validate_spec',
]

FAMILY = 'nats_size'
SPEC_VERSION = 1
NUM_FEATURE_LEVELS = 3  # the three stages: strides 1, 2, 4
#: NATS-Bench's fixed cell of the size space (AutoDL-Projects ``exps/NATS-Bench/main-sss.py``, BossNAS ``MixOps``).
GENOTYPE = '|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|'
#: Projection of the skip edge when its widths differ: NATS-Bench's (default) or the BossNAS supernet's.
SKIP_PROJS = ('conv_bn', 'relu_conv_bn')
DEFAULT_SKIP_PROJ = 'conv_bn'
#: Bounds (docs/models.md, "Spec bounds"): twice NATS-Bench's widest layer; NATS-Bench's topology networks have N 5.
MAX_CHANNELS = 128
MAX_CELLS_PER_STAGE = 16
_FIELDS = ('channels',)
_OPTIONAL_FIELDS = ('skip_proj',)


def parse_genotype(genotype: str) -> tuple[str, ...]:
    """The op of each edge, in ``nb201`` edge order (:data:`~backbones.nb201.EDGES`), of a NAS-Bench-201 arch
    string ``|op~from|+|op~from|op~from|+...``."""
    ops: dict[tuple[int, int], str] = {}
    for to, node in enumerate(genotype.split('+'), start=1):
        for item in filter(None, node.split('|')):
            op, _, src = item.partition('~')
            ops[(int(src), to)] = op
    if set(ops) != set(EDGES):
        raise ValueError(f'genotype {genotype!r} does not name the edges {EDGES}')
    return tuple(ops[e] for e in EDGES)


CELL_EDGES = parse_genotype(GENOTYPE)

SPECS: dict[str, dict] = {
    # NATS-Bench's largest size-space network (64:64:64:64:64), the one its size space shares with the topology space
    'nats_size': {'family': FAMILY, 'version': SPEC_VERSION, 'channels': [64] * 5},
}


def validate_spec(spec: Any) -> dict:
    """Validate a ``nats_size`` spec and return a normalised deep copy (raises :class:`SpecError`)."""
    optional = tuple(f for f in _OPTIONAL_FIELDS if isinstance(spec, Mapping) and f in spec)
    spec = check_header(spec, FAMILY, SPEC_VERSION, _FIELDS + optional)
    channels = check_list(spec['channels'], 'channels', max_length=3 * MAX_CELLS_PER_STAGE + 2)
    if len(channels) < 5 or len(channels) % 3 != 2:
        raise SpecError(
            f"spec field 'channels': expected 3N+2 widths (N >= 1 cells a stage: 5, 8, 11, ...), got {len(channels)}"
        )
    spec['channels'] = [check_int(c, f'channels[{i}]', minimum=1, maximum=MAX_CHANNELS) for i, c in enumerate(channels)]
    if 'skip_proj' in spec:
        check_choice(spec['skip_proj'], SKIP_PROJS, 'skip_proj')
    return spec


def layer_names(num_layers: int) -> list[str]:
    """Module names of the ``num_layers`` (= 3N+2) searched layers in depth order (``stages.<s>.<j>``)."""
    n = num_layers // 3
    return [f'stages.0.{j}' for j in range(n)] + [f'stages.{s}.{j}' for s in (1, 2) for j in range(n + 1)]


class SkipProjection(nn.Sequential):
    """The skip edge between different widths: (ReLU or nothing) - Conv1x1 (no bias) - affine BN.

    Indexed like :class:`~backbones.nb201.ReLUConvBN`, so both readings of ``skip_proj`` share parameter names.
    """

    def __init__(self, in_chs: int, out_chs: int, relu: bool = False) -> None:
        super().__init__(
            nn.ReLU(inplace=False) if relu else nn.Identity(),
            nn.Conv2d(in_chs, out_chs, 1, bias=False),
            nn.BatchNorm2d(out_chs),
        )


class NATSSizeNet(CifarCellNet):
    """A NATS-Bench size-space network from a validated ``nats_size`` spec; keeps the spec as ``self.spec``.

    Modules: ``stem``; ``stages[s]`` = (for s > 0, a :class:`~backbones.nb201.ResNetReduction` first, then) N
    :class:`~backbones.nb201.NB201Cell`; ``final_act``, ``global_pool``, ``fc``. :meth:`make_skip` builds the skip
    edge; a supernet overrides it to keep a projection where its widest network has the identity.
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
        chs = spec['channels']
        relu = spec.get('skip_proj', DEFAULT_SKIP_PROJ) == 'relu_conv_bn'
        n = len(chs) // 3
        self.stem = nn.Sequential(nn.Conv2d(in_chans, chs[0], 3, padding=1, bias=False), nn.BatchNorm2d(chs[0]))
        stages: list[list[nn.Module]] = [[] for _ in range(NUM_FEATURE_LEVELS)]
        in_chs = chs[0]
        for name, out_chs in zip(layer_names(len(chs)), chs, strict=True):
            s, j = (int(x) for x in name.split('.')[1:])
            if s > 0 and j == 0:
                stages[s].append(ResNetReduction(in_chs, out_chs))
            else:
                stages[s].append(NB201Cell([self._edge(e, in_chs, out_chs, relu) for e in range(len(EDGES))]))
            in_chs = out_chs
        self.stages = nn.Sequential(*(nn.Sequential(*blocks) for blocks in stages))
        ends = [n - 1, 2 * n, 3 * n + 1]  # the last layer of each stage
        self.feature_info = [dict(num_chs=chs[i], reduction=2**s, module=f'stages.{s}') for s, i in enumerate(ends)]
        self._init_head(chs[-1], global_pool)

    def _edge(self, index: int, in_chs: int, out_chs: int, relu: bool) -> nn.Module:
        src_chs = in_chs if EDGES[index][0] == 0 else out_chs
        if CELL_EDGES[index] == 'skip_connect':
            return self.make_skip(src_chs, out_chs, relu)
        return ReLUConvBN(src_chs, out_chs, 3)

    def make_skip(self, in_chs: int, out_chs: int, relu: bool) -> nn.Module:
        """The skip edge: the identity between equal widths, else a :class:`SkipProjection`."""
        return nn.Identity() if in_chs == out_chs else SkipProjection(in_chs, out_chs, relu)


# features_only: timm's FeatureGetterNet (forward_intermediates, parameter names under 'model.')
_create = FamilyBuilder(NATSSizeNet, SPECS, validate_spec, NUM_FEATURE_LEVELS, feature_cfg={'feature_cls': 'getter'})


def build(spec: dict, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Build any ``nats_size`` spec (``timm.create_model('nats_size', spec=spec)``)."""
    return _create('nats_size', pretrained=pretrained, spec=spec, **kwargs)


default_cfgs = generate_default_cfgs(
    {
        'nats_size': {
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
            'paper_ids': 'arXiv:2009.00437',
            'paper_name': 'NATS-Bench: Benchmarking NAS Algorithms for Architecture Topology and Size',
            'origin_url': 'https://github.com/D-X-Y/AutoDL-Projects',
            'notes': (
                'NATS-Bench size space S_S (fixed cell, a width per layer), searched by BossNAS (arXiv:2103.12424); '
                'pass spec=... (no published weights)',
            ),
        }
    }
)


@register_model
def nats_size(pretrained: bool = False, spec: dict | None = None, **kwargs: Any) -> NATSSizeNet:
    """Any network of the NATS-Bench size space, from ``spec``; without one, the widest (64:64:64:64:64)."""
    return _create('nats_size', pretrained, spec=spec, **kwargs)
