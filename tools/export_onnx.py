"""Export zoo models to ONNX and check them in onnxruntime.

Usage: python tools/export_onnx.py dna_c pinas_cls --out-dir onnx/ [--size 224] [--features-only] [--no-dynamic-batch]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import zoo  # noqa: F401  (registers the models)
from zoo.onnx import export_onnx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('models', nargs='+', help='zoo model names or spec .json files')
    parser.add_argument('--out-dir', default='onnx')
    parser.add_argument('--size', type=int, default=None, help="input side (default: the model's native size)")
    parser.add_argument('--batch-size', type=int, default=1)
    parser.add_argument('--opset', type=int, default=18)
    parser.add_argument('--features-only', action='store_true', help='export the multi-scale backbone outputs')
    parser.add_argument('--no-dynamic-batch', action='store_true')
    parser.add_argument('--no-simplify', action='store_true')
    args = parser.parse_args()
    for name in args.models:
        kwargs = {'features_only': True} if args.features_only else {}
        stem = Path(name).stem + ('_features' if args.features_only else '')
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
        print(
            f'{report.path}: input {report.input_shape}, outputs {report.output_names}, '
            f'max |onnxruntime - torch| = {report.max_abs_diff:.2e}'
        )


if __name__ == '__main__':
    main()
