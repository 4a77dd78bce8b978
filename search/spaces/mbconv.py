"""The DNA MBConv search space and its weight-sharing supernet, built from the blocks of ``backbones/mbconv.py``.

Space (DNA paper Table 1 and section 4.2): a fixed stem (conv3x3 s2, 32) and DS layer (16), then blocks
cut to match the teacher's stages; each block offers *cells* (a depth and a width) whose layers each choose one of
six MBConv ops (kernel 3/5/7 x expansion 6/3, SE 0.25, swish; the official op order). The last block is fixed to
MB6 3x3 by default, as in the official code (the paper lists it as searchable: pass ``ops`` to search it).

Every op is built by timm's ``EfficientNetBuilder`` with exactly the settings of :class:`backbones.mbconv.MBConvNet`,
and the supernet's parameter names map one to one onto that network's, so a chosen path *is* the network that
the emitted spec builds (``path_state_dict`` + ``forward_path``; tested).

Every layer has the width the final network has (DNA's 1x1 adapters to and from the teacher's widths belong to
the DNA method, ``search.methods.dna.DNAAdapters``). Because the first layer of a block takes the width chosen in
the previous block, it has one set of weights per possible input width, and the search only joins candidates whose
widths fit.

BossNAS's MBConv space (``bossnas_mbconv``; arXiv 2103.12424 App. A.2, official ``mbconv_supernet.py`` and
``mbconv_ops.py``) is ``dna_small`` (18 layers x 4 ops in the official order MB6 3x3, MB6 5x5, MB3 3x3, MB3 5x5, SE
0.25, SiLU) with ``shortcut='avg_down'``: every searched layer is residual, with an avg-pool + 1x1 conv + BN
shortcut where stride or width changes (the ``mbconv`` spec field ``shortcut``). As in the official ``MixOps``, the
ops of one layer share that shortcut. The last layer (320) is fixed to MB6 3x3 (the official supernet builds four
candidates there but never trains or rates block 5). :func:`arch_from_op_string` reads the op-index strings of the
authors' rating files. Decisions: docs/search.md, "The MBConv space of BossNAS".
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import cache

import torch
import torch.nn as nn
from timm.layers import create_conv2d, get_norm_act_layer
from timm.models._efficientnet_blocks import SqueezeExcite
from timm.models._efficientnet_builder import EfficientNetBuilder, decode_arch_def, round_channels

from backbones import mbconv as mbconv_family
from backbones._flops import count_macs, count_params

from ..protocols import COST_METRICS, Arch
from .base import ChoiceSpace

__all__ = [
    'OPS',
    'PAPER_FLOPS_FACTOR',
    'SMALL_OPS',
    'SPACES',
    'BlockChoice',
    'BlockDef',
    'CellDef',
    'MBConvSpace',
    'MBConvSupernet',
    'arch_from_op_string',
    'build_layer',
    'choice_cost',
    'fixed_cost',
    'get_space',
    'layer_arch',
    'layer_cost',
]

#: Op names in the official order (``PRIMITIVES`` of the DNA code): index i of an encoding is OPS[i].
OPS = ('k3e6', 'k5e6', 'k7e6', 'k3e3', 'k5e3', 'k7e3')
#: The 4-op space of the paper's ablations and its "ImageNet NAS bench" ({0: k3e6, 1: k5e6, 2: k3e3, 3: k5e3}).
SMALL_OPS = ('k3e6', 'k5e6', 'k3e3', 'k5e3')
ACT = 'swish'
SE_RATIO = 0.25
#: The DNA paper's FLOPs are conv + FC MACs x ~1.034 (BN/activation work; zoo/catalog.py DNA_RULE).
PAPER_FLOPS_FACTOR = 1.034


def _parse_op(op: str) -> tuple[int, int]:
    if op[:1] != 'k' or 'e' not in op:
        raise ValueError(f'op {op!r} is not of the form "k<kernel>e<expansion>" (e.g. "k5e6")')
    kernel, expansion = op[1:].split('e')
    kernel, expansion = int(kernel), int(expansion)
    if kernel not in mbconv_family.KERNELS or expansion not in mbconv_family.EXPANSIONS:
        raise ValueError(
            f'op {op!r}: kernel {kernel} / expansion {expansion} is outside the MBConv space '
            f'(kernels {mbconv_family.KERNELS}, expansions {mbconv_family.EXPANSIONS})'
        )
    return kernel, expansion


def layer_arch(op: str, width: int, stride: int) -> str:
    """The timm arch-def string of one searched layer (the same strings ``backbones.mbconv`` specs hold)."""
    kernel, expansion = _parse_op(op)
    return f'ir_r1_k{kernel}_s{stride}_e{expansion}_c{width}_se{SE_RATIO}'


@dataclass(frozen=True)
class CellDef:
    """One cell of a block: ``layers`` MBConv layers of ``width`` output channels."""

    layers: int
    width: int


@dataclass(frozen=True)
class BlockDef:
    """A block (one teacher stage): the stride of its first layer, its cells and the ops each layer may take."""

    stride: int
    cells: tuple[CellDef, ...]
    ops: tuple[str, ...] = OPS


@dataclass(frozen=True)
class BlockChoice:
    """What a path picks in one block: a cell and one op per layer of that cell."""

    cell: int
    ops: tuple[str, ...]


@dataclass(frozen=True)
class MBConvSpace(ChoiceSpace):
    """A DNA-style MBConv space: fixed stem and DS layer, searched blocks, fixed head.

    As a :class:`~search.protocols.SearchSpace`, an architecture is a tuple of ints: per block, the cell index, then
    one op index (into ``block.ops``) for each layer of the block's deepest cell; the op indices past the chosen
    cell's depth are 0 (:meth:`canonical`). :meth:`decode` / :meth:`encode` map it to and from one
    :class:`BlockChoice` per block, which the block-wise parts (rating, budgeted search) use; every method below
    accepts either form.
    """

    name: str
    blocks: tuple[BlockDef, ...]
    stem_size: int = 32
    ds_width: int = 16
    num_features: int = 1280
    img_size: int = 224
    #: The ``mbconv`` spec field: ``'avg_down'`` makes every searched layer residual (BossNAS), see the docstring.
    shortcut: str = mbconv_family.DEFAULT_SHORTCUT
    notes: str = field(default='', compare=False)

    def __post_init__(self) -> None:
        if self.shortcut not in mbconv_family.SHORTCUTS:
            raise ValueError(f'space {self.name!r}: shortcut {self.shortcut!r} is not one of {mbconv_family.SHORTCUTS}')
        for k, block in enumerate(self.blocks):
            if block.stride not in (1, 2):
                raise ValueError(f'space {self.name!r} block {k}: stride {block.stride} is not 1 or 2')
            if not block.cells or not block.ops:
                raise ValueError(f'space {self.name!r} block {k}: needs at least one cell and one op')
            for op in block.ops:
                _parse_op(op)
            for cell in block.cells:
                if cell.layers < 1 or cell.width != round_channels(cell.width):
                    raise ValueError(
                        f'space {self.name!r} block {k}: cell {cell} needs >= 1 layer and a width that is a '
                        f'multiple of 8 (timm rounds {cell.width} to {round_channels(cell.width)})'
                    )

    def in_widths(self, k: int) -> tuple[int, ...]:
        """The input widths block ``k`` may receive (the widths of the previous block's cells)."""
        if k == 0:
            return (self.ds_width,)
        return tuple(sorted({c.width for c in self.blocks[k - 1].cells}))

    def reductions(self) -> list[int]:
        """Output stride of every block (the stem halves the input)."""
        out, r = [], 2
        for block in self.blocks:
            r *= block.stride
            out.append(r)
        return out

    def candidates(self, k: int) -> Iterator[tuple[int, BlockChoice]]:
        """Every (input width, choice) of block ``k``, in DFS (lexicographic) order."""
        block = self.blocks[k]
        for w_in in self.in_widths(k):
            for c, cell in enumerate(block.cells):
                for ops in itertools.product(block.ops, repeat=cell.layers):
                    yield w_in, BlockChoice(c, ops)

    def num_candidates(self, k: int) -> int:
        block = self.blocks[k]
        per_width = sum(len(block.ops) ** cell.layers for cell in block.cells)
        return per_width * len(self.in_widths(k))

    def num_architectures(self) -> int:
        """Size of the space (paths, counting widths: consecutive cell widths always fit)."""
        n = 1
        for block in self.blocks:
            n *= sum(len(block.ops) ** cell.layers for cell in block.cells)
        return n

    # -- the SearchSpace protocol: flat integer architectures ---------------------------------------------------
    @property
    def num_choices(self) -> tuple[int, ...]:
        out: list[int] = []
        for block in self.blocks:
            out += [len(block.cells)] + [len(block.ops)] * max(c.layers for c in block.cells)
        return tuple(out)

    @property
    def size(self) -> int:
        return self.num_architectures()

    def canonical(self, arch: Sequence[int]) -> Arch:
        out, i = [], 0
        for block in self.blocks:
            depth = max(c.layers for c in block.cells)
            cell = int(arch[i])
            used = block.cells[cell].layers if 0 <= cell < len(block.cells) else depth
            out += [cell] + [int(x) if j < used else 0 for j, x in enumerate(arch[i + 1 : i + 1 + depth])]
            i += 1 + depth
        return tuple(out)

    def encode(self, choices: Sequence[BlockChoice]) -> Arch:
        """The integer architecture of one :class:`BlockChoice` per block."""
        out: list[int] = []
        for block, choice in zip(self.blocks, self.check_arch(choices), strict=True):
            depth = max(c.layers for c in block.cells)
            idx = [block.ops.index(op) for op in choice.ops]
            out += [choice.cell] + idx + [0] * (depth - len(idx))
        return tuple(out)

    def decode(self, arch: Sequence[int]) -> list[BlockChoice]:
        """One :class:`BlockChoice` per block of an integer architecture."""
        arch = self.check(arch)
        out, i = [], 0
        for block in self.blocks:
            depth = max(c.layers for c in block.cells)
            cell = arch[i]
            ops = tuple(block.ops[x] for x in arch[i + 1 : i + 1 + block.cells[cell].layers])
            out.append(BlockChoice(cell, ops))
            i += 1 + depth
        return out

    def _as_choices(self, arch: Sequence) -> list[BlockChoice]:
        if len(arch) and all(isinstance(x, int) and not isinstance(x, bool) for x in arch):
            return self.decode(arch)
        return self.check_arch(arch)

    def check_arch(self, arch: Sequence) -> list[BlockChoice]:
        """Validate a path (one :class:`BlockChoice` per block, or an integer architecture); raises ``ValueError``
        naming the bad entry."""
        if len(arch) and all(isinstance(x, int) and not isinstance(x, bool) for x in arch):
            return self.decode(arch)
        if len(arch) != len(self.blocks):
            raise ValueError(f'space {self.name!r} has {len(self.blocks)} blocks, the path gives {len(arch)} choices')
        out = []
        for k, (choice, block) in enumerate(zip(arch, self.blocks, strict=True)):
            choice = BlockChoice(int(choice[0]), tuple(choice[1])) if not isinstance(choice, BlockChoice) else choice
            if not 0 <= choice.cell < len(block.cells):
                raise ValueError(f'block {k}: cell {choice.cell} does not exist ({len(block.cells)} cells)')
            if len(choice.ops) != block.cells[choice.cell].layers:
                raise ValueError(
                    f'block {k} cell {choice.cell}: {len(choice.ops)} ops given, the cell has '
                    f'{block.cells[choice.cell].layers} layers'
                )
            bad = [op for op in choice.ops if op not in block.ops]
            if bad:
                raise ValueError(f"block {k}: ops {bad} are not among the block's ops {block.ops}")
            out.append(choice)
        return out

    def widths(self, arch: Sequence) -> list[int]:
        return [self.blocks[k].cells[c.cell].width for k, c in enumerate(self._as_choices(arch))]

    def to_spec(self, arch: Sequence) -> dict:
        """The ``mbconv`` spec of a path: ``timm.create_model('mbconv', spec=...)`` builds exactly that network."""
        arch = self.check_arch(arch)
        stages = [[f'ds_r1_k3_s1_c{self.ds_width}_se{SE_RATIO}']]
        for block, choice in zip(self.blocks, arch, strict=True):
            width = block.cells[choice.cell].width
            stages.append([layer_arch(op, width, block.stride if j == 0 else 1) for j, op in enumerate(choice.ops)])
        spec = {
            'family': mbconv_family.FAMILY,
            'version': mbconv_family.SPEC_VERSION,
            'stem_size': self.stem_size,
            'num_features': self.num_features,
            'stages': stages,
        }
        if self.shortcut != mbconv_family.DEFAULT_SHORTCUT:
            spec['shortcut'] = self.shortcut
        return mbconv_family.validate_spec(spec)

    def from_spec(self, spec: dict) -> Arch:
        """The architecture whose :meth:`to_spec` is ``spec``; a spec outside this space raises naming the stage."""
        spec = mbconv_family.validate_spec(spec)
        for key in ('stem_size', 'num_features'):
            if spec[key] != getattr(self, key):
                raise ValueError(f'spec {key} {spec[key]} is not the space {self.name!r} value {getattr(self, key)}')
        shortcut = spec.get('shortcut', mbconv_family.DEFAULT_SHORTCUT)
        if shortcut != self.shortcut:
            raise ValueError(f'spec shortcut {shortcut!r} is not the space {self.name!r} value {self.shortcut!r}')
        stages = spec['stages']
        if len(stages) != len(self.blocks) + 1:
            raise ValueError(f'spec has {len(stages)} stages, space {self.name!r} has {len(self.blocks) + 1}')
        choices = []
        for k, (block, stage) in enumerate(zip(self.blocks, stages[1:], strict=True)):
            ops, widths = [], set()
            for layer in stage:
                parts = dict(re.match(r'([a-z]+)(\d+(?:\.\d+)?)$', p).groups() for p in layer.split('_')[1:])
                ops.append(f'k{parts["k"]}e{parts.get("e", "1")}')
                widths.add(int(parts['c']))
            cell = [c for c, d in enumerate(block.cells) if d.layers == len(stage) and {d.width} == widths]
            if not cell:
                raise ValueError(
                    f'spec stage {k + 1} ({len(stage)} layers, widths {sorted(widths)}) is no cell of '
                    f'block {k} of space {self.name!r}: {block.cells}'
                )
            choices.append(BlockChoice(cell[0], tuple(ops)))
        arch = self.encode(choices)
        if self.to_spec(arch) != spec:
            raise ValueError(f'spec is not a path of space {self.name!r} (strides or layer types differ)')
        return arch

    def cost(self, arch: Sequence, metric: str) -> float:
        """``flops`` (the paper's rule: MACs x 1.034), ``macs``, ``params`` (1000 classes) or ``latency`` (seconds,
        CPU, batch 1, measured once per layer)."""
        if metric not in COST_METRICS:
            raise ValueError(f'cost metric {metric!r}: expected one of {COST_METRICS}')
        choices = self._as_choices(arch)
        if metric == 'latency':
            table = _latency_table(self)
            total, width = table.fixed_latency(), self.ds_width
            for k, choice in enumerate(choices):
                total += table.choice_latency(k, width, choice)
                width = self.blocks[k].cells[choice.cell].width
            return total
        index = 1 if metric == 'params' else 0
        total, width = fixed_cost(self)[index], self.ds_width
        for k, choice in enumerate(choices):
            total += choice_cost(self, k, width, choice)[index]
            width = self.blocks[k].cells[choice.cell].width
        return total * PAPER_FLOPS_FACTOR if metric == 'flops' else float(total)

    def extremes(self) -> tuple[Arch, Arch]:
        """(fewest, most) MACs: per block and cell the cheapest (dearest) op of every layer, widths joined exactly."""
        from ..strategies.budgeted import Candidate, exact_search

        found = []
        for sign in (1.0, -1.0):
            blocks = []
            for k, block in enumerate(self.blocks):
                cands = []
                for w in self.in_widths(k):
                    for c, cell in enumerate(block.cells):
                        ops, chs = [], w
                        for j in range(cell.layers):
                            stride = block.stride if j == 0 else 1
                            res = _block_res(self, k) if j == 0 else -(-_block_res(self, k) // block.stride)
                            ops.append(
                                min(
                                    block.ops,
                                    key=lambda op, chs=chs, res=res, s=stride: (
                                        sign * layer_cost(layer_arch(op, cell.width, s), chs, res, self.shortcut)[0]
                                    ),
                                )
                            )
                            chs = cell.width
                        choice = BlockChoice(c, tuple(ops))
                        macs = choice_cost(self, k, w, choice)[0]
                        cands.append(Candidate(sign * macs, 0.0, w, cell.width, choice))
                blocks.append(cands)
            best = exact_search(blocks, None, k=1, start_key=self.ds_width)[0]
            found.append(self.encode([c.payload for c in best.choices]))
        return found[0], found[1]

    def build_supernet(self, num_classes: int = 1000, **options: object) -> MBConvSupernet:
        """The weight-sharing supernet of this space with a classifier head (``num_classes=0``: the trunk only)."""
        return MBConvSupernet(self, num_classes=num_classes, **options)  # type: ignore[arg-type]


def _block_res(space: MBConvSpace, k: int) -> int:
    res = space.img_size // 2
    for block in space.blocks[:k]:
        res = -(-res // block.stride)
    return res


_LATENCY: dict[MBConvSpace, object] = {}


def _latency_table(space: MBConvSpace) -> object:
    from .mbconv_latency import LatencyTable

    if space not in _LATENCY:
        _LATENCY[space] = LatencyTable(space, torch.device('cpu'), batch=1)
    return _LATENCY[space]


def _dna_blocks(ops: tuple[str, ...], last_ops: tuple[str, ...] = ('k3e6',)) -> tuple[BlockDef, ...]:
    cells = [
        ((2, 24), (3, 24), (2, 32)),
        ((2, 40), (3, 40), (4, 40)),
        ((2, 80), (3, 80), (4, 80)),
        ((3, 112), (4, 112), (4, 96)),
        ((4, 192), (5, 192), (5, 160)),
    ]
    strides = (2, 2, 2, 1, 2)
    blocks = [BlockDef(s, tuple(CellDef(*c) for c in cs), ops) for s, cs in zip(strides, cells, strict=True)]
    return (*blocks, BlockDef(1, (CellDef(1, 320),), last_ops))


def _single_cell(ops: tuple[str, ...], layers: Sequence[int]) -> tuple[BlockDef, ...]:
    widths = (24, 40, 80, 112, 192)
    strides = (2, 2, 2, 1, 2)
    blocks = [BlockDef(s, (CellDef(n, w),), ops) for s, n, w in zip(strides, layers, widths, strict=True)]
    return (*blocks, BlockDef(1, (CellDef(1, 320),), ('k3e6',)))


SPACES: dict[str, MBConvSpace] = {
    # Paper Table 1: three cells per block, six ops; the last block fixed to MB6 3x3 as in the official code.
    'dna': MBConvSpace('dna', _dna_blocks(OPS), notes='DNA Table 1 (3 cells per block, 6 ops)'),
    # The official code's default supernet: one cell per block, layers [2, 4, 4, 4, 4] (+ the fixed last layer).
    'dna_single_cell': MBConvSpace('dna_single_cell', _single_cell(OPS, (2, 4, 4, 4, 4)), notes='official default'),
    # The 4-op space of the paper's ranking experiments (the DNA ImageNet NAS Bench in github.com/changlin31/BossNAS).
    'dna_small': MBConvSpace('dna_small', _single_cell(SMALL_OPS, (2, 4, 4, 4, 4)), notes='4-op NAS-bench space'),
    # BossNAS's MBConv space (specs/bossnas.md 1.2): the 4-op space with every layer residual (avg-down shortcuts).
    'bossnas_mbconv': MBConvSpace(
        'bossnas_mbconv',
        _single_cell(SMALL_OPS, (2, 4, 4, 4, 4)),
        shortcut='avg_down',
        notes='BossNAS MBConv space (official mbconv_supernet.py)',
    ),
    # Its tiny twin for tests: one shortcut of each kind (pool + conv, pool alone, conv alone) and a fixed last layer.
    'bossnas_mbconv_tiny': MBConvSpace(
        'bossnas_mbconv_tiny',
        (
            BlockDef(2, (CellDef(2, 16),), SMALL_OPS),
            BlockDef(2, (CellDef(1, 16),), SMALL_OPS),
            BlockDef(1, (CellDef(2, 24),), SMALL_OPS),
            BlockDef(2, (CellDef(1, 32),), ('k3e6',)),
        ),
        stem_size=8,
        ds_width=8,
        num_features=64,
        img_size=32,
        shortcut='avg_down',
        notes='tests',
    ),
    # A tiny space for tests and the CPU demo: four blocks at strides 4..32, the stages of timm's test_efficientnet.
    'tiny': MBConvSpace(
        'tiny',
        (
            BlockDef(2, (CellDef(1, 8), CellDef(2, 8)), ('k3e3', 'k5e3')),
            BlockDef(2, (CellDef(1, 16), CellDef(1, 8)), ('k3e3', 'k3e6')),
            BlockDef(2, (CellDef(2, 16),), ('k3e3', 'k5e3')),
            BlockDef(2, (CellDef(1, 24),), ('k3e3', 'k3e6')),
        ),
        stem_size=8,
        ds_width=8,
        num_features=64,
        img_size=32,
        notes='tests and demo (teacher: timm test_efficientnet)',
    ),
}


def arch_from_op_string(space: MBConvSpace | str, text: str) -> Arch:
    """The architecture of an op-index string such as BossNAS's ``'11 0110 0111 1100 0110'``.

    One group of digits per searched block (a block with more than one path), each digit an index into the
    block's ops; blocks with a single path (the fixed last layer) take it. Single-cell spaces only.
    """
    space = get_space(space)
    searched = [k for k, b in enumerate(space.blocks) if sum(len(b.ops) ** c.layers for c in b.cells) > 1]
    groups = text.split()
    if len(groups) != len(searched):
        raise ValueError(f'op string {text!r}: {len(groups)} groups, space {space.name!r} searches {len(searched)}')
    choices = [BlockChoice(0, (b.ops[0],) * b.cells[0].layers) for b in space.blocks]
    for k, group in zip(searched, groups, strict=True):
        block = space.blocks[k]
        if len(block.cells) != 1 or len(group) != block.cells[0].layers or not group.isdigit():
            raise ValueError(
                f'op string {text!r}: group {group!r} of block {k} must be {block.cells[0].layers} digits '
                f'(one cell of {block.cells[0].layers} layers)'
            )
        if max(int(d) for d in group) >= len(block.ops):
            raise ValueError(f'op string {text!r}: group {group!r} of block {k} indexes past its ops {block.ops}')
        choices[k] = BlockChoice(0, tuple(block.ops[int(d)] for d in group))
    return space.encode(choices)


def get_space(name: str | MBConvSpace, img_size: int | None = None) -> MBConvSpace:
    """A space of :data:`SPACES` (optionally at another resolution, which changes its costs)."""
    if isinstance(name, MBConvSpace):
        space = name
    elif name not in SPACES:
        raise KeyError(f'unknown MBConv space {name!r}; known: {sorted(SPACES)}')
    else:
        space = SPACES[name]
    if img_size is not None and img_size != space.img_size:
        space = replace(space, img_size=int(img_size))
    return space


# -- modules ----------------------------------------------------------------------------------------------------
def _builder() -> EfficientNetBuilder:
    """timm's block builder with the settings ``EfficientNet`` passes it for an ``mbconv`` spec (no drop path)."""
    return EfficientNetBuilder(
        output_stride=32,
        pad_type='',
        round_chs_fn=round_channels,
        act_layer=ACT,
        norm_layer=nn.BatchNorm2d,
        se_layer=SqueezeExcite,
        drop_path_rate=0.0,
    )


def build_layer(arch: str, in_chs: int, shortcut: str = mbconv_family.DEFAULT_SHORTCUT) -> nn.Module:
    """One timm block (``InvertedResidual`` / ``DepthwiseSeparableConv``) from its arch-def string; with
    ``shortcut='avg_down'`` an ``ir`` layer that changes stride or width gets the family's avg-pool + 1x1 shortcut."""
    layer = _builder()(in_chs, decode_arch_def([[arch]]))[0][0]
    if shortcut == 'avg_down':
        mbconv_family.add_avg_down_shortcuts(layer)
    return layer


class SuperLayer(nn.Module):
    """All choices of one layer position: ``ops['<in_width>_<op>']`` (several input widths for a block's first).

    With ``shortcut='avg_down'`` the ops of one input width share one shortcut module, as BossNAS's ``MixOps``
    (its ``downsample_share=False`` still hands every op the same ``self.downsample`` object).
    """

    def __init__(
        self,
        in_widths: Sequence[int],
        width: int,
        stride: int,
        ops: Sequence[str],
        shortcut: str = mbconv_family.DEFAULT_SHORTCUT,
    ) -> None:
        super().__init__()
        self.ops = nn.ModuleDict(
            {f'{w}_{op}': build_layer(layer_arch(op, width, stride), w, shortcut) for w in in_widths for op in ops}
        )
        for w in in_widths:
            layers = [self.ops[f'{w}_{op}'] for op in ops]
            if isinstance(layers[0], mbconv_family.AvgDownInvertedResidual):
                for layer in layers[1:]:
                    layer.shortcut = layers[0].shortcut

    def choice(self, in_width: int, op: str) -> nn.Module:
        return self.ops[f'{in_width}_{op}']


class SuperCell(nn.Module):
    def __init__(
        self,
        cell: CellDef,
        in_widths: Sequence[int],
        stride: int,
        ops: Sequence[str],
        shortcut: str = mbconv_family.DEFAULT_SHORTCUT,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            SuperLayer(in_widths if j == 0 else (cell.width,), cell.width, stride if j == 0 else 1, ops, shortcut)
            for j in range(cell.layers)
        )


class MBConvSupernet(nn.Module):
    """Weight-sharing supernet of an :class:`MBConvSpace`: ``supernet(x, arch)`` runs one path.

    ``num_classes > 0`` adds timm EfficientNet's head (``conv_head``, ``bn2``, average pooling, ``classifier``), so
    a path with :meth:`path_state_dict` is the whole network of its spec; ``num_classes=0`` keeps the trunk (DNA
    never trains a head). Block-wise methods run one block at a time: :meth:`stem` then :meth:`path_layers`.
    """

    def __init__(self, space: MBConvSpace | str, in_chans: int = 3, num_classes: int = 0) -> None:
        super().__init__()
        space = get_space(space)
        self.space = space
        self.num_classes = num_classes
        norm_act = get_norm_act_layer(nn.BatchNorm2d, ACT)
        stem = round_channels(space.stem_size)
        self.conv_stem = create_conv2d(in_chans, stem, 3, stride=2, padding='')
        self.bn1 = norm_act(stem, inplace=True)
        self.ds = build_layer(f'ds_r1_k3_s1_c{space.ds_width}_se{SE_RATIO}', stem)
        self.blocks = nn.ModuleList()
        for k, block in enumerate(space.blocks):
            in_widths = space.in_widths(k)
            self.blocks.append(
                nn.ModuleList(SuperCell(c, in_widths, block.stride, block.ops, space.shortcut) for c in block.cells)
            )
        self.head: nn.ModuleDict | None = None
        if num_classes > 0:
            from timm.layers import create_classifier

            last = sorted({c.width for c in space.blocks[-1].cells})
            pool, classifier = create_classifier(space.num_features, num_classes, pool_type='avg')
            self.head = nn.ModuleDict(
                {
                    **{f'conv_head_{w}': create_conv2d(w, space.num_features, 1, padding='') for w in last},
                    'bn2': norm_act(space.num_features, inplace=True),
                    'global_pool': pool,
                    'classifier': classifier,
                }
            )

    # -- block-wise forward: one block at a time ---------------------------------------------------------------
    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """The fixed part before block 0: stem conv + BN + act, then the DS layer."""
        return self.ds(self.bn1(self.conv_stem(x)))

    def path_layers(self, k: int, in_width: int, choice: BlockChoice) -> list[nn.Module]:
        cell = self.blocks[k][choice.cell]
        mods, width = [], in_width
        for layer, op in zip(cell.layers, choice.ops, strict=True):
            mods.append(layer.choice(width, op))
            width = self.space.blocks[k].cells[choice.cell].width
        return mods

    # -- the chosen network ---------------------------------------------------------------------------------------
    def _walk(self, arch: Sequence[BlockChoice]) -> Iterator[tuple[str, nn.Module]]:
        arch = self.space.check_arch(arch)
        yield 'blocks.0.0', self.ds
        width = self.space.ds_width
        for k, choice in enumerate(arch):
            for j, mod in enumerate(self.path_layers(k, width, choice)):
                yield f'blocks.{k + 1}.{j}', mod
            width = self.space.blocks[k].cells[choice.cell].width

    @torch.no_grad()
    def forward_path(self, x: torch.Tensor, arch: Sequence) -> torch.Tensor:
        """The chosen network's trunk (stem .. last block), without adapters: the final features before the head."""
        return self.forward_trunk(x, arch)

    def forward_trunk(self, x: torch.Tensor, arch: Sequence) -> torch.Tensor:
        h = self.bn1(self.conv_stem(x))
        for _, mod in self._walk(arch):
            h = mod(h)
        return h

    def forward(self, x: torch.Tensor, arch: Sequence) -> torch.Tensor:
        """One path: logits with a head, else the trunk's last feature map."""
        h = self.forward_trunk(x, arch)
        if self.head is None:
            return h
        h = self.head[f'conv_head_{h.shape[1]}'](h)
        return self.head['classifier'](self.head['global_pool'](self.head['bn2'](h)))

    def path_state_dict(self, arch: Sequence) -> dict[str, torch.Tensor]:
        """The weights of a path under the parameter names of ``timm.create_model('mbconv', spec=to_spec(arch))``.

        Without a head (``num_classes=0``) conv_head, bn2 and classifier are not part of it.
        """
        out = {f'conv_stem.{n}': t for n, t in self.conv_stem.state_dict().items()}
        out.update({f'bn1.{n}': t for n, t in self.bn1.state_dict().items()})
        for prefix, mod in self._walk(arch):
            out.update({f'{prefix}.{n}': t for n, t in mod.state_dict().items()})
        if self.head is not None:
            width = self.space.widths(arch)[-1]
            for name in (f'conv_head_{width}', 'bn2', 'classifier'):
                key = 'conv_head' if name.startswith('conv_head') else name
                out.update({f'{key}.{n}': t for n, t in self.head[name].state_dict().items()})
        return out


# -- costs of the actual widths ---------------------------------------------------------------------------------
@cache
def layer_cost(arch: str, in_chs: int, in_res: int, shortcut: str = mbconv_family.DEFAULT_SHORTCUT) -> tuple[int, int]:
    """(MACs, params) of one layer at input resolution ``in_res``, counted on the real timm module."""
    mod = build_layer(arch, in_chs, shortcut)
    return count_macs(mod, (in_chs, in_res, in_res)), count_params(mod)


def choice_cost(space: MBConvSpace, k: int, in_width: int, choice: BlockChoice) -> tuple[int, int]:
    """(MACs, params) of block ``k`` on a choice, for the space's image size."""
    res = space.img_size // 2
    for block in space.blocks[:k]:
        res = -(-res // block.stride)
    block = space.blocks[k]
    width = block.cells[choice.cell].width
    macs = params = 0
    chs = in_width
    for j, op in enumerate(choice.ops):
        stride = block.stride if j == 0 else 1
        m, p = layer_cost(layer_arch(op, width, stride), chs, res, space.shortcut)
        macs, params = macs + m, params + p
        res, chs = -(-res // stride), width
    return macs, params


@cache
def fixed_cost(space: MBConvSpace, num_classes: int = 1000) -> tuple[int, int]:
    """(MACs, params) of everything that is not searched: stem, DS layer, conv head and classifier.

    Computed as the whole network of one path minus its searched layers, so it includes exactly what timm builds.
    """
    arch = [BlockChoice(0, (b.ops[0],) * b.cells[0].layers) for b in space.blocks]
    net = mbconv_family.build(space.to_spec(arch), num_classes=num_classes)
    macs, params = count_macs(net, (3, space.img_size, space.img_size)), count_params(net)
    width = space.ds_width
    for k, choice in enumerate(arch):
        m, p = choice_cost(space, k, width, choice)
        macs, params, width = macs - m, params - p, space.blocks[k].cells[choice.cell].width
    return macs, params
