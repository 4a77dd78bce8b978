"""Evolutionary architecture search under a resource budget: the searcher of SPOS, reused by Pi-NAS and NASViT.

The algorithm is SPOS's (Guo et al., ECCV 2020, section 3.4 and the official ``evolution.py`` of
megvii-model/SinglePathOneShot): score a random population, then for a number of iterations take the top-k of
everything scored so far as parents and breed mutation and crossover children from them; children that break the
budget (or fall below ``min_budget``, for a search within one cost bin as NASViT's) are rejected before they are
scored, children seen before are drawn again, and a shortfall (the space or the tries ran out) is filled with
random architectures. Defaults are SPOS's: population 50, 10 parents, 25 mutations and 25 crossovers per
iteration, mutation probability 0.1, 20 iterations, 10 draws per child.

It codes against the SearchSpace protocol only (``sample``, ``mutate``, ``crossover``, ``cost``, ``key``; an
architecture is a tuple of ints) and a score function (higher is better). Reproducibility: the random draws of
iteration ``i`` come from a generator seeded by ``(seed, i)``, and after every iteration the scored archive and
the counters are written atomically to ``<output>/evolution.json``; a restarted search reads it and ends with the
same result as an uninterrupted one. Every scored architecture is appended to ``<output>/evaluated.jsonl``
(iteration, key, arch, score, cost); scores are cached by key, so no architecture is scored twice.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from backbones._runtime import atomic_write_json

from ..engine import generator, progress

__all__ = ['EvolutionConfig', 'EvolutionResult', 'Individual', 'evolution_search']

Arch = tuple[int, ...]
STATE_FILE = 'evolution.json'
LOG_FILE = 'evaluated.jsonl'
STATE_VERSION = 1


class EvolvableSpace(Protocol):
    """The part of the SearchSpace protocol that evolution uses."""

    def sample(self, generator: torch.Generator) -> Arch: ...

    def mutate(self, arch: Arch, generator: torch.Generator, prob: float) -> Arch: ...

    def crossover(self, a: Arch, b: Arch, generator: torch.Generator) -> Arch: ...

    def cost(self, arch: Arch, metric: str) -> float: ...

    def key(self, arch: Arch) -> str: ...


@dataclass
class EvolutionConfig:
    """Evolution options (SPOS defaults). ``budget`` caps ``space.cost(arch, metric)``; ``None`` = no constraint."""

    population: int = 50
    parents: int = 10
    mutations: int = 25
    crossovers: int = 25
    mutate_prob: float = 0.1
    iterations: int = 20
    max_tries: int = 10
    seed: int = 0
    metric: str | None = None
    budget: float | None = None
    min_budget: float | None = None  # a lower cost bound too: the search stays in one FLOPs bin (NASViT)

    def __post_init__(self) -> None:
        for name in ('population', 'parents', 'max_tries'):
            if getattr(self, name) < 1:
                raise ValueError(f'evolution {name} must be >= 1, got {getattr(self, name)}')
        for name in ('mutations', 'crossovers', 'iterations'):
            if getattr(self, name) < 0:
                raise ValueError(f'evolution {name} must be >= 0, got {getattr(self, name)}')
        if not 0.0 <= self.mutate_prob <= 1.0:
            raise ValueError(f'evolution mutate_prob must be in [0, 1], got {self.mutate_prob}')
        if self.budget is not None and not self.metric:
            raise ValueError(f'evolution budget {self.budget} needs a cost metric (metric is not set)')
        if self.min_budget is not None:
            if not self.metric:
                raise ValueError(f'evolution min_budget {self.min_budget} needs a cost metric (metric is not set)')
            if self.budget is not None and self.min_budget > self.budget:
                raise ValueError(f'evolution min_budget {self.min_budget} is above the budget {self.budget}')

    def max_evaluations(self) -> int:
        """The most architectures a search scores: the population, then the children of every iteration."""
        return self.population + self.iterations * (self.mutations + self.crossovers)


@dataclass(frozen=True)
class Individual:
    """A scored architecture; ``cost`` is ``None`` when no metric is set."""

    arch: Arch
    key: str
    score: float
    cost: float | None


@dataclass(frozen=True)
class EvolutionResult:
    """The best ``parents`` architectures (best first) and the counts of the whole search."""

    top: list[Individual]
    evaluations: int
    rejected: int
    iterations: int


class _Search:
    def __init__(
        self,
        space: EvolvableSpace,
        score: Callable[[Arch], float] | None,
        score_batch: Callable[[list[Arch]], Sequence[float]] | None,
        cfg: EvolutionConfig,
        output: Path | None,
        show_progress: bool,
    ) -> None:
        self.space, self.score_one, self.score_batch, self.cfg = space, score, score_batch, cfg
        self.output, self.show_progress = output, show_progress
        self.scored: dict[str, Individual] = {}
        self.costs: dict[str, float] = {}
        self.over_budget: set[str] = set()
        self.rejected = 0
        self.min_cost: float | None = None
        self.done = -1  # the last finished iteration (0 = the initial population)

    # -- state ------------------------------------------------------------------------------------------------
    def _fingerprint(self) -> dict:
        values = asdict(self.cfg)
        values.pop('iterations')  # a finished search may be extended by more iterations
        return values

    def _save(self) -> None:
        if self.output is None:
            return
        doc = {
            'version': STATE_VERSION,
            'config': self._fingerprint(),
            'iteration': self.done,
            'rejected': self.rejected,
            'min_cost': self.min_cost,
            'over_budget': sorted(self.over_budget),
            'costs': self.costs,
            'scored': [[list(i.arch), i.key, i.score, i.cost] for i in self.scored.values()],
        }
        atomic_write_json(self.output / STATE_FILE, doc, indent=None)

    def _load(self) -> None:
        path = None if self.output is None else self.output / STATE_FILE
        if path is None or not path.is_file():
            if path is not None and (self.output / LOG_FILE).is_file():
                (self.output / LOG_FILE).unlink()  # a log without a state belongs to a run that never finished
            return
        try:
            doc = json.loads(path.read_text())
            if doc.get('version') != STATE_VERSION:
                raise ValueError(f'version {doc.get("version")}, expected {STATE_VERSION}')
        except ValueError as err:
            raise ValueError(f'evolution state {path} is corrupt: {err}') from None
        saved, now = doc['config'], self._fingerprint()
        changed = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
        if changed:
            raise ValueError(f'evolution state {path} was written with other settings ({changed}); use a new output')
        self.done, self.rejected, self.min_cost = doc['iteration'], doc['rejected'], doc['min_cost']
        self.over_budget, self.costs = set(doc['over_budget']), dict(doc['costs'])
        for arch, key, score, cost in doc['scored']:
            self.scored[key] = Individual(tuple(arch), key, score, cost)
        self._trim_log()

    def _trim_log(self) -> None:
        """Drop log lines of an iteration the state does not hold (the run died during it)."""
        path = self.output / LOG_FILE
        if not path.is_file():
            return
        lines = [line for line in path.read_text().splitlines() if line and json.loads(line)['key'] in self.scored]
        path.write_text(''.join(f'{line}\n' for line in lines))

    # -- candidates -------------------------------------------------------------------------------------------
    def _cost(self, arch: Arch, key: str) -> float | None:
        if not self.cfg.metric:
            return None
        if key not in self.costs:
            self.costs[key] = float(self.space.cost(arch, self.cfg.metric))
            c = self.costs[key]
            self.min_cost = c if self.min_cost is None else min(self.min_cost, c)
        return self.costs[key]

    def _admit(self, arch: Arch, batch: dict[str, Arch]) -> bool:
        """Keep ``arch`` for scoring when it is new and within the budget; count it when the budget rejects it."""
        arch = tuple(int(a) for a in arch)
        key = self.space.key(arch)
        if key in self.scored or key in batch:
            return False
        if key in self.over_budget:
            self.rejected += 1
            return False
        cost = self._cost(arch, key)
        low = self.cfg.min_budget
        if cost is not None and (
            (self.cfg.budget is not None and cost > self.cfg.budget) or (low is not None and cost < low)
        ):
            self.over_budget.add(key)
            self.rejected += 1
            return False
        batch[key] = arch
        return True

    def _fill(self, batch: dict[str, Arch], count: int, draw: Callable[[], Arch]) -> None:
        target = len(batch) + count
        for _ in range(count * self.cfg.max_tries):
            if len(batch) >= target:
                return
            self._admit(draw(), batch)

    def _parents(self) -> list[Individual]:
        ranked = sorted(self.scored.values(), key=lambda i: (-i.score, i.key))
        return ranked[: self.cfg.parents]

    def _children(self, gen: torch.Generator) -> dict[str, Arch]:
        parents = [p.arch for p in self._parents()]
        batch: dict[str, Arch] = {}

        def pick() -> Arch:
            return parents[int(torch.randint(len(parents), (1,), generator=gen))]

        def cross() -> Arch:
            a, b = pick(), pick()
            return self.space.crossover(a, b, gen)

        self._fill(batch, self.cfg.mutations, lambda: self.space.mutate(pick(), gen, self.cfg.mutate_prob))
        self._fill(batch, self.cfg.crossovers, cross)
        short = self.cfg.mutations + self.cfg.crossovers - len(batch)
        if short > 0:
            self._fill(batch, short, lambda: self.space.sample(gen))
        return batch

    # -- scoring ----------------------------------------------------------------------------------------------
    def _evaluate(self, batch: dict[str, Arch], iteration: int) -> None:
        archs = list(batch.values())
        if self.score_batch is not None:
            scores = [float(s) for s in self.score_batch(archs)]
            if len(scores) != len(archs):
                raise ValueError(f'score_batch returned {len(scores)} scores for {len(archs)} architectures')
        else:
            scores = [float(self.score_one(a)) for a in archs]
        lines = []
        for (key, arch), score in zip(batch.items(), scores, strict=True):
            if not math.isfinite(score):
                raise ValueError(f'the score of architecture {key} is {score}; scores must be finite')
            ind = Individual(arch, key, score, self.costs.get(key))
            self.scored[key] = ind
            lines.append(
                json.dumps({'iteration': iteration, 'key': key, 'arch': list(arch), 'score': score, 'cost': ind.cost})
            )
        if self.output is not None and lines:
            with open(self.output / LOG_FILE, 'a') as f:
                f.write(''.join(f'{line}\n' for line in lines))

    def _no_candidate_error(self) -> ValueError:
        if self.cfg.min_budget is not None:
            return ValueError(
                f'no architecture with {self.cfg.min_budget} <= {self.cfg.metric} <= {self.cfg.budget} in '
                f'{self.rejected} draws; the smallest {self.cfg.metric} seen is {self.min_cost}'
            )
        if self.cfg.budget is not None:
            return ValueError(
                f'no architecture within the budget {self.cfg.metric} <= {self.cfg.budget} in '
                f'{self.rejected} draws; the smallest {self.cfg.metric} seen is {self.min_cost}'
            )
        return ValueError(f'the space produced no architecture in {self.cfg.population * self.cfg.max_tries} draws')

    # -- the loop ---------------------------------------------------------------------------------------------
    def run(self) -> EvolutionResult:
        if self.output is not None:
            self.output.mkdir(parents=True, exist_ok=True)
        self._load()
        if self.done < 0:
            gen = generator(self.cfg.seed, 'evolution', 0)
            batch: dict[str, Arch] = {}
            self._fill(batch, self.cfg.population, lambda: self.space.sample(gen))
            if not batch:
                raise self._no_candidate_error()
            self._evaluate(batch, 0)
            self.done = 0
            self._save()
        bar = progress(range(self.done + 1, self.cfg.iterations + 1), self.show_progress, desc='evolution', leave=False)
        for it in bar:
            batch = self._children(generator(self.cfg.seed, 'evolution', it))
            self._evaluate(batch, it)
            self.done = it
            self._save()
            bar.set_postfix(best=f'{self._parents()[0].score:.4g}', rejected=self.rejected)
        return EvolutionResult(self._parents(), len(self.scored), self.rejected, self.done)


def evolution_search(
    space: EvolvableSpace,
    score: Callable[[Arch], float] | None = None,
    config: EvolutionConfig | None = None,
    output: str | Path | None = None,
    *,
    score_batch: Callable[[list[Arch]], Sequence[float]] | None = None,
    show_progress: bool = True,
    **options: Any,
) -> EvolutionResult:
    """Evolve architectures of ``space`` to maximise ``score`` (or ``score_batch``, which scores a list at once).

    ``config`` or ``options`` (the :class:`EvolutionConfig` fields) set the search; with ``output`` the state and
    the log of evaluations are written there and a rerun resumes from them. Raises ``ValueError`` naming the budget
    and the smallest cost seen when no architecture satisfies the budget.
    """
    if (score is None) == (score_batch is None):
        raise TypeError('evolution_search needs exactly one of score= and score_batch=')
    if config is not None and options:
        raise TypeError('give either config or EvolutionConfig fields, not both')
    if config is None:
        unknown = sorted(set(options) - {f.name for f in dataclasses.fields(EvolutionConfig)})
        if unknown:
            raise TypeError(f'unknown EvolutionConfig fields {unknown}')
        config = EvolutionConfig(**options)
    out = None if output is None else Path(output)
    return _Search(space, score, score_batch, config, out, show_progress).run()
