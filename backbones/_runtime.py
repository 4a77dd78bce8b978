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
import re
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    'CheckpointError',
    'CheckpointRefused',
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


class CheckpointError(RuntimeError, ValueError):
    """A checkpoint file that cannot be used (missing keys, corrupt, truncated); the message names the file."""


class CheckpointRefused(CheckpointError):
    """The weights-only loader refused an object in the file (loading it could run code); names the object."""


_REFUSED_GLOBAL = re.compile(r'GLOBAL ([\w.]+)')
# Reasons of the weights-only unpickler that refuse an object (the others mean the bytes are not a torch pickle).
_REFUSED_OBJECT = ('Can only', 'Trying to call', 'Trying to load', 'Unsupported global', 'Unsupported class')
_UNPICKLER_REASON = re.compile(r'WeightsUnpickler error:\s*(.*?)(?:\n\s*\n|$)', re.S)
# Sentences of torch's message that are advice, not the reason (the first one says to retry with weights_only=False).
_ADVICE = ('weights_only', 'Weights only', 'WeightsUnpickler error:', 'Check the documentation', 'file an issue')


def _one_line(text: str) -> str:
    return ' '.join(text.split())


def _refusal(name: str, err: pickle.UnpicklingError) -> CheckpointError:
    """Our message for a refused or unreadable pickle: what was refused, never torch's advice to disable safety."""
    text = str(err)
    m = _UNPICKLER_REASON.search(text)
    candidates = ([m.group(1)] if m else []) + text.split('\n\n')
    reasons = [_one_line(c) for c in candidates if _one_line(c) and not any(a in c for a in _ADVICE)]
    reason = reasons[0] if reasons else _one_line(text.split('. ')[0])
    if 'weights_only' in reason:  # never relay the advice, whatever torch's wording becomes
        reason = 'the weights-only loader could not read it'
    allowed = 'checkpoints may hold only tensors, numbers, strings and plain containers'
    m = _REFUSED_GLOBAL.search(reason)
    if m:
        return CheckpointRefused(
            f'{name}: refused: the file holds a pickled {m.group(1)!r}, which the weights-only loader does not '
            f'run (loading it could execute code); {allowed}'
        )
    if reason.startswith(_REFUSED_OBJECT):
        return CheckpointRefused(f'{name}: refused by the weights-only loader ({reason}); {allowed}')
    # Unknown opcodes and the like: bytes that are no pickle torch.save writes (garbage, cut, another format).
    return CheckpointError(
        f'{name}: not a readable PyTorch checkpoint: the file is truncated, corrupt or no torch.save file ({reason})'
    )


def load_checkpoint(
    path: str | Path,
    map_location: str | torch.device = 'cpu',
    what: str = 'checkpoint',
    required: tuple[str, ...] = (),
    safe_globals: Sequence[Any] = (),
) -> dict:
    """``torch.load`` with ``weights_only=True``; every failure is one line naming ``what`` and the file.

    The one checkpoint loader of the project: our training checkpoints and the authors' released files (whose
    argparse / yacs configs ``zoo.checkpoint_io`` allows through ``safe_globals``). Missing files raise
    ``FileNotFoundError``; truncated or corrupt files, non-dict contents and dicts without the ``required`` keys
    raise :class:`CheckpointError` (a ``RuntimeError`` and a ``ValueError``), objects the safe loader refuses
    :class:`CheckpointRefused`. Torch's advice to retry with ``weights_only=False`` is never passed on: that
    would run code from the file. The torch exception is not chained, so no traceback of torch's reaches a user.
    """
    path = Path(path)
    name = f'{what} {path}' if what else str(path)
    if not path.is_file():
        raise FileNotFoundError(f'{name} does not exist' + (' (it is a folder)' if path.is_dir() else ''))
    with torch.serialization.safe_globals(list(safe_globals)), warnings.catch_warnings():
        warnings.filterwarnings('ignore', message='Detected pickle protocol')  # torch's note on old pickles
        try:
            state = torch.load(path, map_location=map_location, weights_only=True)
        except PermissionError as err:
            raise PermissionError(f'{name} is not readable ({err.strerror})') from None
        except pickle.UnpicklingError as err:
            raise _refusal(name, err) from None
        except Exception as err:  # whatever fails inside torch's reader, the file is unreadable
            # A zip archive cut short fails as RuntimeError or a bare OSError(EINVAL), a cut legacy pickle as
            # EOFError or struct.error, garbage as KeyError: only the size and torch's first clause are useful.
            detail = _one_line(str(err)).split('. ')[0] if isinstance(err, RuntimeError | EOFError) else ''
            raise CheckpointError(
                f'{name}: not a readable PyTorch checkpoint: the file is truncated or corrupt '
                f'({path.stat().st_size:,} bytes{"; " + detail if detail else ""})'
            ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f'{name}: expected a checkpoint dict, the file holds a {type(state).__name__}')
    missing = [key for key in required if key not in state]
    if missing:
        raise CheckpointError(f'{name} is not a supernet-zoo {what or "checkpoint"} (missing {missing})')
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
