"""Evaluate a trained mmseg config (e.g. configs/mmseg/*.py) with mmengine's Runner, as mmseg's tools/test.py.

Usage: python tools/seg_test.py CONFIG CHECKPOINT [--work-dir DIR] [--out FILE] [--cfg-options k=v ...]
       [--launcher none|pytorch|slurm|mpi]
Multi-GPU: torchrun --nproc-per-node 4 tools/seg_test.py CONFIG CHECKPOINT --launcher pytorch
The checkpoint is a Runner ``.pth`` (loaded with weights_only=True) or a ``.safetensors`` file of the whole model.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parent))

from seg_train import ensure_plain_checkpoints

if TYPE_CHECKING:
    from mmengine.runner import Runner


def parse_args(argv: list[str] | None, task: str) -> argparse.Namespace:
    from mmengine.config import DictAction

    parser = argparse.ArgumentParser(description=f'Evaluate an {task} config with mmengine Runner')
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='Runner checkpoint (.pth) or model weights (.safetensors)')
    parser.add_argument('--work-dir', help='where logs go (default: work_dirs/<config name>)')
    parser.add_argument('--out', help='also write the metrics to this JSON file')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, help='override config keys: a.b=value')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    if not Path(args.checkpoint).is_file():
        parser.error(f'checkpoint {args.checkpoint} does not exist')
    return args


def build_test_runner(argv: list[str] | None = None, task: str = 'mmseg') -> tuple[Runner, argparse.Namespace]:
    """Config + checkpoint -> a Runner ready for ``test()``; shared by seg_test and det_test."""
    from mmengine.config import Config
    from mmengine.runner import Runner

    args = parse_args(argv, task)
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    cfg.work_dir = args.work_dir or cfg.get('work_dir') or str(Path('work_dirs') / Path(args.config).stem)
    ensure_plain_checkpoints(cfg)
    if args.checkpoint.endswith('.safetensors'):
        cfg.load_from = None
        runner = Runner.from_cfg(cfg)
        from safetensors.torch import load_file

        missing, unexpected = runner.model.load_state_dict(load_file(args.checkpoint), strict=False)
        if missing or unexpected:
            raise KeyError(
                f'{args.checkpoint} does not fit the model of {args.config}: '
                f'missing {sorted(missing)[:5]}..., unexpected {sorted(unexpected)[:5]}...'
            )
    else:
        cfg.load_from = args.checkpoint
        runner = Runner.from_cfg(cfg)
    return runner, args


def main(argv: list[str] | None = None, task: str = 'mmseg') -> dict:
    """Run the test loop; returns (and with ``--out`` writes) the metrics."""
    runner, args = build_test_runner(argv, task)
    metrics = runner.test()
    if args.out:
        Path(args.out).write_text(json.dumps({k: float(v) for k, v in metrics.items()}, indent=2) + '\n')
    return metrics


if __name__ == '__main__':
    from zoo._cli_errors import run_cli

    sys.exit(run_cli(main))
