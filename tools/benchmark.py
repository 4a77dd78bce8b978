"""Benchmark zoo models and timm peers: params, FLOPs, throughput/latency (eager, compile, onnxruntime), memory.

Usage:
  python tools/benchmark.py --models dna_c pinas_cls --peers --device cpu --batches 1 32 --out-dir results/
  python tools/benchmark.py --all --device cuda --modes infer train --batches 64 256 --backends eager compile
(the same options as ``zoo benchmark``)
"""

from __future__ import annotations

import argparse

from zoo.benchmark import add_arguments, run_from_args


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    run_from_args(parser.parse_args())


if __name__ == '__main__':
    main()
