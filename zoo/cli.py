"""The ``zoo`` console script: ``zoo demo``, ``zoo list``, ``zoo info NAME``, ``zoo spec NAME``, ``zoo benchmark``."""

from __future__ import annotations

import argparse
import json
import sys

from .api import get_spec, list_models, model_info
from .benchmark import add_arguments, run_from_args
from .demo import run_demo


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``zoo`` command."""
    parser = argparse.ArgumentParser(prog='zoo', description='supernet-zoo: NAS-found architectures for timm')
    sub = parser.add_subparsers(dest='command', required=True)
    demo = sub.add_parser('demo', help='build every model, run it, and print params/FLOPs next to the papers')
    demo.add_argument('--out', default=None, help='also write the table as Markdown to this file')
    demo.add_argument('--pattern', default='*', help='only models matching this shell pattern')
    demo.add_argument('--no-onnx', action='store_true', help='skip the ONNX export and latency chapter')
    demo.add_argument('--no-search', action='store_true', help='skip the tiny DNA search chapter')
    lst = sub.add_parser('list', help='list the catalog')
    lst.add_argument('pattern', nargs='?', default='*')
    info = sub.add_parser('info', help="a model's paper claims (and, with --measure, our measurements)")
    info.add_argument('name')
    info.add_argument('--measure', action='store_true')
    bench = sub.add_parser('benchmark', help='throughput / latency / memory of zoo models and timm peers')
    add_arguments(bench)
    spec = sub.add_parser('spec', help="print a model's architecture spec as JSON")
    spec.add_argument('name')
    args = parser.parse_args(argv)

    try:
        if args.command == 'demo':
            run_demo(args.out, args.pattern, onnx=not args.no_onnx, search=not args.no_search)
        elif args.command == 'list':
            print('\n'.join(list_models(args.pattern)))
        elif args.command == 'info':
            print(json.dumps(model_info(args.name, measure=args.measure), indent=2))
        elif args.command == 'benchmark':
            run_from_args(args)
        elif args.command == 'spec':
            print(json.dumps(get_spec(args.name), indent=2))
    except KeyError as err:
        print(f'zoo: {err.args[0]}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
