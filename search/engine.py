"""The run-time every search method shares: torchrun/DDP, seeding, AMP, atomic checkpoints, logs and progress.

Randomness is a pure function of the run seed and *where* it is used, never of how many processes run or of
whether the run was resumed: ``derive_seed(seed, 'path', block, step)`` drives path sampling (identical on every
rank by construction), ``search.data`` seeds each sample's augmentation from (seed, epoch, index), and the global
torch RNG is reseeded per step and rank for whatever the model draws (dropout, drop path). With that, a resumed
run repeats the uninterrupted one, and ``world_size x batch`` equals ``1 x batch with grad_accum = world_size``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from backbones import _runtime

__all__ = [
    'DistContext',
    'JsonlLogger',
    'autocast',
    'derive_seed',
    'generator',
    'init_distributed',
    'load_checkpoint',
    'maybe_fault',
    'progress',
    'reseed_step',
    'run',
    'save_checkpoint',
]

#: Test hook: when set to N, the process SIGKILLs itself right after the checkpoint of step N is on disk.
FAULT_ENV = 'SUPERNET_ZOO_KILL_AFTER_STEP'


#: Where this process runs (rank, world size, device); shared with retraining, defined in ``backbones._runtime``.
DistContext = _runtime.DistContext


def init_distributed(device: str = 'auto') -> DistContext:
    """Join the process group torchrun describes (``RANK``/``WORLD_SIZE``/``LOCAL_RANK``); one process otherwise.

    ``device='auto'`` takes the local GPU when there is one (NCCL), else the CPU (gloo).
    """
    return _runtime.init_distributed(device)


def derive_seed(seed: int, *keys: Any) -> int:
    """A 63-bit seed that depends only on ``seed`` and ``keys`` (stable across processes and Python runs)."""
    text = json.dumps([seed, *[str(k) for k in keys]])
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), 'little') >> 1


def generator(seed: int, *keys: Any) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded by :func:`derive_seed`."""
    return torch.Generator().manual_seed(derive_seed(seed, *keys))


def reseed_step(seed: int, step: int, rank: int) -> None:
    """Seed the global torch RNG for one step of one rank (whatever the model draws becomes reproducible)."""
    torch.manual_seed(derive_seed(seed, 'step', step, rank))


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when enabled; a no-op elsewhere (CPU runs stay in fp32 for exact tests)."""
    if enabled and device.type == 'cuda':
        return torch.autocast('cuda', dtype=torch.bfloat16)
    return contextlib.nullcontext()


# -- checkpoints --------------------------------------------------------------------------------------------------
def save_checkpoint(state: dict, path: str | Path) -> Path:
    """Write ``state`` atomically: to a temporary file in the same folder, fsync, then rename over ``path``.

    A run killed at any moment leaves either the previous checkpoint or the new one, never a torn file.
    """
    return _runtime.save_checkpoint(state, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = 'cpu') -> dict:
    """Load a checkpoint with ``weights_only=True``; a missing or corrupt file raises an error naming it."""
    state = _runtime.load_checkpoint(path, map_location)
    if 'step' not in state:
        raise RuntimeError(f'checkpoint {path} is not a supernet-zoo search checkpoint (no "step" entry)')
    return state


def maybe_fault(step: int) -> None:
    """Kill this process with SIGKILL after ``step`` when the test hook :data:`FAULT_ENV` asks for it."""
    target = os.environ.get(FAULT_ENV)
    if target is not None and int(target) == step:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


# -- logs and progress --------------------------------------------------------------------------------------------
class JsonlLogger:
    """Appends one JSON object per line (step, losses, timings); only the main process writes.

    Optionally mirrors scalars to TensorBoard (``tensorboard=True`` needs the ``tensorboard`` package).
    """

    def __init__(self, path: str | Path, enabled: bool = True, tensorboard: bool = False) -> None:
        self.path = Path(path)
        self.enabled = enabled
        self.writer = None
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(self.path.parent / 'tb'))

    def log(self, **record: Any) -> None:
        if not self.enabled:
            return
        record.setdefault('time', round(time.time(), 3))
        with open(self.path, 'a') as f:
            f.write(json.dumps(record, default=float) + '\n')
        if self.writer is not None and 'step' in record:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ('step', 'time'):
                    self.writer.add_scalar(key, value, record['step'])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def progress(iterable: Any = None, enabled: bool = True, **kwargs: Any) -> Any:
    """A tqdm bar on the main process, silent elsewhere."""
    from tqdm.auto import tqdm

    return tqdm(iterable, disable=not enabled, dynamic_ncols=True, **kwargs)


@contextlib.contextmanager
def timer(record: dict, key: str, device: torch.device) -> Iterator[None]:
    """Adds the wall time of the block to ``record[key]`` (synchronizing CUDA so the number is honest)."""
    start = time.perf_counter()
    yield
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    record[key] = record.get(key, 0.0) + time.perf_counter() - start


# -- the staged pipeline ------------------------------------------------------------------------------------------
def run(
    method: Any,
    config: Any,
    stages: tuple[str, ...] = ('train', 'rate', 'search'),
    ctx: DistContext | None = None,
    resume: bool = False,
) -> list[dict]:
    """Run ``method`` (a registry name, a method class or instance) on ``config`` through ``stages``.

    Returns the found architectures (spec + provenance, best first) on the main process, ``[]`` elsewhere. The loop,
    checkpoints and outputs are :mod:`search.pipeline`'s; drivers that chain whole searches (DNA+) run themselves.
    """
    from . import pipeline
    from .methods import get_method

    cls = get_method(method) if isinstance(method, str) else method
    instance = cls(config) if isinstance(cls, type) else cls
    ctx = ctx or init_distributed(getattr(config, 'device', 'auto'))
    if not getattr(instance, 'staged', True):
        return instance.drive(ctx, resume)
    return pipeline.run(instance, ctx, stages=stages, resume=resume)
