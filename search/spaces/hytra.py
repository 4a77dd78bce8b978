"""The HyTra search space of BossNAS and its weight-sharing supernet, built from the blocks of ``backbones/hytra.py``.

Space (paper arXiv 2103.12424 section 4 and App. A.2; official code github.com/changlin31/BossNAS at bb8b26a,
``searching/bossnas/models/supernets/hytra_supernet.py``, ``operations/hytra_ops.py``, ``utils/hytra_paths.py``;
docs/search.md): 16 choice layers in 4 blocks of 4. Each layer picks a scale (1/4, 1/8, 1/16, 1/32 of the input) and
an op (ResConv; ResAtt only at 1/16 and 1/32).

**Encoding.** An :data:`~search.protocols.Arch` is 16 ints, one per layer: the official per-layer op index of a
4-scale supernet block (:data:`CHOICES`), which carries scale and op together::

    0 = ResAtt @ 1/32   1 = ResConv @ 1/32   2 = ResAtt @ 1/16   3 = ResConv @ 1/16   4 = ResConv @ 1/8
    5 = ResConv @ 1/4

so the official path lists and path-rank files read as they are; BossNet-T0 is
``(5, 4, 3, 3, 3, 2, 3, 0, 0, 0, 1, 0, 0, 0, 0, 0)``. :meth:`HyTraSpace.decode` splits it into one 4-tuple per
block (the block-wise view), :meth:`HyTraSpace.encode` joins them.

**Rules.** Each layer keeps the scale of its input or halves it (stage index +1), never below 1/32; the two
spaces differ only in the first layer, which takes the stem's output through a per-scale downsampler:

* ``restricted=True`` (default; the official ``restricted_path``, commits 3e7018b / fa90337, 2021-08-31): the stem
  counts as a layer at 1/4, so the first layer sits at 1/4 or 1/8. 1,703,991 architectures.
* ``restricted=False`` (the paper's space, "roughly 2.8 x 10^6"): the first layer at any of the four scales,
  2,818,103 architectures.

Block-wise (BossNAS trains and rates one block at a time, each on the previous block's best path): the paths of
block ``k`` depend only on the scale its input is at (:meth:`HyTraSpace.block_paths`, keyed by :data:`STEM` for
block 0 and the previous block's last stage otherwise): block 0 has 51 paths (131 unrestricted); a later block 51,
99, 80 or 16 after 1/4, 1/8, 1/16, 1/32. The official supernet builds only the scales its ``stage_depths``
``[4, 3, 2, 2]`` name, so a block after one that ends at 1/4 (e.g. ``[5, 5, 5, 5]``, in ``restricted_path``) has no
op to run; here every layer has every scale it can reach, so all 1,703,991 paths run. The
official code's older ``all_path`` lists (block starts may jump to any scale at or below the previous block's:
131/115/80/16) are reproduced by :func:`paths_from` with ``rule='all_path'`` for reference only: a 4x jump has no
input branch in any supernet and no ``hytra`` spec. The lists were compared once, outside the package, with the
official ``restricted_path`` and ``all_path`` of ``hytra_paths.py``: equal as sets for every input scale.

**Supernet.** Stem (7x7/2 conv, BN, act, max-pool) and the per-scale downsamplers of the official supernet
(depthwise conv with kernel = stride = 2^k, 1x1 conv to the scale's bottleneck width, BN; also at 1/4, k = 0),
then per layer and choice one backbone block (:class:`backbones.hytra.ResConv` / :class:`~backbones.hytra.ResAtt`)
whose own input side is the same-scale branch, plus an :class:`~backbones.hytra.InputBranch` (1x1 conv, PEG with
stride 2, first BN, shortcut) as the halving branch; everything after the first BN is shared (the official ``_d``
branches). The first layer has only the downsampler input (width = the scale's bottleneck width). With
``num_classes > 0`` one classifier per last scale. :meth:`HyTraSupernet.path_state_dict` names a path's weights as
the ``hytra`` backbone of :meth:`HyTraSpace.to_spec` names them, so the path *is* that network (tested); the spec
carries ``stem_down: "dw"`` and ``empty_tail: "identity"`` for this.

Deviations from the official supernet (each forced by "a path is the backbone of its spec" or by correctness):

* attention is the standard ``softmax(q k^T) v`` of the backbone; the supernet code computes ``v softmax(q^T k)``
  (normalised over the wrong index) and the retraining code and released weights use the standard
  form, so a searched path must use it too to be the network that is retrained;
* shortcuts are the backbone's ResNet-D ones (average pool, 1x1 conv, BN, no activation) where the official
  supernet has 1x1 conv + BN + ReLU (same scale) or 3x3/2 conv + BN + ReLU (halving);
* init is the backbone's (kaiming fan-out convs, zero last BN), not PyTorch's default;
* every reachable scale is built in every layer (see above).

Activation and SE follow the official supernet (ReLU, no SE) unless ``act`` / ``se`` say otherwise; the emitted
spec carries them. Costs (``cost``) add up per layer and equal ``backbones.hytra.paper_madds`` / the parameter
count of the built network (1000 classes).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn as nn
from timm.layers import create_act_layer, create_classifier

from backbones import hytra as hytra_family
from backbones._flops import count_macs, count_params

from ..protocols import COST_METRICS, Arch
from .base import ChoiceSpace, measured_latency

__all__ = [
    'CHOICES',
    'NUM_BLOCKS',
    'NUM_LAYERS',
    'RULES',
    'SPACES',
    'STEM',
    'Candidate',
    'HyTraSpace',
    'HyTraSupernet',
    'count_paths',
    'get_space',
    'is_path',
    'paths_from',
    'stage_of',
]

NUM_BLOCKS = 4
LAYERS_PER_BLOCK = 4
NUM_LAYERS = NUM_BLOCKS * LAYERS_PER_BLOCK
#: Choice index -> (stage, op): stage k is scale 1/2^(k+2) (the backbone's ``stages[k]``); the official order.
CHOICES: tuple[tuple[int, str], ...] = ((3, 'att'), (3, 'conv'), (2, 'att'), (2, 'conv'), (1, 'conv'), (0, 'conv'))
NUM_STAGES = 4
#: The input key of block 0 (the stem), where other blocks use the previous block's last stage.
STEM = -1
#: Path rules: the two spaces, and the official older per-block lists (jumps at block starts; counting only).
RULES = ('restricted', 'full', 'all_path')


def stage_of(choice: int) -> int:
    """The stage (0 = 1/4 ... 3 = 1/32) of a choice index; a block's output stage is that of its last choice."""
    return CHOICES[choice][0]


