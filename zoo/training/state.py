"""What makes a retraining run resumable: per-epoch seeding, RNG snapshots, the state file, weights and the log.

Every epoch re-seeds python/numpy/torch and the loader from ``(seed, epoch, rank)``, so a resumed run reproduces
an uninterrupted one exactly (CPU), whatever the number of loader workers. Files are written with the one atomic
write of ``backbones._runtime``; the state is read with its ``weights_only=True`` loader.
"""

from __future__ import annotations

import contextlib
import json
import random
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from backbones._runtime import atomic_write, atomic_write_text, load_checkpoint, save_checkpoint

from .config import TrainConfig

__all__ = [
    'STATE_FILE',
    'epoch_seed',
    'load_state',
    'resume_path',
    'rng_state',
    'save_state',
    'save_weights',
    'seed_all',
    'set_rng_state',
    'trim_log',
]

STATE_FILE = 'last_state.pt'
STATE_VERSION = 1


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of one epoch on one rank (independent of how the run got there)."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


def seed_all(seed: int) -> None:
    """Seed python, numpy and torch together."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Python/numpy/torch RNG states as tensors and numbers only (loadable with ``weights_only=True``)."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        'python': {
            'version': int(py_version),
            'state': torch.tensor(py_state, dtype=torch.int64),
            'gauss': [] if py_gauss is None else [float(py_gauss)],
        },
        'numpy': {
            'name': str(np_name),
            'keys': torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            'pos': int(np_pos),
            'has_gauss': int(np_has_gauss),
            'gauss': float(np_gauss),
        },
        'torch': torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` saved (CUDA states only when the device count matches)."""
    py = state['python']
    random.setstate(
        (py['version'], tuple(int(v) for v in py['state'].tolist()), py['gauss'][0] if py['gauss'] else None)
    )
    n = state['numpy']
    np.random.set_state((n['name'], n['keys'].numpy().astype(np.uint32), n['pos'], n['has_gauss'], n['gauss']))
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available() and len(state['cuda']) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state['cuda'])


def save_weights(module: nn.Module, path: Path, metadata: dict) -> None:
    """The module's weights as safetensors (CPU, contiguous) with string metadata, written atomically."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().to('cpu', copy=True).contiguous() for k, v in module.state_dict().items()}
    meta = {k: str(v) for k, v in metadata.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def load_state(path: Path) -> dict:
    """Read a ``last_state.pt`` with the shared safe loader; every failure names the file."""
    required = ('version', 'epoch', 'model', 'optimizer', 'scheduler', 'rng')
    state = load_checkpoint(path, 'cpu', what='resume state', required=required)
    if state['version'] != STATE_VERSION:
        raise RuntimeError(f'resume state {path} has version {state["version"]}, expected {STATE_VERSION}')
    return state


def save_state(snapshot: dict, path: Path) -> None:
    """Write the resume state atomically (plain tensors, numbers and strings only)."""
    save_checkpoint(snapshot, path)


def resume_path(cfg: TrainConfig) -> Path | None:
    """The state file ``cfg.resume`` names: ``True`` = ``<output>/last_state.pt``; ``None`` = no resume."""
    if cfg.resume is False or cfg.resume is None or cfg.resume == '':
        return None
    if cfg.resume is True or cfg.resume in ('auto', 'true', 'True'):
        return Path(cfg.output) / STATE_FILE
    return Path(str(cfg.resume))


def trim_log(path: Path, last_epoch: int) -> None:
    """Drop log lines of epochs after the resumed one (written after the state of an interrupted run)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError, KeyError, TypeError):
            if json.loads(line)['epoch'] <= last_epoch:
                keep.append(line)
    atomic_write_text(path, ''.join(f'{line}\n' for line in keep))
