"""BossNAS's published rating accuracy, recomputed from the rating outputs its authors ship (no training needed).

The official repository ships, per supernet block, the loss of every block path against the population centre
(lower is better), for the MBConv space (rated against the 23 DNA architectures with ImageNet top-1) and the
NATS-Bench size space (rated against the CIFAR-10 accuracy of all 32,768 architectures). ``benchmarks/bossnas/``
holds them as JSON (``tools/convert_bossnas_data.py``; sources, licence and encodings in its README). An
architecture's score is the authors' sum over its blocks of ``block loss + 4`` (each block loss is two
``-2 cos`` terms, so ``loss + 4`` is a non-negative squared distance); correlations come from
:func:`search.rating.rating_report`. Both the raw values (negative: a loss against an accuracy, as the authors'
scripts print them) and the oriented ones (positive, as the paper reports them) are returned.

Command line::

    python -m search.bossnas_data [--space mbconv nats] [--data-dir benchmarks/bossnas] [--round 4] \\
        [--export DIR] [--json out.json]

It exits with status 1 when a value differs from the expected one by more than ``TOLERANCE``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

from .rating import rating_report

__all__ = [
    'DATA_DIR',
    'EXPECTED',
    'PAPER',
    'RatingData',
    'load',
    'main',
    'mbconv',
    'nats',
    'report',
    'verify',
]

DATA_DIR = Path(__file__).resolve().parents[1] / 'benchmarks' / 'bossnas'
FILES = {'mbconv': 'mbconv_imagenet.json', 'nats': 'nats_size_cifar10.json'}
LOSS_OFFSET = 4.0  # the authors' per-block shift: two -2cos terms lie in [-4, 4]
TOLERANCE = 0.005

#: Raw correlations (score vs truth, hence negative) recomputed from the shipped files (specs/bossnas.md 4.2, 4.3),
#: and the greedy per-block best architecture with its benchmark accuracy (None where it is not rated).
EXPECTED: dict[str, dict[str, Any]] = {
    'mbconv': {
        'kendall_tau': -0.644,
        'spearman_rho': -0.777,
        'pearson_r': -0.847,
        'best': '11 0110 0111 1100 0110',
        'best_truth': None,
    },
    'nats': {
        'kendall_tau': -0.534,
        'spearman_rho': -0.734,
        'pearson_r': -0.718,
        'best': '64:40:48:64:56',
        'best_truth': 93.29,
    },
}
#: What the paper prints (absolute values, 2 decimals): Tab. 3 (MBConv, ImageNet) and Tab. 6 (NATS, CIFAR-10).
PAPER = {'mbconv': (0.65, 0.78, 0.85), 'nats': (0.53, 0.73, 0.72)}
_METRICS = ('kendall_tau', 'spearman_rho', 'pearson_r')


@dataclass(frozen=True)
class RatingData:
    """Per-architecture scores (lower is better) and ground truth of one space, keyed alike."""

    space: str
    scores: dict[str, float]
    truth: dict[str, float]
    best: str  # the concatenation of each block's lowest-loss path (the authors' "best architecture")
    source: dict[str, Any]


def load(space: str, data_dir: str | PathLike | None = None) -> dict[str, Any]:
    """The JSON document of ``space``; a missing or unreadable file is an error naming it and how to rebuild it."""
    if space not in FILES:
        raise ValueError(f'unknown BossNAS data space {space!r}; choose from {sorted(FILES)}')
    path = Path(data_dir if data_dir is not None else DATA_DIR) / FILES[space]
    hint = 'rebuild it with tools/convert_bossnas_data.py from a clone of github.com/changlin31/BossNAS'
    if not path.is_file():
        raise FileNotFoundError(f'BossNAS {space} data file not found: {path} ({hint}, or pass --data-dir)')
    try:
        doc = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f'{path}: corrupt BossNAS data file, not valid JSON ({err}); {hint}') from err
    if not isinstance(doc, dict):
        raise ValueError(f'{path}: corrupt BossNAS data file, expected a JSON object; {hint}')
    return doc


def _field(doc: Mapping[str, Any], key: str, kind: type, where: str) -> Any:
    if key not in doc or not isinstance(doc[key], kind):
        raise ValueError(f'{where}: missing or malformed field {key!r} (expected a {kind.__name__})')
    return doc[key]


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f'{where}: expected a finite number, got {value!r}')
    return float(value)


def _block_losses(doc: Mapping[str, Any], num_ops: int, layers: Sequence[int], where: str) -> list[dict[str, float]]:
    """Each block's path -> loss table, checked to hold exactly the ``num_ops ** layers`` paths of that block."""
    if not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in layers):
        raise ValueError(f'{where}: layers per block must be positive integers, got {list(layers)}')
    tables = _field(doc, 'block_loss', list, where)
    if len(tables) != len(layers):
        raise ValueError(f'{where}: {len(tables)} block_loss tables for {len(layers)} blocks')
    out = []
    for b, (table, n) in enumerate(zip(tables, layers, strict=True)):
        expected = {''.join(map(str, c)) for c in itertools.product(range(num_ops), repeat=n)}
        if not isinstance(table, dict) or set(table) != expected:
            raise ValueError(f'{where}: block_loss[{b}] must map all {len(expected)} paths of {n} layers to a loss')
        out.append({k: _number(v, f'{where}: block_loss[{b}][{k!r}]') for k, v in table.items()})
    return out


