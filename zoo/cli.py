"""The ``zoo`` console script: ``zoo demo``, ``zoo list``, ``zoo info NAME``, ``zoo spec NAME``, ``zoo benchmark``."""

from __future__ import annotations

import argparse
import json
import sys

from ._cli_errors import run_cli
from .api import UnknownModelError, get_spec, list_models, model_info
from .benchmark import add_arguments, run_from_args
from .demo import run_demo


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``zoo demo`` and ``tools/model_table.py``."""
    parser.add_argument('--out', default=None, help='also write the table as Markdown to this file')
    parser.add_argument('--pattern', default='*', help="only models matching this shell pattern, e.g. 'dna_*'")
    parser.add_argument('--no-onnx', action='store_true', help='skip the ONNX export and latency chapter')
    parser.add_argument('--no-search', action='store_true', help='skip the tiny DNA search chapter')


def run_demo_from_args(args: argparse.Namespace) -> None:
    """Run the demo for parsed :func:`add_demo_arguments` options; a pattern that matches no model is an error."""
    if not list_models(args.pattern):
        raise UnknownModelError(f'--pattern {args.pattern!r} matches no model; see zoo list')
    run_demo(args.out, args.pattern, onnx=not args.no_onnx, search=not args.no_search)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``zoo`` command; a user error prints one line ``zoo: error: ...`` and returns 2."""
    return run_cli(_main, argv, prog='zoo')


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog='zoo', description='supernet-zoo: NAS-found architectures for timm')
    sub = parser.add_subparsers(dest='command', required=True)
    demo = sub.add_parser('demo', help='build every model, run it, and print params/FLOPs next to the papers')
    add_demo_arguments(demo)
    lst = sub.add_parser('list', help='list the catalog')
    lst.add_argument('pattern', nargs='?', default='*', help="shell pattern of names, e.g. 'dna_*' (default: all)")
    info = sub.add_parser('info', help="a model's paper claims (and, with --measure, our measurements)")
    info.add_argument('name', help='catalog model name (see zoo list)')
    info.add_argument(
        '--measure', action='store_true', help="also build the model and measure params and FLOPs at the paper's size"
    )
    bench = sub.add_parser('benchmark', help='throughput / latency / memory of zoo models and timm peers')
    add_arguments(bench)
    spec = sub.add_parser('spec', help="print a model's architecture spec as JSON")
    spec.add_argument('name', help='catalog model name (see zoo list)')
    args = parser.parse_args(argv)

    if args.command == 'demo':
        run_demo_from_args(args)
    elif args.command == 'list':
        print('\n'.join(list_models(args.pattern)))
    elif args.command == 'info':
        print(json.dumps(model_info(args.name, measure=args.measure), indent=2))
    elif args.command == 'benchmark':
        run_from_args(args)
    elif args.command == 'spec':
        print(json.dumps(get_spec(args.name), indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main())
