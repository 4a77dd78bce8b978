"""Regenerate the README figure: python tools/plot_zoo.py [--bench benchmarks/h100_zoo_infer.json] [--out ...]"""

from __future__ import annotations

import argparse

from zoo.plots import plot_zoo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--bench', default='benchmarks/h100_zoo_infer.json', help='benchmark JSON (tools/benchmark.py)')
    parser.add_argument('--out', default='docs/zoo_pareto.png')
    args = parser.parse_args()
    print(plot_zoo(args.out, args.bench))


if __name__ == '__main__':
    main()
