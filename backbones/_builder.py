"""The one build path of every family: spec -> validated spec -> verified weights -> timm ``build_model_with_cfg``.

Each family module makes one :class:`FamilyBuilder` (its model class, its catalog specs, its validator, its number
of feature levels, and what differs: timm's feature wrapper, a native input size, default kwargs) and its timm entry
points call it. What was a ``_create`` function copied into every family is here once, so that strict
``out_indices``, the checks on pretrained weights and ``model.spec`` behave the same in every family.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch.nn as nn
from timm.models import build_model_with_cfg

from ._features import check_out_indices
from ._pretrained import resolve_pretrained

__all__ = ['FamilyBuilder']


@dataclass(frozen=True)
class FamilyBuilder:
    """Builds the timm models of one family: ``builder(variant, pretrained, spec=None, **timm_kwargs)``.

    ``variant`` names the timm entry point (and the pretrained cfg); without ``spec`` its catalog spec
    ``specs[variant]`` is built. Optional parts:

    * ``feature_cfg``: timm's ``feature_cfg`` for ``features_only`` (e.g. ``{'feature_cls': 'getter'}``); a
      ``feature_cls`` the caller passes (e.g. ``'fx'``) still wins, as in timm;
    * ``cfg_overlay(spec)``: pretrained-cfg fields that depend on the spec (a native input size); the caller's
      ``pretrained_cfg_overlay`` is applied on top;
    * ``defaults``: timm kwargs the family sets unless the caller does (e.g. drop rates);
    * ``features_builder(variant, pretrained, spec, kwargs)``: a family's own ``features_only`` model, used when
      the caller asks for no timm feature wrapper (``feature_cls`` / ``feature_cfg``) of its own.
    """

    model_cls: type[nn.Module]
    specs: Mapping[str, dict]
    validate: Callable[[Any], dict]
    num_feature_levels: int
    feature_cfg: Mapping[str, Any] | None = None
    cfg_overlay: Callable[[dict], dict] | None = None
    defaults: Mapping[str, Any] = field(default_factory=dict)
    features_builder: Callable[[str, bool, dict, dict], nn.Module] | None = None

    def __call__(self, variant: str, pretrained: bool = False, spec: dict | None = None, **kwargs: Any) -> nn.Module:
        spec = self.validate(self.specs[variant] if spec is None else spec)
        kwargs = resolve_pretrained(variant, pretrained, kwargs)
        for key, value in self.defaults.items():
            kwargs.setdefault(key, value)
        feature_cfg = None
        if kwargs.get('features_only'):
            kwargs['out_indices'] = check_out_indices(
                kwargs.get('out_indices', tuple(range(self.num_feature_levels))), self.num_feature_levels, variant
            )
            own_wrapper = 'feature_cfg' in kwargs or 'feature_cls' in kwargs
            if self.features_builder is not None and not own_wrapper:
                kwargs.pop('features_only')
                model = self.features_builder(variant, pretrained, spec, kwargs)
                model.spec = spec
                return model
            feature_cfg = dict(self.feature_cfg) if self.feature_cfg is not None else None
        if self.cfg_overlay is not None:
            overlay = self.cfg_overlay(spec)
            overlay.update(kwargs.pop('pretrained_cfg_overlay', None) or {})
            kwargs['pretrained_cfg_overlay'] = overlay
        if feature_cfg is not None and 'feature_cfg' not in kwargs:
            kwargs['feature_cfg'] = feature_cfg
        model = build_model_with_cfg(self.model_cls, variant, pretrained, spec=spec, **kwargs)
        model.spec = spec  # also on timm's feature wrappers
        return model
