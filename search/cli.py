"""Command line of the search engine: ``python -m search METHOD --config FILE [options]`` (or ``tools/run_search.py``).

One process: ``python -m search dna --config configs/search/dna_mbconv.yaml --data-dir /imagenet``.
Many GPUs or nodes: ``torchrun --nproc-per-node 8 -m search dna ...`` (the engine reads torchrun's environment).
Options map onto the method's config dataclass; ``--set key=value`` reaches any field (YAML syntax for values).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from . import engine

__all__ = ['load_config', 'main']


def _methods() -> dict[str, tuple[type, Any]]:
    from .methods import dna, dna_plus, dna_pp

    return {
        'dna': (dna.DNAConfig, dna.run),
        'dna_plus': (dna_plus.DNAPlusConfig, dna_plus.run),
        'dna_pp': (dna_pp.DNAPPConfig, dna_pp.run),
    }


def load_config(cls: type, path: str | Path | None, overrides: dict[str, Any]) -> Any:
    """A config dataclass from a YAML file plus overrides; an unknown key raises naming it and the known ones."""
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f'config file {path} does not exist')
        values = yaml.safe_load(path.read_text()) or {}
        values.pop('method', None)
    values.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f'unknown config key(s) {unknown} for {cls.__name__}; known keys: {sorted(known)}')
    return cls(**values)


def _parse_set(items: Sequence[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        if '=' not in item:
            raise ValueError(f'--set expects key=value, got {item!r}')
        key, value = item.split('=', 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='python -m search', description=__doc__.splitlines()[0])
    parser.add_argument('method', choices=['dna', 'dna_plus', 'dna_pp'], help='the supernet method to run')
    parser.add_argument('--config', help='YAML file of configs/search/')
    parser.add_argument('--data-dir', help='ImageNet-style folder with train/<class>/<image>')
    parser.add_argument('--output', help='run folder (checkpoints, logs, ratings, specs)')
    parser.add_argument('--resume', action='store_true', help='continue from <output>/checkpoints/last.pt')
    parser.add_argument(
        '--stage', nargs='+', choices=['train', 'rate', 'search'], help='DNA: run only these stages (default: all)'
    )
    parser.add_argument('--block', type=int, nargs='+', help='DNA: train/rate only these blocks (independent jobs)')
    parser.add_argument('--metric', choices=['flops', 'macs', 'params', 'latency'], help='search budget metric')
    parser.add_argument('--budget', type=float, help='search budget in units of --metric (e.g. 3.5e8 FLOPs)')
    parser.add_argument('--top-k', type=int, help='how many architectures to emit')
    parser.add_argument('--epochs', type=int)
    parser.add_argument('--batch-size', type=int, help='global batch over all ranks and accumulation steps')
    parser.add_argument('--grad-accum', type=int)
    parser.add_argument('--seed', type=int)
    parser.add_argument('--device', help='auto (default), cpu or cuda')
    parser.add_argument('--set', nargs='+', default=[], metavar='KEY=VALUE', help='override any config field')
    parser.add_argument('--print-config', action='store_true', help='print the merged config and exit')
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cls, run = _methods()[args.method]
    fields = {f.name for f in dataclasses.fields(cls)}
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
    cfg = load_config(cls, args.config, overrides)
    if args.print_config:
        print(json.dumps(dataclasses.asdict(cfg), indent=1, default=str))
        return 0
    ctx = engine.init_distributed(getattr(cfg, 'device', 'auto'))
    kwargs: dict[str, Any] = {'resume': args.resume}
    if args.stage and args.method == 'dna':
        kwargs['stages'] = tuple(args.stage)
    found = run(cfg, ctx, **kwargs)
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
