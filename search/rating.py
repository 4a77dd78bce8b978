"""How well does a supernet rate architectures? Rank correlations and the "improvement over random" curve.

A weight-sharing search is only as good as the ranking its proxy score (a supernet accuracy, a distillation
loss...) induces, so every method here is judged by comparing its scores with stand-alone ground truth:

* Kendall's tau-b, Spearman's rho and Pearson's R (thin wrappers over :mod:`scipy.stats`);
* the improvement curve of the inter-choice-weights paper (uninas ``ImprovementNasMetric``), which asks what
  picking among the best-predicted candidates gains over picking at random.

Command line::

    python -m search.rating SCORES.json TRUTH.json [--lower-is-better] [--top-k 10 20] \\
        [--plot out.png] [--json out.json]

Both files map a key (an architecture name or spec string) to a number; only keys present in both are rated.
TRUTH may also be a ground-truth folder of ``python -m search.groundtruth`` (its ``truth.json``: mean test top-1).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

__all__ = [
    'improvement_curve',
    'kendall_tau',
    'main',
    'pearson_r',
    'rating_report',
    'scatter_plot',
    'spearman_rho',
    'top_k_improvement',
]

ArrayLike = Sequence[float] | np.ndarray


def _pair(pred: ArrayLike, truth: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Validate two paired samples once, so that every metric fails with the same clear message."""
    p = np.asarray(pred, dtype=float)
    t = np.asarray(truth, dtype=float)
    if p.ndim != 1 or t.ndim != 1:
        raise ValueError(f'expected two 1-D sequences, got shapes {p.shape} and {t.shape}')
    if len(p) != len(t):
        raise ValueError(f'predictions and ground truth differ in length: {len(p)} != {len(t)}')
    if len(p) < 2:
        raise ValueError(f'need at least 2 paired values to rate a ranking, got {len(p)}')
    for name, x in (('predictions', p), ('ground truth', t)):
        bad = np.flatnonzero(~np.isfinite(x))
        if bad.size:
            raise ValueError(f'{name} hold NaN or infinite values at positions {bad[:5].tolist()}')
    return p, t


def _correlation(fn: Any, pred: ArrayLike, truth: ArrayLike) -> float:
    p, t = _pair(pred, truth)
    for name, x in (('predictions', p), ('ground truth', t)):
        if np.all(x == x[0]):
            raise ValueError(f'{name} are constant: a correlation is undefined')
    return float(fn(p, t).statistic)


def kendall_tau(pred: ArrayLike, truth: ArrayLike) -> float:
    """Kendall's tau-b: the rank agreement over all pairs, with ties accounted for (scipy's default)."""
    return _correlation(stats.kendalltau, pred, truth)


def spearman_rho(pred: ArrayLike, truth: ArrayLike) -> float:
    """Spearman's rho: Pearson's R of the ranks, more sensitive than tau to large rank displacements."""
    return _correlation(stats.spearmanr, pred, truth)


def pearson_r(pred: ArrayLike, truth: ArrayLike) -> float:
    """Pearson's R: linear agreement of the raw values (what a scatter plot's diagonal shows)."""
    return _correlation(stats.pearsonr, pred, truth)


def improvement_curve(pred: ArrayLike, truth: ArrayLike, higher_pred_is_better: bool = True) -> np.ndarray:
    """Normalised gain of keeping only the best-predicted candidates, over picking one at random.

    Candidates are sorted by prediction from worst to best; entry ``i`` is
    ``(mean_i - mean(truth)) / (max(truth) - mean(truth))`` where ``mean_i`` is the mean ground truth of the
    ``N - i`` best-predicted candidates. Entry 0 is always 0 (all remain: random picking); a perfect predictor
    reaches 1.0 at ``i = N - 1`` (only the true best remains); a reversed one ends at
    ``(min - mean) / (max - mean)``. The paper plots the curve down to 10 remaining candidates, where the
    last few points are dominated by noise; see :func:`top_k_improvement` for single values.
    Ties in the prediction keep their input order (stable sort). Ground truth is higher-is-better (accuracy).
    """
    p, t = _pair(pred, truth)
    global_mean, global_max = t.mean(), t.max()
    if global_max == global_mean:
        raise ValueError('ground truth is constant: the improvement over random is undefined')
    order = np.argsort(p if higher_pred_is_better else -p, kind='stable')
    ranked = t[order]  # ground truth from the worst- to the best-predicted candidate
    remaining = np.arange(len(t), 0, -1)
    means = np.cumsum(ranked[::-1])[::-1] / remaining
    means[0] = global_mean  # the same number, without the summation-order rounding
    return (means - global_mean) / (global_max - global_mean)


def top_k_improvement(pred: ArrayLike, truth: ArrayLike, k: int, higher_pred_is_better: bool = True) -> float:
    """The improvement curve's value when the ``k`` best-predicted candidates remain."""
    curve = improvement_curve(pred, truth, higher_pred_is_better)
    if not 1 <= k <= len(curve):
        raise ValueError(f'k must lie in 1..{len(curve)} (the number of candidates), got {k}')
    return float(curve[len(curve) - k])