def _choices_at(stage: int) -> tuple[int, ...]:
    return tuple(c for c, (s, _) in enumerate(CHOICES) if s == stage)


def _next_stages(in_stage: int, rule: str, block_start: bool = False) -> tuple[int, ...]:
    """Stages a layer may take after input stage ``in_stage`` (:data:`STEM` for the first layer)."""
    if in_stage == STEM:
        return (0, 1) if rule == 'restricted' else tuple(range(NUM_STAGES))
    if rule == 'all_path' and block_start:
        return tuple(range(in_stage, NUM_STAGES))
    return tuple(s for s in (in_stage, in_stage + 1) if s < NUM_STAGES)


def paths_from(in_stage: int, num_layers: int = LAYERS_PER_BLOCK, rule: str = 'restricted') -> tuple[Arch, ...]:
    """Every path of ``num_layers`` layers after input stage ``in_stage``, in lexicographic (DFS) order."""
    if rule not in RULES:
        raise ValueError(f'path rule {rule!r} is not one of {RULES}')
    return _paths_from(in_stage, num_layers, rule)


@functools.cache
def _paths_from(in_stage: int, num_layers: int, rule: str) -> tuple[Arch, ...]:
    if num_layers == 0:
        return ((),)
    stages = _next_stages(in_stage, rule, block_start=True)
    out = []
    for c in sorted(c for s in stages for c in _choices_at(s)):
        out += [(c, *rest) for rest in _paths_from_inner(stage_of(c), num_layers - 1)]
    return tuple(out)


@functools.cache
def _paths_from_inner(in_stage: int, num_layers: int) -> tuple[Arch, ...]:
    if num_layers == 0:
        return ((),)
    out = []
    for c in sorted(c for s in _next_stages(in_stage, 'full') for c in _choices_at(s)):
        out += [(c, *rest) for rest in _paths_from_inner(stage_of(c), num_layers - 1)]
    return tuple(out)


