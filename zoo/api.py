"""Public API: list, inspect and create the zoo's models."""

from __future__ import annotations

import difflib
import fnmatch
import os
from os import PathLike
from typing import Any

import timm
import torch.nn as nn

import backbones

from .catalog import CATALOG, ModelRecord
from .flops import count_macs, count_params
from .spec import spec_from_json, validate_spec

#: timm entry points that build any spec of a family (``timm.create_model(name, spec=...)``).
FAMILY_ENTRYPOINTS: dict[str, str] = {
    'mbconv': 'mbconv',
    'resnest': 'resnest_nas',
    'nasvit': 'nasvit',
    'hytra': 'hytra',
    'nb201': 'nb201',
    'nats_size': 'nats_size',
}


class UnknownModelError(KeyError):
    """A model name that is not in the catalog; ``str()`` gives the plain message (a bare KeyError quotes it)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ''


def list_models(pattern: str = '*', include_families: bool = False) -> list[str]:
    """Names of the catalog's found architectures matching a shell-style ``pattern`` (sorted).

    With ``include_families`` the generic family entry points (``mbconv``, ``resnest_nas``...) are listed too.
    """
    names = list(CATALOG)
    if include_families:
        names += list(FAMILY_ENTRYPOINTS.values())
    return sorted(n for n in names if fnmatch.fnmatch(n, pattern))


def _suggest(name: str) -> str:
    close = difflib.get_close_matches(name, list(CATALOG), n=3)
    return f'; did you mean {close}?' if close else ''


def _record(name: str) -> ModelRecord:
    if name not in CATALOG:
        close = difflib.get_close_matches(name, list(CATALOG), n=3)
        hint = f' (did you mean {", ".join(close)}?)' if close else ''
        raise UnknownModelError(f'unknown model {name!r}{hint}; known models: {", ".join(sorted(CATALOG))}')
    return CATALOG[name]


def get_spec(name: str) -> dict:
    """The architecture spec of a catalog model (a fresh copy: editing it does not touch the catalog)."""
    return validate_spec(_record(name).spec)


def create_model(name_or_spec: str | dict | PathLike, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Create a model from a catalog name, a spec dict, or a spec ``.json`` file.

    Keyword arguments are timm's (``num_classes``, ``features_only``, ``out_indices``, ``drop_path_rate``...).
    ``hf-hub:`` and ``local-dir:`` names are passed through to ``timm.create_model``. A name that looks like a file
    (a path separator, a ``.json`` suffix, or a suffix that is no tag of a catalog model) is read as a spec file, and
    a missing one is reported as such.
    """
    if not isinstance(name_or_spec, str | PathLike):  # a spec dict; anything else fails validation clearly
        return backbones.build(validate_spec(name_or_spec), pretrained=pretrained, **kwargs)
    name = str(name_or_spec)
    if isinstance(name_or_spec, str) and (name.startswith(_TIMM_SOURCES) or name in FAMILY_ENTRYPOINTS.values()):
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    arch = name.split('.', 1)[0]
    if isinstance(name_or_spec, PathLike) or _is_spec_path(name) or (arch not in CATALOG and os.path.isfile(name)):
        return backbones.build(spec_from_json(name), pretrained=pretrained, **kwargs)
    if arch not in CATALOG and '.' in name:  # 'found.spec': a file name more likely than a tag of a model
        raise FileNotFoundError(f'spec file not found: {name} (nor is {arch!r} a catalog model{_suggest(arch)})')
    _record(arch)
    return timm.create_model(name, pretrained=pretrained, **kwargs)


#: Name prefixes that timm resolves itself (Hub repositories and local folders saved by ``zoo.save_for_hub``).
_TIMM_SOURCES = ('hf-hub:', 'local-dir:')


def _is_spec_path(name: str) -> bool:
    """A file path rather than a model name: a ``.json`` name or a path separator."""
    return name.endswith('.json') or '/' in name or os.sep in name


def model_info(name: str, measure: bool = False) -> dict[str, Any]:
    """What the paper claims about a catalog model; with ``measure``, also our measured params and FLOPs.

    Measured FLOPs are conv/linear/matmul MACs from torch's flop counter at the paper's input size, and the
    same number converted with the paper's counting rule (``flops_rule``) for a like-for-like comparison.
    """
    r = _record(name)
    info: dict[str, Any] = {
        'name': r.name,
        'family': r.family,
        'paper': r.paper,
        'paper_id': r.paper_id,
        'source_table': r.source_table,
        'top1': r.top1,
        'params_m': r.params_m,
        'flops_m': r.flops_m,
        'flops_rule': r.flops_rule.note,
        'input_size': r.input_size,
        'license': r.license,
        'origin': r.origin,
        'reconstructed': r.reconstructed,
        'notes': r.notes,
        'spec': get_spec(name),
    }
    if measure:
        model = create_model(name)
        macs = count_macs(model, (3, r.input_size, r.input_size))
        info['measured_params_m'] = count_params(model) / 1e6
        info['measured_macs_m'] = macs / 1e6
        info['measured_flops_rule_m'] = macs * r.flops_rule.factor / 1e6
    return info
