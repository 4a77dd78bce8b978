"""The retraining loop, in the steps a run goes through: build, resume, one epoch, validate, save.

Searches end in a spec; the paper's number comes from retraining that spec alone. The loop uses timm's own data,
optimizer, scheduler, Mixup and EMA library functions, so that a recipe is a handful of values
(``configs/train/<preset>.yaml``, see :mod:`zoo.training.config`) and a DNA+ driver can call :func:`train` once
per generation from Python.

* Outputs in ``output``: ``last.safetensors`` / ``best.safetensors`` (raw weights, best by val top-1),
  ``last_ema.safetensors`` / ``best_ema.safetensors`` (EMA weights, best by EMA top-1) when EMA is on,
  ``last_state.pt`` (everything needed to resume; plain tensors/numbers/strings only, loaded with
  ``weights_only=True``), ``log.jsonl`` (one line per epoch) and ``config.json``.
* Distributed: under ``torchrun`` (``WORLD_SIZE > 1``) the process group is joined with the set-up the search
  engine uses (``backbones._runtime.init_distributed``; nccl on CUDA, gloo on CPU); only rank 0 logs and writes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

from backbones._runtime import DistContext, atomic_write_text, init_distributed

from .config import TrainConfig, check_config, resolve_lr
from .data import build_dataset, build_model, build_transforms
from .state import (
    STATE_FILE,
    STATE_VERSION,
    epoch_seed,
    load_state,
    resume_path,
    rng_state,
    save_state,
    save_weights,
    seed_all,
    set_rng_state,
    trim_log,
)

__all__ = ['Run', 'build', 'resume', 'save', 'train', 'train_epoch', 'validate']

_logger = logging.getLogger(__name__)
_WEIGHT_FILES = ('best', 'best_ema', 'last', 'last_ema')


@dataclass
class Run:
    """Everything :func:`build` makes and the later steps share (model, loaders, optimisation, progress)."""

    cfg: TrainConfig
    ctx: DistContext
    out_dir: Path
    model: nn.Module
    train_model: nn.Module
    ema: Any
    train_loader: Any
    val_loader: Any
    sampler: Any
    loader_gen: torch.Generator
    n_batches: int
    num_classes: int
    data_cfg: dict
    lr: float
    optimizer: Any
    scheduler: Any
    autocast: Callable
    scaler: Any
    mixup_fn: Any
    criterion: nn.Module
    start_epoch: int = 0
    num_updates: int = 0
    best: dict = field(
        default_factory=lambda: {'top1': None, 'top5': None, 'epoch': None, 'ema_top1': None, 'ema_epoch': None}
    )
    paths: dict = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return self.ctx.device


# ------------------------------------------------------------------------------------------------------ build
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


def _loaders(cfg: TrainConfig, ctx: DistContext, train_ds: Any, val_ds: Any) -> tuple[Any, Any, Any, torch.Generator]:
    from torch.utils.data import DataLoader, DistributedSampler

    use_cuda = ctx.device.type == 'cuda'
    if cfg.aug_repeats:
        from timm.data.distributed_sampler import RepeatAugSampler

        sampler: Any = RepeatAugSampler(
            train_ds,
            num_replicas=ctx.world_size,
            rank=ctx.rank,
            num_repeats=cfg.aug_repeats,
            selected_round=256 if len(train_ds) >= 256 * ctx.world_size else 0,
        )
    else:
        sampler = DistributedSampler(
            train_ds, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=cfg.seed, drop_last=True
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
            f'on {ctx.world_size} process(es)'
        )
    val_loader = None
    if val_ds is not None:
        val_loader = DataLoader(
            val_ds,
            batch_size=cfg.val_batch_size or cfg.batch_size,
            sampler=range(ctx.rank, len(val_ds), ctx.world_size),  # exact shards: no padded duplicates
            num_workers=cfg.workers,
            pin_memory=use_cuda,
            generator=torch.Generator().manual_seed(cfg.seed),
        )
    return train_loader, val_loader, sampler, loader_gen


def _criterion(cfg: TrainConfig, num_classes: int) -> tuple[Any, nn.Module]:
    from timm.data import Mixup
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

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
        return mixup_fn, SoftTargetCrossEntropy()
    if cfg.smoothing > 0:
        return None, LabelSmoothingCrossEntropy(smoothing=cfg.smoothing)
    return None, nn.CrossEntropyLoss()


def build(cfg: TrainConfig, ctx: DistContext) -> Run:
    """Data, model (the same initial weights on every rank and run), EMA, DDP, loaders, optimizer and schedule."""
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2
    from timm.utils import ModelEmaV3

    device, use_cuda = ctx.device, ctx.device.type == 'cuda'
    train_ds = build_dataset(cfg, cfg.train_split, True)
    class_map = dict(train_ds.reader.class_to_idx)
    val_ds = build_dataset(cfg, cfg.val_split, False, class_map) if cfg.val_split else None
    num_classes = cfg.num_classes or len(class_map)

    seed_all(cfg.seed)  # the same initial weights on every rank and every run
    model = build_model(cfg, num_classes)
    train_ds.transform, eval_tf, data_cfg = build_transforms(cfg, model)
    if val_ds is not None:
        val_ds.transform = eval_tf
    model.to(device)
    if ctx.distributed and cfg.sync_bn:
        if use_cuda:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        elif ctx.is_main:
            _logger.warning('sync_bn ignored: SyncBatchNorm needs CUDA')
    ema = ModelEmaV3(model, decay=cfg.ema_decay) if cfg.ema else None
    train_model: nn.Module = model
    if ctx.distributed:
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=[ctx.local_rank] if use_cuda else None)
    train_loader, val_loader, sampler, loader_gen = _loaders(cfg, ctx, train_ds, val_ds)

    n_batches = len(train_loader)
    if cfg.limit_train_batches:
        n_batches = min(n_batches, cfg.limit_train_batches)
    lr = resolve_lr(cfg, ctx.world_size)
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
        updates_per_epoch=math.ceil(n_batches / cfg.grad_accum),
    )
    autocast, scaler = _amp_context(cfg, device)
    mixup_fn, criterion = _criterion(cfg, num_classes)
    out_dir = Path(cfg.output)
    paths = dict.fromkeys((*_WEIGHT_FILES, 'state'))
    paths['log'] = str(out_dir / 'log.jsonl')
    return Run(
        cfg, ctx, out_dir, model, train_model, ema, train_loader, val_loader, sampler, loader_gen, n_batches,
        num_classes, data_cfg, lr, optimizer, scheduler, autocast, scaler, mixup_fn, criterion, paths=paths,
    )  # fmt: skip


# ----------------------------------------------------------------------------------------------------- resume
def resume(run: Run, state: dict | None, path: Path | None) -> None:
    """Load ``state`` (from ``path``) into the run, or start a fresh log; write ``config.json`` (rank 0)."""
    cfg, ctx = run.cfg, run.ctx
    if state is not None:
        saved_model = state.get('config', {}).get('model')
        if saved_model and saved_model != cfg.model:
            raise ValueError(f'resume state {path} is for model {saved_model!r}, not {cfg.model!r}')
        run.model.load_state_dict(state['model'])
        run.optimizer.load_state_dict(state['optimizer'])
        run.scheduler.load_state_dict(state['scheduler'])
        if run.ema is not None:
            if state.get('ema') is None:
                raise ValueError(f'resume state {path} has no EMA weights but EMA is on')
            run.ema.module.load_state_dict(state['ema'])
        if run.scaler is not None and state.get('scaler'):
            run.scaler.load_state_dict(state['scaler'])
        run.start_epoch, run.num_updates = int(state['epoch']), int(state['num_updates'])
        run.best.update(state.get('best', {}))
        set_rng_state(state['rng'])
        if cfg.sched_on_updates:
            run.scheduler.step_update(run.num_updates)
        else:
            run.scheduler.step(run.start_epoch)
        for key in _WEIGHT_FILES:
            p = run.out_dir / f'{key}.safetensors'
            run.paths[key] = str(p) if p.is_file() else None
        run.paths['state'] = str(run.out_dir / STATE_FILE)
        if ctx.is_main:
            _logger.info('resumed from %s at epoch %d', path, run.start_epoch)
            trim_log(run.out_dir / 'log.jsonl', run.start_epoch)
    elif ctx.is_main:
        (run.out_dir / 'log.jsonl').write_text('')
    if ctx.is_main:
        info = {**asdict(cfg), 'resolved_lr': run.lr, 'world_size': ctx.world_size, 'data_config': run.data_cfg}
        atomic_write_text(run.out_dir / 'config.json', json.dumps(info, indent=2, default=str) + '\n')


# ------------------------------------------------------------------------------------------------------ epoch
def train_epoch(run: Run, epoch: int) -> dict:
    """One epoch (re-seeded from ``(seed, epoch, rank)``); returns the global train loss, lr, images and time."""
    from tqdm import tqdm

    cfg, ctx, device = run.cfg, run.ctx, run.device
    t0 = time.time()
    seed = epoch_seed(cfg.seed, epoch, ctx.rank)
    seed_all(seed)
    run.loader_gen.manual_seed(seed)
    run.sampler.set_epoch(epoch)
    run.train_model.train()
    loss_sum, seen = torch.zeros((), dtype=torch.float64, device=device), 0
    bar = tqdm(
        total=run.n_batches,
        desc=f'epoch {epoch + 1}/{cfg.epochs}',
        disable=not (ctx.is_main and cfg.progress),
        leave=False,
        dynamic_ncols=True,
    )
    batches: Iterator = iter(run.train_loader)
    optimizer, scaler = run.optimizer, run.scaler
    optimizer.zero_grad(set_to_none=True)
    for i in range(run.n_batches):
        x, y = next(batches)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if run.mixup_fn is not None:
            x, y = run.mixup_fn(x, y)
        window_start = i - i % cfg.grad_accum
        window = min(cfg.grad_accum, run.n_batches - window_start)
        step_now = i + 1 == window_start + window
        sync = contextlib.nullcontext() if step_now or not ctx.distributed else run.train_model.no_sync()
        with sync:
            with run.autocast():
                loss = run.criterion(run.train_model(x), y)
            scaled = loss / window
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
        if step_now:
            if scaler is not None:
                if cfg.clip_grad:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(run.model.parameters(), cfg.clip_grad)
                scaler.step(optimizer)
                scaler.update()
            else:
                if cfg.clip_grad:
                    nn.utils.clip_grad_norm_(run.model.parameters(), cfg.clip_grad)
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            run.num_updates += 1
            if run.ema is not None:
                run.ema.update(run.model, step=run.num_updates)
            run.scheduler.step_update(run.num_updates)
        loss_sum += loss.detach().double() * x.shape[0]  # no per-step host sync
        seen += x.shape[0]
        bar.update(1)
        if not bar.disable and (i % 20 == 0 or i + 1 == run.n_batches):
            bar.set_postfix(loss=f'{loss.item():.4f}', lr=f'{optimizer.param_groups[0]["lr"]:.3g}')
    bar.close()
    del batches
    local_loss = loss_sum.item()  # waits for the device, so the time below is real
    train_time = time.time() - t0
    total_loss, total_seen = ctx.all_sum([local_loss, float(seen)])  # images/s: global images, rank-0 time
    return {
        'train_loss': total_loss / max(total_seen, 1.0),
        'lr': optimizer.param_groups[0]['lr'],
        'seen': total_seen,
        'train_time': train_time,
        'start': t0,
    }


# --------------------------------------------------------------------------------------------------- validate
@torch.no_grad()
def evaluate(model: nn.Module, loader: Any, ctx: DistContext, autocast: Callable, limit: int | None) -> dict:
    """Top-1/top-5 (top-k capped at the class count) and loss, summed exactly over ranks."""
    model.eval()
    correct1 = correct5 = loss_sum = 0.0
    n = 0
    for i, (x, y) in enumerate(loader):
        if limit is not None and i >= limit:
            break
        x, y = x.to(ctx.device, non_blocking=True), y.to(ctx.device, non_blocking=True)
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
    correct1, correct5, loss_sum, total = ctx.all_sum([correct1, correct5, loss_sum, float(n)])
    total = max(total, 1.0)
    return {'top1': 100.0 * correct1 / total, 'top5': 100.0 * correct5 / total, 'loss': loss_sum / total}


def validate(run: Run) -> tuple[dict, dict]:
    """BN statistics across ranks, then the raw and EMA models on the validation split (empty without one)."""
    from timm.utils import distribute_bn

    cfg, ctx = run.cfg, run.ctx
    metrics: dict[str, Any] = {}
    ema_metrics: dict[str, Any] = {}
    if ctx.distributed and cfg.dist_bn in ('reduce', 'broadcast'):
        distribute_bn(run.model, ctx.world_size, cfg.dist_bn == 'reduce')
        if run.ema is not None:
            distribute_bn(run.ema.module, ctx.world_size, cfg.dist_bn == 'reduce')
    if run.val_loader is not None:
        metrics = evaluate(run.model, run.val_loader, ctx, run.autocast, cfg.limit_val_batches)
        if run.ema is not None:
            ema_metrics = evaluate(run.ema.module, run.val_loader, ctx, run.autocast, cfg.limit_val_batches)
    return metrics, ema_metrics


# ------------------------------------------------------------------------------------------------------- save
def save(run: Run, record: dict, is_best: bool, is_best_ema: bool) -> None:
    """Rank 0: weights first, then the log line, the state last, so the state never points past the weights."""
    cfg, out_dir, done = run.cfg, run.out_dir, record['epoch']
    ema_module = run.ema.module if run.ema is not None else None
    meta = {'model': cfg.model, 'epoch': done, 'num_classes': run.num_classes}
    save_weights(run.model, out_dir / 'last.safetensors', {**meta, 'top1': record['val_top1']})
    run.paths['last'] = str(out_dir / 'last.safetensors')
    if ema_module is not None:
        save_weights(ema_module, out_dir / 'last_ema.safetensors', {**meta, 'top1': record['ema_top1']})
        run.paths['last_ema'] = str(out_dir / 'last_ema.safetensors')
    if is_best:
        save_weights(run.model, out_dir / 'best.safetensors', {**meta, 'top1': record['val_top1']})
        run.paths['best'] = str(out_dir / 'best.safetensors')
    if is_best_ema:
        save_weights(ema_module, out_dir / 'best_ema.safetensors', {**meta, 'top1': record['ema_top1']})
        run.paths['best_ema'] = str(out_dir / 'best_ema.safetensors')
    with open(out_dir / 'log.jsonl', 'a') as f:
        f.write(json.dumps(record) + '\n')
    snapshot = {
        'version': STATE_VERSION,
        'epoch': done,
        'num_updates': run.num_updates,
        'model': run.model.state_dict(),
        'ema': ema_module.state_dict() if ema_module is not None else None,
        'optimizer': run.optimizer.state_dict(),
        'scheduler': run.scheduler.state_dict(),
        'scaler': run.scaler.state_dict() if run.scaler is not None else None,
        'best': dict(run.best),
        'rng': rng_state(),
        'config': json.loads(json.dumps(asdict(cfg), default=str)),
    }
    save_state(snapshot, out_dir / STATE_FILE)
    run.paths['state'] = str(out_dir / STATE_FILE)


def _fmt(v: float | None) -> str:
    return '-' if v is None else f'{v:.2f}'


# ------------------------------------------------------------------------------------------------------ train
def _run_epoch(run: Run, epoch: int) -> dict:
    stats = train_epoch(run, epoch)
    metrics, ema_metrics = validate(run)
    run.scheduler.step(epoch + 1, metrics.get('top1'))
    done, best = epoch + 1, run.best
    is_best = bool(metrics) and (best['top1'] is None or metrics['top1'] > best['top1'])
    is_best_ema = bool(ema_metrics) and (best['ema_top1'] is None or ema_metrics['top1'] > best['ema_top1'])
    if is_best:
        best.update(top1=metrics['top1'], top5=metrics['top5'], epoch=done)
    if is_best_ema:
        best.update(ema_top1=ema_metrics['top1'], ema_epoch=done)
    record = {
        'epoch': done,
        'train_loss': stats['train_loss'],
        'lr': stats['lr'],
        'val_top1': metrics.get('top1'),
        'val_top5': metrics.get('top5'),
        'val_loss': metrics.get('loss'),
        'ema_top1': ema_metrics.get('top1'),
        'ema_top5': ema_metrics.get('top5'),
        'img_per_s': stats['seen'] / max(stats['train_time'], 1e-9),
        'time': time.time() - stats['start'],
        'updates': run.num_updates,
    }
    if run.ctx.is_main:
        save(run, record, is_best, is_best_ema)
        _logger.info(
            'epoch %d/%d loss %.4f lr %.3g top1 %s ema %s %.0f img/s',
            done,
            run.cfg.epochs,
            record['train_loss'],
            record['lr'],
            _fmt(record['val_top1']),
            _fmt(record['ema_top1']),
            record['img_per_s'],
        )
    return record


def train(cfg: TrainConfig) -> dict:
    """Train ``cfg.model`` on ``cfg.data_dir`` and return a summary.

    Summary keys: ``best_top1``/``best_top5``/``best_epoch`` (raw model), ``best_ema_top1``/``best_ema_epoch``,
    ``last_top1``/``last_ema_top1``, paths ``best``, ``best_ema``, ``last``, ``last_ema``, ``state``, ``log``
    (``None`` where not written), ``epochs`` (epochs completed in total) and ``epochs_run`` (in this call).
    """
    check_config(cfg)
    ctx = init_distributed(cfg.device)
    if cfg.deterministic:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)
    elif ctx.device.type == 'cuda':
        torch.backends.cudnn.benchmark = True
    if ctx.is_main:
        Path(cfg.output).mkdir(parents=True, exist_ok=True)
    try:
        path = resume_path(cfg)
        state = load_state(path) if path else None  # fail before any data/model work
        run = build(cfg, ctx)
        resume(run, state, path)
        end_epoch = cfg.epochs if cfg.stop_epoch is None else min(cfg.epochs, cfg.stop_epoch)
        last: dict[str, Any] = {}
        for epoch in range(run.start_epoch, end_epoch):
            last = _run_epoch(run, epoch)
        if ctx.distributed:
            dist.barrier()
        best = run.best
        return {
            'best_top1': best['top1'],
            'best_top5': best['top5'],
            'best_epoch': best['epoch'],
            'best_ema_top1': best['ema_top1'],
            'best_ema_epoch': best['ema_epoch'],
            'last_top1': last.get('val_top1'),
            'last_ema_top1': last.get('ema_top1'),
            **run.paths,
            'epochs': max(run.start_epoch, end_epoch),
            'epochs_run': max(0, end_epoch - run.start_epoch),
            'output': str(run.out_dir),
        }
    finally:
        ctx.close()
