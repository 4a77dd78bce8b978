"""Block adapters of BossNAS: how a block-wise space's supernet is cut into blocks and how a block's paths run.

BossNAS (arXiv 2103.12424, section 3) trains and rates a supernet block by block, greedily: block ``k`` is trained
and rated on top of the best paths found for blocks ``0 .. k-1``. An adapter tells the method, for one space:

* ``num_blocks``; ``block_paths(k, best)``, every candidate path of block ``k`` (exhaustive rating), given the best
  paths of the earlier blocks (``best``: a list of paths). The greedy dependence lives here: the HyTra adapter
  returns the paths whose first op starts at a scale the previous best path reaches (specs section 2.3: the next
  block's scales are limited by the last op of that path); NATS, NB201 and MBConv ignore ``best``.
* ``run_block(supernet, x, k, path)``: block ``k`` of ``path`` on its input ``x`` (block 0 holds the stem).
* ``out_widths(k)``: every channel count block ``k`` can output (one projector ``channel_fix`` per width).
* ``split(arch)``: the per-block paths of a whole architecture, and ``block_key(path)``: a path's name, so that
  a fixed architecture's score is the sum of its blocks' scores (NATS, NB201; specs section 2.3).
* ``decisions(k)``: the decisions of block ``k`` (fair path sampling permutes the options of each), and
  ``canonical(k, path)``: a drawn path as ``block_paths`` lists it (MBConv drops the ops past the cell's depth).

A path is a tuple of choice indices: for NATS the width indices of the block's layers (the official rating keys);
for NB201 the whole cell genotype (one cell is shared by the three resolution stages, so every block rates every
genotype); for the DNA-style MBConv spaces the cell index and one op index per layer of that cell; for HyTra the
4 choice indices of the block's layers (:class:`HyTraAdapter`).

Optional adapter attributes: ``samplings`` (the path samplings that apply; default both), ``default_sampling``
(used when the config leaves ``sampling`` unset; default ``fair``) and ``channel_fix(width, proj_in)`` (the
projector's input module for one output width; default a 1x1 conv + BN) and ``partial_rating`` (whether the blocks
may be rated on a sample of paths, ``rating_paths``: only where the search can scan the whole space; default no).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any, Protocol

import torch
import torch.nn as nn

from ..spaces.hytra import NUM_BLOCKS as HYTRA_BLOCKS
from ..spaces.hytra import NUM_STAGES as HYTRA_STAGES
from ..spaces.hytra import STEM, HyTraSpace, stage_of
from ..spaces.mbconv import BlockChoice, MBConvSpace
from ..spaces.nats import NATSSizeSpace
from ..spaces.nb201 import NB201Space

__all__ = [
    'BlockAdapter',
    'HyTraAdapter',
    'MBConvAdapter',
    'NATSAdapter',
    'NB201Adapter',
    'fair_paths',
    'make_adapter',
    'uniform_paths',
]

Path = tuple[int, ...]


class BlockAdapter(Protocol):
    """What BossNAS needs of a block-wise space (see the module docstring)."""

    num_blocks: int

    def decisions(self, k: int) -> list[tuple[int, ...]]: ...

    def block_paths(self, k: int, best: Sequence[Path]) -> list[Path]: ...

    def run_block(self, supernet: nn.Module, x: torch.Tensor, k: int, path: Path) -> torch.Tensor: ...

    def out_widths(self, k: int) -> tuple[int, ...]: ...

    def split(self, arch: Sequence[int]) -> list[Path]: ...

    def block_key(self, path: Path) -> str: ...

    def canonical(self, k: int, path: Path) -> Path: ...


class NATSAdapter:
    """NATS-Bench size space: blocks of ``space.blocks`` (CIFAR-10 split ``[2, 2, 1]``), a path = the width indices
    of the block's layers; the input width comes from the tensor (slimmable convs), as the official rating fixes
    it to the previous best path's last width."""

    partial_rating = True

    def __init__(self, space: NATSSizeSpace) -> None:
        self.space = space
        self.num_blocks = len(space.blocks)

    def decisions(self, k: int) -> list[tuple[int, ...]]:
        return [tuple(range(len(self.space.widths)))] * len(self.space.blocks[k])

    def block_paths(self, k: int, best: Sequence[Path]) -> list[Path]:
        return list(itertools.product(*self.decisions(k)))

    def run_block(self, supernet: nn.Module, x: torch.Tensor, k: int, path: Path) -> torch.Tensor:
        arch = [0] * len(self.space.num_choices)
        for i, c in zip(self.space.blocks[k], path, strict=True):
            arch[i] = c
        return supernet.forward_block(x, tuple(arch), k)

    def out_widths(self, k: int) -> tuple[int, ...]:
        return self.space.widths

    def split(self, arch: Sequence[int]) -> list[Path]:
        arch = self.space.check(arch)
        return [tuple(arch[i] for i in block) for block in self.space.blocks]

    def block_key(self, path: Path) -> str:
        return ''.join(str(c) for c in path)  # the official path_rank_<k>.yml keys

    def canonical(self, k: int, path: Path) -> Path:
        return tuple(path)


