"""The one run-time layer that search and retraining share: atomic file writes, checkpoint I/O and torchrun set-up.

It lives in ``backbones`` because that is the only package both ``search`` and ``zoo`` may import (the layering in
the README). A run killed at any moment must leave either the previous file or the new one, never a torn file, and
a checkpoint must never be loaded with ``weights_only=False`` (arbitrary code would run): every writer and loader of
the project goes through these functions so that the two guarantees are stated and tested once.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    'DistContext',
    'atomic_write',
    'atomic_write_bytes',
    'atomic_write_json',
    'atomic_write_text',
    'init_distributed',
    'load_checkpoint',
    'save_checkpoint',
]

_UMASK = os.umask(0o022)
os.umask(_UMASK)


# -- atomic writes ------------------------------------------------------------------------------------------------
def atomic_write(path: str | Path, write_fn: Callable[[str], Any]) -> Path:
    """Call ``write_fn(tmp)`` on a temporary file in ``path``'s folder, fsync it, then rename it over ``path``.

    Concurrent writers (block jobs sharing an output folder) each get their own temporary file; the last rename
    wins with a whole file. On any error the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
    os.close(fd)
    try:
        write_fn(tmp)
        with open(tmp, 'rb+') as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """:func:`atomic_write` of raw bytes."""
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    """:func:`atomic_write` of UTF-8 text."""
    return atomic_write_bytes(path, text.encode('utf-8'))


def atomic_write_json(path: str | Path, obj: Any, indent: int | None = 1) -> Path:
    """:func:`atomic_write` of ``obj`` as JSON with a trailing newline."""
    return atomic_write_text(path, json.dumps(obj, indent=indent) + '\n')


# -- checkpoints --------------------------------------------------------------------------------------------------
def save_checkpoint(state: dict, path: str | Path) -> Path:
    """``torch.save`` ``state`` atomically (plain tensors, numbers, strings: loadable with ``weights_only=True``)."""
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(
    path: str | Path,
    map_location: str | torch.device = 'cpu',
    what: str = 'checkpoint',
    required: tuple[str, ...] = (),
) -> dict:
    """``torch.load`` with ``weights_only=True``; every failure is one line naming ``what`` and the file.

    Missing files raise ``FileNotFoundError``; truncated or corrupt files, files holding objects the safe loader
    refuses, non-dict contents and dicts without the ``required`` keys raise ``RuntimeError``. Torch's advice to
    retry with ``weights_only=False`` is deliberately not passed on: that would run code from the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'{what} {path} does not exist')
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:  # torch's text advises weights_only=False: never pass that on
        if 'Unsupported global' in str(err):
            raise RuntimeError(
                f'{what} {path} holds Python objects that the safe loader (weights_only=True) refuses; '
                'save plain tensors, numbers and strings instead'
            ) from None
        raise RuntimeError(f'{what} {path} is corrupt or truncated (not a torch.save file)') from None
    except Exception as err:
        first = str(err).split('. ')[0].strip()
        raise RuntimeError(f'{what} {path} is corrupt or truncated ({type(err).__name__}: {first})') from err
    if not isinstance(state, dict):
        raise RuntimeError(f'{what} {path} is corrupt: it holds a {type(state).__name__}, not a dict')
    missing = [key for key in required if key not in state]
    if missing:
        raise RuntimeError(f'{what} {path} is not a supernet-zoo {what} (missing {missing})')
    return state


# -- torchrun -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DistContext:
    """Where this process runs: rank, world size, device; ``is_main`` logs, saves and shows progress.

    ``owns_group`` says that :func:`init_distributed` created the process group (so the caller may destroy it).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device('cpu'))
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_gather_object(self, obj: Any) -> list[Any]:
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any) -> Any:
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over ranks in float64 (exact for counts), on this process's device."""
        if not self.distributed:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def close(self) -> None:
        """Destroy the process group when this context created it."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def init_distributed(device: str = 'auto') -> DistContext:
    """Join the process group torchrun describes (``RANK``/``WORLD_SIZE``/``LOCAL_RANK``); one process otherwise.

    ``device='auto'`` takes the local GPU when there is one (NCCL), else the CPU (gloo).
    """
    world = int(os.environ.get('WORLD_SIZE', '1'))
    rank = int(os.environ.get('RANK', '0'))
    local = int(os.environ.get('LOCAL_RANK', '0'))
    if device == 'auto':
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    if device.startswith('cuda'):
        if not torch.cuda.is_available():
            raise RuntimeError('--device cuda was asked for but torch sees no GPU')
        dev = torch.device('cuda', local)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device(device)
    owns = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group('nccl' if dev.type == 'cuda' else 'gloo')
        owns = True
    return DistContext(rank, world, local, dev, owns)
