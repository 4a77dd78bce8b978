"""Supernet training methods, one registry feeding the command line (``python -m search METHOD``).

Adding a method is one line in :data:`METHODS`: its name and ``'module:attribute'``, where the attribute is a
class implementing :class:`~search.protocols.Method` whose ``config_class`` is its config dataclass (a YAML file of
configs/search/ maps onto it), or a driver with ``config_class`` and ``run(cfg, ctx, resume, stages)`` (DNA+,
which chains whole searches). Modules are imported only when their method runs.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ['METHODS', 'get_method']

METHODS: dict[str, str] = {
    'bossnas': 'search.methods.bossnas:BossNAS',
    'dna': 'search.methods.dna:DNA',
    'dna_cell': 'search.methods.dna_cell:DNACell',
    'dna_plus': 'search.methods.dna_plus:DNAPlus',
    'dna_pp': 'search.methods.dna_pp:DNAPP',
    'nasvit': 'search.methods.nasvit:NASViT',
    'pinas': 'search.methods.pinas:PiNAS',
    'spos': 'search.methods.spos:SPOS',
}


def get_method(name: str) -> Any:
    """The method class registered as ``name``; an unknown name lists the known ones."""
    if name not in METHODS:
        raise KeyError(f'unknown search method {name!r}; known: {sorted(METHODS)}')
    module, attr = METHODS[name].split(':')
    return getattr(importlib.import_module(module), attr)
