"""Action-space search (search/strategies/action_space.py) on a synthetic fitness over the real nb201_tiny space.

The fitness is a fixed random additive function of the choices plus a fixed per-architecture noise, so the optimum
of its additive part is known; a search is judged by its regret (that optimum minus the additive value of the best
architecture it found) averaged over seeds, against uniform random sampling with the same number of evaluations.
"""

from __future__ import annotations

import hashlib
import json
import sys
import zlib

import numpy as np
import pytest
import torch

import search
from search.strategies import action_space as action_space_lib
from search.strategies.action_space import ActionSpaceConfig, ActionSpaceSearch, action_space_search

SPACE = search.get_space('nb201_tiny')  # 6 decisions x 5 operations: 15,625 architectures
TABLE = np.random.default_rng(7).normal(size=(6, 5))
OPTIMUM = float(TABLE.max(axis=1).sum())
NOISE = 0.3
SMALL = dict(
    samples=120, warmup=40, batch=8, height_levels=(60, 90)
)  # Pi-NAS's schedule (80, 400, 800 of 1000) scaled down
SEEDS = range(8)


def value(arch: tuple[int, ...]) -> float:
    """The additive part of the fitness (what the search should maximise)."""
    return float(TABLE[np.arange(6), list(arch)].sum())


def fitness(arch: tuple[int, ...]) -> float:
    """What the search sees: the additive value plus a fixed noise of the architecture (std 0.3)."""
    noise = np.random.default_rng(zlib.crc32(SPACE.key(arch).encode())).normal()
    return value(arch) + NOISE * noise


def random_regret(seed: int, samples: int) -> float:
    """Uniform random search: the best of ``samples`` distinct draws, as regret."""
    g = torch.Generator().manual_seed(1000 + seed)
    seen: set[tuple[int, ...]] = set()
    while len(seen) < samples:
        seen.add(SPACE.sample(g))
    return OPTIMUM - value(max(seen, key=fitness))


def search_regret(seed: int, **options) -> float:
    result = action_space_search(SPACE, fitness, show_progress=False, seed=seed, **{**SMALL, **options})
    assert result.evaluations == options.get('samples', SMALL['samples'])
    return OPTIMUM - value(result.ranked[0].arch)


def clearly_better(regrets: list[float], baseline: list[float]) -> bool:
    """The margin a search must clear: its mean regret at most 60% of random sampling's (measured: 37% for the
    linear classifier, 44% for LightGBM, 86% for the stand-in without trees)."""
    return float(np.mean(regrets)) <= 0.6 * float(np.mean(baseline))


@pytest.fixture(scope='module')
def random_regrets() -> list[float]:
    return [random_regret(seed, SMALL['samples']) for seed in SEEDS]


def test_finds_better_architectures_than_random_sampling_with_the_same_budget(random_regrets):
    regrets = [search_regret(seed) for seed in SEEDS]
    assert clearly_better(regrets, random_regrets), (np.mean(regrets), np.mean(random_regrets))


def test_a_random_search_stand_in_fails_the_margin(random_regrets, monkeypatch):
    """The same search with the trees switched off (every draw uniform) must not clear the margin: the test above
    can fail."""
    monkeypatch.setattr(action_space_lib._Search, '_region', lambda self, n: [])
    regrets = [search_regret(seed) for seed in SEEDS]
    assert not clearly_better(regrets, random_regrets), (np.mean(regrets), np.mean(random_regrets))


def test_the_tree_follows_the_official_schedule(monkeypatch):
    """Warm-up samples are uniform, then a tree of height ``bisect_left(height_levels, n) + 1`` is built every
    ``batch`` samples; the greedy descent goes as deep as the height (or stops at a chance-level classifier)."""
    calls: list[tuple[int, int]] = []
    region = action_space_lib._Search._region

    def spy(self, n):
        path = region(self, n)
        calls.append((n, len(path)))
        return path

    monkeypatch.setattr(action_space_lib._Search, '_region', spy)
    action_space_search(SPACE, value, show_progress=False, samples=120, warmup=40, batch=8, height_levels=[60, 90])
    assert [n for n, _ in calls] == list(range(40, 120, 8))
    heights = [1 if n <= 60 else 2 if n <= 90 else 3 for n, _ in calls]
    assert all(1 <= depth <= h for (_, depth), h in zip(calls, heights, strict=True))
    assert {h for (_, depth), h in zip(calls, heights, strict=True) if depth == h} == {1, 2, 3}
    assert ActionSpaceConfig().height(80) == 1 and ActionSpaceConfig().height(401) == 2  # Pi-NAS: 1..3 up to 1000


