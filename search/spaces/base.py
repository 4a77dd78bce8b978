"""A base class for search spaces: generic sampling, mutation, crossover and size over per-decision choices.

A space subclasses :class:`ChoiceSpace`, says how many options each decision has (``num_choices``) and implements
what only it knows (``to_spec`` / ``from_spec``, ``cost``, ``extremes``, ``build_supernet``). Spaces whose later
decisions are unused for some earlier ones (a cell of 2 layers in a block whose deepest cell has 4) override
``canonical`` to zero the unused decisions, so that one network has one :data:`~search.protocols.Arch`.
Mutation and crossover follow SPOS (Guo et al., ECCV 2020, section 3.4 and its official ``search.py``): each
decision is redrawn uniformly with probability ``prob``; a child takes each decision from either parent with
probability 1/2.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Hashable, Sequence

import torch
import torch.nn as nn

from ..protocols import Arch

__all__ = ['ChoiceSpace', 'measured_latency']

_LATENCIES: dict[tuple[Hashable, Arch], float] = {}


@torch.no_grad()
def measured_latency(
    space: Hashable, arch: Arch, build: Callable[[], nn.Module], img_size: int, runs: int = 10
) -> float:
    """Seconds per forward of ``build()`` (eval, CPU, batch 1, ``img_size`` pixels): the median of ``runs`` after one
    warm-up pass, measured once per (space, arch) and then read from a cache, so that a search sees stable costs."""
    key = (space, arch)
    if key not in _LATENCIES:
        net = build().eval()
        x = torch.zeros(1, 3, img_size, img_size)
        net(x)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            net(x)
            times.append(time.perf_counter() - start)
        _LATENCIES[key] = statistics.median(times)
    return _LATENCIES[key]


class ChoiceSpace:
    """Generic parts of a :class:`~search.protocols.SearchSpace`; subclasses provide ``name`` and ``num_choices``."""

    name: str

    @property
    def num_choices(self) -> tuple[int, ...]:
        raise NotImplementedError(f'{type(self).__name__} must define num_choices')

    def allowed(self, i: int) -> tuple[int, ...]:
        """Options decision ``i`` allows (all of them here; a masked sub-space returns fewer)."""
        return tuple(range(self.num_choices[i]))

    def canonical(self, arch: Sequence[int]) -> Arch:
        """The one representative of ``arch`` (identity here; see the module docstring)."""
        return tuple(int(x) for x in arch)

    def check(self, arch: Sequence[int]) -> Arch:
        """``arch`` as a canonical tuple; a wrong length or a disallowed option raises naming the decision."""
        arch = tuple(arch)
        if len(arch) != len(self.num_choices):
            raise ValueError(f'space {self.name!r} has {len(self.num_choices)} decisions, the architecture {len(arch)}')
        for i, x in enumerate(arch):
            if isinstance(x, bool) or not isinstance(x, int) or x not in self.allowed(i):
                raise ValueError(f'space {self.name!r} decision {i}: option {x!r} is not allowed {self.allowed(i)}')
        return self.canonical(arch)

    @property
    def size(self) -> int:
        """Number of architectures (the product of the allowed options; override when decisions are unused)."""
        return math.prod(len(self.allowed(i)) for i in range(len(self.num_choices)))

    def _draw(self, i: int, generator: torch.Generator) -> int:
        options = self.allowed(i)
        return options[int(torch.randint(len(options), (1,), generator=generator))]

    def sample(self, generator: torch.Generator) -> Arch:
        """Every decision uniform over its allowed options."""
        return self.canonical([self._draw(i, generator) for i in range(len(self.num_choices))])

    def mutate(self, arch: Arch, generator: torch.Generator, prob: float) -> Arch:
        """Each decision redrawn uniformly with probability ``prob`` (the draw may repeat the old option)."""
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f'mutation probability {prob} is not in [0, 1]')
        arch = self.check(arch)
        out = []
        for i, x in enumerate(arch):
            redraw = float(torch.rand((), generator=generator)) < prob
            out.append(self._draw(i, generator) if redraw else x)
        return self.canonical(out)

    def crossover(self, a: Arch, b: Arch, generator: torch.Generator) -> Arch:
        """Each decision taken from ``a`` or ``b`` with probability 1/2."""
        a, b = self.check(a), self.check(b)
        pick = torch.randint(2, (len(a),), generator=generator).tolist()
        return self.canonical([x if p == 0 else y for x, y, p in zip(a, b, pick, strict=True)])

    def check_path_spec(self, spec: dict, expected: dict) -> None:
        """Refuse a spec that is not ``expected`` (the spec of the path it decodes to), naming the fields that
        differ: what ``from_spec`` checks after decoding."""
        fields = sorted(k for k in set(spec) | set(expected) if spec.get(k) != expected.get(k))
        if fields:
            raise ValueError(
                f'spec is not a path of space {self.name!r}: field(s) {fields} differ (expected {expected})'
            )

    def key(self, arch: Arch) -> str:
        """Decisions joined by '-' (canonical, so equal networks have equal keys)."""
        return '-'.join(str(x) for x in self.check(arch))

    def __contains__(self, arch: object) -> bool:
        try:
            self.check(arch)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return False
        return True


@torch.no_grad()
def cpu_latency(model: nn.Module, img_size: int, runs: int = 10) -> float:
    """Seconds per forward of ``model`` (eval) on one ``img_size`` image: the median of ``runs`` after a warm-up."""
    model.eval()
    x = torch.zeros(1, 3, img_size, img_size)
    model(x)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - start)
    return statistics.median(times)
