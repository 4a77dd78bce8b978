"""Train an mmdet config (e.g. configs/mmdet/*.py) with mmengine's Runner; same options as tools/seg_train.py.

Usage: python tools/det_train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp] [--cfg-options k=v ...]
       [--launcher none|pytorch|slurm|mpi]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from seg_train import main

if __name__ == '__main__':
    from zoo._cli_errors import run_cli

    sys.exit(run_cli(main, task='mmdet'))
