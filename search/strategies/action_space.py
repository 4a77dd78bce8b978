"""Action-space search (LaNAS-style): the searcher of Pi-NAS, usable by any method on any space.

Pi-NAS (section 4.1) searches with "Action Space" (Wang et al., arXiv 1906.06832, LaNAS): the official
``apis/search_phase.py`` / ``apis/learning_phase.py`` of github.com/Ernie1/Pi-NAS (specs/pinas.md section 3.3) score
``warmup`` = 80 distinct uniform architectures, then repeat: build a binary tree over everything scored so far, each
node splitting its samples at the median fitness (good side: >= median) and learning a classifier of that split;
descend greedily to the child with the higher median (the official "UCB" has no exploration term, so this is the good
side at every level); rejection-sample unseen uniform architectures that every classifier on the chosen path puts on
the chosen side; score ``batch`` = 8 of them, rebuild the tree. The tree height is ``bisect_left(height_levels, n) +
1`` with levels (400, 800, 1600, 3200); the search stops after ``samples`` = 1000 evaluations.

Decisions (docs/search.md, "Action-space search"):

* Node classifier: ``linear`` (default, no extra dependency: L2 logistic regression by Newton's method on the one-hot
  choices; LaNAS's nodes are linear models too) or ``lightgbm`` (the official classifier, optional extra ``gbm``)
  with fixed documented parameters (:data:`GBM_DEFAULTS`) instead of hyperopt TPE: with 10 evaluations hyperopt's TPE
  draws all 10 from its prior (its first 20 trials are random), and that random hyper-parameter search adds nothing
  measurable on the synthetic test (docs/search.md).
* The official code retrains a node's classifier until its validation error (20% split) is below 0.5; with its fixed
  seeds every retrain is the same model, so the loop only waits for a growing slack. Here a classifier that is no
  better than chance on the validation split ends the descent (its node is the leaf); the classifier that constrains
  the sampling is refit on all of the node's samples.
* Constraint: candidates whose ``space.cost(arch, metric)`` exceeds the budget are rejected before they are scored
  (the official search has none); draws are ``space.sample`` so masked sub-spaces are respected.
* Reproducibility: the draws of the batch that starts at evaluation ``n`` come from a generator seeded by
  ``(seed, n)`` and the tree it uses is a pure function of the first ``n`` samples, so after every evaluation batch
  the samples are written atomically to ``<output>/action_space.json`` and a restarted search ends with the same
  result as an uninterrupted one (and ``samples`` may be raised to extend a finished search).
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import json
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from backbones._runtime import atomic_write_json

from ..engine import derive_seed, generator, progress
from ..protocols import Found
from .evolution import Individual

__all__ = [
    'CLASSIFIERS',
    'GBM_DEFAULTS',
    'ActionSpaceConfig',
    'ActionSpaceResult',
    'ActionSpaceSearch',
    'action_space_search',
]

Arch = tuple[int, ...]
STATE_FILE = 'action_space.json'
STATE_VERSION = 1
CLASSIFIERS = ('linear', 'lightgbm')
#: How LightGBM is installed when the ``lightgbm`` classifier is chosen (the optional extra of pyproject.toml).
GBM_INSTALL = "pip install 'supernet-zoo[gbm]' (lightgbm==4.7.0)"
#: Fixed LightGBM parameters replacing the official TPE search (10 random draws over lr, depth, leaves, bagging,
#: regularisation): shallow trees and a minimum leaf size that fit a few dozen to a thousand samples.
GBM_DEFAULTS: dict[str, Any] = {
    'objective': 'binary',
    'learning_rate': 0.1,
    'num_leaves': 8,
    'max_depth': 3,
    'min_data_in_leaf': 5,
    'min_sum_hessian_in_leaf': 1e-3,
    'lambda_l2': 1.0,
    'num_boost_round': 100,  # official: 100 rounds
}
_CHUNK = 64  # candidates drawn and classified at once


@dataclass
class ActionSpaceConfig:
    """Action-space search options; defaults are the official Pi-NAS values (module docstring)."""

    samples: int = 1000  # most architectures scored (paper 4.1 "maximum sample size of 1000")
    warmup: int = 80  # uniform distinct samples before the first tree (pinas_linear_evaluation.py initial_sample)
    batch: int = 8  # samples between tree rebuilds (pinas_linear_evaluation.py selects)
    height_levels: tuple[int, ...] = (400, 800, 1600, 3200)  # tree height = bisect_left(levels, n) + 1
    classifier: str = 'linear'  # 'linear' or 'lightgbm' (official; extra 'gbm')
    val_fraction: float = 0.2  # held out per node to check the classifier beats chance (official 80/20 split)
    max_draws: int = 200_000  # uniform draws to find one new architecture (learning_phase.py sample_n)
    l2: float = 1.0  # L2 penalty of the linear classifier (on the summed log-loss, as scikit-learn's C = 1)
    gbm: dict = field(default_factory=dict)  # LightGBM parameters replacing GBM_DEFAULTS entries
    seed: int = 0
    metric: str | None = None
    budget: float | None = None

    def __post_init__(self) -> None:
        for name in ('samples', 'warmup', 'batch', 'max_draws'):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f'action_space {name} must be a positive integer, got {value!r}')
        levels = self.height_levels
        if not isinstance(levels, (list, tuple)) or any(isinstance(v, bool) or not isinstance(v, int) for v in levels):
            raise ValueError(f'action_space height_levels must be a list of integers, got {levels!r}')
        if list(levels) != sorted(levels) or any(v < 1 for v in levels):
            raise ValueError(f'action_space height_levels must be positive and increasing, got {list(levels)}')
        self.height_levels = tuple(levels)
        if self.classifier not in CLASSIFIERS:
            raise ValueError(f'action_space classifier {self.classifier!r}: expected one of {", ".join(CLASSIFIERS)}')
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f'action_space val_fraction must be in [0, 1), got {self.val_fraction}')
        if not self.l2 > 0:
            raise ValueError(f'action_space l2 must be positive, got {self.l2}')
        if not isinstance(self.gbm, dict):
            raise ValueError(f'action_space gbm must be a mapping of LightGBM parameters, got {self.gbm!r}')
        if self.gbm and self.classifier != 'lightgbm':
            raise ValueError(f'action_space gbm options {sorted(self.gbm)} need classifier: lightgbm')
        if self.budget is not None and not self.metric:
            raise ValueError(f'action_space budget {self.budget} needs a cost metric (metric is not set)')

    @classmethod
    def from_options(cls, options: Any, **fixed: Any) -> ActionSpaceConfig:
        """A config from a mapping of fields (a YAML ``action_space:`` block) plus ``fixed`` ones (seed, metric,
        budget); unknown or fixed keys raise ``ValueError`` naming them."""
        if not isinstance(options, dict):
            raise ValueError(f'action_space: expected a mapping of options, got {options!r}')
        names = {f.name for f in dataclasses.fields(cls)} - set(fixed)
        unknown = sorted(set(options) - names)
        if unknown:
            raise ValueError(f'action_space: unknown option(s) {unknown}; expected some of {sorted(names)}')
        try:
            return cls(**options, **fixed)
        except TypeError as err:
            raise ValueError(f'action_space: {err}') from None

    def height(self, n: int) -> int:
        """The tree height (levels of classifiers) with ``n`` samples scored."""
        return bisect.bisect_left(self.height_levels, n) + 1


@dataclass(frozen=True)
class ActionSpaceResult:
    """Every scored architecture, best first, and the counts of the search."""

    ranked: list[Individual]
    evaluations: int
    rejected: int  # draws over the budget
    fallbacks: int  # architectures drawn uniformly because the chosen region held no new one


# -- node classifiers --------------------------------------------------------------------------------------------
class _Linear:
    """L2-regularised logistic regression (intercept not penalised), fitted by Newton's method: deterministic, numpy
    only (the problem is convex and has a few dozen weights)."""

    def __init__(self, l2: float) -> None:
        self.l2 = l2

    def _loss(self, xb: np.ndarray, t: np.ndarray, w: np.ndarray, mask: np.ndarray) -> float:
        z = xb @ w
        return float(np.sum(np.logaddexp(0.0, z) - t * z) + 0.5 * self.l2 * np.sum(mask * w * w))

    def fit(self, x: np.ndarray, t: np.ndarray, seed: int) -> _Linear:
        xb = np.hstack([x, np.ones((len(x), 1))])
        mask = np.ones(xb.shape[1])
        mask[-1] = 0.0
        w = np.zeros(xb.shape[1])
        loss = self._loss(xb, t, w, mask)
        for _ in range(100):
            p = 0.5 * (1.0 + np.tanh(0.5 * (xb @ w)))  # the logistic function without overflow
            grad = xb.T @ (p - t) + self.l2 * mask * w
            if np.max(np.abs(grad)) < 1e-8:
                break
            hess = (xb.T * (p * (1.0 - p))) @ xb + np.diag(self.l2 * mask + 1e-10)
            step = np.linalg.solve(hess, grad)
            for _ in range(30):  # backtracking: Newton steps can overshoot on separable data
                new = self._loss(xb, t, w - step, mask)
                if new <= loss:
                    break
                step = step / 2
            w, loss = w - step, new
        self.w = w
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        return x @ self.w[:-1] + self.w[-1] >= 0.0


class _LightGBM:
    """LightGBM binary classifier with fixed parameters (imported only when chosen)."""

    def __init__(self, params: dict) -> None:
        self.params = {**GBM_DEFAULTS, **params}

    def fit(self, x: np.ndarray, t: np.ndarray, seed: int) -> _LightGBM:
        lgb = _import_lightgbm()
        params = dict(self.params)
        rounds = int(params.pop('num_boost_round'))
        params.update(verbosity=-1, seed=seed % 2**31, deterministic=True, num_threads=1, min_data_in_bin=1)
        # one thread for the Dataset too: OpenMP threads on a busy machine made a fit 10x slower (59 ms vs 5 ms)
        data = lgb.Dataset(
            x, label=t.astype(float), params={'verbosity': -1, 'feature_pre_filter': False, 'num_threads': 1}
        )
        self.booster = lgb.train(params, data, num_boost_round=rounds)
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.booster.predict(x) >= 0.5


def _import_lightgbm() -> Any:
    try:
        import lightgbm
    except ImportError:
        raise ImportError(
            f'action_space classifier lightgbm needs LightGBM, which is not installed: {GBM_INSTALL}'
        ) from None
    return lightgbm


# -- the search ----------------------------------------------------------------------------------------------------
class _Search:
    def __init__(
        self,
        space: Any,
        score: Callable[[list[Arch]], Sequence[float]],
        cfg: ActionSpaceConfig,
        output: Path | None,
        show_progress: bool,
    ) -> None:
        self.space, self.score, self.cfg, self.output, self.show_progress = space, score, cfg, output, show_progress
        self.offsets = np.concatenate(([0], np.cumsum(space.num_choices)))
        self.scored: list[Individual] = []
        self.costs: dict[str, float] = {}
        self.stats: dict[str, list[int]] = {}  # batch start -> [rejected, fallbacks]
        self.min_cost: float | None = None

    # -- state -----------------------------------------------------------------------------------------------------
    def _fingerprint(self) -> dict:
        values = asdict(self.cfg)
        values.pop('samples')  # a finished search may be extended
        values['height_levels'] = list(values['height_levels'])
        return values

    def _save(self) -> None:
        if self.output is None:
            return
        doc = {
            'version': STATE_VERSION,
            'config': self._fingerprint(),
            'stats': self.stats,
            'scored': [[list(i.arch), i.key, i.score, i.cost] for i in self.scored],
        }
        atomic_write_json(self.output / STATE_FILE, doc, indent=None)

    def _load(self) -> None:
        path = None if self.output is None else self.output / STATE_FILE
        if path is None or not path.is_file():
            return
        try:
            doc = json.loads(path.read_text())
            if doc.get('version') != STATE_VERSION:
                raise ValueError(f'version {doc.get("version")}, expected {STATE_VERSION}')
        except ValueError as err:
            raise ValueError(f'action_space state {path} is corrupt: {err}') from None
        saved, now = doc['config'], self._fingerprint()
        changed = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
        if changed:
            raise ValueError(f'action_space state {path} was written with other settings ({changed}); use a new output')
        self.stats = {k: list(v) for k, v in doc['stats'].items()}
        for arch, key, score, cost in doc['scored']:
            self.scored.append(Individual(tuple(arch), key, score, cost))

    # -- candidates ------------------------------------------------------------------------------------------------
    def _features(self, archs: Sequence[Arch]) -> np.ndarray:
        x = np.zeros((len(archs), int(self.offsets[-1])))
        rows = np.repeat(np.arange(len(archs)), len(self.offsets) - 1)
        x[rows, (np.asarray(archs) + self.offsets[:-1]).ravel()] = 1.0
        return x

    def _cost(self, arch: Arch, key: str) -> float | None:
        if not self.cfg.metric:
            return None
        if key not in self.costs:
            self.costs[key] = c = float(self.space.cost(arch, self.cfg.metric))
            self.min_cost = c if self.min_cost is None else min(self.min_cost, c)
        return self.costs[key]

    def _new_classifier(self) -> _Linear | _LightGBM:
        return _Linear(self.cfg.l2) if self.cfg.classifier == 'linear' else _LightGBM(self.cfg.gbm)

    def _region(self, n: int) -> list[tuple[Any, bool]]:
        """Greedy descent of the tree over the first ``n`` samples: ``(classifier, side)`` per level of the path."""
        x = self._features([i.arch for i in self.scored[:n]])
        y = np.array([i.score for i in self.scored[:n]])
        path: list[tuple[Any, bool]] = []
        idx = np.arange(n)
        for level in range(self.cfg.height(n)):
            ys = y[idx]
            good = ys >= np.median(ys)
            if good.all() or not good.any():
                break  # nothing to split (ties)
            side = bool(np.median(ys[good]) >= np.median(ys[~good]))  # the higher median (always the good side)
            seed = derive_seed(self.cfg.seed, 'action-space-node', n, level)
            clf = self._fit(x[idx], good, seed)
            if clf is None:
                break  # no better than chance: this node is the leaf
            path.append((clf, side))
            idx = idx[good == side]
        return path

    def _fit(self, x: np.ndarray, t: np.ndarray, seed: int) -> Any:
        n_val = round(self.cfg.val_fraction * len(t))
        if n_val:
            order = np.random.default_rng(seed).permutation(len(t))
            val, train = order[:n_val], order[n_val:]
            if t[train].all() or not t[train].any():
                return None
            error = float(np.mean(self._new_classifier().fit(x[train], t[train], seed).predict(x[val]) != t[val]))
            if error >= 0.5:
                return None
        return self._new_classifier().fit(x, t, seed)

    def _candidates(
        self,
        gen: torch.Generator,
        path: list[tuple[Any, bool]],
        seen: set[str],
        taken: dict[str, Arch],
        stat: list[int],
    ) -> Iterator[Arch]:
        """New architectures within the budget, drawn uniformly and kept when the path's classifiers agree."""
        misses = 0
        while misses < self.cfg.max_draws:
            chunk = [tuple(int(a) for a in self.space.sample(gen)) for _ in range(_CHUNK)]
            inside = np.ones(len(chunk), dtype=bool)
            if path:
                x = self._features(chunk)
                for clf, side in path:
                    inside &= clf.predict(x) == side
            for arch, ok in zip(chunk, inside, strict=True):
                misses += 1
                if misses > self.cfg.max_draws:
                    return
                key = self.space.key(arch)
                if not ok or key in seen or key in taken:
                    continue
                cost = self._cost(arch, key)
                if self.cfg.budget is not None and cost is not None and cost > self.cfg.budget:
                    stat[0] += 1
                    continue
                misses = 0
                yield arch

    def _draw(self, start: int, count: int) -> list[Arch]:
        """The batch that starts at evaluation ``start`` (a pure function of the seed and the first ``start``
        samples): ``count`` new architectures from the chosen leaf's region, uniform ones when it runs dry."""
        gen = generator(self.cfg.seed, 'action-space', start)
        path = self._region(start) if start >= self.cfg.warmup else []
        stat = [0, 0]
        taken: dict[str, Arch] = {}
        seen = {i.key for i in self.scored[:start]}  # not the batch's own samples already scored (a resume)
        sources = [self._candidates(gen, path, seen, taken, stat)]
        if path:
            sources.append(self._candidates(gen, [], seen, taken, stat))
        for s, source in enumerate(sources):
            for arch in source:
                taken[self.space.key(arch)] = arch
                stat[1] += s
                if len(taken) == count:
                    break
            if len(taken) == count:
                break
        self.stats[str(start)] = stat
        return list(taken.values())

    def _batch_start(self, n: int) -> int:
        warmup = self.cfg.warmup
        return 0 if n < warmup else warmup + (n - warmup) // self.cfg.batch * self.cfg.batch

    def _evaluate(self, archs: list[Arch]) -> None:
        scores = [float(s) for s in self.score(archs)]
        if len(scores) != len(archs):
            raise ValueError(f'score_batch returned {len(scores)} scores for {len(archs)} architectures')
        for arch, score in zip(archs, scores, strict=True):
            key = self.space.key(arch)
            if not math.isfinite(score):
                raise ValueError(f'the score of architecture {key} is {score}; scores must be finite')
            self.scored.append(Individual(arch, key, score, self.costs.get(key)))
        self._save()

    def _no_candidate_error(self) -> ValueError:
        rejected = sum(s[0] for s in self.stats.values())
        if self.cfg.budget is not None:
            return ValueError(
                f'no architecture within the budget {self.cfg.metric} <= {self.cfg.budget} in {rejected} draws; '
                f'the smallest {self.cfg.metric} seen is {self.min_cost}'
            )
        return ValueError(f'the space produced no architecture in {self.cfg.max_draws} draws')

    def run(self) -> ActionSpaceResult:
        if self.output is not None:
            self.output.mkdir(parents=True, exist_ok=True)
        self._load()
        bar = progress(total=self.cfg.samples, initial=len(self.scored), enabled=self.show_progress, leave=False)
        bar.set_description('action space')
        while len(self.scored) < self.cfg.samples:
            n = len(self.scored)
            start = self._batch_start(n)
            size = self.cfg.warmup if start == 0 else self.cfg.batch
            batch = self._draw(start, min(size, self.cfg.samples - start))
            done = [i.arch for i in self.scored[start:]]
            if batch[: len(done)] != done:
                raise ValueError(f'action_space state does not match its seed at sample {start}; use a new output')
            todo = batch[len(done) :]
            if not todo:
                if not self.scored:
                    raise self._no_candidate_error()
                break  # the space (within the budget) is exhausted
            for lo in range(0, len(todo), self.cfg.batch):
                self._evaluate(todo[lo : lo + self.cfg.batch])
                bar.update(len(todo[lo : lo + self.cfg.batch]))
            bar.set_postfix(best=f'{max(i.score for i in self.scored):.4g}')
        bar.close()
        ranked = sorted(self.scored, key=lambda i: (-i.score, i.key))
        totals = np.sum([s for s in self.stats.values()], axis=0, dtype=int) if self.stats else [0, 0]
        return ActionSpaceResult(ranked, len(self.scored), int(totals[0]), int(totals[1]))


