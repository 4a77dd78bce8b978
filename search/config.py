"""Run configs of the search engine: the options every method shares, loading from YAML, checking types and ranges.

A method's config dataclass subclasses :class:`SearchConfig` and adds its own fields; a YAML file of
configs/search/ maps onto it and ``--set key=value`` overrides any field. Every problem is a :class:`ConfigError`
whose message names the key, the value and what was expected, so the command line can print one line.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from .protocols import COST_METRICS

__all__ = ['ConfigError', 'SearchConfig', 'check_types', 'load_config']


class ConfigError(ValueError):
    """A config value is unknown, of the wrong type or out of range (the message names the key)."""


@dataclass
class SearchConfig:
    """The options the engine reads (data, schedule, checkpoints, search budget); methods add theirs."""

    data_dir: str = ''
    output: str = 'runs/search'
    space: str = 'dna'
    img_size: int = 224
    epochs: int = 20
    batch_size: int = 512  # global, over all ranks and accumulation steps
    grad_accum: int = 1
    blocks: tuple[int, ...] | None = None  # block-wise methods: train/rate only these blocks (independent jobs)
    seed: int = 42
    amp: bool = True
    workers: int = 8
    ckpt_every: int = 500
    holdout_per_class: int = 50
    metric: str = 'flops'
    budget: float | None = None
    top_k: int = 5
    device: str = 'auto'
    tensorboard: bool = False

    def __post_init__(self) -> None:
        if self.blocks is not None:
            self.blocks = tuple(int(b) for b in self.blocks)
        check_types(self)
        positive = ('img_size', 'batch_size', 'grad_accum', 'ckpt_every', 'top_k', 'holdout_per_class')
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f'{name} must be >= 1, got {getattr(self, name)}')
        for name in ('epochs', 'workers'):
            if getattr(self, name) < 0:
                raise ConfigError(f'{name} must be >= 0, got {getattr(self, name)}')
        if self.batch_size % self.grad_accum:
            raise ConfigError(f'batch_size {self.batch_size} is not divisible by grad_accum {self.grad_accum}')
        if self.metric not in COST_METRICS:
            raise ConfigError(f'metric {self.metric!r}: expected one of {", ".join(COST_METRICS)}')
        if self.budget is not None and self.budget <= 0:
            raise ConfigError(f'budget must be positive (or null for none), got {self.budget}')

    @property
    def out(self) -> Path:
        return Path(self.output)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def _type_name(hint: Any) -> str:
    if hint is type(None):
        return 'null'
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return ' or '.join(_type_name(a) for a in typing.get_args(hint))
    if origin is not None:
        return getattr(origin, '__name__', str(origin))
    return getattr(hint, '__name__', str(hint))


def _fits(value: Any, hint: Any) -> bool:
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in typing.get_args(hint))
    if origin in (tuple, list):
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return isinstance(value, (tuple, list)) and all(_fits(v, args[0]) for v in value) if args else True
    if origin is dict:
        return isinstance(value, dict)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def check_types(cfg: Any) -> None:
    """Raise :class:`ConfigError` for the first field whose value does not fit its annotation."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        hint = hints.get(f.name, Any)
        if not _fits(value, hint):
            raise ConfigError(f'{f.name}={value!r}: expected {_type_name(hint)}, got {type(value).__name__}')


def load_config(cls: type, path: str | Path | None, overrides: dict[str, Any]) -> Any:
    """A config dataclass from a YAML file plus overrides; an unknown key raises naming it and the known ones."""
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f'config file {path} does not exist')
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f'config file {path} is not valid YAML: {str(err).splitlines()[0]}') from None
        if not isinstance(values, dict):
            raise ConfigError(f'config file {path} must hold a mapping of keys to values')
        values.pop('method', None)
    values.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f'unknown config key(s) {unknown} for {cls.__name__}; known keys: {sorted(known)}')
    try:
        return cls(**values)
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:
        raise ConfigError(str(err)) from None
