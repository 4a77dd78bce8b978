"""Strict ``out_indices`` handling and the shared timm build path of our families.

timm silently drops or duplicates invalid ``out_indices`` in some wrappers (huggingface/pytorch-image-models
#2242); here an invalid request raises an error that names the allowed range.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def check_out_indices(out_indices: Any, num_levels: int, model_name: str) -> tuple[int, ...]:
    """Validate ``out_indices`` against ``num_levels`` feature levels and return them as a tuple.

    As in timm (``feature_take_indices``), an int ``n`` means the last ``n`` levels (returned as their indices
    from the start) and negative indices count from the end. Duplicates (after resolving negatives) are rejected,
    because a feature wrapper returns each level once and a duplicate would silently lose an output.
    """
    if isinstance(out_indices, bool):
        raise ValueError(f'{model_name}: out_indices must be an int or a sequence of ints, got {out_indices!r}')
    if isinstance(out_indices, int):
        if not 1 <= out_indices <= num_levels:
            raise ValueError(
                f'{model_name}: out_indices={out_indices} asks for the last {out_indices} feature levels; this model '
                f'has {num_levels}, so an int out_indices must be 1..{num_levels} (or give a sequence of indices)'
            )
        return tuple(range(num_levels - out_indices, num_levels))
    if not isinstance(out_indices, Sequence) or isinstance(out_indices, str) or len(out_indices) == 0:
        raise ValueError(f'{model_name}: out_indices must be a non-empty sequence of ints, got {out_indices!r}')
    resolved = []
    for idx in out_indices:
        if isinstance(idx, bool) or not isinstance(idx, int):
            raise ValueError(f'{model_name}: out_indices entries must be ints, got {idx!r}')
        if not -num_levels <= idx < num_levels:
            raise ValueError(
                f'{model_name}: out_indices entry {idx} is out of range; this model has {num_levels} feature levels, '
                f'valid indices are 0..{num_levels - 1} (or -{num_levels}..-1)'
            )
        resolved.append(idx % num_levels)
    if len(set(resolved)) != len(resolved):
        raise ValueError(f'{model_name}: out_indices {tuple(out_indices)} name the same feature level twice')
    return tuple(out_indices)
