"""Command line of the search engine: ``python -m search METHOD --config FILE --data-dir D --output O [options]``.

One process: ``python -m search dna --config configs/search/dna_mbconv.yaml --data-dir /imagenet --output runs/dna``.
Many GPUs or nodes: ``torchrun --nproc-per-node 8 -m search dna ...`` (the engine reads torchrun's environment).
Options map onto the method's config dataclass; ``--set key=value`` reaches any field (YAML syntax for values).
Everything a user typed is checked before anything is built: a problem is one line ``error: ...`` and exit code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from .config import ConfigError, load_config
from .methods import METHODS, get_method

__all__ = ['build_parser', 'load_config', 'main']

#: Set to 1 to see the traceback behind an ``error:`` line.
TRACEBACK_ENV = 'SUPERNET_ZOO_TRACEBACK'


def _parse_set(items: Sequence[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        if '=' not in item:
            raise ConfigError(f'--set expects key=value, got {item!r}')
        key, value = item.split('=', 1)
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ConfigError(f'--set {key.strip()}: {value!r} is not a YAML value') from None
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='python -m search', description=__doc__.splitlines()[0])
    parser.add_argument('method', choices=sorted(METHODS), help='the supernet method to run')
    parser.add_argument('--config', help='YAML file of configs/search/')
    parser.add_argument('--data-dir', help='ImageNet-style folder with train/<class>/<image>')
    parser.add_argument('--output', help='run folder (checkpoints, logs, ratings, specs)')
    parser.add_argument('--resume', action='store_true', help='continue the run in --output from its checkpoint')
    parser.add_argument(
        '--overwrite', action='store_true', help='start again from step 0 in an --output that holds an earlier run'
    )
    parser.add_argument('--stage', nargs='+', choices=['train', 'rate', 'search'], help='run only these stages')
    parser.add_argument('--block', type=int, nargs='+', help='block-wise methods: train/rate only these blocks')
    parser.add_argument('--metric', choices=['flops', 'macs', 'params', 'latency'], help='search budget metric')
    parser.add_argument('--budget', type=float, help='search budget in units of --metric (e.g. 3.5e8 FLOPs)')
    parser.add_argument('--top-k', type=int, help='how many architectures to emit')
    parser.add_argument('--epochs', type=int, help='supernet training epochs')
    parser.add_argument('--batch-size', type=int, help='global batch over all ranks and accumulation steps')
    parser.add_argument('--grad-accum', type=int, help='accumulation steps per optimizer step')
    parser.add_argument('--seed', type=int, help='run seed (paths, data order, augmentation)')
    parser.add_argument('--device', help='auto (default), cpu or cuda')
    parser.add_argument('--set', nargs='+', default=[], metavar='KEY=VALUE', help='override any config field')
    parser.add_argument('--print-config', action='store_true', help='print the merged config and exit')
    return parser


def _check_data_dir(cfg: Any) -> None:
    if not cfg.data_dir:
        raise ConfigError('--data-dir is required: an ImageNet-style folder with train/<class>/<image>')
    train = Path(cfg.data_dir) / 'train'
    if not train.is_dir():
        raise ConfigError(f'--data-dir {cfg.data_dir}: no folder {train} (expected {train}/<class>/<image>)')


def _prepare(args: argparse.Namespace) -> tuple[Any, Any, tuple[str, ...]]:
    """Method class, config and stages, every input checked; raises ConfigError/RunFolderError on a problem."""
    from .pipeline import STAGES, check_run_folder

    cls = get_method(args.method)
    fields = {f.name for f in dataclasses.fields(cls.config_class)}
    staged = getattr(cls, 'staged', True)
    if not staged and (args.stage or args.block):
        raise ConfigError(f'{args.method} chains whole searches: --stage and --block do not apply to it')
    if args.block and 'blocks' not in fields:
        raise ConfigError(f'{args.method} is not block-wise: --block does not apply to it')
    overrides = {
        'data_dir': args.data_dir,
        'output': args.output,
        'metric': args.metric,
        'budget': args.budget,
        'top_k': args.top_k,
        'epochs': args.epochs,
        'batch_size': args.batch_size,
        'grad_accum': args.grad_accum,
        'seed': args.seed,
        'device': args.device,
        'blocks': args.block,
    }
    overrides = {k: v for k, v in overrides.items() if k in fields}
    overrides.update(_parse_set(args.set))
    cfg = load_config(cls.config_class, args.config, overrides)
    stages = tuple(args.stage) if args.stage else STAGES
    if args.print_config:
        return cls, cfg, stages
    if not staged:
        _check_data_dir(cfg)
        if hasattr(cls, 'check_folder'):  # a driver that guards its own run folder (BossNAS)
            cls.check_folder(cfg, args.resume, args.overwrite)
            return cls, cfg, stages
        out = Path(cfg.output)
        if (out / 'generations.json').is_file() and not (args.resume or args.overwrite):
            raise ConfigError(f'{out} holds an earlier run (generations.json): pass --resume or --overwrite')
        if args.overwrite:
            import shutil

            (out / 'generations.json').unlink(missing_ok=True)
            for gen in out.glob('gen[0-9]*'):
                shutil.rmtree(gen)
        return cls, cfg, stages
    if 'train' in stages or 'rate' in stages:
        _check_data_dir(cfg)
    check_run_folder(cfg, stages, args.resume, args.overwrite)
    return cls, cfg, stages


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from . import engine
    from .pipeline import RunFolderError

    try:
        cls, cfg, stages = _prepare(args)
    except (ConfigError, RunFolderError, KeyError) as err:
        if os.environ.get(TRACEBACK_ENV) == '1':
            raise
        print(f'error: {err.args[0] if isinstance(err, KeyError) else err}', file=sys.stderr)
        return 2
    if args.print_config:
        print(json.dumps(dataclasses.asdict(cfg), indent=1, default=str))
        return 0
    ctx = engine.init_distributed(getattr(cfg, 'device', 'auto'))
    try:
        found = engine.run(cls, cfg, stages=stages, ctx=ctx, resume=args.resume)
    except (ValueError, FileNotFoundError) as err:
        if os.environ.get(TRACEBACK_ENV) == '1':
            raise
        print(f'error: {err}', file=sys.stderr)
        return 2
    if ctx.is_main and found:
        for item in found[:5]:
            print(f'rank {item["rank"]}: score {item["score"]:.5f}, {item["metric"]} {item["cost"]:.4g}')
        print(f'specs written under {Path(cfg.output) / "arch"}')
    if ctx.distributed:
        import torch.distributed as dist

        dist.destroy_process_group()
    return 0


if __name__ == '__main__':
    sys.exit(main())
