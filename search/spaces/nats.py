"""The NATS-Bench size space S_S and its slimmable supernet, as BossNAS searches it.

Dong et al., NATS-Bench (arXiv 2009.00437), size space; BossNAS (arXiv 2103.12424) appendix A.2 and section 5.3,
official ``searching/bossnas/models/supernets/nats_supernet.py`` and ``operations/nats_ops.py`` (read, not copied).

An architecture is one width index per searched layer (cell, stride-2 block, cell, stride-2 block, cell), each into
``widths`` (``{8, 16, ..., 64}``: 8^5 = 32,768 networks). Every path is a network of the ``nats_size`` backbone
family, and the supernet *is* that family's widest network with every conv, BN and the classifier made slimmable
(:mod:`search.spaces.slimmable`): a path of width ``c`` uses the first ``c`` filters of each conv (first-k channel
slicing) and the BN of width ``c`` (switchable BN, one BN per candidate width at every BN site), as the official
``SlimmableConv2d`` / ``SwitchableBatchNorm2d``. The skip edge of a cell is the identity between equal widths and a
slimmable Conv1x1 + BN projection otherwise (one per cell, shared by all width pairs, as the official
``FactorizedReduce``). ``path_state_dict(arch)`` slices the weights and takes the width's BNs, keyed like
``zoo.create_model(space.to_spec(arch))``, which then computes exactly the path (tested).

**Blocks** (for block-wise methods, BossNAS): the paper cuts the supernet into 3 blocks "according to spatial size";
the official configs use ``[2, 2, 1]`` layers per block for CIFAR-10 (``split='cifar10'``, the default: cell +
reduction, cell + reduction, cell) and ``[2, 1, 2]`` for CIFAR-100 (``split='cifar100'``: cell + reduction, cell,
reduction + cell). Neither follows the resolutions exactly (a reduction block opens a new resolution but ends a
block). ``blocks[k]`` is the tuple of decisions (layers) of block ``k``; block 0 includes the stem, whose width is
the first layer's. :meth:`NATSSizeSupernet.forward_block` runs one block of a path. The official rating fixes a
block's input width to the last width of the previous block's best path, so it rates ``8^layers`` paths a block
(64, 64, 8 for CIFAR-10; its ``path_rank_<k>.yml`` keys are the concatenated width indices of the block, the same
indices as an :data:`~search.protocols.Arch` here); :meth:`NATSSizeSpace.candidates` lists every input width.

``cost(arch, 'flops')`` is the MAC count (= ``'macs'``; torch's flop counter: convolutions and the classifier) at
``img_size`` with 10 classes, as NATS-Bench counts multiply-adds; ``'params'`` with 10 classes; ``'latency'`` the
measured CPU time of the zoo network.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from functools import cache
from typing import Any

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from backbones import nats_size as family
from backbones._flops import count_params

from ..protocols import COST_METRICS, Arch
from .base import ChoiceSpace, measured_latency
from .slimmable import SlimConv2d, SlimLinear, SwitchableBatchNorm2d, slice_to, slimmify

__all__ = ['NUM_LAYERS', 'SPACES', 'SPLITS', 'WIDTHS', 'NATSSizeSpace', 'NATSSizeSupernet', 'get_space']

#: NATS-Bench's candidate widths of every layer.
WIDTHS = (8, 16, 24, 32, 40, 48, 56, 64)
#: Searched layers: cell, stride-2 block, cell, stride-2 block, cell (``N = 1`` cell a stage).
NUM_LAYERS = 5
#: Layers per block in the official configs (``_op_layers_list`` of ``SupernetNATS``).
SPLITS: dict[str, tuple[int, ...]] = {'cifar10': (2, 2, 1), 'cifar100': (2, 1, 2)}
LAYER_NAMES = tuple(family.layer_names(NUM_LAYERS))
#: The classes the costs are counted with (NATS-Bench's CIFAR-10; CIFAR-100 adds 90 x c_4 + 90 to both).
COST_CLASSES = 10


@dataclass(frozen=True)
class NATSSizeSpace(ChoiceSpace):
    """Five decisions (the width of each searched layer), each an index into ``widths``."""

    name: str = 'nats_size'
    widths: tuple[int, ...] = WIDTHS
    split: str = 'cifar10'
    skip_proj: str = family.DEFAULT_SKIP_PROJ
    img_size: int = 32

    def __post_init__(self) -> None:
        widths = tuple(self.widths)
        object.__setattr__(self, 'widths', widths)
        if not widths or list(widths) != sorted(set(widths)):
            raise ValueError(f'space {self.name!r}: widths must be distinct and increasing, got {widths}')
        if self.split not in SPLITS:
            raise ValueError(f'space {self.name!r}: split {self.split!r} is not one of {sorted(SPLITS)}')
        if isinstance(self.img_size, bool) or not isinstance(self.img_size, int) or self.img_size < 1:
            raise ValueError(f'space {self.name!r}: img_size must be a positive integer, got {self.img_size!r}')
        for arch in self.extremes():
            self._spec(arch)  # every width and skip_proj through the family's validation (SpecError)

    @property
    def num_choices(self) -> tuple[int, ...]:
        return (len(self.widths),) * NUM_LAYERS

    # -- blocks (block-wise methods) ----------------------------------------------------------------------------
    @property
    def blocks(self) -> tuple[tuple[int, ...], ...]:
        """The decisions of each block, in depth order (``SPLITS[split]`` layers per block)."""
        out, start = [], 0
        for n in SPLITS[self.split]:
            out.append(tuple(range(start, start + n)))
            start += n
        return tuple(out)

    def in_widths(self, k: int) -> tuple[int, ...]:
        """Channels entering block ``k``: the image's 3 for block 0 (it holds the stem), else any width."""
        return (3,) if k == 0 else self.widths

    def candidates(self, k: int) -> Iterator[tuple[int, tuple[int, ...]]]:
        """Every (input width, widths of the block's layers) of block ``k``, in DFS (lexicographic) order."""
        for w_in in self.in_widths(k):
            for widths in itertools.product(self.widths, repeat=len(self.blocks[k])):
                yield w_in, widths

    def num_candidates(self, k: int) -> int:
        return len(self.in_widths(k)) * len(self.widths) ** len(self.blocks[k])

    def encode(self, choices: Sequence[Sequence[int]]) -> Arch:
        """The architecture of one tuple of layer widths (channel counts) per block."""
        if len(choices) != len(self.blocks) or any(len(c) != len(b) for c, b in zip(choices, self.blocks, strict=True)):
            raise ValueError(f'space {self.name!r}: expected widths for blocks of {SPLITS[self.split]} layers')
        flat = [w for c in choices for w in c]
        bad = [w for w in flat if w not in self.widths]
        if bad:
            raise ValueError(f'space {self.name!r}: widths {bad} are not among {self.widths}')
        return self.check(tuple(self.widths.index(w) for w in flat))

    def decode(self, arch: Sequence[int]) -> list[tuple[int, ...]]:
        """The layer widths (channel counts) of each block of ``arch``."""
        chs = self.channels(arch)
        return [tuple(chs[i] for i in block) for block in self.blocks]

    def channels(self, arch: Sequence[int]) -> list[int]:
        """The width (channels) of each layer of ``arch``."""
        return [self.widths[i] for i in self.check(arch)]

    def nats_str(self, arch: Sequence[int]) -> str:
        """NATS-Bench's name of ``arch``: the widths joined by ':' (``'64:64:64:64:64'``), as the benchmark and the
        BossNAS rating files (``ranking_nats/nats_cifar10_acc_rank.yml``) key the size space."""
        return ':'.join(str(c) for c in self.channels(arch))

    def from_nats_str(self, text: str) -> Arch:
        """The architecture of a NATS-Bench size-space name (``'8:16:24:32:40'``)."""
        parts = text.split(':')
        if len(parts) != NUM_LAYERS or not all(p.isdigit() and int(p) in self.widths for p in parts):
            raise ValueError(f'{text!r} is not a NATS-Bench size-space name: {NUM_LAYERS} widths of {self.widths}')
        return tuple(self.widths.index(int(p)) for p in parts)

    # -- specs --------------------------------------------------------------------------------------------------
    def _spec(self, arch: Sequence[int]) -> dict:
        spec = {'family': family.FAMILY, 'version': family.SPEC_VERSION, 'channels': [self.widths[i] for i in arch]}
        if self.skip_proj != family.DEFAULT_SKIP_PROJ:
            spec['skip_proj'] = self.skip_proj
        return family.validate_spec(spec)

    def to_spec(self, arch: Sequence[int]) -> dict:
        """The ``nats_size`` spec of ``arch``; ``zoo.create_model(spec)`` builds exactly the path's network."""
        return self._spec(self.check(arch))

    def from_spec(self, spec: dict) -> Arch:
        """The architecture whose :meth:`to_spec` is ``spec``; a spec outside the space raises naming what differs."""
        spec = family.validate_spec(spec)
        chs = spec['channels']
        if len(chs) != NUM_LAYERS:
            raise ValueError(f'spec has {len(chs)} layers; space {self.name!r} has {NUM_LAYERS} (1 cell a stage)')
        bad = [f'channels[{i}]={c}' for i, c in enumerate(chs) if c not in self.widths]
        if bad:
            raise ValueError(f'spec {", ".join(bad)} not among the widths {self.widths} of space {self.name!r}')
        arch = tuple(self.widths.index(c) for c in chs)
        self.check_path_spec(spec, self._spec(arch))
        return arch

    # -- costs --------------------------------------------------------------------------------------------------
    def cost(self, arch: Sequence[int], metric: str) -> float:
        """``flops`` = ``macs`` (multiply-adds at ``img_size``), ``params`` (10 classes) or ``latency`` (seconds:
        the zoo network, CPU, batch 1, median of 10 runs, measured once per architecture)."""
        if metric not in COST_METRICS:
            raise ValueError(f'cost metric {metric!r}: expected one of {COST_METRICS}')
        chs = self.channels(arch)
        if metric == 'latency':
            return _latency(self, tuple(chs))
        table, index = _cost_table(self), 1 if metric == 'params' else 0
        total = table['stem'][chs[0]][index] + table['head'][chs[-1]][index]
        for i, c in enumerate(chs):
            total += table['layers'][i][(chs[i - 1] if i else c, c)][index]
        return float(total)

    def extremes(self) -> tuple[Arch, Arch]:
        """(narrowest, widest): every cost grows with every width."""
        return (0,) * NUM_LAYERS, (len(self.widths) - 1,) * NUM_LAYERS

    def build_supernet(self, num_classes: int = 10, **options: Any) -> NATSSizeSupernet:
        """The slimmable supernet (``options``: ``in_chans``, ``drop_rate`` of the classifier)."""
        return NATSSizeSupernet(self, num_classes=num_classes, **options)


