"""Reading authors' ``.pth`` checkpoints safely and writing our safetensors files without ever losing one.

Reading: ``torch.load(weights_only=True)`` only. When that loader refuses a file, torch's message advises to retry
with ``weights_only=False``, i.e. to run whatever code the pickle holds; that advice must not reach users of a tool
that converts files downloaded from the internet, so every failure is turned into one line of our own that names
the file and says what was refused (or that the file is truncated or corrupt), and the torch exception is not
chained. Writing: a temporary file in the destination's folder, then ``os.replace``, so a crash or a full disk
never leaves a half-written file under the final name; an existing output is only replaced when asked to.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from backbones import _runtime
from backbones._runtime import CheckpointRefused

__all__ = ['SAFE_GLOBALS', 'CheckpointRefused', 'check_destination', 'load_checkpoint', 'save_safetensors']

# Non-tensor objects the official training scripts pickle next to the weights, and what weights_only loading
# turns them into: DeiT / timm keep their argparse arguments; NASViT keeps its yacs config, a dict subclass that the
# restricted unpickler can only rebuild as an OrderedDict (it sets items only on dict / OrderedDict).
SAFE_GLOBALS: list[Any] = [argparse.Namespace, (OrderedDict, 'yacs.config.CfgNode')]


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """``torch.load`` a ``.pth`` / ``.pth.tar`` checkpoint dict with ``weights_only=True`` (no code in it runs).

    The project's one loader (``backbones._runtime.load_checkpoint``) with the authors' configs allowed
    (:data:`SAFE_GLOBALS`): a missing, unreadable, truncated or corrupt file, or one holding objects the
    weights-only loader refuses, raises one error naming the file (:class:`CheckpointRefused` for refused objects).
    """
    return _runtime.load_checkpoint(path, 'cpu', what='', safe_globals=SAFE_GLOBALS)


def save_safetensors(
    state: Mapping[str, torch.Tensor],
    dst: str | os.PathLike,
    metadata: dict[str, str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``state`` to ``dst`` atomically (temporary file in the same folder, then ``os.replace``).

    An existing ``dst`` is refused unless ``overwrite``, so a second run never silently replaces earlier work.
    """
    dst = Path(dst)
    check_destination(dst, overwrite)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{dst.name}.', suffix='.tmp', dir=dst.parent)
    os.close(fd)
    try:
        save_file(dict(state), tmp, metadata=metadata)
        os.replace(tmp, dst)
    except OSError as err:
        raise OSError(f'{dst}: cannot write ({err.strerror or err})') from None
    finally:
        Path(tmp).unlink(missing_ok=True)
    return dst


def check_destination(dst: str | os.PathLike, overwrite: bool = False) -> None:
    """Refuse an output path that is a folder, or an existing file unless ``overwrite`` (checked before any work)."""
    dst = Path(dst)
    if dst.is_dir():
        raise IsADirectoryError(f'{dst}: is a folder; name the output .safetensors file')
    if dst.exists() and not overwrite:
        raise FileExistsError(f'{dst}: already exists; pass --overwrite (overwrite=True) to replace it')
