"""Spec (de)serialisation: the JSON form that search emits, the catalog stores and the Hub config carries."""

from __future__ import annotations

import json
from os import PathLike
from pathlib import Path
from typing import Any

import torch.nn as nn

import backbones
from backbones import SpecError


def validate_spec(spec: Any) -> dict:
    """Validate ``spec`` against its family's schema and return a normalised copy."""
    return backbones.validate_spec(spec)


def spec_to_json(spec: dict, indent: int | None = 2) -> str:
    """Serialise a (validated) spec to JSON text."""
    return json.dumps(validate_spec(spec), indent=indent)


def spec_from_json(source: str | PathLike) -> dict:
    """Load a spec from JSON text or from a ``.json`` file path, and validate it.

    A path that does not exist, a file that is not JSON, or a spec that does not validate each raise an error
    that names the problem.
    """
    text = str(source)
    if not text.lstrip().startswith('{'):
        path = Path(text)
        if not path.is_file():
            raise FileNotFoundError(f'spec file not found: {path}')
        text = path.read_text()
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as err:
        raise SpecError(f'spec is not valid JSON: {err}') from err
    return validate_spec(spec)


def spec_of(model: nn.Module) -> dict:
    """The spec a model was built from (models of every family keep it as ``model.spec``)."""
    spec = getattr(model, 'spec', None)
    if spec is None:
        raise ValueError(f'{type(model).__name__} was not built from a supernet-zoo spec (it has no .spec)')
    return validate_spec(spec)
