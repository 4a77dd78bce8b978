"""Train an mmseg config (e.g. configs/mmseg/*.py) with mmengine's Runner: a thin launcher, as mmseg's tools/train.py.

Usage: python tools/seg_train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp] [--cfg-options k=v ...]
       [--launcher none|pytorch|slurm|mpi]
Multi-GPU: torchrun --nproc-per-node 4 tools/seg_train.py CONFIG --launcher pytorch
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mmengine.runner import Runner


def parse_args(argv: list[str] | None, task: str) -> argparse.Namespace:
    from mmengine.config import DictAction

    parser = argparse.ArgumentParser(description=f'Train an {task} config with mmengine Runner')
    parser.add_argument('config', help='config file')
    parser.add_argument('--work-dir', help='where logs and checkpoints go (default: work_dirs/<config name>)')
    parser.add_argument(
        '--resume',
        nargs='?',
        const='auto',
        help='resume from CKPT, or from the latest checkpoint in the work dir when no path is given',
    )
    parser.add_argument('--amp', action='store_true', help='automatic mixed precision (AmpOptimWrapper)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, help='override config keys: a.b=value')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def ensure_plain_checkpoints(cfg: Any) -> None:
    """Add ``PlainCheckpointHook`` to a config that lacks it, so that its checkpoints resume under weights_only."""
    import backbones.mm  # noqa: F401  (registers the hook)

    hooks = list(cfg.get('custom_hooks') or [])
    if not any(str(h.get('type', '')).endswith('PlainCheckpointHook') for h in hooks):
        hooks.append(dict(type='PlainCheckpointHook'))
    cfg.custom_hooks = hooks


def build_runner(argv: list[str] | None = None, task: str = 'mmseg') -> Runner:
    """Config + command-line overrides -> mmengine Runner (not started); shared by seg_train and det_train."""
    from mmengine.config import Config
    from mmengine.runner import Runner

    args = parse_args(argv, task)
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    if 'backbones.mm' in (cfg.get('custom_imports') or {}).get('imports', []):
        from backbones.mm import check_config_channels

        check_config_channels(cfg.model)  # a channel mismatch fails here, naming both lists, not deep in the neck
    cfg.work_dir = args.work_dir or cfg.get('work_dir') or str(Path('work_dirs') / Path(args.config).stem)
    if args.amp and cfg.optim_wrapper.get('type', 'OptimWrapper') != 'AmpOptimWrapper':
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
    ensure_plain_checkpoints(cfg)
    if args.resume:
        cfg.resume = True
        cfg.load_from = None if args.resume == 'auto' else args.resume
    return Runner.from_cfg(cfg)


def main(argv: list[str] | None = None, task: str = 'mmseg') -> None:
    build_runner(argv, task).train()


if __name__ == '__main__':
    from zoo._cli_errors import run_cli

    sys.exit(run_cli(main))