def _score(block_keys: Sequence[str], losses: Sequence[Mapping[str, float]], round_to: int | None) -> float:
    total = sum(table[key] + LOSS_OFFSET for key, table in zip(block_keys, losses, strict=True))
    return round(total, round_to) if round_to is not None else total


def _best(losses: Sequence[Mapping[str, float]]) -> list[str]:
    return [min(table, key=table.__getitem__) for table in losses]


def mbconv(data_dir: str | PathLike | None = None, round_to: int | None = None) -> RatingData:
    """MBConv space: the 23 DNA architectures (key: per-block op digits, e.g. ``11 1111 1101 1011 1101``).

    ``round_to=4`` rounds each score to 4 decimals as the authors' script does; the resulting ties move tau.
    """
    doc = load('mbconv', data_dir)
    where = str(Path(data_dir if data_dir is not None else DATA_DIR) / FILES['mbconv'])
    ops = _field(doc, 'ops', list, where)
    layers = _field(doc, 'layers_per_block', list, where)
    losses = _block_losses(doc, len(ops), layers, where)
    scores, truth = {}, {}
    for i, arch in enumerate(_field(doc, 'dna_archs', list, where)):
        path = arch.get('path') if isinstance(arch, dict) else None
        blocks = path.split() if isinstance(path, str) else []
        if [len(b) for b in blocks] != layers or any(key not in t for key, t in zip(blocks, losses, strict=True)):
            raise ValueError(f'{where}: dna_archs[{i}] path {path!r} does not fit {layers} layers of {len(ops)} ops')
        if path in scores:
            raise ValueError(f'{where}: dna_archs[{i}] repeats path {path!r}')
        scores[path] = _score(blocks, losses, round_to)
        truth[path] = _number(arch.get('imagenet_top1'), f'{where}: dna_archs[{i}].imagenet_top1')
    return RatingData('mbconv', scores, truth, ' '.join(_best(losses)), _field(doc, 'source', dict, where))


def nats(data_dir: str | PathLike | None = None, round_to: int | None = None) -> RatingData:
    """NATS-Bench size space on CIFAR-10: all 32,768 architectures (key: the widths, e.g. ``64:40:48:64:56``)."""
    doc = load('nats', data_dir)
    where = str(Path(data_dir if data_dir is not None else DATA_DIR) / FILES['nats'])
    widths = _field(doc, 'widths', list, where)
    blocks = _field(doc, 'blocks', list, where)
    num_layers = sum(len(b) for b in blocks if isinstance(b, list))
    if [i for b in blocks for i in (b if isinstance(b, list) else [b])] != list(range(num_layers)):
        raise ValueError(f'{where}: blocks {blocks} must split layers 0..n-1 in order')
    losses = _block_losses(doc, len(widths), [len(b) for b in blocks], where)
    top1 = _field(doc, 'cifar10_top1', list, where)
    if len(top1) != len(widths) ** num_layers:
        raise ValueError(f'{where}: cifar10_top1 has {len(top1)} values, expected {len(widths) ** num_layers}')
    scores, truth = {}, {}
    # cifar10_top1 lists the architectures in itertools.product order of the width indices (first layer slowest)
    for idx, acc in zip(itertools.product(range(len(widths)), repeat=num_layers), top1, strict=True):
        key = ':'.join(str(widths[i]) for i in idx)
        scores[key] = _score([''.join(str(idx[i]) for i in b) for b in blocks], losses, round_to)
        truth[key] = _number(acc, f'{where}: cifar10_top1 of {key}')
    best = ':'.join(str(widths[int(c)]) for c in ''.join(_best(losses)))
    return RatingData('nats', scores, truth, best, _field(doc, 'source', dict, where))


