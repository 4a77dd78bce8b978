"""The zoo's models as OpenMMLab backbones: ``backbone=dict(type='ZooBackbone', model='dna_c', ...)``.

Imported on demand only (``custom_imports=dict(imports=['backbones.mm'])`` in a config), so that the package
itself never needs OpenMMLab. The adapter is registered in mmseg's and in mmdet's ``MODELS`` registry (each only
if that package is installed) and speaks OpenMMLab's backbone vocabulary (``out_indices``, ``frozen_stages``,
``norm_eval``, ``with_cp``, ``init_cfg``) over ``timm.create_model(..., features_only=True)``.

Stages follow mmdet's ResNet: the *stages* are the feature levels at strides 4, 8, 16 and 32 and the *stem* is
everything before the stride-4 stage, for every family; ``frozen_stages=1`` therefore freezes the stem and the
stride-4 stage whatever the model. ``out_indices`` index the model's feature levels as in timm (``out_strides``
shows which is which: Pi-NAS and DNA have a stride-2 level 0, BossNet and NASViT start at stride 4).

Pretrained weights come in through ``init_cfg=dict(type='Pretrained', checkpoint=...)`` with a Hub id
(``supernet-zoo/dna_c.official_in1k``) or a local ``.safetensors`` file; they are fetched and verified by
:mod:`backbones._pretrained` (``HF_ENDPOINT`` / ``HF_HUB_OFFLINE`` work), never through mmengine's URL schemes,
which fail offline.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

try:
    from mmengine.logging import print_log
    from mmengine.model import BaseModule
except ImportError as err:  # pragma: no cover - exercised only without OpenMMLab
    raise ImportError(
        'backbones.mm needs OpenMMLab: pip install -e ".[mm]" and then bash tools/install_mm.sh .venv '
        '(mmcv 2.1.0 with compiled ops has to be built from source for torch 2.14)'
    ) from err

from . import (
    create_model,
    mm_checkpoint,  # noqa: F401  (registers PlainCheckpointHook for the configs' custom_hooks)
)
from ._pretrained import HUB_ORG, fetch_weights

__all__ = [
    'DNA',
    'BossNet',
    'NASViT',
    'PiNAS',
    'ZooBackbone',
    'build_backbone',
    'check_config_channels',
    'check_family',
    'check_neck_channels',
    'load_pretrained',
    'registered_in',
]

#: Keys of a classifier checkpoint that a backbone never has (dropped silently when loading).
_HEAD_PREFIXES = ('fc.', 'classifier.', 'head.', 'conv_head.', 'bn2.', 'final_conv.', 'norm_head.')


class ZooBackbone(BaseModule):
    """Any zoo model (catalog name, family entry point + spec, or spec) as an OpenMMLab backbone.

    Args:
        model: a catalog name (``'dna_c'``), a family entry point (``'mbconv'``, with ``spec``), an ``hf-hub:``
            name or a spec ``.json`` file.
        spec: an architecture spec dict (alone, or with a family entry point as ``model``).
        out_indices: feature levels to return (strict: an invalid index raises); an int ``n`` is the last ``n``
            levels, as in timm. ``None``: the levels at strides 4, 8, 16, 32.
        frozen_stages: ``-1`` none; ``0`` the stem; ``k`` the stem and the first ``k`` stages (stride 4...).
        norm_eval: keep every BatchNorm in eval mode while training (small per-GPU batches).
        drop_path_rate: stochastic depth of the timm model.
        with_cp: gradient checkpointing (timm's ``set_grad_checkpointing``).
        init_cfg: ``dict(type='Pretrained', checkpoint=<Hub id or .safetensors>, prefix=None)``, or any mmengine
            init config.
        **timm_kwargs: passed to ``timm.create_model`` (e.g. ``output_stride=8`` for Pi-NAS in DeepLabV3).
    """

    default_model: str | None = None
    family: str | None = None  # the family aliases (DNA, BossNet...) accept only models of their family

    def __init__(
        self,
        model: str | None = None,
        spec: dict | None = None,
        out_indices: Sequence[int] | int | None = None,
        frozen_stages: int = -1,
        norm_eval: bool = False,
        drop_path_rate: float = 0.0,
        with_cp: bool = False,
        init_cfg: dict | None = None,
        **timm_kwargs: Any,
    ) -> None:
        super().__init__(init_cfg=init_cfg)
        model = model or (None if spec is not None else self.default_model)
        if model is None and spec is None:
            raise ValueError(f'{type(self).__name__}: give model (a zoo model name) or spec (an architecture spec)')
        if 'pretrained' in timm_kwargs:
            raise ValueError(
                f'{type(self).__name__}: pretrained= is not supported; use '
                "init_cfg=dict(type='Pretrained', checkpoint='supernet-zoo/<model>.<tag>' or a .safetensors file)"
            )
        self.model_name = str(model) if model is not None else f'spec:{spec.get("family")}'
        kwargs = dict(features_only=True, drop_path_rate=drop_path_rate, **timm_kwargs)
        if out_indices is not None:
            kwargs['out_indices'] = tuple(out_indices) if isinstance(out_indices, list) else out_indices
        self.model = _create(model, spec, kwargs)
        check_family(type(self), self.model_name, self.model.spec['family'])
        info = self.model.feature_info
        if out_indices is None:  # default: the stride 4..32 levels, as mm necks expect
            default = tuple(i for i, d in enumerate(info.info) if d['reduction'] >= 4)
            if default != tuple(info.out_indices):
                self.model = _create(model, spec, {**kwargs, 'out_indices': default})
                info = self.model.feature_info
        self.out_indices = tuple(info.out_indices)
        self.out_channels: list[int] = list(info.channels())
        self.out_strides: list[int] = list(info.reduction())
        self._levels = [dict(d) for d in info.info]
        self._stage_levels = [i for i, d in enumerate(self._levels) if d['reduction'] >= 4]
        self.num_stages = len(self._stage_levels)
        if isinstance(frozen_stages, bool) or not isinstance(frozen_stages, int):
            raise ValueError(f'{self.model_name}: frozen_stages must be an int, got {frozen_stages!r}')
        if not -1 <= frozen_stages <= self.num_stages:
            raise ValueError(
                f'{self.model_name}: frozen_stages={frozen_stages} is out of range; this model has '
                f'{self.num_stages} stages (strides {[self._levels[i]["reduction"] for i in self._stage_levels]}), '
                f'valid values are -1 (none), 0 (stem) .. {self.num_stages}'
            )
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.with_cp = with_cp
        if with_cp:
            target = _grad_ckpt_target(self.model)
            if target is None:
                raise ValueError(f'{self.model_name}: with_cp=True but this model has no set_grad_checkpointing')
            target.set_grad_checkpointing(True)
        self._frozen = self._frozen_modules()
        self._freeze()
        print_log(
            f'{type(self).__name__}({self.model_name}): out_indices={self.out_indices} '
            f'out_channels={self.out_channels} out_strides={self.out_strides}',
            logger='current',
        )

    # -- frozen stages / norm_eval -----------------------------------------------------------------------------
    def _level_module_name(self, level: int) -> str:
        """Name inside ``self.model`` of the module that ends feature level ``level`` (timm wrappers rename)."""
        name = self._levels[level]['module']
        names = dict(self.model.named_modules())
        for candidate in (name, name.replace('.', '_'), f'model.{name}'):
            if candidate in names:
                return candidate
        raise RuntimeError(f'{self.model_name}: cannot find the module {name!r} of feature level {level}')

    def _frozen_modules(self) -> list[nn.Module]:
        """The modules run before the end of the last frozen stage (registration order is execution order)."""
        if self.frozen_stages < 0:
            return []
        target = self._level_module_name(self._stage_levels[max(self.frozen_stages - 1, 0)])
        inclusive = self.frozen_stages > 0
        frozen, seen_target = [], False
        for name, module in self.model.named_modules():
            if name == '' or target.startswith(name + '.'):
                continue  # an ancestor of the target also holds later stages
            if name == target:
                if not inclusive:
                    break
                seen_target = True
            elif seen_target and not name.startswith(target + '.'):
                break
            frozen.append(module)
        return frozen

    def _freeze(self) -> None:
        for module in self._frozen:
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def train(self, mode: bool = True) -> ZooBackbone:
        """Train mode, keeping frozen stages (and with ``norm_eval`` every BatchNorm) in eval mode."""
        super().train(mode)
        self._freeze()
        if mode and self.norm_eval:
            for module in self.modules():
                if isinstance(module, _BatchNorm):
                    module.eval()
        return self

    # -- forward / init ----------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """A tuple of NCHW maps, one per ``out_indices`` entry (OpenMMLab's backbone contract)."""
        return tuple(self.model(x))

    def init_weights(self) -> None:
        """Load ``Pretrained`` weights with the zoo's verified offline-capable loader; keep timm's init otherwise."""
        cfg = self.init_cfg
        if isinstance(cfg, dict) and cfg.get('type') == 'Pretrained':
            load_pretrained(self, cfg['checkpoint'], prefix=cfg.get('prefix'))
            self._is_init = True
        elif cfg:
            super().init_weights()
        else:
            self._is_init = True  # timm initialised the model at construction


def _create(model: str | None, spec: dict | None, kwargs: dict) -> nn.Module:
    if model is None:
        return create_model(spec, **kwargs)
    if spec is not None:
        kwargs = {**kwargs, 'spec': spec}
    return create_model(model, **kwargs)


def check_family(cls: type[ZooBackbone], model_name: str, family: str) -> None:
    """Refuse a family alias (``type='DNA'``...) whose ``model`` belongs to another family."""
    if cls.family is None or family == cls.family:
        return
    right = [c.__name__ for c in _CLASSES.values() if c.family == family]
    raise ValueError(
        f'backbone type {cls.__name__!r} is for {cls.family} models, but model {model_name!r} is a {family} model; '
        f"use type={right[0] if right else 'ZooBackbone'!r} or type='ZooBackbone'"
    )


def _grad_ckpt_target(model: nn.Module) -> nn.Module | None:
    # FeatureGetterNet (NASViT) runs the wrapped model's forward_intermediates, which honours its flag.
    for m in (model, getattr(model, 'model', None)):
        if m is not None and hasattr(m, 'set_grad_checkpointing'):
            return m
    return None


# -- pretrained weights ----------------------------------------------------------------------------------------
def _resolve_checkpoint(checkpoint: str | Path) -> Path:
    text = str(checkpoint)
    if text.startswith('hf-hub:'):
        text = text[len('hf-hub:') :]
    path = Path(text).expanduser()
    if path.suffix == '.safetensors' or path.exists():
        return fetch_weights({'file': str(path)})
    if '://' in text:
        raise ValueError(
            f'checkpoint {text!r}: URL schemes are not supported (they fail offline); give a Hub id '
            f"'{HUB_ORG}/<model>.<tag>' or a local .safetensors file"
        )
    if text.count('/') == 1:
        return fetch_weights({'hf_hub_id': text})
    raise FileNotFoundError(f'checkpoint {text!r} is neither a local .safetensors file nor a Hub id {HUB_ORG}/...')


def _norm(key: str) -> str:
    # timm's feature wrappers flatten 'blocks.0' into 'blocks_0'; compare keys with both separators unified.
    return key.replace('_', '.')


def load_pretrained(backbone: ZooBackbone, checkpoint: str | Path, prefix: str | None = None) -> dict[str, Any]:
    """Load a classifier (or backbone, or mm model) safetensors file into ``backbone``; returns what was skipped.

    The classifier head is dropped; a ``backbone.`` prefix (weights saved from an mm model) is stripped, or
    ``prefix`` if given. Every backbone parameter must be present with the right shape, else the error names them.
    """
    from safetensors.torch import load_file

    path = _resolve_checkpoint(checkpoint)
    state = load_file(str(path))
    if prefix is None and any(k.startswith('backbone.') for k in state):
        prefix = 'backbone.'
    if prefix:
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if not state:
            raise ValueError(f'{path}: no key starts with the prefix {prefix!r}')
    target = backbone.model.state_dict()
    lookup = {}
    for key in target:
        lookup.setdefault(_norm(key), key)
        if key.startswith('model.'):  # FeatureGetterNet wraps the timm model as .model
            lookup.setdefault(_norm(key[len('model.') :]), key)
    mapped, unexpected = {}, []
    for key, value in state.items():
        for candidate in (key, key[len('model.') :] if key.startswith('model.') else None):
            if candidate is not None and _norm(candidate) in lookup:
                mapped[lookup[_norm(candidate)]] = value
                break
        else:
            unexpected.append(key)
    missing = [k for k in target if k not in mapped]
    bad_shapes = [
        f'{k}: {tuple(mapped[k].shape)} vs {tuple(target[k].shape)}'
        for k in mapped
        if mapped[k].shape != target[k].shape
    ]
    if missing or bad_shapes:
        raise ValueError(
            f'{path} does not fit {backbone.model_name}: {len(missing)} missing keys {missing[:8]}'
            f'{" ..." if len(missing) > 8 else ""}; shape mismatches {bad_shapes[:8]}'
        )
    backbone.model.load_state_dict(mapped, strict=True)
    dropped = [k for k in unexpected if not k.startswith(_HEAD_PREFIXES)]
    print_log(
        f'{backbone.model_name}: loaded {len(mapped)} tensors from {path}'
        + (f'; ignored {len(dropped)} non-head keys {dropped[:5]}' if dropped else ''),
        logger='current',
    )
    return {'unexpected': unexpected, 'path': str(path)}


# -- family aliases --------------------------------------------------------------------------------------------
class BossNet(ZooBackbone):
    """BossNet-T (HyTra family); default ``bossnet_t0``."""

    default_model = 'bossnet_t0'
    family = 'hytra'


class DNA(ZooBackbone):
    """DNA MBConv models; default ``dna_c``."""

    default_model = 'dna_c'
    family = 'mbconv'


class PiNAS(ZooBackbone):
    """Pi-NAS ResNeSt-space models; default ``pinas_trans`` (the transfer model)."""

    default_model = 'pinas_trans'
    family = 'resnest'


class NASViT(ZooBackbone):
    """NASViT models; default ``nasvit_a1``."""

    default_model = 'nasvit_a1'
    family = 'nasvit'


_CLASSES: dict[str, type[ZooBackbone]] = {c.__name__: c for c in (ZooBackbone, BossNet, DNA, PiNAS, NASViT)}


def registered_in() -> list[str]:
    """Which OpenMMLab registries hold the adapter (``mmseg``, ``mmdet``); importing registers it."""
    return list(_REGISTERED)


def _register() -> list[str]:
    done = []
    for scope in ('mmseg', 'mmdet'):
        try:
            registry = __import__(f'{scope}.registry', fromlist=['MODELS']).MODELS
        except ImportError:
            continue
        for name, cls in _CLASSES.items():
            registry.register_module(name=name, module=cls, force=True)  # force: re-import after reload is fine
        done.append(scope)
    return done


_REGISTERED = _register()


# -- helpers for configs and tests -----------------------------------------------------------------------------
def build_backbone(cfg: dict) -> ZooBackbone:
    """Build one of this module's backbones from a config dict (``type`` may carry a scope: ``mmseg.DNA``)."""
    cfg = dict(cfg)
    cfg.pop('_delete_', None)
    type_name = str(cfg.pop('type', 'ZooBackbone')).rsplit('.', 1)[-1]
    if type_name not in _CLASSES:
        raise ValueError(f'backbone type {type_name!r} is not a zoo backbone; one of {sorted(_CLASSES)}')
    return _CLASSES[type_name](**cfg)


def check_neck_channels(backbone: dict | nn.Module, neck_in_channels: Sequence[int] | int) -> list[int]:
    """Raise if a neck's / head's ``in_channels`` differ from the backbone's ``out_channels``; return the latter.

    Takes a backbone config dict (built here) or module. The error names both lists, because a mismatch
    otherwise surfaces as a cryptic conv shape error deep inside the neck.
    """
    module = build_backbone(backbone) if isinstance(backbone, dict) else backbone
    out = list(getattr(module, 'out_channels', []))
    given = [neck_in_channels] if isinstance(neck_in_channels, int) else list(neck_in_channels)
    if out != given:
        raise ValueError(
            f'neck in_channels {given} do not match the backbone out_channels {out} '
            f'(out_indices={getattr(module, "out_indices", None)}, out_strides={getattr(module, "out_strides", None)})'
        )
    return out


def check_config_channels(model_cfg: dict, backbone: nn.Module | None = None) -> list[int]:
    """Check that a model config's neck (or decode head) reads the channels its zoo backbone emits.

    Handles FPN-style necks (all levels), multi-input heads with ``in_index`` lists and single-input heads
    (``in_channels`` int with ``in_index``). Builds the backbone from the config unless ``backbone`` is given.
    """
    backbone = backbone if backbone is not None else build_backbone(model_cfg['backbone'])
    out = list(backbone.out_channels)
    consumer = model_cfg.get('neck') or model_cfg.get('decode_head')
    if not isinstance(consumer, dict) or 'in_channels' not in consumer:
        return out
    in_channels, in_index = consumer['in_channels'], consumer.get('in_index')
    if isinstance(in_channels, int):
        expected = [out[in_index if isinstance(in_index, int) else -1]]
        in_channels = [in_channels]
    elif isinstance(in_index, Sequence) and len(in_index) == len(in_channels):
        expected = [out[i] for i in in_index]
    else:
        expected = out
    if list(in_channels) != expected:
        kind = 'neck' if model_cfg.get('neck') else 'decode_head'
        raise ValueError(
            f'{kind} in_channels {list(in_channels)} (in_index={in_index}) do not match the backbone out_channels '
            f'{out} (expected {expected}; out_indices={backbone.out_indices}, out_strides={backbone.out_strides})'
        )
    return out
