"""Retrain a zoo model, or a spec found by a search, on an ImageNet-style folder (library: zoo/training/).

Usage: python tools/train.py MODEL_OR_SPEC --data-dir DIR --output OUT [--preset dna|bossnet|pinas|nasvit|smoke]
       [--epochs N] [--batch-size B] [--lr LR] [--amp] [--resume [PATH]] [--print-config] ... (--help lists all)
Multi-GPU: torchrun --nproc-per-node 8 tools/train.py dna_c --preset dna --data-dir /imagenet --output runs/dna_c
See docs/train.md.
"""

from __future__ import annotations

import sys

from zoo.training.cli import main

if __name__ == '__main__':
    sys.exit(main())
