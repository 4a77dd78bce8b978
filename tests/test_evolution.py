"""Evolutionary search (search/strategies/evolution.py) against brute force on a space small enough to enumerate."""

import itertools
import json

import pytest
import torch

from search.strategies.evolution import EvolutionConfig, evolution_search

DECISIONS, OPTIONS = 5, 4  # 1024 architectures
VALUES = torch.Generator().manual_seed(7)
TABLE = torch.rand(DECISIONS, OPTIONS, generator=VALUES).tolist()
COSTS = [[1.0, 2.0, 3.5, 5.0]] * DECISIONS
SMALL = dict(population=16, parents=4, mutations=8, crossovers=8, iterations=12, mutate_prob=0.3, seed=3)


class ToySpace:
    """The SearchSpace protocol on DECISIONS x OPTIONS integer choices; cost 'units' sums a per-option table."""

    size = OPTIONS**DECISIONS
    num_choices = (OPTIONS,) * DECISIONS

    def allowed(self, i: int) -> range:
        return range(OPTIONS)

    def sample(self, generator: torch.Generator) -> tuple:
        return tuple(torch.randint(OPTIONS, (DECISIONS,), generator=generator).tolist())

    def mutate(self, arch: tuple, generator: torch.Generator, prob: float) -> tuple:
        flip = torch.rand(DECISIONS, generator=generator) < prob
        fresh = torch.randint(OPTIONS, (DECISIONS,), generator=generator)
        return tuple(int(f) if m else a for a, f, m in zip(arch, fresh, flip, strict=True))

    def crossover(self, a: tuple, b: tuple, generator: torch.Generator) -> tuple:
        take = torch.rand(DECISIONS, generator=generator) < 0.5
        return tuple(x if t else y for x, y, t in zip(a, b, take, strict=True))

    def cost(self, arch: tuple, metric: str) -> float:
        assert metric == 'units'
        return sum(COSTS[i][c] for i, c in enumerate(arch))

    def key(self, arch: tuple) -> str:
        return '-'.join(map(str, arch))


def score(arch: tuple) -> float:
    """Per-position values plus an interaction: options 3 at positions 0 and 1 together earn a bonus."""
    bonus = 0.6 if arch[0] == 3 and arch[1] == 3 else 0.0
    return sum(TABLE[i][c] for i, c in enumerate(arch)) + bonus


def brute_force(budget: float | None = None) -> tuple:
    archs = itertools.product(range(OPTIONS), repeat=DECISIONS)
    ok = [a for a in archs if budget is None or ToySpace().cost(a, 'units') <= budget]
    return max(ok, key=score)


class Counting:
    def __init__(self, fail_after: int | None = None) -> None:
        self.calls, self.seen, self.fail_after = 0, [], fail_after

    def __call__(self, arch: tuple) -> float:
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt('simulated interruption')
        self.calls += 1
        self.seen.append(arch)
        return score(arch)


def test_finds_the_brute_force_optimum_within_the_stated_evaluations(tmp_path):
    cfg = EvolutionConfig(**SMALL)
    counter = Counting()
    result = evolution_search(ToySpace(), counter, cfg, tmp_path, show_progress=False)
    assert result.top[0].arch == brute_force()
    assert result.top[0].score == pytest.approx(score(brute_force()))
    assert counter.calls == result.evaluations <= cfg.max_evaluations() < ToySpace.size / 4
    assert len(set(counter.seen)) == len(counter.seen)  # cached by key: nothing scored twice
    assert [i.score for i in result.top] == sorted((i.score for i in result.top), reverse=True)
    assert len(result.top) == cfg.parents and result.rejected == 0
    log = [json.loads(line) for line in (tmp_path / 'evaluated.jsonl').read_text().splitlines()]
    assert len(log) == counter.calls and {r['iteration'] for r in log} == set(range(cfg.iterations + 1))
    assert set(log[0]) == {'iteration', 'key', 'arch', 'score', 'cost'}


def test_a_budget_is_respected_and_gives_the_constrained_optimum():
    budget = 11.0
    assert ToySpace().cost(brute_force(), 'units') > budget  # the constraint binds
    result = evolution_search(ToySpace(), score, show_progress=False, metric='units', budget=budget, **SMALL)
    best = brute_force(budget)
    assert result.top[0].arch == best and result.top[0].cost == ToySpace().cost(best, 'units')
    assert all(i.cost <= budget for i in result.top)
    assert result.rejected > 0


def test_resume_after_interruption_gives_the_identical_result(tmp_path):
    straight = evolution_search(ToySpace(), score, show_progress=False, metric='units', budget=12.0, **SMALL)
    # stop after 4 iterations, then kill the next run in the middle of an iteration, then finish
    evolution_search(
        ToySpace(),
        score,
        output=tmp_path,
        show_progress=False,
        metric='units',
        budget=12.0,
        **{**SMALL, 'iterations': 4},
    )
    assert json.loads((tmp_path / 'evolution.json').read_text())['iteration'] == 4
    with pytest.raises(KeyboardInterrupt):
        evolution_search(
            ToySpace(),
            Counting(fail_after=21),
            output=tmp_path,
            show_progress=False,
            metric='units',
            budget=12.0,
            **SMALL,
        )
    counter = Counting()
    resumed = evolution_search(
        ToySpace(), counter, output=tmp_path, show_progress=False, metric='units', budget=12.0, **SMALL
    )
    assert resumed == straight
    assert counter.calls < straight.evaluations  # it continued, it did not start over
    log = [json.loads(line) for line in (tmp_path / 'evaluated.jsonl').read_text().splitlines()]
    assert len(log) == straight.evaluations == len({r['key'] for r in log})  # no line of the killed iteration


def test_changed_settings_refuse_to_resume(tmp_path):
    evolution_search(ToySpace(), score, output=tmp_path, show_progress=False, **{**SMALL, 'iterations': 1})
    with pytest.raises(ValueError, match=r"evolution\.json was written with other settings \(\['seed'\]\)"):
        evolution_search(ToySpace(), score, output=tmp_path, show_progress=False, **{**SMALL, 'seed': 4})


def test_an_unsatisfiable_budget_names_the_budget_and_the_smallest_cost():
    with pytest.raises(ValueError, match=r'budget units <= 4\.0 .* smallest units seen is 5\.0'):
        evolution_search(ToySpace(), score, show_progress=False, metric='units', budget=4.0, **SMALL)


def test_batched_scoring_matches_one_by_one_and_bad_options_fail():
    batches = []

    def batch(archs):
        batches.append(len(archs))
        return [score(a) for a in archs]

    one = evolution_search(ToySpace(), score, show_progress=False, **SMALL)
    many = evolution_search(ToySpace(), score_batch=batch, show_progress=False, **SMALL)
    assert one == many and batches[0] == SMALL['population']
    with pytest.raises(TypeError, match='unknown EvolutionConfig fields'):
        evolution_search(ToySpace(), score, populaton=3)
    with pytest.raises(ValueError, match='needs a cost metric'):
        EvolutionConfig(budget=3.0)
    with pytest.raises(ValueError, match='mutate_prob'):
        EvolutionConfig(mutate_prob=2.0)
