"""The ``tools/train.py`` command line: every :class:`TrainConfig` field is a flag; presets stay in force."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import types
import typing
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import yaml

from .config import _FIELDS, TrainConfig, list_presets, make_config

__all__ = ['build_parser', 'config_from_args', 'main']


def _optional(kind: type) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        return None if text.lower() in ('none', 'null', '') else kind(text)

    parse.__name__ = kind.__name__
    return parse


def _kv(text: str) -> tuple[str, Any]:
    if '=' not in text:
        raise argparse.ArgumentTypeError(f'expected key=value, got {text!r}')
    k, v = text.split('=', 1)
    return k, yaml.safe_load(v)


def build_parser() -> argparse.ArgumentParser:
    """Every :class:`TrainConfig` field as a flag; flags default to 'not given' so that presets stay in force."""
    parser = argparse.ArgumentParser(
        prog='tools/train.py',
        description='Retrain a zoo model or a found spec on an ImageNet-style folder with a paper recipe.',
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument('model', help=_FIELDS['model'].metadata['help'])
    parser.add_argument('--preset', help=f'recipe: {", ".join(list_presets())} or a .yaml path')
    parser.add_argument('--print-config', action='store_true', help='print the merged config and exit')
    hints = typing.get_type_hints(TrainConfig)
    for name, f in _FIELDS.items():
        if name == 'model':
            continue
        flag = '--' + name.replace('_', '-')
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        help_ = f.metadata.get('help', '')
        if 'default' not in help_:
            help_ += f' (default: {default})'
        hint = hints[name]
        is_union = typing.get_origin(hint) in (typing.Union, types.UnionType)
        args = typing.get_args(hint) if is_union else ()
        optional = type(None) in args
        base = next(a for a in args if a is not type(None)) if is_union else hint
        if name == 'resume':
            parser.add_argument(flag, nargs='?', const=True, metavar='PATH', help=help_)
        elif name == 'model_kwargs':
            parser.add_argument(flag, nargs='*', type=_kv, metavar='K=V', help=help_)
        elif base is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=help_)
        elif typing.get_origin(base) is list:
            (item,) = typing.get_args(base)
            parser.add_argument(flag, nargs='+', type=item, help=help_)
        else:
            parser.add_argument(flag, type=_optional(base) if optional else base, help=help_)
    return parser


def config_from_args(argv: list[str] | None = None) -> tuple[TrainConfig, bool]:
    """Defaults < ``--preset`` < explicit flags. An explicit ``--lr`` is absolute unless ``--lr-batch`` is given."""
    ns = vars(build_parser().parse_args(argv))
    preset = ns.pop('preset', None)
    print_config = ns.pop('print_config', False)
    if 'model_kwargs' in ns:
        ns['model_kwargs'] = dict(ns['model_kwargs'])
    if 'lr' in ns and 'lr_batch' not in ns:
        ns['lr_batch'] = None
    return make_config(preset, **ns), print_config


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (``tools/train.py``); returns the exit code."""
    cfg, print_config = config_from_args(argv)
    if print_config:
        sys.stdout.write(yaml.safe_dump(asdict(cfg), sort_keys=False))
        return 0
    rank = int(os.environ.get('RANK', '0'))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format='%(asctime)s %(message)s')
    from .loop import train

    summary = train(cfg)
    if rank == 0:
        sys.stdout.write(json.dumps(summary, indent=2) + '\n')
    return 0
