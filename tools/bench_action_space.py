"""Action-space search on the synthetic fitness of tests/test_action_space.py: node classifiers against random sampling.

    PYTHONPATH=. python tools/bench_action_space.py --seeds 8 --json benchmarks/action_space_synthetic.json

Regret = optimum of the additive part minus the additive value of the best architecture found (lower is better),
mean over seeds, 120 evaluations on nb201_tiny. ``lightgbm_tuned`` replaces the fixed LightGBM parameters by the
official hyper-parameter search: hyperopt TPE with 10 evaluations draws all 10 from its prior (its first 20 trials
are random, ``n_startup_jobs``), so it is 10 random draws from the official space, each fitted on the node's 80%
split and judged by its error on the other 20%. Needs LightGBM for the two lightgbm rows.
"""

from __future__ import annotations

import argparse
import json
import time
import zlib

import numpy as np
import torch

import search
from search.strategies import action_space as lib

SPACE = search.get_space('nb201_tiny')
TABLE = np.random.default_rng(7).normal(size=(6, 5))
OPTIMUM = float(TABLE.max(axis=1).sum())
SMALL = dict(samples=120, warmup=40, batch=8, height_levels=(60, 90))


def value(arch: tuple[int, ...]) -> float:
    return float(TABLE[np.arange(6), list(arch)].sum())


def fitness(arch: tuple[int, ...]) -> float:
    return value(arch) + 0.3 * np.random.default_rng(zlib.crc32(SPACE.key(arch).encode())).normal()


class TunedLightGBM(lib._LightGBM):
    """The official search space of ``learning_phase.py`` sampled 10 times, the best on a 20% split refit."""

    def fit(self, x: np.ndarray, t: np.ndarray, seed: int) -> TunedLightGBM:
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(t))
        val, train = order[: max(1, round(0.2 * len(t)))], order[max(1, round(0.2 * len(t))) :]
        best: tuple[float, dict] | None = None
        for _ in range(10):
            params = {
                'learning_rate': float(np.exp(rng.uniform(np.log(0.01), np.log(0.5)))),
                'max_depth': int(rng.choice([-1, 2, 3, 4, 5, 6])),
                'num_leaves': int(rng.choice(np.linspace(10, 200, 50, dtype=int))),
                'feature_fraction': float(np.clip(np.round(rng.uniform(0.5, 1.0), 1), 0.5, 1.0)),
                'bagging_fraction': float(np.clip(np.round(rng.uniform(0.5, 1.0), 1), 0.5, 1.0)),
                'bagging_freq': int(rng.choice(np.linspace(0, 50, 10, dtype=int))),
                'lambda_l1': float(rng.uniform(0, 2)),
                'lambda_l2': float(rng.uniform(0, 2)),
                'min_sum_hessian_in_leaf': float(rng.uniform(0.5, 10)),
            }
            error = 0.0
            if t[train].any() and not t[train].all():
                model = lib._LightGBM(params).fit(x[train], t[train], seed)
                error = float(np.mean(model.predict(x[val]) != t[val]))
            if best is None or error < best[0]:
                best = (error, params)
        self.params = {**lib.GBM_DEFAULTS, **best[1]}
        return super().fit(x, t, seed)


def random_regret(seed: int) -> float:
    g = torch.Generator().manual_seed(1000 + seed)
    seen: set[tuple[int, ...]] = set()
    while len(seen) < SMALL['samples']:
        seen.add(SPACE.sample(g))
    return OPTIMUM - value(max(seen, key=fitness))


def search_regret(seed: int, classifier: str) -> float:
    result = lib.action_space_search(SPACE, fitness, show_progress=False, seed=seed, classifier=classifier, **SMALL)
    return OPTIMUM - value(result.ranked[0].arch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--seeds', type=int, default=8)
    parser.add_argument('--variants', nargs='+', default=['random', 'linear', 'lightgbm', 'lightgbm_tuned'])
    parser.add_argument('--json', default=None, help='write the numbers here')
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = {}
    for variant in args.variants:
        start = time.perf_counter()
        if variant == 'random':
            regrets = [random_regret(s) for s in range(args.seeds)]
        else:
            lib._LightGBM = TunedLightGBM if variant == 'lightgbm_tuned' else _PLAIN
            classifier = 'linear' if variant == 'linear' else 'lightgbm'
            regrets = []
            for s in range(args.seeds):
                regrets.append(search_regret(s, classifier))
                print(f'  {variant} seed {s}: regret {regrets[-1]:.3f}', flush=True)
        seconds = (time.perf_counter() - start) / args.seeds
        mean, sem = float(np.mean(regrets)), float(np.std(regrets) / np.sqrt(len(regrets)))
        rows[variant] = {'mean_regret': mean, 'sem': sem, 'regrets': regrets, 'seconds_per_search': seconds}
        print(f'{variant:15s} regret {mean:.3f} +- {sem:.3f} ({seconds:.2f} s per search)', flush=True)
    if args.json:
        doc = {'space': 'nb201_tiny', 'settings': {**SMALL, 'noise': 0.3}, 'optimum': OPTIMUM, 'rows': rows}
        with open(args.json, 'w') as f:
            json.dump(doc, f, indent=1)


_PLAIN = lib._LightGBM

if __name__ == '__main__':
    main()
