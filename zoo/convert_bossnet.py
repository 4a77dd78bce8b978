"""Key map from the official BossNet-T checkpoints to ``backbones.hytra`` models.

The official release (github.com/changlin31/BossNAS, release v0.1: ``BossNet-T0-80_8.pth``,
``BossNet-T0-nose-80_5.pth``, ``BossNet-T1-81_9.pth``) holds DeiT-style training checkpoints: a dict with
``'model'`` (and ``'model_ema'`` when EMA was on) next to optimizer / scheduler / args entries.

Our module names equal the official ones for the stem, the head and ResConv layers. Only the ResAtt layers differ:
the official block keeps its layers in anonymous ``nn.Sequential`` containers (``proj``, ``net``) and calls its
shortcut ``shortcut``; ours uses the same names as ResConv (``downsample``, ``conv1``, ``peg``, ``bn1``, ``attn``,
``bn2``, ``conv3``, ``bn3``). Tensors are copied unchanged: the attention layout ([q | k | v], head-major) is the
official one.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn

from .checkpoint_io import load_checkpoint

__all__ = ['RESATT_KEY_MAP', 'convert_bossnet_checkpoint', 'load_official_checkpoint', 'map_key']

# official ResAtt sub-module path -> ours (inside ``layer{s}.{i}.``)
RESATT_KEY_MAP: dict[str, str] = {
    'shortcut.': 'downsample.',
    'proj.0.': 'conv1.',
    'proj.1.conv.': 'peg.conv.',
    'proj.2.': 'bn1.',
    'net.1.to_qkv.': 'attn.qkv.',
    'net.2.': 'bn2.',
    'net.4.': 'conv3.',
    'net.5.': 'bn3.',
}

_BLOCK_KEY = re.compile(r'^(layer[1-4]\.\d+\.)(.*)$')


def map_key(key: str) -> str:
    """Our name for one official state-dict key (a ``module.`` DDP prefix is dropped)."""
    key = key.removeprefix('module.')
    m = _BLOCK_KEY.match(key)
    if m is None:
        return key
    block, rest = m.groups()
    for old, new in RESATT_KEY_MAP.items():
        if rest.startswith(old):
            return block + new + rest[len(old) :]
    return key


def _state_dict(ckpt: Mapping[str, Any], use_ema: bool) -> Mapping[str, torch.Tensor]:
    if all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        if use_ema:
            raise KeyError("use_ema=True needs a training checkpoint with a 'model_ema' entry; got a bare state dict")
        return ckpt
    key = 'model_ema' if use_ema else 'model'
    if key not in ckpt:
        raise KeyError(f'checkpoint has no {key!r} entry (entries: {sorted(ckpt)})')
    return ckpt[key]


def convert_bossnet_checkpoint(
    ckpt: Mapping[str, Any], use_ema: bool = False, model: nn.Module | None = None
) -> dict[str, torch.Tensor]:
    """Map an official BossNet-T checkpoint (or its bare state dict) to our parameter names.

    With ``model``, the result is checked against ``model.state_dict()``: missing keys, unexpected keys and shape
    mismatches are all reported in one ``ValueError``, so that a wrong variant (e.g. T0 weights into T0 w/o SE)
    fails loudly instead of loading half a network.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in _state_dict(ckpt, use_ema).items():
        new = map_key(key)
        if new in out:
            raise ValueError(f'checkpoint keys collide after mapping: {key!r} -> {new!r}')
        out[new] = value
    if model is not None:
        ref = model.state_dict()
        missing = sorted(ref.keys() - out.keys())
        unexpected = sorted(out.keys() - ref.keys())
        shapes = sorted(
            f'{k}: checkpoint {tuple(out[k].shape)} vs model {tuple(ref[k].shape)}'
            for k in ref.keys() & out.keys()
            if out[k].shape != ref[k].shape
        )
        if missing or unexpected or shapes:
            raise ValueError(
                'official BossNet checkpoint does not match the model: '
                f'missing keys {missing}; unexpected keys {unexpected}; shape mismatches {shapes}'
            )
    return out


def load_official_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """``torch.load`` an official checkpoint with ``weights_only=True`` (DeiT stores its argparse args too).

    Errors name the file and never relay torch's advice to load with ``weights_only=False``
    (:func:`zoo.checkpoint_io.load_checkpoint`).
    """
    return load_checkpoint(path)
