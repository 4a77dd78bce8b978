"""A timm model as a block-wise teacher: its features at stage boundaries, computed in one forward pass.

Boundaries come from the model itself. ``split='stages'`` (for timm's EfficientNet/MobileNet families, whose
``blocks`` is a sequence of stages) cuts after every stage but the first, i.e. wherever the filter number changes:
for EfficientNet-B7 this is DNA's six blocks of Table 1 (48, 80, 160, 224, 384, 640 channels). ``split=
'feature_info'`` takes the modules of the model's ``feature_info`` from stride 4 on, which works for any timm model
that supports ``features_only``. Channels and strides are measured with a dry run, so nothing is hard-coded.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import timm
import torch
import torch.nn as nn

__all__ = ['BlockTeacher', 'build_teacher', 'teacher_boundaries']


class _StopForward(Exception):
    """Raised by the hook of the last boundary: the rest of the teacher is never computed."""


def teacher_boundaries(model: nn.Module, split: str | Sequence[str] = 'auto') -> list[str]:
    """Module names after which the teacher's blocks end (see the module docstring); a list of module names is
    taken as given (checked to exist), e.g. ``['stages.0', 'stages.1', 'stages.2']`` for an ``nb201`` teacher."""
    if not isinstance(split, str):
        names = list(split)
        modules = dict(model.named_modules())
        unknown = [n for n in names if n not in modules]
        if not names or unknown:
            raise ValueError(
                f'teacher split {names}: {type(model).__name__} has no module(s) {unknown or "(none named)"}; '
                f'some of its modules: {[n for n in modules if n][:12]}'
            )
        return names
    if split == 'auto':
        split = 'stages' if isinstance(getattr(model, 'blocks', None), nn.Sequential) else 'feature_info'
    if split == 'stages':
        blocks = getattr(model, 'blocks', None)
        if not isinstance(blocks, nn.Sequential) or len(blocks) < 2:
            raise ValueError(f'{type(model).__name__} has no sequence of stages (.blocks); use split="feature_info"')
        return [f'blocks.{i}' for i in range(1, len(blocks))]
    if split == 'feature_info':
        info = getattr(model, 'feature_info', None)
        if not info:
            raise ValueError(f'{type(model).__name__} has no feature_info; name the boundary modules explicitly')
        entries = info.get_dicts() if hasattr(info, 'get_dicts') else list(info)
        return [e['module'] for e in entries if e['reduction'] >= 4]
    raise ValueError(f'unknown teacher split {split!r}: expected "auto", "stages" or "feature_info"')


class BlockTeacher(nn.Module):
    """Returns the teacher's features after each boundary module (a list, in order)."""

    def __init__(self, model: nn.Module, boundaries: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.boundaries = list(boundaries)
        modules = dict(model.named_modules())
        unknown = [b for b in self.boundaries if b not in modules]
        if unknown:
            raise ValueError(f'teacher has no module(s) {unknown}; some of its modules: {list(modules)[:12]}')
        self._feats: list[torch.Tensor] = []
        for i, name in enumerate(self.boundaries):
            modules[name].register_forward_hook(self._hook(i == len(self.boundaries) - 1))

    def _hook(self, last: bool) -> Any:
        def hook(module: nn.Module, args: Any, output: torch.Tensor) -> None:
            self._feats.append(output)
            if last:
                raise _StopForward

        return hook

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        self._feats = []
        with contextlib.suppress(_StopForward):
            self.model(x)
        feats, self._feats = self._feats, []
        if len(feats) != len(self.boundaries):
            raise RuntimeError(f'teacher produced {len(feats)} of {len(self.boundaries)} boundary features')
        return feats

    @torch.no_grad()
    def probe(self, img_size: int, in_chans: int = 3) -> tuple[list[int], list[int]]:
        """(channels, reductions) of the boundary features, from one dry run at ``img_size``."""
        was = self.training
        self.eval()
        param = next(self.model.parameters())
        feats = self(torch.zeros(1, in_chans, img_size, img_size, device=param.device, dtype=param.dtype))
        self.train(was)
        return [f.shape[1] for f in feats], [img_size // f.shape[-1] for f in feats]

    def recalibrate_bn(self, batches: Sequence[torch.Tensor]) -> None:
        """Recompute BN running statistics as a plain average over ``batches`` (e.g. at the search resolution)."""
        from ..strategies.traversal import recalibrate_bn

        recalibrate_bn(self, batches)


def build_teacher(
    name: str,
    pretrained: bool = True,
    split: str | Sequence[str] = 'auto',
    checkpoint: str | None = None,
    trainable: bool = False,
    **kwargs: Any,
) -> BlockTeacher:
    """``timm.create_model(name)`` (any timm or zoo model) as a :class:`BlockTeacher`, frozen unless ``trainable``.

    ``checkpoint`` loads a safetensors file of the whole model (strictly; the classifier may be absent), e.g. a
    DNA+ generation's retrained network.
    """
    import backbones  # noqa: F401  (registers the zoo's models, so a zoo name or 'mbconv' + spec works)

    model = timm.create_model(name, pretrained=pretrained and checkpoint is None, **kwargs)
    if checkpoint is not None:
        from pathlib import Path

        from safetensors.torch import load_file

        if not Path(checkpoint).is_file():
            raise FileNotFoundError(f'teacher checkpoint {checkpoint} does not exist')
        head = (getattr(model, 'pretrained_cfg', None) or {}).get('classifier') or 'classifier'
        heads = (f'{head}.', 'classifier.', 'fc.', 'head.')
        state = {k: v for k, v in load_file(checkpoint).items() if not k.startswith(heads)}  # blocks end before it
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [m for m in missing if not m.startswith(heads)]
        if missing or unexpected:
            raise RuntimeError(
                f'teacher checkpoint {checkpoint} does not fit {name}: '
                f'missing {missing[:5]}, unexpected {unexpected[:5]}'
            )
    teacher = BlockTeacher(model, teacher_boundaries(model, split))
    for p in teacher.parameters():
        p.requires_grad_(trainable)
    return teacher.train(trainable)
