"""Evaluate a trained mmdet config (e.g. configs/mmdet/*.py); same options as tools/seg_test.py.

Usage: python tools/det_test.py CONFIG CHECKPOINT [--work-dir DIR] [--out FILE] [--cfg-options k=v ...]
       [--launcher none|pytorch|slurm|mpi]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from seg_test import main

if __name__ == '__main__':
    from zoo._cli_errors import run_cli

    sys.exit(run_cli(main, task='mmdet'))