class NB201Adapter:
    """NB201 cell space: three blocks by resolution (stem + stage 0, stage 1, stage 2, as ``dna_cell``), a path =
    the whole (shared) cell genotype."""

    partial_rating = True

    def __init__(self, space: NB201Space) -> None:
        self.space = space
        self.num_blocks = 3

    def decisions(self, k: int) -> list[tuple[int, ...]]:
        return [self.space.allowed(i) for i in range(len(self.space.num_choices))]

    def block_paths(self, k: int, best: Sequence[Path]) -> list[Path]:
        return list(itertools.product(*self.decisions(k)))

    def run_block(self, supernet: nn.Module, x: torch.Tensor, k: int, path: Path) -> torch.Tensor:
        supernet.set_arch(path)
        if k == 0:
            x = supernet.stem(x)
        return supernet.stages[k](x)

    def out_widths(self, k: int) -> tuple[int, ...]:
        return (self.space.channels * 2**k,)

    def split(self, arch: Sequence[int]) -> list[Path]:
        arch = self.space.check(arch)
        return [arch] * self.num_blocks

    def block_key(self, path: Path) -> str:
        return self.space.key(path)

    def canonical(self, k: int, path: Path) -> Path:
        return tuple(path)


class MBConvAdapter:
    """DNA-style MBConv spaces (``search/spaces/mbconv.py``): a block path = ``(cell, op index per layer of that
    cell)``; block 0 starts with the fixed stem + DS layer; the input width comes from the tensor (the previous best
    path's cell width), as ``supernet.path_layers`` picks the layer's input branch by width."""

    def __init__(self, space: MBConvSpace) -> None:
        self.space = space
        self.num_blocks = len(space.blocks)

    def decisions(self, k: int) -> list[tuple[int, ...]]:
        block = self.space.blocks[k]
        depth = max(c.layers for c in block.cells)
        return [tuple(range(len(block.cells)))] + [tuple(range(len(block.ops)))] * depth

    def canonical(self, k: int, path: Path) -> Path:
        """The cell and the ops of its own layers (a fair draw covers the deepest cell)."""
        cell = path[0]
        return (cell, *path[1 : 1 + self.space.blocks[k].cells[cell].layers])

    def block_paths(self, k: int, best: Sequence[Path]) -> list[Path]:
        block = self.space.blocks[k]
        out: list[Path] = []
        for c, cell in enumerate(block.cells):
            out += [(c, *ops) for ops in itertools.product(range(len(block.ops)), repeat=cell.layers)]
        return out

    def choice(self, k: int, path: Path) -> BlockChoice:
        ops = self.space.blocks[k].ops
        return BlockChoice(path[0], tuple(ops[i] for i in path[1:]))

    def run_block(self, supernet: nn.Module, x: torch.Tensor, k: int, path: Path) -> torch.Tensor:
        if k == 0:
            x = supernet.stem(x)
        for layer in supernet.path_layers(k, x.shape[1], self.choice(k, path)):
            x = layer(x)
        return x

    def out_widths(self, k: int) -> tuple[int, ...]:
        return tuple(sorted({c.width for c in self.space.blocks[k].cells}))

    def split(self, arch: Sequence[int]) -> list[Path]:
        out = []
        for k, choice in enumerate(self.space.decode(arch)):
            ops = self.space.blocks[k].ops
            out.append((choice.cell, *(ops.index(op) for op in choice.ops)))
        return out

    def block_key(self, path: Path) -> str:
        return '-'.join(str(c) for c in path)


