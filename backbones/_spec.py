"""Shared validation helpers for architecture specs.

A spec is a plain JSON-serializable dict with ``family`` and ``version`` plus family fields. Every
family validates its specs with these helpers so that a bad spec fails with one error that names the
field and the values it may take, instead of a shape error deep inside torch. Every numeric field is bounded
above as well as below (docs/models.md, "Spec bounds"), and the bounds are checked before anything is built, so
that a typo such as ``stem_size: 10**12`` is refused at once instead of trying to allocate terabytes.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any


class SpecError(ValueError):
    """An architecture spec is invalid; the message names the field and the allowed values."""


def check_header(spec: Any, family: str, version: int, fields: Iterable[str]) -> dict:
    """Check that ``spec`` is a mapping of ``family``/``version`` with exactly the expected fields.

    Returns a deep copy, so that callers can normalise it without touching the caller's dict.
    """
    if not isinstance(spec, Mapping):
        raise SpecError(f'spec must be a dict (JSON object), got {type(spec).__name__}')
    spec = copy.deepcopy(dict(spec))
    if spec.get('family') != family:
        raise SpecError(f"spec field 'family': expected {family!r}, got {spec.get('family')!r}")
    if spec.get('version') != version:
        raise SpecError(f"spec field 'version': {family} specs are version {version}, got {spec.get('version')!r}")
    expected = {'family', 'version', *fields}
    missing = sorted(expected - spec.keys())
    if missing:
        raise SpecError(f'{family} spec is missing field(s) {missing}; a {family} spec has fields {sorted(expected)}')
    unknown = sorted(spec.keys() - expected)
    if unknown:
        raise SpecError(f'{family} spec has unknown field(s) {unknown}; a {family} spec has fields {sorted(expected)}')
    return spec


def check_int(value: Any, field: str, minimum: int | None = None, maximum: int | None = None) -> int:
    """Check that ``value`` is an int (not a bool, not a float) within ``[minimum, maximum]``.

    The upper bound is checked before anything is built, so an absurd value fails here instead of allocating.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f'spec field {field!r}: expected an integer, got {value!r}')
    if minimum is not None and value < minimum:
        raise SpecError(f'spec field {field!r}: must be >= {minimum}, got {value}')
    if maximum is not None and value > maximum:
        raise SpecError(f'spec field {field!r}: must be <= {maximum}, got {value}')
    return value


def check_choice(value: Any, allowed: Iterable[Any], field: str) -> Any:
    """Check that ``value`` is one of ``allowed``, of the same type: ``True`` is not ``1`` and ``2.0`` is not ``2``."""
    allowed = tuple(allowed)
    if not any(type(value) is type(a) and value == a for a in allowed):
        raise SpecError(f'spec field {field!r}: {value!r} is not one of the allowed values {allowed}')
    return value


def check_list(value: Any, field: str, length: int | None = None, max_length: int | None = None) -> list:
    """Check that ``value`` is a list (or tuple) of ``length`` entries, or at most ``max_length``; returns a list."""
    if not isinstance(value, list | tuple):
        raise SpecError(f'spec field {field!r}: expected a list, got {type(value).__name__}')
    if length is not None and len(value) != length:
        raise SpecError(f'spec field {field!r}: expected {length} entries, got {len(value)}')
    if max_length is not None and len(value) > max_length:
        raise SpecError(f'spec field {field!r}: at most {max_length} entries, got {len(value)}')
    return list(value)
