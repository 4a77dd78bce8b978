"""The NAS-Bench-201 cell space of "Inter-choice dependent super-network weights" and its SPOS supernet.

Laube & Zell, arXiv 2104.11522, section 3.1.1 and Table 3; official uninas ``Bench201Primitives`` and
``experiments/configs/networks/search/bench201.run_config``. An architecture is the op index of each of the six
edges of the cell (official order 0 Zero, 1 Skip, 2 Conv1x1, 3 Conv3x3, 4 AvgPool3x3), shared by every normal
cell. The paper's three sub-spaces mask ops from the sampling pool (uninas ``mask_indices``), the supernet keeps
all five candidates everywhere:

============  ==============  =====
subspace      allowed ops     size
============  ==============  =====
full          0 1 2 3 4       15625
no_zero       1 2 3 4         4096
only_conv     2 3             64
============  ==============  =====

Every path is a network of the ``nb201`` backbone family, and the supernet *is* that family's network
(:class:`backbones.nb201.NB201Net`) with one :class:`EdgeChoice` on each edge of each cell, holding the five
candidates built by the family's own ``make_op``. So parameter names (but for ``candidates.<op>``), shapes and
initialisation of a path are those of ``zoo.create_model(space.to_spec(arch))``. With ``skip='linear'`` and 10
classes the supernet has 782,938 parameters (paper Table 3), with the default plain skip 718,426 (tested).

Choice points for plug-ins (inter-choice weights): :meth:`NB201Supernet.choice_modules` lists the 6 x 3N
:class:`EdgeChoice` modules in construction order (cell by cell, edges e0..e5 in each), which is the order of the
paper's "previous" choices. Before each forward the supernet sets ``choice`` on each of them from the path (edge
``decision`` reads ``arch[decision]``); an :class:`EdgeChoice` runs ``candidates[choice]`` on its input. A plug-in
may wrap one (replace ``cell.edges[e]`` by a module that calls it): the wrapped module is still found.

``cost(arch, 'flops')`` is the MAC count (torch's flop counter, FLOPs / 2: convolutions and the classifier;
pooling, BN and additions are free), as NAS-Bench-201's own FLOPs count multiply-adds of convolutions and linears.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import cache
from typing import Any, ClassVar

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from backbones import nb201 as nb201_family
from backbones._flops import count_params

from ..interchoice import ChoiceSite, InterChoice, parse_options
from ..protocols import COST_METRICS, Arch
from .base import ChoiceSpace, measured_latency

__all__ = ['SPACES', 'SUBSPACES', 'EdgeChoice', 'NB201Space', 'NB201Supernet', 'get_space']

#: Allowed op indices per sub-space (paper section 3.1.1; uninas ``mask_indices`` "", "0", "0, 1, 4").
SUBSPACES: dict[str, tuple[int, ...]] = {'full': (0, 1, 2, 3, 4), 'no_zero': (1, 2, 3, 4), 'only_conv': (2, 3)}


@dataclass(frozen=True)
class NB201Space(ChoiceSpace):
    """Six decisions (the edges of the shared cell), five ops each, masked to ``SUBSPACES[subspace]``."""

    name: str = 'nb201'
    subspace: str = 'full'
    channels: int = 16
    cells_per_stage: int = 2
    skip: str = nb201_family.DEFAULT_SKIP
    img_size: int = 32
    #: its supernet takes the ``interchoice`` option (:mod:`search.interchoice`)
    supports_interchoice: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.subspace not in SUBSPACES:
            raise ValueError(f'space {self.name!r}: subspace {self.subspace!r} is not one of {sorted(SUBSPACES)}')
        if isinstance(self.img_size, bool) or not isinstance(self.img_size, int) or self.img_size < 1:
            raise ValueError(f'space {self.name!r}: img_size must be a positive integer, got {self.img_size!r}')
        self.to_spec((SUBSPACES[self.subspace][0],) * len(nb201_family.EDGES))  # channels, cells, skip: SpecError

    @property
    def num_choices(self) -> tuple[int, ...]:
        return (len(nb201_family.OPS),) * len(nb201_family.EDGES)

    def allowed(self, i: int) -> tuple[int, ...]:
        return SUBSPACES[self.subspace]

    # -- specs --------------------------------------------------------------------------------------------------
    def _spec(self, arch: Sequence[int]) -> dict:
        spec = {
            'family': nb201_family.FAMILY,
            'version': nb201_family.SPEC_VERSION,
            'channels': self.channels,
            'cells_per_stage': self.cells_per_stage,
            'edges': [nb201_family.OPS[c] for c in arch],
        }
        if self.skip != nb201_family.DEFAULT_SKIP:
            spec['skip'] = self.skip
        return nb201_family.validate_spec(spec)

    def to_spec(self, arch: Sequence[int]) -> dict:
        """The ``nb201`` spec of ``arch``; ``zoo.create_model(spec)`` builds exactly the path's network."""
        return self._spec(self.check(arch))

    def from_spec(self, spec: dict) -> Arch:
        """The architecture whose :meth:`to_spec` is ``spec``; a spec outside the space raises naming what differs."""
        spec = nb201_family.validate_spec(spec)
        arch = tuple(nb201_family.OPS.index(op) for op in spec['edges'])
        for i, c in enumerate(arch):
            if c not in self.allowed(i):
                raise ValueError(
                    f'spec edge {i} {spec["edges"][i]!r} is not allowed in sub-space {self.subspace!r} of space '
                    f'{self.name!r} (allowed: {[nb201_family.OPS[x] for x in self.allowed(i)]})'
                )
        self.check_path_spec(spec, self._spec(arch))
        return arch

    # -- costs --------------------------------------------------------------------------------------------------
    def cost(self, arch: Sequence[int], metric: str) -> float:
        """``flops`` = ``macs`` (multiply-adds at ``img_size``), ``params`` (10 classes) or ``latency`` (seconds:
        the zoo network, CPU, batch 1, median of 10 runs, measured once per architecture)."""
        if metric not in COST_METRICS:
            raise ValueError(f'cost metric {metric!r}: expected one of {COST_METRICS}')
        arch = self.check(arch)
        if metric == 'latency':
            return measured_latency(self, arch, lambda: nb201_family.build(self.to_spec(arch)), self.img_size)
        table = _cost_table(self)
        index = 1 if metric == 'params' else 0
        return float(table['fixed'][index] + sum(table['edges'][e][c][index] for e, c in enumerate(arch)))

    def extremes(self) -> tuple[Arch, Arch]:
        """(fewest, most) multiply-adds: edges cost independently, so the cheapest / dearest allowed op of each."""
        rows = _cost_table(self)['edges']
        low = tuple(min(self.allowed(e), key=lambda c, r=r: r[c]) for e, r in enumerate(rows))
        high = tuple(max(self.allowed(e), key=lambda c, r=r: r[c]) for e, r in enumerate(rows))
        return low, high

    def build_supernet(self, num_classes: int = 10, **options: Any) -> NB201Supernet:
        """The weight-sharing supernet (``options``: ``in_chans``, ``drop_rate`` of the classifier, ``interchoice``:
        the options of :func:`search.interchoice.parse_options`)."""
        return NB201Supernet(self, num_classes=num_classes, **options)


