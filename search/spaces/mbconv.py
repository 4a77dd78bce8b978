"""The DNA MBConv search space and its weight-sharing supernet, built from the blocks of ``backbones/mbconv.py``.

Space (DNA paper Table 1 and section 4.2): a fixed stem (conv3x3 s2, 32) and DS layer (16), then blocks
cut to match the teacher's stages; each block offers *cells* (a depth and a width) whose layers each choose one of
six MBConv ops (kernel 3/5/7 x expansion 6/3, SE 0.25, swish; the official op order). The last block is fixed to
MB6 3x3 by default, as in the official code (the paper lists it as searchable: pass ``ops`` to search it).

Every op is built by timm's ``EfficientNetBuilder`` with exactly the settings of :class:`backbones.mbconv.MBConvNet`,
and the supernet's parameter names map one to one onto that network's, so a chosen path *is* the network that
the emitted spec builds (``path_state_dict`` + ``forward_path``; tested).

Decision (see docs/search.md): the official supernet makes the last layer of each block output the
teacher's width and feeds the next block the teacher's tensor, so its paths differ from the final networks at
every block boundary. Here every layer has the width the final network has; two small 1x1 conv + BN adapters per
block map the teacher's previous feature to the block's input width and the block's output to the teacher's width
for the loss. They are shared by all paths of a cell and are not part of any emitted network. Because the first
layer of a block takes the width chosen in the previous block, it has one set of weights per possible input
width, and the search only joins candidates whose widths fit.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache

import torch
import torch.nn as nn
from timm.layers import create_conv2d, get_norm_act_layer
from timm.models._efficientnet_blocks import SqueezeExcite
from timm.models._efficientnet_builder import EfficientNetBuilder, decode_arch_def, round_channels

from backbones import mbconv as mbconv_family
from backbones._flops import count_macs, count_params

__all__ = [
    'OPS',
    'SMALL_OPS',
    'SPACES',
    'BlockChoice',
    'BlockDef',
    'CellDef',
    'MBConvSpace',
    'MBConvSupernet',
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
class MBConvSpace:
    """A DNA-style MBConv space: fixed stem and DS layer, searched blocks, fixed head."""

    name: str
    blocks: tuple[BlockDef, ...]
    stem_size: int = 32
    ds_width: int = 16
    num_features: int = 1280
    img_size: int = 224
    notes: str = field(default='', compare=False)

    def __post_init__(self) -> None:
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

    def check_arch(self, arch: Sequence[BlockChoice]) -> list[BlockChoice]:
        """Validate a path (one :class:`BlockChoice` per block); raises ``ValueError`` naming the bad entry."""
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

    def widths(self, arch: Sequence[BlockChoice]) -> list[int]:
        return [self.blocks[k].cells[c.cell].width for k, c in enumerate(arch)]

    def to_spec(self, arch: Sequence[BlockChoice]) -> dict:
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
        return mbconv_family.validate_spec(spec)

    def sample(self, generator: torch.Generator) -> list[BlockChoice]:
        """A uniformly random path (cell uniform per block, op uniform per layer) from ``generator``."""
        arch = []
        for block in self.blocks:
            cell = int(torch.randint(len(block.cells), (1,), generator=generator))
            idx = torch.randint(len(block.ops), (block.cells[cell].layers,), generator=generator).tolist()
            arch.append(BlockChoice(cell, tuple(block.ops[i] for i in idx)))
        return arch


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


def get_space(name: str | MBConvSpace) -> MBConvSpace:
    if isinstance(name, MBConvSpace):
        return name
    if name not in SPACES:
        raise KeyError(f'unknown MBConv space {name!r}; known: {sorted(SPACES)}')
    return SPACES[name]


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


def build_layer(arch: str, in_chs: int) -> nn.Module:
    """One timm block (``InvertedResidual`` / ``DepthwiseSeparableConv``) from its arch-def string."""
    return _builder()(in_chs, decode_arch_def([[arch]]))[0][0]


def _adapter(in_chs: int, out_chs: int) -> nn.Sequential:
    """1x1 conv + BN (no activation: MBConv outputs are linear bottlenecks)."""
    return nn.Sequential(nn.Conv2d(in_chs, out_chs, 1, bias=False), nn.BatchNorm2d(out_chs))


class SuperLayer(nn.Module):
    """All choices of one layer position: ``ops['<in_width>_<op>']`` (several input widths for a block's first)."""

    def __init__(self, in_widths: Sequence[int], width: int, stride: int, ops: Sequence[str]) -> None:
        super().__init__()
        self.ops = nn.ModuleDict(
            {f'{w}_{op}': build_layer(layer_arch(op, width, stride), w) for w in in_widths for op in ops}
        )

    def choice(self, in_width: int, op: str) -> nn.Module:
        return self.ops[f'{in_width}_{op}']


class SuperCell(nn.Module):
    def __init__(self, cell: CellDef, in_widths: Sequence[int], stride: int, ops: Sequence[str]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            SuperLayer(in_widths if j == 0 else (cell.width,), cell.width, stride if j == 0 else 1, ops)
            for j in range(cell.layers)
        )


class MBConvSupernet(nn.Module):
    """Weight-sharing supernet of an :class:`MBConvSpace`, trained block by block against a teacher.

    ``teacher_channels[k]`` is the width of the teacher feature that block ``k`` is distilled to; block ``k > 0``
    receives the teacher's feature ``k - 1`` (``teacher_channels[k - 1]`` wide), block 0 the image (through the
    fixed stem and DS layer, trained with block 0).
    """

    def __init__(self, space: MBConvSpace | str, teacher_channels: Sequence[int], in_chans: int = 3) -> None:
        super().__init__()
        space = get_space(space)
        if len(teacher_channels) != len(space.blocks):
            raise ValueError(
                f'space {space.name!r} has {len(space.blocks)} blocks but the teacher gives '
                f'{len(teacher_channels)} features {list(teacher_channels)}'
            )
        self.space = space
        self.teacher_channels = list(teacher_channels)
        norm_act = get_norm_act_layer(nn.BatchNorm2d, ACT)
        stem = round_channels(space.stem_size)
        self.conv_stem = create_conv2d(in_chans, stem, 3, stride=2, padding='')
        self.bn1 = norm_act(stem, inplace=True)
        self.ds = build_layer(f'ds_r1_k3_s1_c{space.ds_width}_se{SE_RATIO}', stem)
        self.blocks = nn.ModuleList()
        self.in_adapters = nn.ModuleList()
        self.out_adapters = nn.ModuleList()
        for k, block in enumerate(space.blocks):
            in_widths = space.in_widths(k)
            self.blocks.append(nn.ModuleList(SuperCell(c, in_widths, block.stride, block.ops) for c in block.cells))
            if k == 0:
                self.in_adapters.append(nn.ModuleDict())
            else:
                self.in_adapters.append(
                    nn.ModuleDict({str(w): _adapter(teacher_channels[k - 1], w) for w in in_widths})
                )
            self.out_adapters.append(nn.ModuleList(_adapter(c.width, teacher_channels[k]) for c in block.cells))

    # -- training-time forward: one block, fed the teacher's previous feature -----------------------------------
    def block_input(self, k: int, x: torch.Tensor, in_width: int) -> torch.Tensor:
        """The input of block ``k``: the image through stem + DS (k = 0), else the adapted teacher feature."""
        if k == 0:
            return self.ds(self.bn1(self.conv_stem(x)))
        return self.in_adapters[k][str(in_width)](x)

    def path_layers(self, k: int, in_width: int, choice: BlockChoice) -> list[nn.Module]:
        cell = self.blocks[k][choice.cell]
        mods, width = [], in_width
        for layer, op in zip(cell.layers, choice.ops, strict=True):
            mods.append(layer.choice(width, op))
            width = self.space.blocks[k].cells[choice.cell].width
        return mods

    def forward_block(self, k: int, x: torch.Tensor, in_width: int, choice: BlockChoice) -> torch.Tensor:
        """Block ``k`` on a path, mapped to the teacher's width (what the distillation loss compares)."""
        h = self.block_input(k, x, in_width)
        for layer in self.path_layers(k, in_width, choice):
            h = layer(h)
        return self.out_adapters[k][choice.cell](h)

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
    def forward_path(self, x: torch.Tensor, arch: Sequence[BlockChoice]) -> torch.Tensor:
        """The chosen network's trunk (stem .. last block), without adapters: the final features before the head."""
        h = self.bn1(self.conv_stem(x))
        for _, mod in self._walk(arch):
            h = mod(h)
        return h

    def path_state_dict(self, arch: Sequence[BlockChoice]) -> dict[str, torch.Tensor]:
        """The weights of a path under the parameter names of ``timm.create_model('mbconv', spec=to_spec(arch))``.

        The head (conv_head, bn2, classifier) is not part of the supernet: DNA never trains it.
        """
        out = {f'conv_stem.{n}': t for n, t in self.conv_stem.state_dict().items()}
        out.update({f'bn1.{n}': t for n, t in self.bn1.state_dict().items()})
        for prefix, mod in self._walk(arch):
            out.update({f'{prefix}.{n}': t for n, t in mod.state_dict().items()})
        return out


# -- costs of the actual widths ---------------------------------------------------------------------------------
@cache
def layer_cost(arch: str, in_chs: int, in_res: int) -> tuple[int, int]:
    """(MACs, params) of one layer at input resolution ``in_res``, counted on the real timm module."""
    mod = build_layer(arch, in_chs)
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
        m, p = layer_cost(layer_arch(op, width, stride), chs, res)
        macs, params = macs + m, params + p
        res, chs = -(-res // stride), width
    return macs, params


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