@cache
def _cost_table(space: NATSSizeSpace) -> dict:
    """(MACs, params) of the stem per width, of each layer per (input, output) width and of the head per width.

    Counted per module by torch's flop counter on the meta device (nothing runs), on the networks with widths
    (a, b, a, b, a) for every ordered pair: together they give every layer every (input, output) pair it can have.
    """
    stem: dict[int, tuple[int, int]] = {}
    head: dict[int, tuple[int, int]] = {}
    layers: list[dict[tuple[int, int], tuple[int, int]]] = [{} for _ in range(NUM_LAYERS)]
    for a, b in itertools.product(space.widths, repeat=2):
        chs = [a, b, a, b, a]
        with torch.device('meta'):
            net = family.build(space._spec([space.widths.index(c) for c in chs]), num_classes=COST_CLASSES).eval()
            x = torch.zeros(1, 3, space.img_size, space.img_size)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            net(x)
        counts = counter.get_flop_counts()

        def part(*names: str, counts: dict = counts, net: nn.Module = net) -> tuple[int, int]:
            macs = sum(sum(counts.get(f'{type(net).__name__}.{n}', {}).values()) for n in names) // 2
            return macs, sum(count_params(net.get_submodule(n)) for n in names)

        stem[a], head[a] = part('stem'), part('final_act', 'fc')
        for i, name in enumerate(LAYER_NAMES):
            layers[i][(chs[i - 1] if i else a, chs[i])] = part(name)
        total = sum(counts['Global'].values()) // 2, count_params(net)
        parts = [stem[a], head[a]] + [layers[i][(chs[i - 1] if i else a, chs[i])] for i in range(NUM_LAYERS)]
        if tuple(map(sum, zip(*parts, strict=True))) != total:  # a module outside the named parts
            raise RuntimeError(f'cost table of {space.name!r}: the parts of {chs} do not add up to {total}')
    return {'stem': stem, 'head': head, 'layers': layers}


