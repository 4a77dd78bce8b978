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
import pickle
import re
import tempfile
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

__all__ = ['SAFE_GLOBALS', 'CheckpointRefused', 'check_destination', 'load_checkpoint', 'save_safetensors']

# Non-tensor objects the official training scripts pickle next to the weights, and what weights_only loading
# turns them into: DeiT / timm keep their argparse arguments; NASViT keeps its yacs config, a dict subclass that the
# restricted unpickler can only rebuild as an OrderedDict (it sets items only on dict / OrderedDict).
SAFE_GLOBALS: list[Any] = [argparse.Namespace, (OrderedDict, 'yacs.config.CfgNode')]

_REFUSED_GLOBAL = re.compile(r'GLOBAL ([\w.]+)')
# Reasons of the weights-only unpickler that refuse an object (the others mean the bytes are not a torch pickle).
_REFUSED_OBJECT = ('Can only', 'Trying to call', 'Trying to load', 'Unsupported global', 'Unsupported class')
_UNPICKLER_REASON = re.compile(r'WeightsUnpickler error:\s*(.*?)(?:\n\s*\n|$)', re.S)
# Sentences of torch's message that are advice, not the reason (the first one says to retry with weights_only=False).
_ADVICE = ('weights_only', 'Weights only', 'WeightsUnpickler error:', 'Check the documentation', 'file an issue')


class CheckpointRefused(ValueError):
    """The weights-only loader refused an object in the file (it could run code); the message names the object."""


def _one_line(text: str) -> str:
    return ' '.join(text.split())


def _refusal(path: Path, err: pickle.UnpicklingError) -> ValueError:
    """Our message for a refused or unreadable pickle: what was refused, never torch's advice to disable safety."""
    text = str(err)
    m = _UNPICKLER_REASON.search(text)
    candidates = ([m.group(1)] if m else []) + text.split('\n\n')
    reasons = [_one_line(c) for c in candidates if _one_line(c) and not any(a in c for a in _ADVICE)]
    reason = reasons[0] if reasons else _one_line(text.split('. ')[0])
    if 'weights_only' in reason:  # never relay the advice, whatever torch's wording becomes
        reason = 'the weights-only loader could not read it'
    official = 'official checkpoints hold only tensors, numbers, strings and argparse / yacs configs'
    m = _REFUSED_GLOBAL.search(reason)
    if m:
        return CheckpointRefused(
            f'{path}: refused: the file holds a pickled {m.group(1)!r}, which the weights-only loader does not '
            f'run (loading it could execute code); {official}'
        )
    if reason.startswith(_REFUSED_OBJECT):
        return CheckpointRefused(f'{path}: refused by the weights-only loader ({reason}); {official}')
    # Unknown opcodes and the like: bytes that are no pickle torch.save writes (garbage, cut, another format).
    return ValueError(
        f'{path}: not a readable PyTorch checkpoint: the file is truncated, corrupt or no torch.save file ({reason})'
    )


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """``torch.load`` a ``.pth`` / ``.pth.tar`` checkpoint dict with ``weights_only=True`` (no code in it runs).

    A missing, unreadable, truncated or corrupt file, or one holding objects the weights-only loader refuses,
    raises one error naming the file (:class:`CheckpointRefused` for refused objects).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'{path}: no such file' + (' (it is a folder)' if path.is_dir() else ''))
    with torch.serialization.safe_globals(SAFE_GLOBALS), warnings.catch_warnings():
        warnings.filterwarnings('ignore', message='Detected pickle protocol')  # torch's note on old pickles
        try:
            ckpt = torch.load(path, map_location='cpu', weights_only=True)
        except PermissionError as err:
            raise PermissionError(f'{path}: not readable ({err.strerror})') from None
        except pickle.UnpicklingError as err:
            raise _refusal(path, err) from None
        except Exception as err:  # whatever fails inside torch's reader, the file is unreadable
            # A zip archive cut short fails as RuntimeError or a bare OSError(EINVAL), a cut legacy pickle as
            # EOFError or struct.error, garbage as KeyError: only the size and torch's first clause are useful.
            detail = _one_line(str(err)).split('. ')[0] if isinstance(err, RuntimeError | EOFError) else ''
            raise ValueError(
                f'{path}: not a readable PyTorch checkpoint: the file is truncated or corrupt '
                f'({path.stat().st_size:,} bytes{"; " + detail if detail else ""})'
            ) from None
    if not isinstance(ckpt, Mapping):
        raise ValueError(f'{path}: expected a checkpoint dict, got {type(ckpt).__name__}')
    return dict(ckpt)


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
