"""Search benchmarks: DNA supernet throughput, engine overhead, DFS rating, inter-choice, BossNAS and NASViT step
overheads (search/bench*.py).

Usage: python tools/bench_search.py [--mode throughput|overhead|dfs|interchoice|bossnas|pinas|nasvit] [--space dna]
       [--teacher tf_efficientnet_b7] [--batch 256] [--steps 300] [--device cuda] [--json benchmarks/x.json]
"""

import sys

from search.bench import main
from zoo._cli_errors import run_cli

if __name__ == '__main__':
    sys.exit(run_cli(main))