class HyTraAdapter:
    """HyTra (``search/spaces/hytra.py``): 4 blocks of 4 layers, a path = the 4 choice indices of the block's layers
    (:data:`~search.spaces.hytra.CHOICES`: scale and op together). Greedy (specs 2.3, ``ValBestPathHook``): block
    ``k``'s paths are those after the scale where block ``k - 1``'s best path ends (the stem for block 0),
    :meth:`HyTraSpace.block_paths`, so the next block's scales are limited by the last op of the previous best path.
    ``run_block`` reads the input scale from the channel count (one per scale), so a path outside that list is
    refused by ``forward_block`` naming it. Paths are drawn uniformly, distinct (the official ``RandomPathHook``);
    fair sampling does not apply (a layer's options depend on the scale of the layer before).

    Projector input (``channel_fix``, the official ``NonLinearNeckSimCLRProject.fix_channels``): per output scale
    1/2^(s+2) above 1/32 a depthwise conv with kernel = stride = 2^(3-s) (the map down to 1/32), a 1x1 conv to
    ``proj_in`` and BN; at 1/32 nothing when the width is ``proj_in`` (2048 officially), else a 1x1 conv + BN
    (reduced widths).
    """

    samplings = ('uniform',)
    default_sampling = 'uniform'

    def __init__(self, space: HyTraSpace) -> None:
        self.space = space
        self.num_blocks = HYTRA_BLOCKS
        outs = [4 * w for w in space.widths]
        if len(set(outs)) != len(outs):
            raise ValueError(
                f'space {space.name!r}: BossNAS tells the scale of a block input by its channel count, so the '
                f'widths per scale must differ, got {list(space.widths)}'
            )
        self.stage_of_width = {w: s for s, w in enumerate(outs)}

    def in_stage(self, k: int, best: Sequence[Path]) -> int:
        """Where block ``k``'s input is: :data:`~search.spaces.hytra.STEM` for block 0, else the stage of the last
        choice of block ``k - 1``'s best path."""
        if k == 0:
            return STEM
        if len(best) < k:
            raise ValueError(f'HyTra block {k} needs the best paths of blocks 0..{k - 1}, got {len(best)}')
        return stage_of(best[k - 1][-1])

    def decisions(self, k: int) -> list[tuple[int, ...]]:
        raise ValueError(
            "HyTra: fair path sampling does not apply (a layer's options depend on the scale of the one before); "
            'use sampling: uniform (the official RandomPathHook)'
        )

    def block_paths(self, k: int, best: Sequence[Path]) -> list[Path]:
        return list(self.space.block_paths(k, self.in_stage(k, best)))

    def run_block(self, supernet: nn.Module, x: torch.Tensor, k: int, path: Path) -> torch.Tensor:
        if k == 0:
            return supernet.forward_block(0, supernet.forward_stem(x), STEM, path)
        stage = self.stage_of_width.get(x.shape[1])
        if stage is None:
            raise ValueError(f'HyTra block {k}: an input of {x.shape[1]} channels is at no scale ({self.space.widths})')
        return supernet.forward_block(k, x, stage, path)

    def out_widths(self, k: int) -> tuple[int, ...]:
        return tuple(sorted({4 * self.space.widths[stage_of(p[-1])] for p in self.space.block_paths(k, None)}))

    def channel_fix(self, width: int, proj_in: int) -> nn.Module:
        down = 2 ** (HYTRA_STAGES - 1 - self.stage_of_width[width])
        if down == 1 and width == proj_in:
            return nn.Identity()
        layers: list[nn.Module] = []
        if down > 1:
            layers.append(nn.Conv2d(width, width, down, stride=down, groups=width, bias=False))
        layers += [nn.Conv2d(width, proj_in, 1, bias=False), nn.BatchNorm2d(proj_in)]
        return nn.Sequential(*layers)

    def split(self, arch: Sequence[int]) -> list[Path]:
        return [tuple(p) for p in self.space.decode(arch)]

    def block_key(self, path: Path) -> str:
        return ''.join(str(c) for c in path)  # choice indices 0..5: one digit each

    def path_of(self, key: str) -> Path:
        """The path of a :meth:`block_key`."""
        return tuple(int(c) for c in key)

    def canonical(self, k: int, path: Path) -> Path:
        return tuple(path)


def make_adapter(space: Any) -> BlockAdapter:
    """The adapter of ``space``; a space without one raises naming the supported ones."""
    if isinstance(space, HyTraSpace):
        return HyTraAdapter(space)
    if isinstance(space, NATSSizeSpace):
        return NATSAdapter(space)
    if isinstance(space, NB201Space):
        return NB201Adapter(space)
    if isinstance(space, MBConvSpace):
        return MBConvAdapter(space)
    raise ValueError(
        f'space {space.name!r}: BossNAS runs on the nats_size, nb201, MBConv and HyTra spaces (no block adapter)'
    )


def fair_paths(decisions: Sequence[Sequence[int]], n: int, generator: torch.Generator) -> list[Path]:
    """``n`` paths with FairNAS-style fair sampling: each decision's options in a random order, path ``i`` taking
    option ``i mod len(options)`` (every option used exactly once per decision when ``n`` equals their number)."""
    perms = [[opts[j] for j in torch.randperm(len(opts), generator=generator).tolist()] for opts in decisions]
    return [tuple(p[i % len(p)] for p in perms) for i in range(n)]


def uniform_paths(paths: Sequence[Path], n: int, generator: torch.Generator) -> list[Path]:
    """``n`` distinct paths drawn uniformly from ``paths`` (all of them, shuffled, when there are fewer), as the
    official HyTra ``RandomPathHook`` draws with ``random.sample``."""
    order = torch.randperm(len(paths), generator=generator).tolist()
    return [paths[i] for i in order[: min(n, len(paths))]]
