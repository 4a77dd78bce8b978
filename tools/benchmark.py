"""Benchmark zoo models and timm peers: params, FLOPs, throughput/latency (eager, compile, onnxruntime), memory.

Usage:
  python tools/benchmark.py --models dna_c pinas_cls --peers --device cpu --batches 1 32 --out-dir results/
  python tools/benchmark.py --all --device cuda --modes infer train --batches 64 256 --backends eager compile
"""

from __future__ import annotations

import argparse

import zoo
from zoo.benchmark import PEERS, run, save, to_markdown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--models', nargs='*', default=[])
    parser.add_argument('--all', action='store_true', help='every model of the zoo')
    parser.add_argument('--peers', action='store_true', help=f'add timm peers: {", ".join(PEERS)}')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--batches', nargs='+', type=int, default=[1, 32])
    parser.add_argument('--backends', nargs='+', default=['eager', 'compile', 'onnxruntime'])
    parser.add_argument('--modes', nargs='+', default=['infer'], choices=['infer', 'train'])
    parser.add_argument('--img-size', type=int, default=None)
    parser.add_argument('--no-amp', action='store_true', help='fp32 on CUDA instead of bf16 autocast')
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--iters', type=int, default=10)
    parser.add_argument('--out-dir', default='benchmarks')
    args = parser.parse_args()
    models = list(args.models) + (zoo.list_models() if args.all else []) + (list(PEERS) if args.peers else [])
    if not models:
        parser.error('name models with --models, or use --all / --peers')
    results = run(
        models,
        args.device,
        tuple(args.batches),
        tuple(args.backends),
        tuple(args.modes),
        args.img_size,
        not args.no_amp,
        args.warmup,
        args.iters,
    )
    print(to_markdown(results))
    print(save(results, args.out_dir))


if __name__ == '__main__':
    main()