@functools.cache
def count_paths(num_layers: int = NUM_LAYERS, in_stage: int = STEM, restricted: bool = True) -> int:
    """Number of paths of ``num_layers`` layers after ``in_stage`` (dynamic programming over the last stage)."""
    rule = 'restricted' if restricted else 'full'
    ways = dict.fromkeys(range(NUM_STAGES), 0)
    for s in _next_stages(in_stage, rule):
        ways[s] = len(_choices_at(s))
    for _ in range(num_layers - 1):
        nxt = dict.fromkeys(range(NUM_STAGES), 0)
        for s, n in ways.items():
            for t in _next_stages(s, rule):
                nxt[t] += n * len(_choices_at(t))
        ways = nxt
    return sum(ways.values()) if num_layers else 1


def is_path(arch: Sequence[int], restricted: bool = True) -> bool:
    """Whether ``arch`` (any length) follows the rules (the brute-force reference of :func:`count_paths`)."""
    prev = STEM
    for c in arch:
        if not 0 <= c < len(CHOICES) or stage_of(c) not in _next_stages(prev, 'restricted' if restricted else 'full'):
            return False
        prev = stage_of(c)
    return True


@dataclass(frozen=True)
class HyTraSpace(ChoiceSpace):
    """The HyTra space: 16 decisions, one :data:`CHOICES` index per layer, under the (un)restricted rule.

    ``act`` / ``se`` are the blocks' (official supernet: ReLU, no SE); ``stem_width``, ``widths`` (bottleneck widths
    per scale) and ``dim_head`` give reduced variants; ``img_size`` is the resolution costs are counted at.
    """

    name: str = 'hytra'
    restricted: bool = True
    act: str = 'relu'
    se: bool = False
    stem_width: int = hytra_family.STEM_WIDTH
    widths: tuple[int, ...] = hytra_family.STAGE_WIDTHS
    dim_head: int = hytra_family.DIM_HEAD
    img_size: int = 224

    def __post_init__(self) -> None:
        object.__setattr__(self, 'widths', tuple(self.widths))
        if not isinstance(self.restricted, bool):
            raise ValueError(f'space {self.name!r}: restricted must be a bool, got {self.restricted!r}')
        if isinstance(self.img_size, bool) or not isinstance(self.img_size, int) or self.img_size < 32:
            raise ValueError(f'space {self.name!r}: img_size must be an integer >= 32, got {self.img_size!r}')
        self.to_spec((5,) * NUM_LAYERS)  # act, se, widths, dim_head: SpecError naming the field

    @property
    def rule(self) -> str:
        return 'restricted' if self.restricted else 'full'

    # -- decisions ----------------------------------------------------------------------------------------------
    @property
    def num_choices(self) -> tuple[int, ...]:
        return (len(CHOICES),) * NUM_LAYERS

    def allowed(self, i: int) -> tuple[int, ...]:
        if i == 0:
            return tuple(sorted(c for s in _next_stages(STEM, self.rule) for c in _choices_at(s)))
        return tuple(range(len(CHOICES)))

    def _fits(self, prev: int | None, choice: int) -> bool:
        """Whether ``choice`` may follow ``prev`` (``None``: the first layer)."""
        return stage_of(choice) in _next_stages(STEM if prev is None else stage_of(prev), self.rule)

    def check(self, arch: Sequence[int]) -> Arch:
        """``arch`` as a tuple; a wrong length, index or scale step raises naming the layer."""
        arch = tuple(arch)
        if len(arch) != NUM_LAYERS:
            raise ValueError(f'space {self.name!r} has {NUM_LAYERS} decisions, the architecture {len(arch)}')
        for i, c in enumerate(arch):
            if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < len(CHOICES):
                raise ValueError(
                    f'space {self.name!r} decision {i}: option {c!r} is not a choice index 0..{len(CHOICES) - 1}'
                )
        for i, c in enumerate(arch):
            prev = arch[i - 1] if i else None
            if not self._fits(prev, c):
                where = f'layer {i} (block {i // LAYERS_PER_BLOCK}, layer {i % LAYERS_PER_BLOCK})'
                got = f'1/{2 ** (stage_of(c) + 2)}'
                if prev is None:
                    raise ValueError(
                        f'space {self.name!r} {where}: the first layer at scale {got} is outside the '
                        f'{self.rule} space (first layer at 1/4 or 1/8 when restricted, any scale otherwise)'
                    )
                raise ValueError(
                    f'space {self.name!r} {where}: scale {got} after 1/{2 ** (stage_of(prev) + 2)}; each layer '
                    'keeps or halves the scale of the one before'
                )
        return arch

    @property
    def size(self) -> int:
        return count_paths(NUM_LAYERS, STEM, self.restricted)

    def sample(self, generator: torch.Generator) -> Arch:
        """Uniform over all architectures of the space (each layer drawn with the number of completions)."""
        out: list[int] = []
        prev = STEM
        for i in range(NUM_LAYERS):
            options = [c for s in _next_stages(prev, self.rule) for c in _choices_at(s)]
            weights = [count_paths(NUM_LAYERS - i - 1, stage_of(c), self.restricted) for c in options]
            r = int(torch.randint(sum(weights), (1,), generator=generator))
            j = 0
            while r >= weights[j]:
                r -= weights[j]
                j += 1
            out.append(options[j])
            prev = stage_of(options[j])
        return tuple(out)

    def mutate(self, arch: Arch, generator: torch.Generator, prob: float) -> Arch:
        """Each layer redrawn with probability ``prob``, uniformly over the choices that fit its neighbours."""
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f'mutation probability {prob} is not in [0, 1]')
        out = list(self.check(arch))
        for i in range(NUM_LAYERS):
            if float(torch.rand((), generator=generator)) >= prob:
                continue
            prev = out[i - 1] if i else None
            nxt = out[i + 1] if i + 1 < NUM_LAYERS else None
            # the old choice always fits (the one before was drawn to fit it), so this is never empty
            options = [c for c in range(len(CHOICES)) if self._fits(prev, c) and (nxt is None or self._fits(c, nxt))]
            out[i] = options[int(torch.randint(len(options), (1,), generator=generator))]
        return tuple(out)

    def crossover(self, a: Arch, b: Arch, generator: torch.Generator) -> Arch:
        """Each layer from ``a`` or ``b`` with probability 1/2; where the pick does not fit the layer before, the
        other parent's (which does: the layer before came from one of them)."""
        a, b = self.check(a), self.check(b)
        pick = torch.randint(2, (NUM_LAYERS,), generator=generator).tolist()
        out: list[int] = []
        for x, y, p in zip(a, b, pick, strict=True):
            first, second = (x, y) if p == 0 else (y, x)
            out.append(first if self._fits(out[-1] if out else None, first) else second)
        return tuple(out)

    # -- block-wise view ------------------------------------------------------------------------------------------
    @property
    def blocks(self) -> tuple[tuple[int, ...], ...]:
        """The layer indices of each block."""
        return tuple(tuple(range(k * LAYERS_PER_BLOCK, (k + 1) * LAYERS_PER_BLOCK)) for k in range(NUM_BLOCKS))

    def in_stages(self, k: int) -> tuple[int, ...]:
        """Where block ``k``'s input may be: :data:`STEM` for block 0, else the stages the block before can end at."""
        if k == 0:
            return (STEM,)
        return tuple(s for s in range(NUM_STAGES) if self.block_paths(k - 1, None, end_stage=s))

    def in_widths(self, k: int) -> tuple[int, ...]:
        """The channel counts of block ``k``'s possible inputs, in the order of :meth:`in_stages`."""
        return tuple(self.stem_width if s == STEM else 4 * self.widths[s] for s in self.in_stages(k))

    def block_paths(self, k: int, in_stage: int | None, end_stage: int | None = None) -> tuple[Arch, ...]:
        """The paths (4 choices) of block ``k`` after input stage ``in_stage`` (``None``: any), in DFS order;
        ``end_stage`` keeps those that end there."""
        if not 0 <= k < NUM_BLOCKS:
            raise ValueError(f'space {self.name!r} has blocks 0..{NUM_BLOCKS - 1}, not {k}')
        stages = self.in_stages(k) if in_stage is None else (in_stage,)
        if (k == 0) != (STEM in stages):
            raise ValueError(f'block {k}: input stage {in_stage} is not one of {self.in_stages(k)} (STEM = -1)')
        paths = [p for s in stages for p in paths_from(s, LAYERS_PER_BLOCK, self.rule)]
        return tuple(p for p in paths if end_stage is None or stage_of(p[-1]) == end_stage)

    def candidates(self, k: int) -> Iterator[tuple[int, Arch]]:
        """Every (input stage, path) of block ``k``, in DFS order."""
        for s in self.in_stages(k):
            for path in self.block_paths(k, s):
                yield s, path

    def num_candidates(self, k: int) -> int:
        return sum(len(self.block_paths(k, s)) for s in self.in_stages(k))

    def encode(self, choices: Sequence[Sequence[int]]) -> Arch:
        """The architecture of one path (4 choices) per block."""
        if len(choices) != NUM_BLOCKS:
            raise ValueError(f'space {self.name!r} has {NUM_BLOCKS} blocks, got {len(choices)} block paths')
        return self.check([int(c) for path in choices for c in path])

    def decode(self, arch: Sequence[int]) -> list[Arch]:
        """One path (4 choices) per block."""
        arch = self.check(arch)
        return [arch[i : i + LAYERS_PER_BLOCK] for i in range(0, NUM_LAYERS, LAYERS_PER_BLOCK)]

    # -- specs ----------------------------------------------------------------------------------------------------
    def _spec(self, arch: Sequence[int]) -> dict:
        stages: list[list[str]] = [[] for _ in range(NUM_STAGES)]
        for c in arch:
            stages[stage_of(c)].append(CHOICES[c][1])
        spec: dict[str, Any] = {
            'family': hytra_family.FAMILY,
            'version': hytra_family.SPEC_VERSION,
            'stages': stages,
            'act': self.act,
            'se': self.se,
            'last_stride': 2,
            'stem_down': 'dw',
            'empty_tail': 'identity',
        }
        for key in ('stem_width', 'widths', 'dim_head'):
            value = list(getattr(self, key)) if key == 'widths' else getattr(self, key)
            if value != hytra_family.DEFAULTS[key]:
                spec[key] = value
        return hytra_family.validate_spec(spec)

    def to_spec(self, arch: Sequence[int]) -> dict:
        """The ``hytra`` spec of ``arch``: ``zoo.create_model(spec)`` builds exactly the path's network."""
        return self._spec(self.check(arch))

    def from_spec(self, spec: dict) -> Arch:
        """The architecture whose :meth:`to_spec` is ``spec``; a spec outside the space raises naming the field."""
        spec = hytra_family.validate_spec(spec)
        arch = tuple(CHOICES.index((k, op)) for k, ops in enumerate(spec['stages']) for op in ops)
        self.check(arch)
        filled = lambda s: {**hytra_family.DEFAULTS, **s}  # noqa: E731
        self.check_path_spec(filled(spec), filled(self._spec(arch)))
        return arch

    # -- costs ----------------------------------------------------------------------------------------------------
    def cost(self, arch: Sequence[int], metric: str) -> float:
        """``flops`` = ``macs`` (``backbones.hytra.paper_madds`` of the network at ``img_size``), ``params`` (1000
        classes) or ``latency`` (seconds: the network, CPU, batch 1, median of 10 runs, once per architecture)."""
        if metric not in COST_METRICS:
            raise ValueError(f'cost metric {metric!r}: expected one of {COST_METRICS}')
        arch = self.check(arch)
        if metric == 'latency':
            return _latency(self, arch)
        index = 1 if metric == 'params' else 0
        return float(sum(part[index] for part in _cost_parts(self, arch)))

    def extremes(self) -> tuple[Arch, Arch]:
        """(fewest, most) multiply-adds, exactly: dynamic programming over (stage, resolution) per layer."""
        return _extreme(self, 1.0), _extreme(self, -1.0)

    def build_supernet(self, num_classes: int = 1000, **options: Any) -> HyTraSupernet:
        """The weight-sharing supernet (``options``: ``in_chans``; ``num_classes=0`` keeps the trunk only)."""
        return HyTraSupernet(self, num_classes=num_classes, **options)