def _common(scores: Mapping[str, float], truth: Mapping[str, float]) -> tuple[list[str], np.ndarray, np.ndarray]:
    keys = [key for key in scores if key in truth]
    if len(keys) < 2:
        only_s = sorted(set(scores) - set(truth))[:5]
        only_t = sorted(set(truth) - set(scores))[:5]
        raise ValueError(
            f'need at least 2 keys present in both scores and ground truth, found {len(keys)} '
            f'(only in scores, e.g. {only_s}; only in ground truth, e.g. {only_t})'
        )
    return keys, np.array([scores[k] for k in keys], dtype=float), np.array([truth[k] for k in keys], dtype=float)


def rating_report(
    scores: Mapping[str, float],
    truth: Mapping[str, float],
    lower_score_is_better: bool = False,
    top_k: Sequence[int] = (10,),
) -> dict[str, Any]:
    """Rate ``scores`` against ``truth`` over the keys present in both.

    Correlations are reported for the score *oriented* so that higher is better: with
    ``lower_score_is_better`` (a loss) they are the raw correlations with their signs flipped, so a good
    predictor always shows positive values. (DNA's own script reports the raw, negative tau of summed loss
    versus accuracy.) ``improvement@k`` is :func:`top_k_improvement`; it is ``None`` when ``k`` exceeds ``n``.
    Keys missing on one side are not an error: their counts come back as ``dropped_scores``/``dropped_truth``.
    """
    keys, s, t = _common(scores, truth)
    oriented = -s if lower_score_is_better else s
    report: dict[str, Any] = {
        'n': len(keys),
        'dropped_scores': len(scores) - len(keys),
        'dropped_truth': len(truth) - len(keys),
        'lower_score_is_better': lower_score_is_better,
        'kendall_tau': kendall_tau(oriented, t),
        'spearman_rho': spearman_rho(oriented, t),
        'pearson_r': pearson_r(oriented, t),
    }
    curve = improvement_curve(oriented, t)
    for k in top_k:
        report[f'improvement@{k}'] = float(curve[len(keys) - k]) if 1 <= k <= len(keys) else None
    return report


def scatter_plot(
    scores: Mapping[str, float],
    truth: Mapping[str, float],
    path: str | PathLike,
    title: str | None = None,
    lower_score_is_better: bool = False,
) -> Path:
    """Write a PNG of score versus ground truth annotated with tau/rho/R, to eyeball outliers behind a number."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            'scatter_plot needs matplotlib: pip install matplotlib (or the dev extra: pip install -e .[dev])'
        ) from err
    report = rating_report(scores, truth, lower_score_is_better, top_k=())
    keys, s, t = _common(scores, truth)
    # Figure + Agg canvas directly: no pyplot, so the caller's global backend and figure registry stay untouched.
    fig = Figure(figsize=(6, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.scatter(s, t, s=14, alpha=0.8)
    ax.set_xlabel('score (lower is better)' if lower_score_is_better else 'score')
    ax.set_ylabel('ground truth')
    # The numbers go in the title, where they never hide a point; with a loss they are those of -score.
    stats_line = (
        f'Kendall $\\tau$ = {report["kendall_tau"]:.3f}   Spearman $\\rho$ = {report["spearman_rho"]:.3f}   '
        f'Pearson R = {report["pearson_r"]:.3f}' + (' (of $-$score)' if lower_score_is_better else '')
    )
    ax.set_title(f'{title or f"{len(keys)} architectures"}\n{stats_line}', fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format='png')
    return path


def _load_flat(path: str) -> dict[str, float]:
    """A flat JSON object of key -> number; anything else is an error naming the file and the key."""
    try:
        doc = json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f'{path}: not valid JSON ({err})') from err
    if not isinstance(doc, dict):
        raise ValueError(f'{path}: expected a JSON object mapping keys to numbers, got {type(doc).__name__}')
    out = {}
    for key, value in doc.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f'{path}: value of {key!r} is not a number: {value!r}')
        out[key] = float(value)
    return out


def _format_table(report: Mapping[str, Any]) -> str:
    rows = []
    for key, value in report.items():
        if value is None:
            shown = '-'
        elif isinstance(value, float):
            shown = 'nan' if math.isnan(value) else f'{value:+.4f}'
        else:
            shown = str(value)
        rows.append((key, shown))
    width = max(len(k) for k, _ in rows)
    return '\n'.join(f'{k:<{width}}  {v}' for k, v in rows)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (1 on bad input, with the reason on stderr)."""
    parser = argparse.ArgumentParser(
        prog='python -m search.rating', description='Rate proxy scores against ground truth (tau, rho, R).'
    )
    parser.add_argument('scores', help='JSON object: key -> proxy score')
    parser.add_argument(
        'truth', help='JSON object: key -> ground truth (higher is better), or a ground-truth folder (its truth.json)'
    )
    parser.add_argument('--lower-is-better', action='store_true', help='lower scores are better (a loss)')
    parser.add_argument('--top-k', type=int, nargs='+', default=[10], help='improvement@k values to report')
    parser.add_argument('--plot', help='write a scatter plot PNG here')
    parser.add_argument('--json', help='write the report as JSON here')
    args = parser.parse_args(argv)
    try:
        truth_path = Path(args.truth) / 'truth.json' if Path(args.truth).is_dir() else args.truth
        scores, truth = _load_flat(args.scores), _load_flat(str(truth_path))
        report = rating_report(scores, truth, args.lower_is_better, top_k=args.top_k)
        if args.plot:
            scatter_plot(
                scores, truth, args.plot, title=Path(args.scores).stem, lower_score_is_better=args.lower_is_better
            )
    except (OSError, ValueError, ImportError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    print(_format_table(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