LOADERS = {'mbconv': mbconv, 'nats': nats}


def report(data: RatingData) -> dict[str, Any]:
    """:func:`search.rating.rating_report` of the loss-like scores, plus the raw (negative) correlations."""
    rep = rating_report(data.scores, data.truth, lower_score_is_better=True)
    rep.update({f'raw_{m}': -rep[m] for m in _METRICS})
    rep.update(space=data.space, best=data.best, best_truth=data.truth.get(data.best))
    return rep


def verify(rep: Mapping[str, Any], tol: float = TOLERANCE) -> list[str]:
    """What differs from :data:`EXPECTED` (empty when the report reproduces the published numbers)."""
    expected = EXPECTED[rep['space']]
    problems = [
        f'{rep["space"]} {m}: {rep[f"raw_{m}"]:+.4f}, expected {expected[m]:+.3f} (tolerance {tol})'
        for m in _METRICS
        if abs(rep[f'raw_{m}'] - expected[m]) > tol
    ]
    for key in ('best', 'best_truth'):
        if rep[key] != expected[key]:
            problems.append(f'{rep["space"]} {key}: {rep[key]!r}, expected {expected[key]!r}')
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    """Print tau/rho/R per space next to the paper's; status 1 on bad data or when a value is off."""
    parser = argparse.ArgumentParser(
        prog='python -m search.bossnas_data', description='Recompute BossNAS rating accuracy from its shipped ranks.'
    )
    parser.add_argument('--space', nargs='+', choices=sorted(LOADERS), default=sorted(LOADERS))
    parser.add_argument('--data-dir', help=f'folder of the JSON files (default {DATA_DIR})')
    parser.add_argument('--round', type=int, dest='round_to', help='round scores as the authors do (4)')
    parser.add_argument('--export', help='write SPACE_scores.json and SPACE_truth.json here (for search.rating)')
    parser.add_argument('--json', help='write the reports as JSON here')
    args = parser.parse_args(argv)
    reports, problems = [], []
    try:
        for space in args.space:
            data = LOADERS[space](args.data_dir, args.round_to)
            rep = report(data)
            reports.append(rep)
            problems += verify(rep)
            if args.export:
                out = Path(args.export)
                out.mkdir(parents=True, exist_ok=True)
                (out / f'{space}_scores.json').write_text(json.dumps(data.scores, indent=0) + '\n')
                (out / f'{space}_truth.json').write_text(json.dumps(data.truth, indent=0) + '\n')
    except (OSError, ValueError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    print(f'{"space":<7} {"n":>6}  {"tau":>7} {"rho":>7} {"R":>7}  {"paper |tau|/|rho|/|R|":<22} best (truth)')
    for rep in reports:
        raw = ' '.join(f'{rep[f"raw_{m}"]:+.4f}' for m in _METRICS)
        paper = '/'.join(f'{v:.2f}' for v in PAPER[rep['space']])
        print(f'{rep["space"]:<7} {rep["n"]:>6}  {raw}  {paper:<22} {rep["best"]} ({rep["best_truth"]})')
    print('raw sign: score = sum over blocks of (loss + 4), lower is better, so a good rating is negative')
    if args.json:
        Path(args.json).write_text(json.dumps(reports, indent=1) + '\n')
    for problem in problems:
        print(f'mismatch: {problem}', file=sys.stderr)
    return 1 if problems else 0


if __name__ == '__main__':
    sys.exit(main())
