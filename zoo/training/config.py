"""Retraining options (:class:`TrainConfig`) and the recipe presets of ``configs/train/`` that set them by name.

A recipe is a handful of values instead of a forked training script: :func:`make_config` merges the defaults, a
preset (``configs/train/<name>.yaml``, unknown keys are errors) and explicit overrides, in that order.
``lr`` is the rate at the global batch ``lr_batch`` (batch per process x processes x gradient accumulation); a
different global batch scales it linearly (:func:`resolve_lr`; ``lr_batch: null`` = use ``lr`` as is).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import yaml

__all__ = ['PRESET_DIR', 'TrainConfig', 'check_config', 'list_presets', 'load_preset', 'make_config', 'resolve_lr']

#: Where ``--preset NAME`` files live (``configs/train/NAME.yaml`` at the repository root).
PRESET_DIR = Path(__file__).resolve().parents[2] / 'configs' / 'train'


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


def check_config(cfg: TrainConfig) -> None:
    """Reject option values that cannot run, with one line naming the field."""
    if cfg.grad_accum < 1:
        raise ValueError(f'grad_accum must be >= 1, got {cfg.grad_accum}')
    if cfg.epochs < 1:
        raise ValueError(f'epochs must be >= 1, got {cfg.epochs}')
    if (cfg.mixup > 0 or cfg.cutmix > 0) and cfg.batch_size % 2:
        raise ValueError(f'mixup/cutmix need an even batch_size, got {cfg.batch_size}')
    if not cfg.data_dir:
        raise ValueError('no data_dir given')
