"""Weight-sharing search spaces: each is a supernet whose chosen paths are networks of one backbone family.

:func:`get_space` is the registry over every space. Adding a space is one line in :data:`SPACES`: its name and
``'module:factory'``; the factory is called as ``factory(name, **options)`` and returns a
:class:`~search.protocols.SearchSpace` (most subclass :class:`~search.spaces.base.ChoiceSpace`). Modules are
imported only when their space is asked for.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from .base import ChoiceSpace
from .mbconv import SPACES as MBCONV_SPACES
from .mbconv import BlockChoice, MBConvSpace, MBConvSupernet

__all__ = [
    'MBCONV_SPACES',
    'SPACES',
    'BlockChoice',
    'ChoiceSpace',
    'MBConvSpace',
    'MBConvSupernet',
    'build_supernet',
    'get_space',
    'register_space',
]

#: name -> 'module:factory' (or a callable); see the module docstring.
SPACES: dict[str, str | Callable[..., Any]] = {
    'dna': 'search.spaces.mbconv:get_space',
    'dna_single_cell': 'search.spaces.mbconv:get_space',
    'dna_small': 'search.spaces.mbconv:get_space',
    'tiny': 'search.spaces.mbconv:get_space',
    'bossnas_mbconv': 'search.spaces.mbconv:get_space',
    'bossnas_mbconv_tiny': 'search.spaces.mbconv:get_space',
    'fairnas': 'search.spaces.fairnas:get_space',
    'fairnas_tiny': 'search.spaces.fairnas:get_space',
    'hytra': 'search.spaces.hytra:get_space',
    'hytra_tiny': 'search.spaces.hytra:get_space',
    'nb201': 'search.spaces.nb201:get_space',
    'nb201_tiny': 'search.spaces.nb201:get_space',
    'nats_size': 'search.spaces.nats:get_space',
    'nats_size_tiny': 'search.spaces.nats:get_space',
    'nasvit': 'search.spaces.nasvit:get_space',
    'nasvit_tiny': 'search.spaces.nasvit:get_space',
}


def register_space(name: str, factory: str | Callable[..., Any]) -> None:
    """Add a space at run time (``factory(name, **options)`` returns it); an existing name is refused."""
    if name in SPACES:
        raise ValueError(f'space {name!r} is already registered ({SPACES[name]})')
    SPACES[name] = factory


def get_space(name: Any, **options: Any) -> Any:
    """The space registered as ``name`` (a space object is returned as is); an unknown name lists the known ones."""
    if not isinstance(name, str):
        return name
    if name not in SPACES:
        raise KeyError(f'unknown search space {name!r}; known: {sorted(SPACES)}')
    factory = SPACES[name]
    if isinstance(factory, str):
        module, attr = factory.split(':')
        factory = getattr(importlib.import_module(module), attr)
    return factory(name, **options)


def build_supernet(name_or_space: Any, num_classes: int = 1000, **options: Any) -> Any:
    """The supernet of a space (by name or object); ``options`` go to the space's ``build_supernet``
    (``interchoice``: inter-choice dependent weights, :mod:`search.interchoice`, on spaces that support them)."""
    space_options = options.pop('space_options', {})
    space = get_space(name_or_space, **space_options)
    if options.get('interchoice') is not None and not getattr(space, 'supports_interchoice', False):
        raise ValueError(
            f'space {space.name!r} does not support inter-choice dependent weights (option interchoice); '
            f'its supernet would need interchoice sites (see search/interchoice.py)'
        )
    return space.build_supernet(num_classes=num_classes, **options)
