"""Retrain any zoo model or found spec from scratch on an ImageNet-style folder, with the papers' recipes.

Searches end in a spec; the paper's number comes from retraining that spec alone. This module does that with
timm's own data, optimizer, scheduler, Mixup and EMA library functions, so that a recipe is a handful of
values (``configs/train/<preset>.yaml``) instead of a forked training script, and so that a DNA+ driver can
call :func:`train` once per generation from Python.

* Config: :class:`TrainConfig` (every option, with defaults) <- :func:`load_preset` <- explicit overrides.
* Learning rate: ``lr`` is the rate at the global batch ``lr_batch`` (batch per process x processes x
  gradient accumulation); a different global batch scales it linearly (``lr_batch: null`` = use ``lr`` as is).
* Outputs in ``output``: ``last.safetensors`` / ``best.safetensors`` (raw weights, best by val top-1),
  ``last_ema.safetensors`` / ``best_ema.safetensors`` (EMA weights, best by EMA top-1) when EMA is on,
  ``last_state.pt`` (everything needed to resume; plain tensors/numbers/strings only, loaded with
  ``weights_only=True``), ``log.jsonl`` (one line per epoch) and ``config.json``.
* Determinism: every epoch re-seeds python/numpy/torch and the loader from ``(seed, epoch, rank)``, so a
  resumed run reproduces an uninterrupted one exactly (CPU), whatever the number of loader workers.
* Distributed: under ``torchrun`` (``WORLD_SIZE > 1``) the process group is initialised from the environment
  (nccl on CUDA, gloo on CPU); only rank 0 logs and writes files.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import os
import random
import sys
import tempfile
import time
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import yaml

__all__ = ['PRESET_DIR', 'TrainConfig', 'list_presets', 'load_preset', 'main', 'make_config', 'train']

_logger = logging.getLogger(__name__)

#: Where ``--preset NAME`` files live (``configs/train/NAME.yaml`` at the repository root).
PRESET_DIR = Path(__file__).resolve().parents[1] / 'configs' / 'train'

STATE_FILE = 'last_state.pt'
STATE_VERSION = 1
_UMASK = os.umask(0o022)
os.umask(_UMASK)


@dataclass
class TrainConfig:
    """Every retraining option; presets and command-line flags set these fields by name."""

    # --- what and where
    model: str = field(default='', metadata={'help': 'catalog/timm model name, or a spec .json file'})
    data_dir: str = field(default='', metadata={'help': 'ImageNet-style root with <train_split>/ and <val_split>/'})
    output: str = field(default='runs/train', metadata={'help': 'output directory'})
    train_split: str = field(default='train', metadata={'help': 'training sub-folder of data_dir'})
    val_split: str | None = field(default='val', metadata={'help': 'validation sub-folder; none = no validation'})
    model_kwargs: dict = field(default_factory=dict, metadata={'help': 'extra create_model kwargs, k=v ...'})
    pretrained: bool = field(default=False, metadata={'help': 'start from pretrained weights (fine-tuning)'})
    num_classes: int | None = field(default=None, metadata={'help': 'classes (default: from the train folder)'})
    # --- schedule length and batch
    epochs: int = field(default=300, metadata={'help': 'total epochs (the schedule spans all of them)'})
    stop_epoch: int | None = field(
        default=None, metadata={'help': 'end this run after this many epochs, as if interrupted (resume later)'}
    )
    batch_size: int = field(default=128, metadata={'help': 'batch per process (per GPU)'})
    val_batch_size: int | None = field(default=None, metadata={'help': 'validation batch (default: batch_size)'})
    grad_accum: int = field(default=1, metadata={'help': 'micro-batches per optimizer step'})
    # --- optimizer
    opt: str = field(default='sgd', metadata={'help': "timm optimizer name ('sgd' is Nesterov, 'momentum' not)"})
    lr: float = field(default=0.1, metadata={'help': 'learning rate at global batch lr_batch'})
    lr_batch: int | None = field(
        default=256, metadata={'help': 'global batch lr is given for (linear scaling); none = lr as is'}
    )
    weight_decay: float = field(default=2e-5, metadata={'help': 'weight decay (never on norm/bias/1-D params)'})
    momentum: float = field(default=0.9, metadata={'help': 'optimizer momentum'})
    opt_eps: float | None = field(default=None, metadata={'help': 'optimizer epsilon (default: the optimizer default)'})
    opt_betas: list[float] | None = field(default=None, metadata={'help': 'optimizer betas'})
    clip_grad: float | None = field(default=None, metadata={'help': 'clip the global gradient norm to this'})
    # --- learning-rate schedule
    sched: str = field(default='cosine', metadata={'help': 'timm scheduler: cosine, step, multistep, plateau...'})
    sched_on_updates: bool = field(default=False, metadata={'help': 'step the schedule per update, not per epoch'})
    warmup_epochs: int = field(default=5, metadata={'help': 'linear warm-up epochs'})
    warmup_lr: float = field(default=1e-5, metadata={'help': 'learning rate the warm-up starts from'})
    warmup_prefix: bool = field(default=False, metadata={'help': 'warm-up epochs come before the schedule'})
    min_lr: float = field(default=0.0, metadata={'help': 'lower bound of cosine-like schedules'})
    decay_epochs: float = field(default=90, metadata={'help': 'step schedule: epochs between decays'})
    decay_rate: float = field(default=0.1, metadata={'help': 'step/multistep schedule: decay factor'})
    decay_milestones: list[int] = field(default_factory=lambda: [90, 180, 270], metadata={'help': 'multistep'})
    # --- data and augmentation
    img_size: int | None = field(default=None, metadata={'help': "image size (default: the model's)"})
    crop_pct: float | None = field(default=None, metadata={'help': "eval crop fraction (default: the model's)"})
    train_interpolation: str | None = field(
        default=None, metadata={'help': "train resize interpolation, e.g. random/bicubic (default: the model's)"}
    )
    scale: list[float] = field(default_factory=lambda: [0.08, 1.0], metadata={'help': 'random-resized-crop scale'})
    ratio: list[float] = field(default_factory=lambda: [3 / 4, 4 / 3], metadata={'help': 'random-resized-crop ratio'})
    hflip: float = field(default=0.5, metadata={'help': 'horizontal flip probability'})
    color_jitter: float = field(default=0.4, metadata={'help': 'color jitter (timm skips it under RandAugment)'})
    force_color_jitter: bool = field(default=False, metadata={'help': 'keep color jitter under RandAugment'})
    aa: str | None = field(default=None, metadata={'help': 'auto-augment: rand-m9-mstd0.5-inc1, original...'})
    re_prob: float = field(default=0.0, metadata={'help': 'random-erasing probability'})
    re_mode: str = field(default='pixel', metadata={'help': 'random-erasing mode'})
    re_count: int = field(default=1, metadata={'help': 'random-erasing count'})
    aug_repeats: float = field(default=0, metadata={'help': 'repeated augmentation (DeiT RASampler) repeats; 0 off'})
    mixup: float = field(default=0.0, metadata={'help': 'mixup alpha (0 = off)'})
    cutmix: float = field(default=0.0, metadata={'help': 'cutmix alpha (0 = off)'})
    mixup_prob: float = field(default=1.0, metadata={'help': 'probability of mixup or cutmix per batch'})
    mixup_switch_prob: float = field(default=0.5, metadata={'help': 'probability of cutmix when both are on'})
    mixup_mode: str = field(default='batch', metadata={'help': 'mixup mode: batch, pair or elem'})
    smoothing: float = field(default=0.1, metadata={'help': 'label smoothing'})
    # --- regularisation and EMA
    drop: float | None = field(default=None, metadata={'help': "classifier dropout (default: the model's)"})
    drop_path: float | None = field(default=None, metadata={'help': "stochastic depth (default: the model's)"})
    ema: bool = field(default=False, metadata={'help': 'keep a model EMA (timm ModelEmaV3)'})
    ema_decay: float = field(default=0.9998, metadata={'help': 'EMA decay per optimizer step'})
    # --- hardware
    amp: bool = field(default=False, metadata={'help': 'autocast on CUDA (ignored on CPU)'})
    amp_dtype: str = field(default='bfloat16', metadata={'help': 'bfloat16, or float16 (with a GradScaler)'})
    device: str = field(default='auto', metadata={'help': 'auto, cpu or cuda'})
    sync_bn: bool = field(default=False, metadata={'help': 'SyncBatchNorm under DDP'})
    dist_bn: str = field(default='reduce', metadata={'help': "BN stats before eval under DDP: reduce, broadcast, ''"})
    workers: int = field(default=8, metadata={'help': 'data-loader workers per process'})
    seed: int = field(default=42, metadata={'help': 'random seed'})
    deterministic: bool = field(default=False, metadata={'help': 'deterministic cuDNN/algorithms (slower)'})
    # --- run control
    limit_train_batches: int | None = field(default=None, metadata={'help': 'at most this many batches per epoch'})
    limit_val_batches: int | None = field(default=None, metadata={'help': 'at most this many val batches'})
    resume: bool | str = field(
        default=False, metadata={'help': 'resume from <output>/last_state.pt (true) or from this path'}
    )
    progress: bool = field(default=True, metadata={'help': 'tqdm progress bar on rank 0'})


_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


# ----------------------------------------------------------------------------------------------------- config


def list_presets() -> list[str]:
    """Names accepted by ``--preset`` (the ``configs/train/*.yaml`` files)."""
    return sorted(p.stem for p in PRESET_DIR.glob('*.yaml'))


def load_preset(name: str | PathLike) -> dict:
    """Read a recipe preset: a name in ``configs/train/`` or a path to a YAML file of :class:`TrainConfig` fields.

    Unknown keys are errors (naming the file), so that a typo never silently falls back to a default.
    """
    path = Path(name)
    if path.suffix not in ('.yaml', '.yml'):
        path = PRESET_DIR / f'{name}.yaml'
        if not path.is_file():
            raise FileNotFoundError(f'no preset {str(name)!r} ({path} does not exist); known: {list_presets()}')
    elif not path.is_file():
        raise FileNotFoundError(f'preset file {path} does not exist')
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f'preset {path} is not valid YAML: {e}') from e
    if not isinstance(values, dict):
        raise ValueError(f'preset {path} must be a mapping of TrainConfig fields, got {type(values).__name__}')
    unknown = sorted(set(values) - set(_FIELDS))
    if unknown:
        raise ValueError(f'preset {path}: unknown keys {unknown}')
    return values


def make_config(preset: str | PathLike | None = None, **overrides: Any) -> TrainConfig:
    """A :class:`TrainConfig` from the defaults, then ``preset``'s values, then ``overrides`` (which win)."""
    values = load_preset(preset) if preset else {}
    unknown = sorted(set(overrides) - set(_FIELDS))
    if unknown:
        raise TypeError(f'unknown TrainConfig fields {unknown}')
    values.update(overrides)
    return TrainConfig(**values)


def resolve_lr(cfg: TrainConfig, world_size: int = 1) -> float:
    """The learning rate actually used: ``lr`` scaled linearly from global batch ``lr_batch`` to ours."""
    if not cfg.lr_batch:
        return cfg.lr
    return cfg.lr * cfg.batch_size * world_size * cfg.grad_accum / cfg.lr_batch


# --------------------------------------------------------------------------------------------- distributed


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def primary(self) -> bool:
        return self.rank == 0


def _init_distributed(use_cuda: bool) -> _Dist:
    """Join the torchrun process group from the environment (once per process; reused on later calls)."""
    world = int(os.environ.get('WORLD_SIZE', '1'))
    if world <= 1:
        return _Dist()
    local_rank = int(os.environ.get('LOCAL_RANK', '0'))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    owns = False
    if not dist.is_initialized():
        dist.init_process_group(backend='nccl' if use_cuda else 'gloo')
        owns = True
    return _Dist(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local_rank, owns_group=owns)


def _all_sum(values: list[float], d: _Dist, device: torch.device) -> list[float]:
    if not d.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


# ------------------------------------------------------------------------------------------------ seeding


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _rng_state() -> dict:
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


def _set_rng_state(state: dict) -> None:
    py = state['python']
    random.setstate(
        (py['version'], tuple(int(v) for v in py['state'].tolist()), py['gauss'][0] if py['gauss'] else None)
    )
    n = state['numpy']
    np.random.set_state((n['name'], n['keys'].numpy().astype(np.uint32), n['pos'], n['has_gauss'], n['gauss']))
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available() and len(state['cuda']) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state['cuda'])


# -------------------------------------------------------------------------------------------- model & data


def _build_model(cfg: TrainConfig, num_classes: int) -> nn.Module:
    """Catalog names, families, ``hf-hub:`` names and spec files go through the zoo; other timm names to timm."""
    import timm

    import zoo

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
    in_zoo = name.endswith('.json') or name.startswith('hf-hub:') or arch in zoo.list_models('*', True)
    if not in_zoo and timm.is_model(arch):
        return timm.create_model(name, pretrained=cfg.pretrained, **kwargs)
    return zoo.create_model(name, pretrained=cfg.pretrained, **kwargs)


def _dataset(cfg: TrainConfig, split: str, is_training: bool, class_map: dict | None = None) -> Any:
    from timm.data import create_dataset

    root = Path(cfg.data_dir) / split
    if not root.is_dir():
        raise FileNotFoundError(f'{"training" if is_training else "validation"} folder {root} does not exist')
    return create_dataset(
        '', root=str(root), split=split, search_split=False, is_training=is_training, class_map=class_map
    )


def _transforms(cfg: TrainConfig, model: nn.Module) -> tuple[Callable, Callable, dict]:
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


# ----------------------------------------------------------------------------------------------- evaluation


@torch.no_grad()
def _evaluate(
    model: nn.Module, loader: Any, device: torch.device, autocast: Callable, d: _Dist, limit: int | None
) -> dict:
    """Top-1/top-5 (top-k capped at the class count) and loss, summed exactly over ranks."""
    model.eval()
    correct1 = correct5 = loss_sum = 0.0
    n = 0
    for i, (x, y) in enumerate(loader):
        if limit is not None and i >= limit:
            break
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast():
            out = model(x)
        out = out.float()
        loss_sum += nn.functional.cross_entropy(out, y, reduction='sum').item()
        k = min(5, out.shape[1])
        top = out.topk(k, dim=1).indices
        hit = top.eq(y[:, None])
        correct1 += hit[:, :1].sum().item()
        correct5 += hit.sum().item()
        n += y.numel()
    correct1, correct5, loss_sum, total = _all_sum([correct1, correct5, loss_sum, float(n)], d, device)
    total = max(total, 1.0)
    return {'top1': 100.0 * correct1 / total, 'top5': 100.0 * correct5 / total, 'loss': loss_sum / total}


# --------------------------------------------------------------------------------------------------- files


def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Write through a temp file in the same directory, then ``os.replace``: a crash never leaves half a file."""
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _save_weights(module: nn.Module, path: Path, metadata: dict) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().to('cpu', copy=True).contiguous() for k, v in module.state_dict().items()}
    meta = {k: str(v) for k, v in metadata.items()}
    _atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def _load_state(path: Path) -> dict:
    """Read a ``last_state.pt``; every failure names the file."""
    if not path.is_file():
        raise FileNotFoundError(f'resume state {path} does not exist')
    try:
        state = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        raise RuntimeError(f'resume state {path} is corrupt or not a retrain state ({type(e).__name__}: {e})') from e
    missing = {'version', 'epoch', 'model', 'optimizer', 'scheduler', 'rng'} - set(
        state if isinstance(state, dict) else ()
    )
    if missing:
        raise RuntimeError(f'resume state {path} is not a retrain state (missing {sorted(missing)})')
    if state['version'] != STATE_VERSION:
        raise RuntimeError(f'resume state {path} has version {state["version"]}, expected {STATE_VERSION}')
    return state


def _resume_path(cfg: TrainConfig) -> Path | None:
    if cfg.resume is False or cfg.resume is None or cfg.resume == '':
        return None
    if cfg.resume is True or cfg.resume in ('auto', 'true', 'True'):
        return Path(cfg.output) / STATE_FILE
    return Path(str(cfg.resume))


def _trim_log(path: Path, last_epoch: int) -> None:
    """Drop log lines of epochs after the resumed one (written after the state of an interrupted run)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError, KeyError, TypeError):
            if json.loads(line)['epoch'] <= last_epoch:
                keep.append(line)
    path.write_text(''.join(f'{line}\n' for line in keep))


# --------------------------------------------------------------------------------------------------- train


def _amp_context(cfg: TrainConfig, device: torch.device) -> tuple[Callable, Any]:
    if not cfg.amp or device.type != 'cuda':
        if cfg.amp:
            _logger.warning('--amp ignored: no CUDA device (CPU runs in float32)')
        return contextlib.nullcontext, None
    if cfg.amp_dtype not in ('bfloat16', 'float16'):
        raise ValueError(f'amp_dtype must be bfloat16 or float16, got {cfg.amp_dtype!r}')
    dtype = getattr(torch, cfg.amp_dtype)
    scaler = torch.amp.GradScaler('cuda') if dtype == torch.float16 else None
    return (lambda: torch.autocast('cuda', dtype=dtype)), scaler


def _check(cfg: TrainConfig) -> None:
    if cfg.grad_accum < 1:
        raise ValueError(f'grad_accum must be >= 1, got {cfg.grad_accum}')
    if cfg.epochs < 1:
        raise ValueError(f'epochs must be >= 1, got {cfg.epochs}')
    if (cfg.mixup > 0 or cfg.cutmix > 0) and cfg.batch_size % 2:
        raise ValueError(f'mixup/cutmix need an even batch_size, got {cfg.batch_size}')
    if not cfg.data_dir:
        raise ValueError('no data_dir given')


def train(cfg: TrainConfig) -> dict:
    """Train ``cfg.model`` on ``cfg.data_dir`` and return a summary.

    Summary keys: ``best_top1``/``best_top5``/``best_epoch`` (raw model), ``best_ema_top1``/``best_ema_epoch``,
    ``last_top1``/``last_ema_top1``, paths ``best``, ``best_ema``, ``last``, ``last_ema``, ``state``, ``log``
    (``None`` where not written), ``epochs`` (epochs completed in total) and ``epochs_run`` (in this call).
    """
    from timm.data import Mixup
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2
    from timm.utils import ModelEmaV3, distribute_bn
    from torch.utils.data import DataLoader, DistributedSampler

    _check(cfg)
    use_cuda = cfg.device == 'cuda' or (cfg.device == 'auto' and torch.cuda.is_available())
    d = _init_distributed(use_cuda)
    device = torch.device(f'cuda:{d.local_rank}' if use_cuda else 'cpu')
    if cfg.deterministic:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)
    elif use_cuda:
        torch.backends.cudnn.benchmark = True
    out_dir = Path(cfg.output)
    if d.primary:
        out_dir.mkdir(parents=True, exist_ok=True)
    try:
        resume_path = _resume_path(cfg)
        state = _load_state(resume_path) if resume_path else None  # fail before any data/model work
        # ---- data and model
        train_ds = _dataset(cfg, cfg.train_split, True)
        class_map = dict(train_ds.reader.class_to_idx)
        val_ds = _dataset(cfg, cfg.val_split, False, class_map) if cfg.val_split else None
        num_classes = cfg.num_classes or len(class_map)

        _seed_all(cfg.seed)  # the same initial weights on every rank and every run
        model = _build_model(cfg, num_classes)
        train_ds.transform, eval_tf, data_cfg = _transforms(cfg, model)
        if val_ds is not None:
            val_ds.transform = eval_tf
        model.to(device)
        if d.enabled and cfg.sync_bn:
            if use_cuda:
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            elif d.primary:
                _logger.warning('sync_bn ignored: SyncBatchNorm needs CUDA')
        ema = ModelEmaV3(model, decay=cfg.ema_decay) if cfg.ema else None
        train_model: nn.Module = model
        if d.enabled:
            train_model = nn.parallel.DistributedDataParallel(model, device_ids=[d.local_rank] if use_cuda else None)

        if cfg.aug_repeats:
            from timm.data.distributed_sampler import RepeatAugSampler

            sampler: Any = RepeatAugSampler(
                train_ds,
                num_replicas=d.world,
                rank=d.rank,
                num_repeats=cfg.aug_repeats,
                selected_round=256 if len(train_ds) >= 256 * d.world else 0,
            )
        else:
            sampler = DistributedSampler(
                train_ds, num_replicas=d.world, rank=d.rank, shuffle=True, seed=cfg.seed, drop_last=True
            )
        loader_gen = torch.Generator()
        train_loader = DataLoader(
            train_ds,
            batch_size=cfg.batch_size,
            sampler=sampler,
            num_workers=cfg.workers,
            pin_memory=use_cuda,
            drop_last=True,
            generator=loader_gen,
        )
        if len(train_loader) == 0:
            raise ValueError(
                f'{cfg.data_dir}/{cfg.train_split}: {len(train_ds)} images give no full batch of {cfg.batch_size} '
                f'on {d.world} process(es)'
            )
        val_loader = None
        if val_ds is not None:
            val_loader = DataLoader(
                val_ds,
                batch_size=cfg.val_batch_size or cfg.batch_size,
                sampler=range(d.rank, len(val_ds), d.world),  # exact shards: no padded duplicates
                num_workers=cfg.workers,
                pin_memory=use_cuda,
                generator=torch.Generator().manual_seed(cfg.seed),
            )

        n_batches = len(train_loader)
        if cfg.limit_train_batches:
            n_batches = min(n_batches, cfg.limit_train_batches)
        updates_per_epoch = math.ceil(n_batches / cfg.grad_accum)

        # ---- optimisation
        lr = resolve_lr(cfg, d.world)
        opt_kwargs: dict[str, Any] = {}
        if cfg.opt_eps is not None:
            opt_kwargs['eps'] = cfg.opt_eps
        if cfg.opt_betas is not None:
            opt_kwargs['betas'] = tuple(cfg.opt_betas)
        optimizer = create_optimizer_v2(
            model, opt=cfg.opt, lr=lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum, **opt_kwargs
        )
        scheduler, _ = create_scheduler_v2(
            optimizer,
            sched=cfg.sched,
            num_epochs=cfg.epochs,
            decay_epochs=cfg.decay_epochs,
            decay_milestones=list(cfg.decay_milestones),
            decay_rate=cfg.decay_rate,
            min_lr=cfg.min_lr,
            warmup_lr=cfg.warmup_lr,
            warmup_epochs=cfg.warmup_epochs,
            warmup_prefix=cfg.warmup_prefix,
            noise_seed=cfg.seed,
            step_on_epochs=not cfg.sched_on_updates,
            updates_per_epoch=updates_per_epoch,
        )
        autocast, scaler = _amp_context(cfg, device)

        mixup_fn = None
        if cfg.mixup > 0 or cfg.cutmix > 0:
            mixup_fn = Mixup(
                mixup_alpha=cfg.mixup,
                cutmix_alpha=cfg.cutmix,
                prob=cfg.mixup_prob,
                switch_prob=cfg.mixup_switch_prob,
                mode=cfg.mixup_mode,
                label_smoothing=cfg.smoothing,
                num_classes=num_classes,
            )
            criterion: nn.Module = SoftTargetCrossEntropy()
        elif cfg.smoothing > 0:
            criterion = LabelSmoothingCrossEntropy(smoothing=cfg.smoothing)
        else:
            criterion = nn.CrossEntropyLoss()

        # ---- resume
        start_epoch, num_updates = 0, 0
        best: dict[str, Any] = {'top1': None, 'top5': None, 'epoch': None, 'ema_top1': None, 'ema_epoch': None}
        if state is not None:
            saved_model = state.get('config', {}).get('model')
            if saved_model and saved_model != cfg.model:
                raise ValueError(f'resume state {resume_path} is for model {saved_model!r}, not {cfg.model!r}')
            model.load_state_dict(state['model'])
            optimizer.load_state_dict(state['optimizer'])
            scheduler.load_state_dict(state['scheduler'])
            if ema is not None:
                if state.get('ema') is None:
                    raise ValueError(f'resume state {resume_path} has no EMA weights but EMA is on')
                ema.module.load_state_dict(state['ema'])
            if scaler is not None and state.get('scaler'):
                scaler.load_state_dict(state['scaler'])
            start_epoch, num_updates = int(state['epoch']), int(state['num_updates'])
            best.update(state.get('best', {}))
            _set_rng_state(state['rng'])
            if cfg.sched_on_updates:
                scheduler.step_update(num_updates)
            else:
                scheduler.step(start_epoch)
            if d.primary:
                _logger.info('resumed from %s at epoch %d', resume_path, start_epoch)
                _trim_log(out_dir / 'log.jsonl', start_epoch)
        elif d.primary:
            (out_dir / 'log.jsonl').write_text('')
        if d.primary:
            (out_dir / 'config.json').write_text(
                json.dumps(
                    {**asdict(cfg), 'resolved_lr': lr, 'world_size': d.world, 'data_config': data_cfg},
                    indent=2,
                    default=str,
                )
                + '\n'
            )

        end_epoch = cfg.epochs if cfg.stop_epoch is None else min(cfg.epochs, cfg.stop_epoch)
        paths = {
            'best': None,
            'best_ema': None,
            'last': None,
            'last_ema': None,
            'state': None,
            'log': str(out_dir / 'log.jsonl'),
        }
        if state is not None:
            for key in ('best', 'best_ema', 'last', 'last_ema'):
                p = out_dir / f'{key}.safetensors'
                paths[key] = str(p) if p.is_file() else None
            paths['state'] = str(out_dir / STATE_FILE)
        last_metrics: dict[str, Any] = {}
        from tqdm import tqdm

        # ---- epochs
        for epoch in range(start_epoch, end_epoch):
            t0 = time.time()
            epoch_seed = _epoch_seed(cfg.seed, epoch, d.rank)
            _seed_all(epoch_seed)
            loader_gen.manual_seed(epoch_seed)
            sampler.set_epoch(epoch)
            train_model.train()
            loss_sum, seen = torch.zeros((), dtype=torch.float64, device=device), 0
            bar = tqdm(
                total=n_batches,
                desc=f'epoch {epoch + 1}/{cfg.epochs}',
                disable=not (d.primary and cfg.progress),
                leave=False,
                dynamic_ncols=True,
            )
            batches: Iterator = iter(train_loader)
            optimizer.zero_grad(set_to_none=True)
            for i in range(n_batches):
                x, y = next(batches)
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                if mixup_fn is not None:
                    x, y = mixup_fn(x, y)
                window_start = i - i % cfg.grad_accum
                window = min(cfg.grad_accum, n_batches - window_start)
                step_now = i + 1 == window_start + window
                sync = contextlib.nullcontext() if step_now or not d.enabled else train_model.no_sync()
                with sync:
                    with autocast():
                        loss = criterion(train_model(x), y)
                    scaled = loss / window
                    (scaler.scale(scaled) if scaler is not None else scaled).backward()
                if step_now:
                    if scaler is not None:
                        if cfg.clip_grad:
                            scaler.unscale_(optimizer)
                            nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
                        scaler.step(optimizer)
                        scaler.update()
                    else:
                        if cfg.clip_grad:
                            nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
                        optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    num_updates += 1
                    if ema is not None:
                        ema.update(model, step=num_updates)
                    scheduler.step_update(num_updates)
                loss_sum += loss.detach().double() * x.shape[0]  # no per-step host sync
                seen += x.shape[0]
                bar.update(1)
                if not bar.disable and (i % 20 == 0 or i + 1 == n_batches):
                    bar.set_postfix(loss=f'{loss.item():.4f}', lr=f'{optimizer.param_groups[0]["lr"]:.3g}')
            bar.close()
            del batches
            local_loss = loss_sum.item()  # waits for the device, so the time below is real
            train_time = time.time() - t0
            epoch_lr = optimizer.param_groups[0]['lr']
            loss_sum, seen = _all_sum([local_loss, float(seen)], d, device)  # images/s: global images, rank-0 time
            train_loss = loss_sum / max(seen, 1.0)

            # ---- validation
            metrics: dict[str, Any] = {}
            ema_metrics: dict[str, Any] = {}
            if d.enabled and cfg.dist_bn in ('reduce', 'broadcast'):
                distribute_bn(model, d.world, cfg.dist_bn == 'reduce')
                if ema is not None:
                    distribute_bn(ema.module, d.world, cfg.dist_bn == 'reduce')
            if val_loader is not None:
                metrics = _evaluate(model, val_loader, device, autocast, d, cfg.limit_val_batches)
                if ema is not None:
                    ema_metrics = _evaluate(ema.module, val_loader, device, autocast, d, cfg.limit_val_batches)
            scheduler.step(epoch + 1, metrics.get('top1'))

            done = epoch + 1
            is_best = bool(metrics) and (best['top1'] is None or metrics['top1'] > best['top1'])
            is_best_ema = bool(ema_metrics) and (best['ema_top1'] is None or ema_metrics['top1'] > best['ema_top1'])
            if is_best:
                best.update(top1=metrics['top1'], top5=metrics['top5'], epoch=done)
            if is_best_ema:
                best.update(ema_top1=ema_metrics['top1'], ema_epoch=done)
            record = {
                'epoch': done,
                'train_loss': train_loss,
                'lr': epoch_lr,
                'val_top1': metrics.get('top1'),
                'val_top5': metrics.get('top5'),
                'val_loss': metrics.get('loss'),
                'ema_top1': ema_metrics.get('top1'),
                'ema_top5': ema_metrics.get('top5'),
                'img_per_s': seen / max(train_time, 1e-9),
                'time': time.time() - t0,
                'updates': num_updates,
            }
            last_metrics = record

            # ---- files (rank 0): weights first, the state last, so the state never points past the weights
            if d.primary:
                meta = {'model': cfg.model, 'epoch': done, 'num_classes': num_classes}
                _save_weights(model, out_dir / 'last.safetensors', {**meta, 'top1': metrics.get('top1')})
                paths['last'] = str(out_dir / 'last.safetensors')
                if ema is not None:
                    _save_weights(
                        ema.module, out_dir / 'last_ema.safetensors', {**meta, 'top1': ema_metrics.get('top1')}
                    )
                    paths['last_ema'] = str(out_dir / 'last_ema.safetensors')
                if is_best:
                    _save_weights(model, out_dir / 'best.safetensors', {**meta, 'top1': metrics['top1']})
                    paths['best'] = str(out_dir / 'best.safetensors')
                if is_best_ema:
                    _save_weights(ema.module, out_dir / 'best_ema.safetensors', {**meta, 'top1': ema_metrics['top1']})
                    paths['best_ema'] = str(out_dir / 'best_ema.safetensors')
                with open(out_dir / 'log.jsonl', 'a') as f:
                    f.write(json.dumps(record) + '\n')
                snapshot = {
                    'version': STATE_VERSION,
                    'epoch': done,
                    'num_updates': num_updates,
                    'model': model.state_dict(),
                    'ema': ema.module.state_dict() if ema is not None else None,
                    'optimizer': optimizer.state_dict(),
                    'scheduler': scheduler.state_dict(),
                    'scaler': scaler.state_dict() if scaler is not None else None,
                    'best': dict(best),
                    'rng': _rng_state(),
                    'config': json.loads(json.dumps(asdict(cfg), default=str)),
                }
                _atomic_write(out_dir / STATE_FILE, lambda tmp, s=snapshot: torch.save(s, tmp))
                paths['state'] = str(out_dir / STATE_FILE)
                _logger.info(
                    'epoch %d/%d loss %.4f lr %.3g top1 %s ema %s %.0f img/s',
                    done,
                    cfg.epochs,
                    train_loss,
                    epoch_lr,
                    _fmt(metrics.get('top1')),
                    _fmt(ema_metrics.get('top1')),
                    record['img_per_s'],
                )
        if d.enabled:
            dist.barrier()
        return {
            'best_top1': best['top1'],
            'best_top5': best['top5'],
            'best_epoch': best['epoch'],
            'best_ema_top1': best['ema_top1'],
            'best_ema_epoch': best['ema_epoch'],
            'last_top1': last_metrics.get('val_top1'),
            'last_ema_top1': last_metrics.get('ema_top1'),
            **paths,
            'epochs': max(start_epoch, end_epoch),
            'epochs_run': max(0, end_epoch - start_epoch),
            'output': str(out_dir),
        }
    finally:
        if d.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def _fmt(v: float | None) -> str:
    return '-' if v is None else f'{v:.2f}'


# ------------------------------------------------------------------------------------------------------ CLI


def _optional(kind: type) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        return None if text.lower() in ('none', 'null', '') else kind(text)

    parse.__name__ = kind.__name__
    return parse


def _kv(text: str) -> tuple[str, Any]:
    if '=' not in text:
        raise argparse.ArgumentTypeError(f'expected key=value, got {text!r}')
    k, v = text.split('=', 1)
    return k, yaml.safe_load(v)


def build_parser() -> argparse.ArgumentParser:
    """Every :class:`TrainConfig` field as a flag; flags default to 'not given' so that presets stay in force."""
    parser = argparse.ArgumentParser(
        prog='tools/train.py',
        description='Retrain a zoo model or a found spec on an ImageNet-style folder with a paper recipe.',
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument('model', help=_FIELDS['model'].metadata['help'])
    parser.add_argument('--preset', help=f'recipe: {", ".join(list_presets())} or a .yaml path')
    parser.add_argument('--print-config', action='store_true', help='print the merged config and exit')
    hints = typing.get_type_hints(TrainConfig)
    for name, f in _FIELDS.items():
        if name == 'model':
            continue
        flag = '--' + name.replace('_', '-')
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        help_ = f.metadata.get('help', '')
        if 'default' not in help_:
            help_ += f' (default: {default})'
        hint = hints[name]
        is_union = typing.get_origin(hint) in (typing.Union, types.UnionType)
        args = typing.get_args(hint) if is_union else ()
        optional = type(None) in args
        base = next(a for a in args if a is not type(None)) if is_union else hint
        if name == 'resume':
            parser.add_argument(flag, nargs='?', const=True, metavar='PATH', help=help_)
        elif name == 'model_kwargs':
            parser.add_argument(flag, nargs='*', type=_kv, metavar='K=V', help=help_)
        elif base is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=help_)
        elif typing.get_origin(base) is list:
            (item,) = typing.get_args(base)
            parser.add_argument(flag, nargs='+', type=item, help=help_)
        else:
            parser.add_argument(flag, type=_optional(base) if optional else base, help=help_)
    return parser


def config_from_args(argv: list[str] | None = None) -> tuple[TrainConfig, bool]:
    """Defaults < ``--preset`` < explicit flags. An explicit ``--lr`` is absolute unless ``--lr-batch`` is given."""
    ns = vars(build_parser().parse_args(argv))
    preset = ns.pop('preset', None)
    print_config = ns.pop('print_config', False)
    if 'model_kwargs' in ns:
        ns['model_kwargs'] = dict(ns['model_kwargs'])
    if 'lr' in ns and 'lr_batch' not in ns:
        ns['lr_batch'] = None
    return make_config(preset, **ns), print_config


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (``tools/train.py``); returns the exit code."""
    cfg, print_config = config_from_args(argv)
    if print_config:
        sys.stdout.write(yaml.safe_dump(asdict(cfg), sort_keys=False))
        return 0
    rank = int(os.environ.get('RANK', '0'))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format='%(asctime)s %(message)s')
    summary = train(cfg)
    if rank == 0:
        sys.stdout.write(json.dumps(summary, indent=2) + '\n')
    return 0