def test_the_budget_is_respected_and_rejections_are_counted():
    costs = sorted(SPACE.cost(SPACE.sample(torch.Generator().manual_seed(s)), 'flops') for s in range(50))
    budget = costs[len(costs) // 2]
    result = action_space_search(SPACE, fitness, show_progress=False, metric='flops', budget=budget, **SMALL)
    assert result.evaluations == SMALL['samples'] and result.rejected > 0
    assert all(i.cost <= budget and i.cost == SPACE.cost(i.arch, 'flops') for i in result.ranked)
    assert len({i.key for i in result.ranked}) == result.evaluations  # nothing scored twice
    with pytest.raises(ValueError, match=r'budget flops <= 1\.0 .* smallest flops seen is \d'):
        action_space_search(SPACE, fitness, show_progress=False, metric='flops', budget=1.0, max_draws=200, **SMALL)


def test_same_seed_same_result_other_seed_other_result():
    one = action_space_search(SPACE, fitness, show_progress=False, seed=3, **SMALL)
    assert one == action_space_search(SPACE, fitness, show_progress=False, seed=3, **SMALL)
    assert one.ranked != action_space_search(SPACE, fitness, show_progress=False, seed=4, **SMALL).ranked
    batched = action_space_search(
        SPACE, score_batch=lambda a: [fitness(x) for x in a], show_progress=False, seed=3, **SMALL
    )
    assert batched == one


class Interrupted(Exception):
    pass


def counting(fail_after: int | None = None):
    calls: list[tuple[int, ...]] = []

    def score(arch):
        if fail_after is not None and len(calls) >= fail_after:
            raise Interrupted
        calls.append(arch)
        return fitness(arch)

    return score, calls


@pytest.mark.parametrize('fail_after', [19, 75])  # in the warm-up, in the tree phase
def test_resume_after_an_interruption_gives_the_uninterrupted_result(tmp_path, fail_after):
    options = dict(show_progress=False, metric='flops', budget=1e9, **SMALL)
    straight = action_space_search(SPACE, fitness, **options)
    score, _ = counting(fail_after)
    with pytest.raises(Interrupted):
        action_space_search(SPACE, score, output=tmp_path, **options)
    state = json.loads((tmp_path / 'action_space.json').read_text())
    assert len(state['scored']) == fail_after // SMALL['batch'] * SMALL['batch']  # saved after every batch
    score, calls = counting()
    resumed = action_space_search(SPACE, score, output=tmp_path, **options)
    assert resumed == straight
    assert len(calls) == SMALL['samples'] - len(state['scored'])  # it continued, it did not start over


def test_a_finished_search_extends_to_the_longer_result(tmp_path):
    straight = action_space_search(SPACE, fitness, show_progress=False, **SMALL)
    action_space_search(SPACE, fitness, output=tmp_path, show_progress=False, **{**SMALL, 'samples': 61})
    assert action_space_search(SPACE, fitness, output=tmp_path, show_progress=False, **SMALL) == straight


def test_changed_settings_refuse_to_resume(tmp_path):
    action_space_search(SPACE, fitness, output=tmp_path, show_progress=False, **{**SMALL, 'samples': 20})
    with pytest.raises(ValueError, match=r"action_space\.json was written with other settings \(\['seed'\]\)"):
        action_space_search(SPACE, fitness, output=tmp_path, show_progress=False, seed=9, **SMALL)


def test_engine_searcher_returns_the_top_k_found_under_the_budget(tmp_path):
    """``rated`` is lower-is-better (minus top-1); Found keeps that order and records the top-1."""
    config = ActionSpaceConfig(**SMALL, seed=1)
    budget = 1e9
    found = ActionSpaceSearch(config, tmp_path).search(SPACE, lambda a: -fitness(a), 'flops', budget, 5)
    assert len(found) == 5 and [f.score for f in found] == sorted(f.score for f in found)
    assert all(f.cost == SPACE.cost(f.arch, 'flops') <= budget for f in found)
    assert found[0].extra['top1'] == pytest.approx(fitness(found[0].arch)) and found[0].extra['evaluations'] == 120
    assert [p.name for p in tmp_path.iterdir()] == ['action_space-' + hashlib.sha1(b'unrated').hexdigest()[:12]]


@pytest.mark.parametrize(
    ('options', 'message'),
    [
        ({'classifier': 'svm'}, "classifier 'svm': expected one of linear, lightgbm"),
        ({'samples': 0}, 'samples must be a positive integer, got 0'),
        ({'warmup': 2.5}, 'warmup must be a positive integer, got 2.5'),
        ({'height_levels': [800, 400]}, r'height_levels must be positive and increasing, got \[800, 400\]'),
        ({'val_fraction': 1.0}, r'val_fraction must be in \[0, 1\), got 1.0'),
        ({'l2': 0}, 'l2 must be positive'),
        ({'gbm': {'num_leaves': 4}}, r"gbm options \['num_leaves'\] need classifier: lightgbm"),
        ({'budget': 3.0}, 'budget 3.0 needs a cost metric'),
    ],
)
def test_bad_options_are_named(options, message):
    with pytest.raises(ValueError, match=message):
        ActionSpaceConfig(**options)


def test_bad_option_keys_and_calls_are_named():
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['popsize'\]"):
        ActionSpaceConfig.from_options({'popsize': 3}, seed=0, metric=None, budget=None)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['seed'\]"):  # the run's seed is not an option
        ActionSpaceConfig.from_options({'seed': 3}, seed=0, metric=None, budget=None)
    with pytest.raises(TypeError, match='exactly one of score= and score_batch='):
        action_space_search(SPACE, show_progress=False)
    with pytest.raises(TypeError, match=r"unknown ActionSpaceConfig fields \['popsize'\]"):
        action_space_search(SPACE, fitness, show_progress=False, popsize=3)


def test_a_missing_lightgbm_names_the_extra_before_anything_is_scored(monkeypatch):
    monkeypatch.setitem(sys.modules, 'lightgbm', None)  # import lightgbm now raises ImportError
    score, calls = counting()
    with pytest.raises(ImportError, match=r'supernet-zoo\[gbm\]'):
        action_space_search(SPACE, score, show_progress=False, classifier='lightgbm', **SMALL)
    assert calls == []


def test_the_lightgbm_classifier_is_seeded_and_beats_random_sampling(random_regrets):
    pytest.importorskip('lightgbm')
    regrets = [search_regret(seed, classifier='lightgbm') for seed in SEEDS]
    assert clearly_better(regrets, random_regrets), (np.mean(regrets), np.mean(random_regrets))
    one = action_space_search(SPACE, fitness, show_progress=False, classifier='lightgbm', seed=5, **SMALL)
    assert one == action_space_search(SPACE, fitness, show_progress=False, classifier='lightgbm', seed=5, **SMALL)


def test_the_linear_classifier_is_the_l2_logistic_regression():
    """Newton's method reaches the optimum of the L2 logistic loss (the gradient vanishes), also on separable data."""
    rng = np.random.default_rng(0)
    x = (rng.random((60, 12)) < 0.3).astype(float)
    for t in ((x @ rng.normal(size=12) + 0.5 * rng.normal(size=60) > 0), x[:, 0] > 0):
        t = t.astype(float)
        clf = action_space_lib._Linear(1.0).fit(x, t, seed=0)
        xb = np.hstack([x, np.ones((60, 1))])
        p = 1.0 / (1.0 + np.exp(-(xb @ clf.w)))
        grad = xb.T @ (p - t) + np.append(clf.w[:-1], 0.0)
        assert np.abs(grad).max() < 1e-6
        assert np.mean(clf.predict(x) == (t > 0)) > 0.8
