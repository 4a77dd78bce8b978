"""Re-estimate a model's BN statistics from training images (library: search/recalibrate.py).

Usage: python tools/recalibrate_bn.py nasvit_a1 --weights sliced.safetensors --data-dir /imagenet/train
       --out nasvit_a1.recalibrated.safetensors [--batches 64] [--batch-size 64]
"""

import sys

from search.recalibrate import main
from zoo._cli_errors import run_cli

if __name__ == '__main__':
    sys.exit(run_cli(main))