def action_space_search(
    space: Any,
    score: Callable[[Arch], float] | None = None,
    config: ActionSpaceConfig | None = None,
    output: str | Path | None = None,
    *,
    score_batch: Callable[[list[Arch]], Sequence[float]] | None = None,
    show_progress: bool = True,
    **options: Any,
) -> ActionSpaceResult:
    """Search ``space`` for architectures maximising ``score`` (or ``score_batch``, which scores a list at once).

    ``config`` or ``options`` (the :class:`ActionSpaceConfig` fields) set the search; with ``output`` the samples are
    written there after every evaluation batch and a rerun resumes from them. Raises ``ValueError`` naming the budget
    and the smallest cost seen when no architecture satisfies the budget, ``ImportError`` naming the extra to install
    when the ``lightgbm`` classifier is chosen without LightGBM.
    """
    if (score is None) == (score_batch is None):
        raise TypeError('action_space_search needs exactly one of score= and score_batch=')
    if config is not None and options:
        raise TypeError('give either config or ActionSpaceConfig fields, not both')
    if config is None:
        unknown = sorted(set(options) - {f.name for f in dataclasses.fields(ActionSpaceConfig)})
        if unknown:
            raise TypeError(f'unknown ActionSpaceConfig fields {unknown}')
        config = ActionSpaceConfig(**options)
    if config.classifier == 'lightgbm':
        _import_lightgbm()  # fail before any architecture is scored
    batch = score_batch if score_batch is not None else (lambda archs: [score(a) for a in archs])
    out = None if output is None else Path(output)
    return _Search(space, batch, config, out, show_progress).run()