def _cell_edge_prefixes(space: NB201Space, edge: int) -> list[str]:
    """Module names of edge ``edge`` in every normal cell (stages 1 and 2 start with their reduction block)."""
    return [
        f'stages.{s}.{j + (1 if s else 0)}.edges.{edge}'
        for s in range(nb201_family.NUM_FEATURE_LEVELS)
        for j in range(space.cells_per_stage)
    ]


@cache
def _cost_table(space: NB201Space) -> dict:
    """(MACs, params) of the fixed parts (10 classes) and of every (edge, op) summed over the cells.

    Counted per module by torch's flop counter on the meta device (no arithmetic runs), one uniform network per op.
    """
    edges: list[list[tuple[int, int]]] = [[] for _ in nb201_family.EDGES]
    fixed = None
    for c in range(len(nb201_family.OPS)):
        with torch.device('meta'):
            net = nb201_family.build(space._spec((c,) * len(nb201_family.EDGES)), num_classes=10).eval()
            x = torch.zeros(1, 3, space.img_size, space.img_size)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            net(x)
        counts = counter.get_flop_counts()
        root = type(net).__name__
        for e in range(len(nb201_family.EDGES)):
            prefixes = _cell_edge_prefixes(space, e)
            macs = sum(sum(counts.get(f'{root}.{p}', {}).values()) for p in prefixes) // 2
            edges[e].append((macs, sum(count_params(net.get_submodule(p)) for p in prefixes)))
        if fixed is None:
            total = sum(counts['Global'].values()) // 2, count_params(net)
            fixed = (total[0] - sum(r[0][0] for r in edges), total[1] - sum(r[0][1] for r in edges))
    return {'fixed': fixed, 'edges': edges}


