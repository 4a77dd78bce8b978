"""Benchmark zoo models and timm peers: params, FLOPs, throughput/latency (eager, compile, onnxruntime), memory.

Usage:
  python tools/benchmark.py --models dna_c pinas_cls --peers --device cpu --batches 1 32 --out-dir results/
  python tools/benchmark.py --all --device cuda --modes infer train --batches 64 256 --backends eager compile
(the same options as ``zoo benchmark``)
"""

from __future__ import annotations

import argparse
import sys

from zoo._cli_errors import run_cli
from zoo.benchmark import add_arguments, run_from_args


def main(argv: list[str] | None = None) -> int:
    """Parse the options and benchmark; a user error prints one line and returns 2."""
    parser = argparse.ArgumentParser(prog='benchmark.py', description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run_cli(lambda: run_from_args(parser.parse_args(argv)), prog=parser.prog)


if __name__ == '__main__':
    sys.exit(main())
