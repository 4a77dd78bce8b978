"""Model families of supernet-zoo, registered with timm on import.

Each family module owns its spec schema (``validate_spec``), its builder (``build``), the specs of the
architectures found in its paper (``SPECS``) and its timm entry points. Nothing here imports ``zoo`` or
``search``: backbones depend on timm and torch only.
"""

from __future__ import annotations

import json
import os
from os import PathLike
from pathlib import Path
from types import ModuleType
from typing import Any

import timm
import torch.nn as nn

from . import hytra, mbconv, nasvit, nats_size, nb201, resnest
from ._features import check_out_indices
from ._spec import SpecError

__all__ = [
    'FAMILIES',
    'SpecError',
    'build',
    'check_out_indices',
    'create_model',
    'family_of',
    'load_spec',
    'validate_spec',
]

FAMILIES: dict[str, ModuleType] = {
    mbconv.FAMILY: mbconv,
    resnest.FAMILY: resnest,
    nasvit.FAMILY: nasvit,
    hytra.FAMILY: hytra,
    nb201.FAMILY: nb201,
    nats_size.FAMILY: nats_size,
}


def family_of(spec: Any) -> ModuleType:
    """The family module that owns ``spec`` (raises :class:`SpecError` for an unknown family)."""
    family = spec.get('family') if isinstance(spec, dict) else None
    if family not in FAMILIES:
        raise SpecError(f"spec field 'family': {family!r} is not one of the known families {sorted(FAMILIES)}")
    return FAMILIES[family]


def validate_spec(spec: Any) -> dict:
    """Validate any spec against its family's schema; returns a normalised copy."""
    if not isinstance(spec, dict):
        raise SpecError(f'spec must be a dict (JSON object), got {type(spec).__name__}')
    return family_of(spec).validate_spec(spec)


def build(spec: dict, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Build the network described by ``spec`` with timm keyword arguments (``num_classes``, ``features_only``...)."""
    return family_of(spec).build(spec, pretrained=pretrained, **kwargs)


#: Name prefixes that timm resolves itself (Hub repositories and local folders saved by ``zoo.save_for_hub``).
TIMM_SOURCES = ('hf-hub:', 'local-dir:')


def create_model(source: str | dict | PathLike, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """A model from a spec dict, a spec ``.json`` file, or a model name registered with timm (``hf-hub:`` too).

    The part of ``zoo.create_model`` that needs no catalog, for the code below ``zoo`` in the layering (the
    OpenMMLab adapter, search's command-line tools); ``zoo.create_model`` adds the catalog's checks and hints.
    """
    if isinstance(source, dict):
        return build(validate_spec(source), pretrained=pretrained, **kwargs)
    name = str(source)
    if isinstance(source, str) and name.startswith(TIMM_SOURCES):
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    if isinstance(source, PathLike) or name.endswith('.json') or '/' in name or os.sep in name:
        return build(load_spec(source)[0], pretrained=pretrained, **kwargs)
    if not timm.is_model(name.split('.', 1)[0]):
        raise ValueError(f'unknown model {name!r}: neither a model registered with timm nor a spec .json file')
    return timm.create_model(name, pretrained=pretrained, **kwargs)


#: A spec is a few hundred bytes of JSON; a bigger "spec file" is the wrong file, refused before it is read.
MAX_SPEC_FILE_BYTES = 1 << 20


def load_spec(source: str | PathLike) -> tuple[dict, dict]:
    """Read a spec from JSON text or a ``.json`` file; returns ``(validated spec, provenance)``.

    Accepts a bare spec or the ``{"spec": ..., "search": {...}}`` form that ``search.write_spec`` emits (its
    ``search`` part is the provenance). A missing or unreadable file, a binary file, broken JSON or an invalid spec
    each raise an error that names the problem and the file.
    """
    text, where = str(source), 'spec'
    if isinstance(source, PathLike) or not text.lstrip().startswith('{'):
        text, where = _read_spec_file(Path(source)), str(source)
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as err:  # JSONDecodeError, ints over Python's digit limit, deep nesting
        raise SpecError(f'{where} is not valid JSON: {err}') from err
    if isinstance(doc, dict) and 'spec' in doc and 'family' not in doc:
        return validate_spec(doc['spec']), dict(doc.get('search') or {})
    return validate_spec(doc), {}


def _read_spec_file(path: Path) -> str:
    if not path.is_file():
        raise FileNotFoundError(f'spec file not found: {path}' + (' (it is a folder)' if path.is_dir() else ''))
    try:
        size = path.stat().st_size
        if size > MAX_SPEC_FILE_BYTES:
            raise SpecError(
                f'{path} is not a spec file: {size:,} bytes, a JSON spec is far below {MAX_SPEC_FILE_BYTES:,}'
            )
        data = path.read_bytes()
    except OSError as err:
        raise OSError(f'spec file not readable: {path} ({err.strerror or err})') from err
    try:
        return data.decode('utf-8')
    except UnicodeDecodeError as err:
        raise SpecError(
            f'{path} is not a JSON spec file: it is binary, not UTF-8 text ({err.reason} at byte {err.start})'
        ) from err
