"""Export zoo models to ONNX and check them in onnxruntime.

Usage: python tools/export_onnx.py dna_c pinas_cls --out-dir onnx/ [--size 224] [--opset 18] [--features-only]
[--no-dynamic-batch]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import zoo  # noqa: F401  (registers the models)
from zoo.onnx import SUPPORTED_OPSETS, OnnxParityError, export_onnx


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'{text!r} is not an integer') from None
    if value < 1:
        raise argparse.ArgumentTypeError(f'{value} is not a positive size (omit --size for the native size)')
    return value


def main(argv: list[str] | None = None) -> None:
    """Export each model; a bad option or a refused input size is one ``error:`` line (exit 2), a failed check too
    (exit 1)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('models', nargs='+', help='zoo model names or spec .json files')
    parser.add_argument('--out-dir', default='onnx', help='folder for the .onnx files (default: onnx)')
    parser.add_argument('--size', type=_positive, default=None, help="input side (default: the model's native size)")
    parser.add_argument('--batch-size', type=_positive, default=1, help='batch size of the check (default: 1)')
    parser.add_argument(
        '--opset',
        type=int,
        default=18,
        choices=SUPPORTED_OPSETS,
        metavar='N',
        help=f'ONNX opset, one of {", ".join(map(str, SUPPORTED_OPSETS))} (default: 18)',
    )
    parser.add_argument('--features-only', action='store_true', help='export the multi-scale backbone outputs')
    parser.add_argument('--no-dynamic-batch', action='store_true', help='fix the batch dimension to --batch-size')
    parser.add_argument('--no-simplify', action='store_true', help='skip the onnxslim pass')
    args = parser.parse_args(argv)
    for name in args.models:
        kwargs = {'features_only': True} if args.features_only else {}
        stem = Path(name).stem + ('_features' if args.features_only else '')
        try:
            report = export_onnx(
                name,
                Path(args.out_dir) / f'{stem}.onnx',
                input_size=(3, args.size, args.size) if args.size else None,
                batch_size=args.batch_size,
                dynamic_batch=not args.no_dynamic_batch,
                opset=args.opset,
                simplify=not args.no_simplify,
                **kwargs,
            )
        except ValueError as err:
            parser.error(str(err) if str(err).startswith(name) else f'{name}: {err}')
        except OnnxParityError as err:
            sys.exit(f'error: {err}')
        print(f'{report.path}: input {report.input_shape}, opset {report.opset}, outputs {report.output_names}')
        for parity in report.parity:
            print(f'  {parity.line()}')
        print(f'  tolerance: max rel. diff <= {report.rtol:g}, cosine >= {report.min_cosine:g}')


if __name__ == '__main__':
    main()