# -- costs: per-layer parts, counted on the backbone's own modules -------------------------------------------------
def _stem_res(img_size: int) -> int:
    r = (img_size + 2 * 3 - 7) // 2 + 1  # 7x7/2 conv, padding 3
    return (r + 2 - 3) // 2 + 1  # 3x3/2 max-pool, padding 1


def _layer(space: HyTraSpace, choice: int, entry: str) -> nn.Module:
    """The backbone block of ``choice`` with input ``entry``: 'stem' (after the downsampler), 'same' or 'half'."""
    stage, op = CHOICES[choice]
    width = space.widths[stage]
    in_chs = {'stem': width, 'same': 4 * width, 'half': 4 * space.widths[stage - 1] if stage else 0}[entry]
    stride = 2 if entry == 'half' else 1
    if op == 'att':
        heads = width // space.dim_head
        return hytra_family.ResAtt(in_chs, 4 * width, heads, stride, space.act, dim_head=space.dim_head)
    return hytra_family.ResConv(in_chs, width, stride, space.act, se=space.se)


def _stem_down(space: HyTraSpace, stage: int) -> nn.Module:
    """The supernet's downsampler from the stem to ``stage`` (the backbone's ``stem_down`` for ``stem_down: dw``)."""
    down, w = 2**stage, space.stem_width
    return nn.Sequential(
        nn.Conv2d(w, w, kernel_size=down, stride=down, groups=w, bias=False),
        nn.Conv2d(w, space.widths[stage], kernel_size=1, bias=False),
        nn.BatchNorm2d(space.widths[stage]),
    )


