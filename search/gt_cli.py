"""Command line of the ground truth: ``python -m search.groundtruth train|summarize|export|teacher|baseline|method``.

::

    python -m search.groundtruth train --subspace only_conv --out benchmarks/groundtruth/only_conv
    python -m search.groundtruth train --subspace no_zero --sample 64 --out benchmarks/groundtruth/no_zero
    python -m search.groundtruth train --family nats_size --widths 4 8 12 16 20 24 28 32 --sample 64 \
        --out benchmarks/groundtruth/nats_size
    python -m search.groundtruth summarize benchmarks/groundtruth/only_conv
    python -m search.groundtruth export data/digits
    python -m search.groundtruth baseline benchmarks/groundtruth/only_conv --metric params
    python -m search.groundtruth teacher --truth benchmarks/groundtruth/only_conv --epochs 10 --out teacher.safetensors
    python -m search.groundtruth method --config configs/search/spos_groundtruth.yaml \\
        --truth benchmarks/groundtruth/only_conv --output runs/spos_gt --seed 0

A problem with the input is one line ``error: ...`` and exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Iterable

from . import groundtruth as gt

__all__ = ['build_parser', 'main']


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='python -m search.groundtruth', description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest='command', required=True)
    defaults = gt.Recipe()
    t = sub.add_parser('train', help='train every (architecture, seed) of a sub-space not yet in OUT/results.jsonl')
    t.add_argument('--out', required=True, help='folder of results.jsonl, recipe.json, split.json, tables')
    t.add_argument('--family', default=defaults.family, choices=list(gt.FAMILIES), help='nb201 (default) or nats_size')
    t.add_argument('--subspace', default=defaults.subspace, choices=['full', 'no_zero', 'only_conv'], help='nb201 only')
    t.add_argument('--widths', type=int, nargs='+', help='nats_size: the width choices (default 8 16 ... 64)')
    t.add_argument('--sample', type=int, help='a seeded sample of this many architectures (default: all)')
    t.add_argument('--sample-seed', type=int, default=0, help='seed of the architecture sample')
    t.add_argument('--limit', type=int, help='train only the first N architectures (of the list or sample)')
    t.add_argument('--seeds', type=int, nargs='+', default=[1, 2], help='training seeds (default: 1 2)')
    for f in dataclasses.fields(gt.Recipe):
        if f.name not in ('subspace', 'family', 'widths'):
            t.add_argument(
                f'--{f.name.replace("_", "-")}',
                type=type(getattr(defaults, f.name)),
                default=getattr(defaults, f.name),
                help=f'recipe {f.name} (default {getattr(defaults, f.name)})',
            )
    t.add_argument(
        '--split',
        type=json.loads,
        help='split as JSON, e.g. \'{"holdout_per_class": 25, '
        '"test_per_class": 60, "seed": 0}\' (default: the committed one)',
    )
    t.add_argument('--threads', type=int, help='torch CPU threads')
    t.add_argument('--no-summary', action='store_true', help='do not write the tables after training')
    s = sub.add_parser('summarize', help='write groundtruth.json/.csv, truth.json and the noise ceiling')
    s.add_argument('out')
    e = sub.add_parser('export', help='write the digits as PNG folders with the fixed split (for python -m search)')
    e.add_argument('root')
    e.add_argument('--img-size', type=int, default=defaults.img_size)
    tt = sub.add_parser('teacher', help='train a stand-alone network of the space as a DNA teacher (safetensors)')
    tt.add_argument('--truth', required=True, help='ground-truth folder (its recipe, split and architectures)')
    tt.add_argument('--out', required=True, help='the teacher file (.safetensors; a .json with its metrics beside)')
    tt.add_argument('--arch', default='largest', help='"largest" (default) or a ground-truth architecture key')
    tt.add_argument('--seed', type=int, default=1, help='training seed (default 1)')
    tt.add_argument('--epochs', type=int, help="epochs (default: the recipe's)")
    tt.add_argument('--threads', type=int, help='torch CPU threads')
    tt.add_argument('--overwrite', action='store_true', help='replace an existing teacher file')
    b = sub.add_parser('baseline', help='rate the ground truth by parameter count or MACs alone (no training)')
    b.add_argument('truth', help='ground-truth folder')
    b.add_argument('--metric', default='params', choices=['params', 'macs'])
    b.add_argument('--top-k', type=int, nargs='+', default=[5, 10], help='improvement@k values to report')
    m = sub.add_parser('method', help='train a supernet on the split, rate every ground-truth architecture, metrics')
    from .gt_harness import add_arguments

    add_arguments(m)
    return parser


def _train(args: argparse.Namespace) -> int:
    fields = {f.name: getattr(args, f.name) for f in dataclasses.fields(gt.Recipe) if f.name not in ('widths',)}
    recipe = gt.Recipe(**{**fields, 'widths': args.widths})
    archs = gt.archs_for(recipe.space(), args.sample, args.sample_seed)
    if args.limit is not None:
        archs = archs[: args.limit]
    gt.train_all(args.out, recipe, archs, args.seeds, split=args.split, threads=args.threads)
    if not args.no_summary:
        _print_summary(gt.summarize(args.out, args.seeds))
    return 0


def _print_summary(summary: dict) -> None:
    for key, value in summary.items():
        print(f'{key:<32} {value:.4f}' if isinstance(value, float) else f'{key:<32} {value}')


def main(argv: Iterable[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = build_parser().parse_args(None if argv is None else list(argv))
    try:
        if args.command == 'train':
            return _train(args)
        if args.command == 'summarize':
            _print_summary(gt.summarize(args.out))
            return 0
        if args.command == 'export':
            doc = gt.export_image_folder(args.root, args.img_size)
            print(f'{args.root}: {len(doc["train"])} train, {len(doc["holdout"])} held-out images in train/; test/')
            return 0
        if args.command == 'baseline':
            from .gt_harness import baseline_report
            from .rating import _format_table

            print(_format_table(baseline_report(args.truth, args.metric, args.top_k)))
            return 0
        if args.command == 'teacher':
            from .gt_teacher import train_teacher

            doc = train_teacher(
                args.truth, args.out, args.arch, args.seed, args.epochs, args.overwrite, threads=args.threads
            )
            print(f'{args.out}: teacher {doc["spec"]["edges"]}, test top-1 {doc["test_top1"]:.2f} %')
            return 0
        from .gt_harness import run_from_args

        return run_from_args(args)
    except (ValueError, FileNotFoundError, FileExistsError, KeyError) as err:
        print(f'error: {err.args[0] if isinstance(err, KeyError) else err}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