class ActionSpaceSearch:
    """The action-space search as an engine searcher: maximises ``-rated(arch)`` (held-out top-1 for path raters).

    The state lives in ``<root>/action_space-<fingerprint>/action_space.json``, keyed by the rater's fingerprint when
    ``rated`` is a rater's bound ``score``: a rerun with the same supernet resumes, a retrained one starts anew.
    ``score_name`` says what a found architecture records: ``'top1'`` (``-score``) or the score under its own name.
    """

    def __init__(self, config: ActionSpaceConfig, root: str | Path, score_name: str = 'top1') -> None:
        self.config, self.root, self.score_name = config, Path(root), score_name

    def _folder(self, rated: Any) -> Path:
        owner = getattr(rated, '__self__', None)
        fingerprint = owner.fingerprint() if hasattr(owner, 'fingerprint') else 'unrated'
        return self.root / f'action_space-{hashlib.sha1(fingerprint.encode()).hexdigest()[:12]}'

    def search(self, space: Any, rated: Any, metric: str, budget: float | None, top_k: int) -> list[Found]:
        config = dataclasses.replace(self.config, metric=metric, budget=budget)
        result = action_space_search(space, lambda arch: -rated(arch), config, self._folder(rated))
        print(
            f'action space: {result.evaluations} architectures rated, {result.rejected} draws over the {metric} '
            f'budget rejected, {result.fallbacks} drawn outside an exhausted region'
        )
        extra = {'evaluations': result.evaluations, 'rejected': result.rejected}
        found = []
        for i in result.ranked[:top_k]:
            described = {'top1': i.score} if self.score_name == 'top1' else {self.score_name: -i.score}
            cost = i.cost if i.cost is not None else space.cost(i.arch, metric)
            found.append(Found(i.arch, -i.score, cost, {**described, **extra}))
        return found