class EdgeChoice(nn.Module):
    """One choice point: the five candidate ops of one edge of one cell, in the official order.

    ``decision`` is the index of the path entry this edge reads (its edge number e0..e5); ``channels`` the width of
    its input (and output); ``choice`` is the op the supernet set for the current forward; ``forward(x)`` runs
    ``candidates[choice](x)``, or ``route(x)`` when the supernet set one for this forward (inter-choice weights:
    the bias added to the input, the candidate picked by the previous choices after a split).
    """

    def __init__(self, decision: int, channels: int, skip: str) -> None:
        super().__init__()
        self.decision = decision
        self.channels = channels
        self.choice = 0
        self.route: Callable[[torch.Tensor], torch.Tensor] | None = None
        self.candidates = nn.ModuleList(nb201_family.make_op(op, channels, skip) for op in nb201_family.OPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.route is not None:
            return self.route(x)
        return self.candidates[self.choice](x)

    def extra_repr(self) -> str:
        return f'decision={self.decision}, channels={self.channels}'


class NB201Supernet(nb201_family.NB201Net):
    """``supernet(x, arch)`` runs one path; ``path_state_dict(arch)`` is keyed like ``zoo.create_model(to_spec)``.

    The family's network with an :class:`EdgeChoice` on every edge (``stages.<s>.<j>.edges.<e>.candidates.<op>``);
    stem, reduction blocks, final BN + ReLU and classifier are the family's modules. ``spec`` is ``None``: a
    supernet is no single network.
    """

    def __init__(
        self,
        space: NB201Space,
        num_classes: int = 10,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        interchoice: dict | None = None,
    ) -> None:
        options = parse_options(interchoice)  # before the build: a bad option fails fast
        any_arch = tuple(space.allowed(e)[0] for e in range(len(space.num_choices)))
        super().__init__(space.to_spec(any_arch), num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate)
        self.space = space
        self.spec = None
        self.interchoice = None if options is None else InterChoice(self.interchoice_sites(), space, options)

    def interchoice_sites(self) -> list[ChoiceSite]:
        """One site per edge of every cell, in the order the forward runs them (cell by cell, e0..e5): sites of
        the same edge in different cells share their decision; the input width is the cell's."""
        return [ChoiceSite(m.decision, m.channels, m.candidates) for m in self.choice_modules()]

    def make_edge(self, index: int, op: str, channels: int, skip: str) -> nn.Module:
        return EdgeChoice(index, channels, skip)

    def choice_modules(self) -> list[EdgeChoice]:
        """Every :class:`EdgeChoice` in construction order (cell by cell, e0..e5 in a cell), wrapped or not."""
        return [m for m in self.modules() if isinstance(m, EdgeChoice)]

    def set_arch(self, arch: Sequence[int]) -> Arch:
        """Point every choice at the op of ``arch`` (checked against the sub-space); returns the canonical arch."""
        arch = self.space.check(arch)
        ic = self.interchoice
        for k, m in enumerate(self.choice_modules()):
            m.choice = arch[m.decision]
            m.route = None if ic is None else functools.partial(_interchoice_route, ic, k, arch)
        return arch

    def forward(self, x: torch.Tensor, arch: Sequence[int]) -> torch.Tensor:  # type: ignore[override]
        """Logits of the path ``arch`` (the family's forward with the chosen candidates)."""
        self.set_arch(arch)
        try:
            return super().forward(x)
        finally:
            if self.interchoice is not None:
                for m in self.choice_modules():
                    m.route = None  # no reference to this path outlives the forward

    def path_state_dict(self, arch: Sequence[int]) -> dict[str, torch.Tensor]:
        """The weights (and BN buffers) of the path, named as in the zoo network of ``space.to_spec(arch)``."""
        arch = self.space.check(arch)
        decisions = {name: m.decision for name, m in self.named_modules() if isinstance(m, EdgeChoice)}
        out = {}
        for key, tensor in self.state_dict().items():
            if key.startswith('interchoice.'):
                continue  # bias tables belong to the supernet; split copies are taken below
            head, sep, rest = key.partition('.candidates.')
            if not sep:
                out[key] = tensor
                continue
            op, _, tail = rest.partition('.')
            if int(op) == arch[decisions[head]]:
                out[f'{head}.{tail}'] = tensor
        if self.interchoice is not None:  # after a split, a site runs the copy of its prior's choice
            for k, name in enumerate(decisions):
                for key, tensor in self.interchoice.candidate(k, arch).state_dict().items():
                    out[f'{name}.{key}'] = tensor
        return out


def _interchoice_route(ic: InterChoice, k: int, arch: Arch, x: torch.Tensor) -> torch.Tensor:
    """Site ``k`` of the path ``arch`` with inter-choice weights: its bias on the input, then its candidate."""
    return ic.candidate(k, arch)(ic.add_bias(k, x, arch))


#: Named spaces: the paper's (C 16, 2 cells a stage) and a tiny one (C 4, 1 cell a stage) for tests and CPU demos.
SPACES: dict[str, NB201Space] = {
    'nb201': NB201Space('nb201'),
    'nb201_tiny': NB201Space('nb201_tiny', channels=4, cells_per_stage=1),
}


def get_space(name: str | NB201Space = 'nb201', **options: Any) -> NB201Space:
    """A space of :data:`SPACES`; ``options`` replace its fields (``subspace='only_conv'``, ``skip='linear'``...)."""
    if isinstance(name, NB201Space):
        space = name
    elif name not in SPACES:
        raise KeyError(f'unknown NAS-Bench-201 space {name!r}; known: {sorted(SPACES)}')
    else:
        space = SPACES[name]
    if options:
        fields = set(NB201Space.__dataclass_fields__) - {'name'}
        unknown = sorted(set(options) - fields)
        if unknown:
            raise ValueError(f'space {space.name!r}: unknown option(s) {unknown}; known: {sorted(fields)}')
        space = replace(space, **options)
    return space
