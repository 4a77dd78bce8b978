"""Runner checkpoints that torch's ``weights_only=True`` loader accepts, resume included.

mmengine's Runner stores its message hub next to the weights: a ``HistoryBuffer`` (numpy arrays) per logged
scalar. Pickled numpy objects reach ``builtins.getattr`` on load, which the safe loader refuses, and allow-listing
``getattr`` would defeat it. :class:`PlainCheckpointHook` instead writes those buffers as plain tensors before the
checkpoint is saved and rebuilds them right after it is loaded (``after_load_checkpoint`` runs before the Runner
restores its message hub), so every entry of the file is a tensor, a number, a string or a container of those.

Any other object that is not plain data is refused at save time with its path in the checkpoint, instead of
producing a file that cannot be resumed. The configs list the hook in ``custom_hooks``; ``tools/seg_train.py``
and ``tools/det_train.py`` add it to configs that do not.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np
import torch
from mmengine.hooks import Hook
from mmengine.logging import HistoryBuffer
from mmengine.registry import HOOKS

__all__ = ['PLAIN_HOOK', 'PlainCheckpointHook', 'check_plain', 'from_plain', 'to_plain']

#: Marker key of an encoded HistoryBuffer (a plain dict that a user would never log).
_BUFFER_TAG = '__mmengine_history_buffer__'
_PLAIN = (torch.Tensor, int, float, str, bool, bytes, type(None))


def to_plain(value: Any) -> Any:
    """HistoryBuffers and numpy values anywhere in ``value`` -> tensors, numbers and dicts (recursively)."""
    if isinstance(value, HistoryBuffer):
        log, count = value.data
        return {
            _BUFFER_TAG: True,
            'log_history': torch.from_numpy(np.asarray(log, dtype=np.float64).copy()),
            'count_history': torch.from_numpy(np.asarray(count, dtype=np.float64).copy()),
            'max_length': int(value.max_length),
        }
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        items = ((k, to_plain(v)) for k, v in value.items())
        return OrderedDict(items) if isinstance(value, OrderedDict) else dict(items)
    if isinstance(value, (list, tuple)):
        return type(value)(to_plain(v) for v in value)
    return value


def from_plain(value: Any) -> Any:
    """Undo :func:`to_plain` for HistoryBuffers (numpy arrays stay tensors: the Runner does not need them back)."""
    if isinstance(value, dict):
        if value.get(_BUFFER_TAG) is True:
            return HistoryBuffer(value['log_history'].numpy(), value['count_history'].numpy(), int(value['max_length']))
        items = ((k, from_plain(v)) for k, v in value.items())
        return OrderedDict(items) if isinstance(value, OrderedDict) else dict(items)
    if isinstance(value, list):
        return [from_plain(v) for v in value]
    return value


def check_plain(value: Any, path: str = 'checkpoint') -> None:
    """Raise ``TypeError`` naming the first entry that torch's weights-only loader would refuse."""
    if isinstance(value, _PLAIN):
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f'{path}: key {k!r} of type {type(k).__name__} cannot be loaded with weights_only')
            check_plain(v, f'{path}.{k}')
        return
    if isinstance(value, (list, tuple, set)):
        for i, v in enumerate(value):
            check_plain(v, f'{path}[{i}]')
        return
    if isinstance(value, (torch.dtype, torch.device, torch.Size)):
        return
    raise TypeError(
        f'{path} is a {type(value).__module__}.{type(value).__name__}, which torch.load(weights_only=True) refuses; '
        'store it as a tensor, number or string'
    )


@HOOKS.register_module(force=True)
class PlainCheckpointHook(Hook):
    """Keep Runner checkpoints loadable with ``torch.load(weights_only=True)`` (see the module docstring)."""

    priority = 'VERY_LOW'  # after every hook that adds to the checkpoint

    def before_save_checkpoint(self, runner: Any, checkpoint: dict) -> None:
        for key in list(checkpoint):
            if key != 'state_dict':
                checkpoint[key] = to_plain(checkpoint[key])
        check_plain(checkpoint)

    def after_load_checkpoint(self, runner: Any, checkpoint: dict) -> None:
        if 'message_hub' in checkpoint:
            checkpoint['message_hub'] = from_plain(checkpoint['message_hub'])


#: The hook as a ``custom_hooks`` entry.
PLAIN_HOOK = dict(type='PlainCheckpointHook')