@functools.cache
def _part_cost(space: HyTraSpace, part: str, key: int, entry: str = '', res: int = 0) -> tuple[int, int]:
    """(MACs, params) of one part at input resolution ``res``: 'stem', 'down' (to stage ``key``), 'layer' (choice
    ``key`` with input ``entry``) or 'head' (1000 classes after stage ``key``)."""
    with torch.device('meta'):
        if part == 'stem':
            mod: nn.Module = nn.Sequential(
                nn.Conv2d(3, space.stem_width, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(space.stem_width)
            )
            chs = 3
        elif part == 'down':
            mod, chs = _stem_down(space, key), space.stem_width
        elif part == 'layer':
            mod = _layer(space, key, entry)
            chs = mod.conv1.in_channels
        else:
            fc = nn.Linear(4 * space.widths[key], 1000)
            return fc.in_features * fc.out_features, count_params(fc)
    return count_macs(mod, (chs, res, res)), count_params(mod)


def _cost_parts(space: HyTraSpace, arch: Arch) -> list[tuple[int, int]]:
    res = _stem_res(space.img_size)
    parts = [_part_cost(space, 'stem', 0, res=space.img_size)]
    first = stage_of(arch[0])
    parts.append(_part_cost(space, 'down', first, res=res))
    res = res // 2**first
    prev = None
    for c in arch:
        entry = 'stem' if prev is None else 'same' if stage_of(c) == stage_of(prev) else 'half'
        parts.append(_part_cost(space, 'layer', c, entry, res))
        res = -(-res // 2) if entry == 'half' else res
        prev = c
    parts.append(_part_cost(space, 'head', stage_of(arch[-1])))
    return parts


def _extreme(space: HyTraSpace, sign: float) -> Arch:
    """The architecture of least ``sign * MACs`` (states: the last stage and the resolution)."""
    res0 = _stem_res(space.img_size)
    states: dict[tuple[int, int], tuple[float, Arch]] = {}
    for c in space.allowed(0):
        s = stage_of(c)
        r = res0 // 2**s
        macs = _part_cost(space, 'down', s, res=res0)[0] + _part_cost(space, 'layer', c, 'stem', r)[0]
        key = (s, r)
        if key not in states or sign * macs < states[key][0]:
            states[key] = (sign * macs, (c,))
    for _ in range(NUM_LAYERS - 1):
        nxt: dict[tuple[int, int], tuple[float, Arch]] = {}
        for (s, r), (total, arch) in states.items():
            for t in _next_stages(s, space.rule):
                entry, r2 = ('same', r) if t == s else ('half', -(-r // 2))
                for c in _choices_at(t):
                    value = total + sign * _part_cost(space, 'layer', c, entry, r)[0]
                    if (t, r2) not in nxt or value < nxt[(t, r2)][0]:
                        nxt[(t, r2)] = (value, (*arch, c))
        states = nxt
    best = min(states.items(), key=lambda kv: kv[1][0] + sign * _part_cost(space, 'head', kv[0][0])[0])
    return best[1][1]


def _latency(space: HyTraSpace, arch: Arch) -> float:
    return measured_latency(space, arch, lambda: hytra_family.build(space.to_spec(arch)), space.img_size)


# -- supernet --------------------------------------------------------------------------------------------------------
class Candidate(nn.Module):
    """One choice of one layer: a backbone block, whose own input side is the same-scale branch, and, where the
    layer can also halve into this scale, an :class:`~backbones.hytra.InputBranch` with stride 2 (``halving``).

    Where the layer can only be reached by halving, the block itself is built with stride 2 (``block_halves``) and
    there is no ``halving``: no input side is built that no path runs.
    """

    def __init__(self, block: nn.Module, halving: nn.Module | None = None, block_halves: bool = False) -> None:
        super().__init__()
        self.block = block
        self.halving = halving
        self.block_halves = block_halves

    def uses_half(self, halve: bool) -> bool:
        """Whether an input that is (not) halved runs ``halving`` rather than the block's own input side."""
        if halve == self.block_halves:
            return False
        if self.halving is None:
            raise ValueError(f'this candidate has no {"halving" if halve else "same-scale"} input branch')
        return True

    def forward(self, x: torch.Tensor, halve: bool) -> torch.Tensor:
        if self.uses_half(halve):
            return self.block.forward_body(*self.halving(x))
        return self.block(x)


class HyTraSupernet(nn.Module):
    """``supernet(x, arch)`` runs one path; ``path_state_dict(arch)`` is keyed like ``zoo.create_model(to_spec)``.

    Modules: ``conv1``/``bn1`` (stem, as in the backbone), ``stem_down.<stage>`` (the per-scale downsamplers),
    ``layers.<i>.<choice>`` (:class:`Candidate`, only where layer ``i`` can reach the choice's scale; ``halving``
    only where it can be reached by halving), ``fc.<stage>`` (a classifier per last scale, when ``num_classes``).
    Block-wise methods run ``forward_stem`` then ``forward_block`` per block.
    """

    def __init__(self, space: HyTraSpace, num_classes: int = 1000, in_chans: int = 3) -> None:
        super().__init__()
        self.space = space
        self.num_classes = num_classes
        w = space.stem_width
        self.conv1 = nn.Conv2d(in_chans, w, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        self.act1 = create_act_layer(space.act, inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        first = _next_stages(STEM, space.rule)
        self.stem_down = nn.ModuleDict({str(s): _stem_down(space, s) for s in first})
        self.layers = nn.ModuleList()
        reach, prev_reach = set(first), set()  # stages layer i (i - 1) can be at
        for i in range(NUM_LAYERS):
            cands = nn.ModuleDict()
            for c in range(len(CHOICES)):
                s = stage_of(c)
                if s not in reach:
                    continue
                if i == 0:
                    cands[str(c)] = Candidate(_layer(space, c, 'stem'), None)
                    continue
                same, halves = s in prev_reach, s - 1 in prev_reach
                if not same:  # reached only by halving
                    cands[str(c)] = Candidate(_layer(space, c, 'half'), None, block_halves=True)
                    continue
                half = None
                if halves:
                    dim = space.widths[s]
                    half = hytra_family.InputBranch(4 * space.widths[s - 1], dim, 4 * dim, stride=2)
                cands[str(c)] = Candidate(_layer(space, c, 'same'), half)
            self.layers.append(cands)
            prev_reach = reach
            reach = {t for s in reach for t in _next_stages(s, space.rule)}
        self.global_pool = None
        if num_classes > 0:
            heads = {str(s): create_classifier(4 * space.widths[s], num_classes, pool_type='avg') for s in range(4)}
            self.global_pool = heads['0'][0]
            self.fc = nn.ModuleDict({s: head[1] for s, head in heads.items()})
        hytra_family.HyTraNet.init_weights(self)  # type: ignore[arg-type]  # the backbone's init, same modules

    # -- forward ------------------------------------------------------------------------------------------------
    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        """The fixed stem (conv, BN, act, max-pool): 1/4 scale, ``stem_width`` channels."""
        return self.maxpool(self.act1(self.bn1(self.conv1(x))))

    def forward_layers(self, x: torch.Tensor, start: int, choices: Sequence[int], in_stage: int) -> torch.Tensor:
        """Layers ``start, start + 1, ...`` on the choices given, after input stage ``in_stage`` (:data:`STEM`:
        ``x`` is the stem output, and the first choice's downsampler runs first)."""
        prev = in_stage
        for i, c in enumerate(choices, start):
            s = stage_of(c)
            if prev == STEM:
                x = self.stem_down[str(s)](x)
                halve = False
            else:
                halve = s != prev
            x = self.layers[i][str(c)](x, halve)
            prev = s
        return x

    def forward_block(self, k: int, x: torch.Tensor, in_stage: int, path: Sequence[int]) -> torch.Tensor:
        """Block ``k`` on one of its paths (:meth:`HyTraSpace.block_paths`), its input at ``in_stage``."""
        if tuple(path) not in self.space.block_paths(k, in_stage):
            raise ValueError(f'block {k}: {tuple(path)} is not a path after input stage {in_stage} (STEM = -1)')
        return self.forward_layers(x, k * LAYERS_PER_BLOCK, path, in_stage)

    def forward_features(self, x: torch.Tensor, arch: Sequence[int]) -> torch.Tensor:
        arch = self.space.check(arch)
        return self.forward_layers(self.forward_stem(x), 0, arch, STEM)

    def forward(self, x: torch.Tensor, arch: Sequence[int]) -> torch.Tensor:
        """Logits of the path ``arch`` (its last feature map when built with ``num_classes=0``)."""
        arch = self.space.check(arch)
        x = self.forward_features(x, arch)
        if self.global_pool is None:
            return x
        return self.fc[str(stage_of(arch[-1]))](self.global_pool(x))

    # -- weights of a path ----------------------------------------------------------------------------------------
    def path_state_dict(self, arch: Sequence[int]) -> dict[str, torch.Tensor]:
        """The weights and BN buffers of the path, named as in the ``hytra`` network of ``space.to_spec(arch)``."""
        arch = self.space.check(arch)
        out = {f'conv1.{k}': v for k, v in self.conv1.state_dict().items()}
        out.update({f'bn1.{k}': v for k, v in self.bn1.state_dict().items()})
        out.update({f'stem_down.{k}': v for k, v in self.stem_down[str(stage_of(arch[0]))].state_dict().items()})
        counts = [0] * NUM_STAGES
        prev = None
        for i, c in enumerate(arch):
            s = stage_of(c)
            prefix = f'layer{s + 1}.{counts[s]}'
            counts[s] += 1
            cand = self.layers[i][str(c)]
            halve = cand.uses_half(prev is not None and s != prev)
            entry = ('downsample.', 'conv1.', 'peg.', 'bn1.')  # the block's own input side
            for k, v in cand.block.state_dict().items():
                if not (halve and k.startswith(entry)):
                    out[f'{prefix}.{k}'] = v
            if halve:
                out.update({f'{prefix}.{k}': v for k, v in cand.halving.state_dict().items()})
            prev = s
        if self.global_pool is not None:
            out.update({f'fc.{k}': v for k, v in self.fc[str(stage_of(arch[-1]))].state_dict().items()})
        return out


#: Named spaces: the official one (ImageNet widths) and a tiny one (widths / 8, 2 and 4 heads of 16) for tests.
SPACES: dict[str, HyTraSpace] = {
    'hytra': HyTraSpace('hytra'),
    'hytra_tiny': HyTraSpace('hytra_tiny', stem_width=8, widths=(8, 16, 32, 64), dim_head=16, img_size=32),
}


def get_space(name: str | HyTraSpace = 'hytra', **options: Any) -> HyTraSpace:
    """A space of :data:`SPACES`; ``options`` replace its fields (``restricted=False``, ``act='silu'``...)."""
    if isinstance(name, HyTraSpace):
        space = name
    elif name not in SPACES:
        raise KeyError(f'unknown HyTra space {name!r}; known: {sorted(SPACES)}')
    else:
        space = SPACES[name]
    if options:
        fields = set(HyTraSpace.__dataclass_fields__) - {'name'}
        unknown = sorted(set(options) - fields)
        if unknown:
            raise ValueError(f'space {space.name!r}: unknown option(s) {unknown}; known: {sorted(fields)}')
        space = replace(space, **options)
    return space
