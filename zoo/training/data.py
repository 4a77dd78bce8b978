"""What a retraining run trains on: the model (zoo or timm), the image folders and the recipe's transforms."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch.nn as nn

from .config import TrainConfig

__all__ = ['build_dataset', 'build_model', 'build_transforms']


def build_model(cfg: TrainConfig, num_classes: int) -> nn.Module:
    """Catalog names, families, ``hf-hub:`` names and spec files go through the zoo; other timm names to timm."""
    import timm

    from .. import api

    kwargs = dict(cfg.model_kwargs)
    kwargs.setdefault('num_classes', num_classes)
    if cfg.drop is not None:
        kwargs.setdefault('drop_rate', cfg.drop)
    if cfg.drop_path is not None:
        kwargs.setdefault('drop_path_rate', cfg.drop_path)
    name = cfg.model
    if not name:
        raise ValueError('no model given (a catalog/timm name or a spec .json file)')
    arch = name.split('.', 1)[0]
    in_zoo = name.endswith('.json') or name.startswith('hf-hub:') or arch in api.list_models('*', True)
    if not in_zoo and timm.is_model(arch):
        return timm.create_model(name, pretrained=cfg.pretrained, **kwargs)
    return api.create_model(name, pretrained=cfg.pretrained, **kwargs)


def build_dataset(cfg: TrainConfig, split: str, is_training: bool, class_map: dict | None = None) -> Any:
    """timm's folder dataset of ``data_dir/split``; a missing folder is named."""
    from timm.data import create_dataset

    root = Path(cfg.data_dir) / split
    if not root.is_dir():
        raise FileNotFoundError(f'{"training" if is_training else "validation"} folder {root} does not exist')
    return create_dataset(
        '', root=str(root), split=split, search_split=False, is_training=is_training, class_map=class_map
    )


def build_transforms(cfg: TrainConfig, model: nn.Module) -> tuple[Callable, Callable, dict]:
    """Train transform (the recipe's augmentation) and eval transform (the model's resize/crop/interpolation)."""
    from timm.data import create_transform, resolve_model_data_config
    from timm.data.transforms_factory import transforms_imagenet_train

    args: dict[str, Any] = {}
    if cfg.img_size:
        args['img_size'] = cfg.img_size
    if cfg.crop_pct:
        args['crop_pct'] = cfg.crop_pct
    data_cfg = resolve_model_data_config(model, args=args)
    train_kwargs = dict(
        scale=tuple(cfg.scale),
        ratio=tuple(cfg.ratio),
        hflip=cfg.hflip,
        color_jitter=cfg.color_jitter,
        auto_augment=cfg.aa or None,
        interpolation=cfg.train_interpolation or data_cfg['interpolation'],
        mean=data_cfg['mean'],
        std=data_cfg['std'],
        re_prob=cfg.re_prob,
        re_mode=cfg.re_mode,
        re_count=cfg.re_count,
    )
    if cfg.force_color_jitter:  # create_transform does not expose it; same timm function underneath
        train_tf = transforms_imagenet_train(data_cfg['input_size'][-2:], force_color_jitter=True, **train_kwargs)
    else:
        train_tf = create_transform(data_cfg['input_size'], is_training=True, **train_kwargs)
    eval_tf = create_transform(
        data_cfg['input_size'],
        is_training=False,
        interpolation=data_cfg['interpolation'],
        mean=data_cfg['mean'],
        std=data_cfg['std'],
        crop_pct=data_cfg['crop_pct'],
        crop_mode=data_cfg.get('crop_mode'),
    )
    return train_tf, eval_tf, data_cfg
