"""DNA supernet training throughput on synthetic data (library: search/bench.py).

Usage: python tools/bench_search.py [--space dna] [--teacher tf_efficientnet_b7] [--batch 256] [--steps 300]
       [--device cuda] [--json benchmarks/dna_supernet_h100.json]
"""

import sys

from search.bench import main
from zoo._cli_errors import run_cli

if __name__ == '__main__':
    sys.exit(run_cli(main))
