"""Regenerate the README figure: python tools/plot_zoo.py [--bench benchmarks/h100_zoo_infer.json] [--out ...]"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from zoo._cli_errors import run_cli
from zoo.plots import plot_zoo


def main(argv: list[str] | None = None) -> int:
    """Parse the options and draw the figure; a missing benchmark file prints one line and returns 2."""
    parser = argparse.ArgumentParser(prog='plot_zoo.py', description=__doc__)
    parser.add_argument('--bench', default='benchmarks/h100_zoo_infer.json', help='benchmark JSON (tools/benchmark.py)')
    parser.add_argument('--out', default='docs/zoo_pareto.png', help='where the PNG goes')
    args = parser.parse_args(argv)
    if not Path(args.bench).is_file():
        parser.error(f'--bench {args.bench}: no such file (write one with tools/benchmark.py)')
    return run_cli(lambda: print(plot_zoo(args.out, args.bench)), prog=parser.prog)


if __name__ == '__main__':
    sys.exit(main())
