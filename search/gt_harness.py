"""Rating accuracy end to end: train a method's supernet on the ground truth's data, rate every ground-truth
architecture with the method's rater, and compare with the stand-alone accuracies.

The supernet sees exactly the ground truth's training images (the digits exported as PNG folders by
:func:`search.groundtruth.export_image_folder`, the engine's ``holdout_split.json`` fixed to the ground truth's
held-out images) and its space is the ground truth's (``nb201`` with the recipe's sub-space, width, cells and image
size), so a rated path is the very network that was trained stand-alone. Supernet training and rating are the
engine's own (``search.pipeline.train``, ``method.rater``): checkpoints resume and ratings are cached, so a rerun
with the same output folder skips what is done. Metrics: :func:`search.rating.rating_report` (Kendall tau,
Spearman rho, Pearson R, improvement@k) and a scatter plot, next to the ground truth's noise ceiling.

``python -m search.groundtruth method --config configs/search/spos_groundtruth.yaml --truth
benchmarks/groundtruth/only_conv --output runs/spos_gt --seed 0``
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from . import engine, rating
from . import groundtruth as gt
from .config import load_config
from .methods import get_method

__all__ = ['add_arguments', 'baseline_report', 'load_truth', 'run_from_args', 'run_method']


def load_truth(folder: str | Path) -> dict[str, Any]:
    """``groundtruth.json`` and ``recipe.json`` of a ground-truth folder (one clear error when one is missing)."""
    folder = Path(folder)
    for name in ('groundtruth.json', 'recipe.json'):
        if not (folder / name).is_file():
            raise FileNotFoundError(
                f'{folder / name} does not exist: --truth must be a folder written by `python -m search.groundtruth '
                'train` (e.g. benchmarks/groundtruth/only_conv)'
            )
    doc = json.loads((folder / 'groundtruth.json').read_text())
    return {**doc, **json.loads((folder / 'recipe.json').read_text())}


def run_method(
    method: str,
    config: str | Path | None,
    truth_dir: str | Path,
    output: str | Path,
    seed: int = 0,
    overrides: dict[str, Any] | None = None,
    data_dir: str | Path | None = None,
    top_k: Sequence[int] = (5, 10),
    show_progress: bool = True,
    threads: int | None = None,
) -> dict[str, Any]:
    """Train ``method``'s supernet (resuming), rate every ground-truth architecture, return the rating report.

    Writes ``OUTPUT/scores.json`` (key -> the rater's score, lower is better), ``OUTPUT/rating.json`` and
    ``OUTPUT/rating.png``. ``data_dir`` defaults to ``OUTPUT/data`` (the PNG export). ``threads`` sets torch's CPU
    threads for the run (tiny networks on a busy CPU run much faster on one thread).
    """
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _run_method(method, config, truth_dir, output, seed, overrides, data_dir, top_k, show_progress)
    finally:
        torch.set_num_threads(old_threads)


def _run_method(
    method: str,
    config: str | Path | None,
    truth_dir: str | Path,
    output: str | Path,
    seed: int,
    overrides: dict[str, Any] | None,
    data_dir: str | Path | None,
    top_k: Sequence[int],
    show_progress: bool,
) -> dict[str, Any]:
    truth_doc = load_truth(truth_dir)
    recipe, split = gt.recipe_from(truth_doc['recipe']), truth_doc['split']
    output = Path(output)
    data = Path(data_dir) if data_dir is not None else output / 'data'
    exported = gt.export_image_folder(data, recipe.img_size, split)
    cls = get_method(method)
    forced = {
        **recipe.space_config(),
        'img_size': recipe.img_size,
        'num_classes': 10,
        'holdout_per_class': split['holdout_per_class'],
        'data_dir': str(data),
        'output': str(output),
        'seed': seed,
    }
    if 'rating_archs' in {f.name for f in dataclasses.fields(cls.config_class)}:
        # Raters that rate a sample of the space (BossNAS's rating_paths) always rate the ground-truth networks.
        forced['rating_archs'] = [list(row['arch']) for row in truth_doc['architectures']]
    values = {**(overrides or {}), **forced}
    cfg = load_config(cls.config_class, config, values)
    # The engine reads its held-out split from the run folder: fix it to the ground truth's held-out images.
    cfg.out.mkdir(parents=True, exist_ok=True)
    split_file = cfg.out / 'holdout_split.json'
    if not split_file.is_file() or json.loads(split_file.read_text()) != exported:
        shutil.copyfile(data / 'holdout_split.json', split_file)
    instance = cls(cfg)
    ctx = engine.init_distributed(getattr(cfg, 'device', 'auto'))
    engine.run(instance, cfg, stages=('train',), ctx=ctx, resume=True)
    score = instance.rater(ctx).rate()
    if score is None:
        raise ValueError(f'{method}: its rater returned nothing to rate with (block-wise jobs unfinished?)')
    archs = truth_doc['architectures']
    scores = {}
    for row in engine.progress(archs, enabled=show_progress, desc=f'{method} rating ground truth'):
        scores[row['key']] = float(score(tuple(row['arch'])))
    truth = {row['key']: row['test_top1_mean'] for row in archs}
    report = rating.rating_report(
        scores, truth, lower_score_is_better=True, top_k=[k for k in top_k if k <= len(archs)]
    )
    summary = truth_doc['summary']
    report['noise_ceiling_kendall_tau'] = summary.get('noise_ceiling_kendall_tau')
    report.update(method=method, seed=seed, subspace=recipe.name, truth=str(truth_dir))
    (output / 'scores.json').write_text(json.dumps(scores, indent=1) + '\n')
    (output / 'rating.json').write_text(json.dumps(report, indent=1) + '\n')
    title = f'{method} seed {seed} on {recipe.name} ({len(archs)} architectures)'
    rating.scatter_plot(scores, truth, output / 'rating.png', title=title, lower_score_is_better=True)
    return report


def baseline_report(truth_dir: str | Path, metric: str = 'params', top_k: Sequence[int] = (5, 10)) -> dict[str, Any]:
    """The trivial predictor every method must beat: rank the ground truth by a cost (more ``params`` or ``macs``
    = predicted better), with no training at all; the same metrics as :func:`run_method`."""
    truth_doc = load_truth(truth_dir)
    archs = truth_doc['architectures']
    if metric not in ('params', 'macs'):
        raise ValueError(f'baseline metric {metric!r}: expected "params" or "macs"')
    scores = {row['key']: -float(row[metric]) for row in archs}
    truth = {row['key']: row['test_top1_mean'] for row in archs}
    report = rating.rating_report(
        scores, truth, lower_score_is_better=True, top_k=[k for k in top_k if k <= len(archs)]
    )
    report['noise_ceiling_kendall_tau'] = truth_doc['summary'].get('noise_ceiling_kendall_tau')
    report.update(method=f'baseline: more {metric} ranks higher', subspace=gt.recipe_from(truth_doc['recipe']).name)
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``python -m search.groundtruth method``."""
    parser.add_argument('--method', default='spos', help='supernet method of the engine (default spos)')
    parser.add_argument('--config', help='YAML config of the method (e.g. configs/search/spos_groundtruth.yaml)')
    parser.add_argument('--truth', required=True, help='ground-truth folder (benchmarks/groundtruth/only_conv)')
    parser.add_argument('--output', required=True, help='run folder (supernet, ratings, report, plot)')
    parser.add_argument('--seed', type=int, default=0, help='supernet seed (paths, data order, init)')
    parser.add_argument('--data-dir', help='where the digits PNG folders go (default OUTPUT/data)')
    parser.add_argument('--top-k', type=int, nargs='+', default=[5, 10], help='improvement@k values to report')
    parser.add_argument('--threads', type=int, help='torch CPU threads (default: torch decides)')
    parser.add_argument('--set', nargs='+', default=[], metavar='KEY=VALUE', help='override any config field')


def run_from_args(args: argparse.Namespace) -> int:
    """Run ``method`` from parsed arguments and print the report; returns the exit status."""
    from .cli import _parse_set

    report = run_method(
        args.method,
        args.config,
        args.truth,
        args.output,
        args.seed,
        _parse_set(args.set),
        args.data_dir,
        args.top_k,
        threads=args.threads,
    )
    rows = {k: v for k, v in report.items() if k not in ('truth',)}
    print(rating._format_table(rows))
    print(f'scores, report and scatter plot in {args.output} (scores.json, rating.json, rating.png)')
    return 0
