"""Spec (de)serialisation: the JSON form that search emits, the catalog stores and the Hub config carries."""

from __future__ import annotations

import json
from os import PathLike
from typing import Any

import torch.nn as nn

import backbones


def validate_spec(spec: Any) -> dict:
    """Validate ``spec`` against its family's schema and return a normalised copy."""
    return backbones.validate_spec(spec)


def spec_to_json(spec: dict, indent: int | None = 2) -> str:
    """Serialise a (validated) spec to JSON text."""
    return json.dumps(validate_spec(spec), indent=indent)


def spec_from_json(source: str | PathLike) -> dict:
    """Load and validate a spec from JSON text or a ``.json`` file (also the form ``search`` emits)."""
    return backbones.load_spec(source)[0]


def spec_of(model: nn.Module) -> dict:
    """The spec a model was built from (models of every family keep it as ``model.spec``)."""
    spec = getattr(model, 'spec', None)
    if spec is None:
        raise ValueError(f'{type(model).__name__} was not built from a supernet-zoo spec (it has no .spec)')
    return validate_spec(spec)
