"""Writing and reading found architectures: the hand-off from search/ to zoo/, backbones/ and tools/."""

from __future__ import annotations

import json
from os import PathLike
from pathlib import Path
from typing import Any

import backbones


def write_spec(spec: dict, path: str | PathLike, **provenance: Any) -> Path:
    """Validate ``spec`` and write it as JSON; ``provenance`` (method, constraint, score...) goes under ``search``.

    Validation happens before anything is written, so a search never leaves an unbuildable spec behind.
    """
    spec = backbones.validate_spec(spec)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {'spec': spec, 'search': provenance} if provenance else spec
    path.write_text(json.dumps(doc, indent=2) + '\n')
    return path


def read_spec(path: str | PathLike) -> tuple[dict, dict]:
    """Read a file written by :func:`write_spec`; returns ``(spec, provenance)`` with the spec validated."""
    return backbones.load_spec(path)