def _latency(space: NATSSizeSpace, chs: tuple[int, ...]) -> float:
    arch = tuple(space.widths.index(c) for c in chs)
    return measured_latency(space, arch, lambda: family.build(space.to_spec(arch)), space.img_size)


class _SlimSkip(family.SkipProjection):
    """The supernet's skip edge: the identity when the input already has the cell's width, else the projection."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == self[1].out_active:
            return x
        return super().forward(x)


class NATSSizeSupernet(family.NATSSizeNet):
    """``supernet(x, arch)`` runs one path; ``path_state_dict(arch)`` is keyed like ``zoo.create_model(to_spec)``.

    The family's widest network (every layer ``max(widths)``, a projection on every skip edge) made slimmable in
    place: convs keep their names and widest weights, every BN becomes ``<name>.bns.<j>`` (one per width ``j``).
    ``spec`` is ``None``: a supernet is no single network.
    """

    def __init__(self, space: NATSSizeSpace, num_classes: int = 10, in_chans: int = 3, drop_rate: float = 0.0) -> None:
        widest = space.extremes()[1]
        super().__init__(space.to_spec(widest), num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate)
        self.space = space
        self.spec = None
        self.in_chans = in_chans
        slimmify(self, space.widths)
        self.layers = [self.get_submodule(n) for n in LAYER_NAMES]  # a plain list: no second set of names

    def make_skip(self, in_chs: int, out_chs: int, relu: bool) -> nn.Module:
        return _SlimSkip(in_chs, out_chs, relu)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        super().reset_classifier(num_classes, global_pool)
        if isinstance(self.fc, nn.Linear) and not isinstance(self.fc, SlimLinear):
            self.fc = SlimLinear.of(self.fc)

    def set_arch(self, arch: Sequence[int]) -> Arch:
        """Set the output width of every conv from ``arch`` (checked); returns the canonical arch."""
        arch = self.space.check(arch)
        chs = self.space.channels(arch)
        self.stem[0].out_active = chs[0]
        for layer, c in zip(self.layers, chs, strict=True):
            for m in layer.modules():
                if isinstance(m, SlimConv2d):
                    m.out_active = c
        return arch

    def forward(self, x: torch.Tensor, arch: Sequence[int]) -> torch.Tensor:  # type: ignore[override]
        """Logits of the path ``arch`` (the family's forward at the path's widths)."""
        self.set_arch(arch)
        return super().forward(x)

    def forward_block(self, x: torch.Tensor, arch: Sequence[int], k: int) -> torch.Tensor:
        """Block ``k`` of the path ``arch`` (``space.blocks[k]``; block 0 starts with the stem) on its input ``x``."""
        self.set_arch(arch)
        if k == 0:
            x = self.stem(x)
        for i in self.space.blocks[k]:
            x = self.layers[i](x)
        return x

    def path_state_dict(self, arch: Sequence[int]) -> dict[str, torch.Tensor]:
        """The weights (and BN buffers) of the path, named and shaped as the zoo network of ``space.to_spec(arch)``:
        first-k slices of the widest weights and the BNs of the path's widths."""
        spec = self.space.to_spec(arch)
        with torch.device('meta'):
            target = family.build(spec, num_classes=self.num_classes, in_chans=self.in_chans)
        out = {}
        for key, ref in target.state_dict().items():
            name, _, leaf = key.rpartition('.')
            module = self.get_submodule(name)
            if isinstance(module, SwitchableBatchNorm2d):
                module = module.bns[module.index(target.get_submodule(name).num_features)]
            out[key] = slice_to(getattr(module, leaf).detach(), ref.shape)
        return out


#: Named spaces: NATS-Bench's (widths 8..64, CIFAR-10 block split) and a tiny one (widths 4 and 8: 32 networks).
SPACES: dict[str, NATSSizeSpace] = {
    'nats_size': NATSSizeSpace('nats_size'),
    'nats_size_tiny': NATSSizeSpace('nats_size_tiny', widths=(4, 8)),
}


def get_space(name: str | NATSSizeSpace = 'nats_size', **options: Any) -> NATSSizeSpace:
    """A space of :data:`SPACES`; ``options`` replace its fields (``split='cifar100'``, ``widths=(8, 16)``...)."""
    if isinstance(name, NATSSizeSpace):
        space = name
    elif name not in SPACES:
        raise KeyError(f'unknown NATS-Bench size space {name!r}; known: {sorted(SPACES)}')
    else:
        space = SPACES[name]
    if options:
        fields = set(NATSSizeSpace.__dataclass_fields__) - {'name'}
        unknown = sorted(set(options) - fields)
        if unknown:
            raise ValueError(f'space {space.name!r}: unknown option(s) {unknown}; known: {sorted(fields)}')
        space = replace(space, **options)
    return space
