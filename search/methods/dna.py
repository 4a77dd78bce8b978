"""DNA: block-wise distillation of an MBConv supernet from a teacher, exhaustive rating, exact constrained search.

Paper: "DNA Family: Boosting Weight-Sharing NAS with Block-Wise Supervisions" (arXiv 2403.01326), sections 3.3
and 4.3; decisions in docs/search.md. Three stages, each resumable and each a function of this module:

1. :func:`train_supernet` - every block of the supernet learns to reproduce the teacher's block output from the
   teacher's previous block output (MSE, Eq. 5/6); one uniformly sampled path per cell and step, Adam with the
   paper's per-block learning rates (0.002 for the first and last block, 0.005 otherwise) decayed by 0.9 each
   epoch, weight decay 1e-4 without decay on BN and biases. Blocks are independent: ``blocks=[k]`` trains one
   (independent jobs); by default all are trained together, sharing one teacher forward per batch.
2. :func:`rate_blocks` - every candidate of a block (input width x cell x ops) is scored by the relative L1 of
   Eq. 7 (mean |Y - Y_hat| / std(Y)) on the held-out split, after BN recalibration on training images, in DFS order
   with prefix sharing (Alg. 1; ``search.strategies.traversal``). Cached per block on disk.
3. :func:`search` - the summed score is minimised under a FLOPs, params or latency budget by an exact branch and
   bound (``search.strategies.budgeted``), costs counted on the actual layers; the best ``top_k`` architectures are
   written as ``mbconv`` specs that ``timm.create_model('mbconv', spec=...)`` builds.

Decisions where the paper is silent or the official code differs (docs/search.md lists them all): the teacher's BN
statistics are re-estimated at the search resolution and then frozen (the code runs the teacher in train mode,
so its targets depend on the batch); all cells of a block are trained in every step, each on its own sampled
path ("in parallel", section 3.3); adapters instead of teacher-width boundary layers (search/spaces/mbconv.py).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from .. import data as data_lib
from .. import engine
from ..emit import write_spec
from ..spaces.mbconv import BlockChoice, MBConvSpace, MBConvSupernet, choice_cost, fixed_cost, get_space
from ..strategies.traversal import dfs_paths, recalibrate_bn
from .teacher import BlockTeacher, build_teacher

__all__ = [
    'PAPER_FLOPS_FACTOR',
    'DNAConfig',
    'build_supernet',
    'rate_blocks',
    'run',
    'search',
    'train_supernet',
]

#: The DNA paper's FLOPs are conv + FC MACs x ~1.034 (BN/activation work; zoo/catalog.py DNA_RULE).
PAPER_FLOPS_FACTOR = 1.034


@dataclass
class DNAConfig:
    """Every option of a DNA run (a YAML file of configs/search/ maps onto it; CLI flags override)."""

    data_dir: str = ''
    output: str = 'runs/dna'
    space: str = 'dna'
    teacher: str = 'tf_efficientnet_b7'
    teacher_pretrained: bool = True
    teacher_split: str = 'auto'
    teacher_kwargs: dict = field(default_factory=dict)  # e.g. {'spec': {...}} for a zoo 'mbconv' teacher (DNA+)
    teacher_checkpoint: str | None = None  # safetensors weights for the teacher (DNA+: the retrained generation)
    teacher_bn: str = 'recalibrate'  # 'recalibrate' (then frozen), 'eval' (as loaded) or 'train' (official code)
    img_size: int = 224
    epochs: int = 20
    batch_size: int = 512  # global, over all ranks and accumulation steps (official: 64 x 8 GPUs)
    grad_accum: int = 1
    lr: tuple[float, ...] = (0.002, 0.005, 0.005, 0.005, 0.005, 0.002)
    lr_decay: float = 0.9
    weight_decay: float = 1e-4
    blocks: tuple[int, ...] | None = None
    all_cells: bool = True
    seed: int = 42
    amp: bool = True
    compile_teacher: bool = False
    workers: int = 8
    ckpt_every: int = 500
    holdout_per_class: int = 50
    calib_batches: int = 1
    rating_images: int = 1024
    rating_batch: int = 128
    metric: str = 'flops'
    budget: float | None = None
    top_k: int = 5
    latency_batch: int = 1
    device: str = 'auto'
    tensorboard: bool = False
    train_aug: dict = field(default_factory=lambda: {'color_jitter': 0.4, 're_prob': 0.5, 're_mode': 'pixel'})

    def __post_init__(self) -> None:
        self.lr = tuple(float(x) for x in (self.lr if isinstance(self.lr, (list, tuple)) else [self.lr]))
        if self.blocks is not None:
            self.blocks = tuple(int(b) for b in self.blocks)
        if self.teacher_bn not in ('recalibrate', 'eval', 'train'):
            raise ValueError(f'teacher_bn {self.teacher_bn!r}: expected "recalibrate", "eval" or "train"')
        if self.metric not in ('flops', 'macs', 'params', 'latency'):
            raise ValueError(f'metric {self.metric!r}: expected "flops", "macs", "params" or "latency"')

    @property
    def out(self) -> Path:
        return Path(self.output)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


# -- building -----------------------------------------------------------------------------------------------------
def _space(cfg: DNAConfig) -> MBConvSpace:
    """The configured space at the configured resolution (costs depend on it)."""
    space = get_space(cfg.space)
    return replace(space, img_size=cfg.img_size) if space.img_size != cfg.img_size else space


def build_supernet(
    cfg: DNAConfig, device: torch.device, trainable_teacher: bool = False
) -> tuple[MBConvSpace, BlockTeacher, MBConvSupernet]:
    """Space, teacher and supernet, with the teacher's stages checked against the space's blocks."""
    space = _space(cfg)
    torch.manual_seed(engine.derive_seed(cfg.seed, 'teacher-init'))  # a teacher without weights is still reproducible
    teacher = build_teacher(
        cfg.teacher,
        pretrained=cfg.teacher_pretrained,
        split=cfg.teacher_split,
        checkpoint=cfg.teacher_checkpoint,
        trainable=trainable_teacher,
        **cfg.teacher_kwargs,
    ).to(device)
    channels, reductions = teacher.probe(cfg.img_size)
    if reductions != space.reductions():
        raise ValueError(
            f'teacher {cfg.teacher} ends its blocks at strides {reductions} (boundaries {teacher.boundaries}), but '
            f'space {space.name!r} has blocks at strides {space.reductions()}: pick a teacher with matching stages '
            '(or a teacher_split that gives them)'
        )
    torch.manual_seed(engine.derive_seed(cfg.seed, 'init'))
    supernet = MBConvSupernet(space, channels).to(device)
    return space, teacher, supernet


def _block_params(supernet: MBConvSupernet, k: int) -> list[nn.Parameter]:
    mods: list[nn.Module] = [supernet.blocks[k], supernet.in_adapters[k], supernet.out_adapters[k]]
    if k == 0:
        mods += [supernet.conv_stem, supernet.bn1, supernet.ds]
    return [p for m in mods for p in m.parameters()]


def block_lrs(lr: Sequence[float], num_blocks: int) -> list[float]:
    """One learning rate per block; a list of another length is read as the paper's rule: ``lr[0]`` for the first
    and last block, ``lr[1]`` (or ``lr[0]``) for the others (0.002 / 0.005 in DNA; the code also gives the last 0.002).
    """
    if len(lr) == num_blocks:
        return list(lr)
    inner = lr[1] if len(lr) > 1 else lr[0]
    return [lr[0] if k in (0, num_blocks - 1) else inner for k in range(num_blocks)]


def _optimizer(cfg: DNAConfig, supernet: MBConvSupernet, blocks: Sequence[int]) -> torch.optim.Optimizer:
    """Adam, one pair of parameter groups per block (its own lr; no weight decay on BN weights and biases)."""
    lrs = block_lrs(cfg.lr, len(supernet.space.blocks))
    groups = []
    for k in blocks:
        params = _block_params(supernet, k)
        decay = [p for p in params if p.ndim > 1]
        no_decay = [p for p in params if p.ndim <= 1]
        groups.append({'params': decay, 'lr': lrs[k], 'weight_decay': cfg.weight_decay, 'block': k})
        groups.append({'params': no_decay, 'lr': lrs[k], 'weight_decay': 0.0, 'block': k})
    return torch.optim.Adam(groups, eps=1e-8)


def _train_loader(
    cfg: DNAConfig, split: dict, ctx: engine.DistContext, epoch: int, start: int, transform: Any
) -> DataLoader:
    base = data_lib.image_folder(Path(cfg.data_dir) / 'train', transform)
    dataset = data_lib.SeededSamples(base, split['train'], cfg.seed)
    sampler = data_lib.GlobalBatchSampler(
        len(dataset),
        cfg.batch_size,
        cfg.seed,
        epoch,
        ctx.rank,
        ctx.world_size,
        cfg.grad_accum,
        start_step=start,
    )
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=cfg.workers,
        pin_memory=ctx.device.type == 'cuda',
        persistent_workers=False,
    )


@functools.lru_cache(maxsize=4)
def _eval_folder(root: str, img_size: int) -> Any:
    """The training folder with the eval transform, scanned once per process (ImageNet has 1.28M files)."""
    return data_lib.image_folder(root, data_lib.build_transform(img_size, training=False))


def _eval_batches(cfg: DNAConfig, indices: Sequence[int], device: torch.device) -> list[torch.Tensor]:
    """Images (eval transform: resize + center crop) of the training folder at ``indices``, batched."""
    base = _eval_folder(str(Path(cfg.data_dir) / 'train'), cfg.img_size)
    subset = torch.utils.data.Subset(base, list(indices))
    loader = DataLoader(subset, batch_size=cfg.rating_batch, num_workers=min(cfg.workers, 4), shuffle=False)
    return [x.to(device, non_blocking=True) for x, _ in loader]


def _split(cfg: DNAConfig) -> dict:
    return data_lib.holdout_split(
        Path(cfg.data_dir) / 'train', cfg.holdout_per_class, cfg.seed, cfg.out / 'holdout_split.json'
    )


def _prepare_teacher(cfg: DNAConfig, teacher: BlockTeacher, split: dict, device: torch.device) -> None:
    if cfg.teacher_bn == 'recalibrate':
        n = max(1, cfg.calib_batches) * cfg.rating_batch
        g = engine.generator(cfg.seed, 'teacher-calibration')
        pick = torch.randperm(len(split['train']), generator=g)[:n].tolist()
        teacher.recalibrate_bn(_eval_batches(cfg, [split['train'][i] for i in pick], device))
    if cfg.teacher_bn == 'train':
        teacher.train()
    else:
        teacher.eval()


def sample_paths(
    space: MBConvSpace, blocks: Sequence[int], seed: int, step: int, all_cells: bool
) -> list[tuple[int, int, BlockChoice]]:
    """The paths of one step: ``(block, in_width, choice)``, a pure function of (seed, step) on every rank."""
    out = []
    for k in blocks:
        block = space.blocks[k]
        g = engine.generator(seed, 'path', k, step)
        widths = space.in_widths(k)
        cells = range(len(block.cells)) if all_cells else [int(torch.randint(len(block.cells), (1,), generator=g))]
        for c in cells:
            w = widths[int(torch.randint(len(widths), (1,), generator=g))]
            idx = torch.randint(len(block.ops), (block.cells[c].layers,), generator=g).tolist()
            out.append((k, w, BlockChoice(c, tuple(block.ops[i] for i in idx))))
    return out


class DistillRunner(nn.Module):
    """What DDP wraps for DNA: the frozen teacher and the supernet; ``forward`` returns one MSE per path (Eq. 5)."""

    def __init__(self, teacher: BlockTeacher, supernet: MBConvSupernet) -> None:
        super().__init__()
        self.teacher = teacher
        self.supernet = supernet

    def forward(self, image: torch.Tensor, paths: list) -> list[torch.Tensor]:
        with torch.no_grad():
            feats = self.teacher(image)
        losses = []
        for k, w, choice in paths:
            x = image if k == 0 else feats[k - 1]
            y = self.supernet.forward_block(k, x, w, choice)
            losses.append(F.mse_loss(y.float(), feats[k].float()))
        return losses

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """What a checkpoint keeps: the supernet (the teacher is rebuilt from its name)."""
        return {f'supernet.{k}': v for k, v in self.supernet.state_dict().items()}


class DistillObjective:
    """DNA's training objective: the pieces of :func:`train_supernet` that DNA++ replaces."""

    name = 'dna'

    def runner(self, cfg: DNAConfig, teacher: BlockTeacher, supernet: MBConvSupernet) -> nn.Module:
        return DistillRunner(teacher, supernet)

    def optimizer(self, cfg: DNAConfig, runner: nn.Module, blocks: Sequence[int], steps_per_epoch: int) -> tuple:
        """Adam + timm's step schedule (x ``lr_decay`` per epoch); returns (optimizer, scheduler, per_step)."""
        from timm.scheduler import StepLRScheduler

        optimizer = _optimizer(cfg, runner.supernet, blocks)
        return optimizer, StepLRScheduler(optimizer, decay_t=1, decay_rate=cfg.lr_decay), False

    def transform(self, cfg: DNAConfig) -> Any:
        return data_lib.build_transform(cfg.img_size, training=True, **cfg.train_aug)

    def teacher_trainable(self, cfg: DNAConfig) -> bool:
        return False

    def rating_head(self, runner: nn.Module, k: int, cell: int) -> nn.Module:
        """What follows a rated path: the cell's output adapter to the teacher's width."""
        return runner.supernet.out_adapters[k][cell]

    def rating_target(self, runner: nn.Module, k: int, feature: torch.Tensor) -> torch.Tensor:
        return feature


def train_supernet(cfg: DNAConfig, ctx: engine.DistContext, resume: bool = False, objective: Any = None) -> Path:
    """Train the supernet; returns the final checkpoint. ``resume`` continues from ``<output>/checkpoints/last.pt``.

    ``objective`` supplies the loss module, optimizer and augmentation (:class:`DistillObjective` by default; DNA++
    passes its self-supervised one); the loop, data order, path sampling and checkpoints are shared.
    """
    objective = objective or DistillObjective()
    out = cfg.out
    ckpt_path = checkpoint_path(cfg)
    space, teacher, supernet = build_supernet(cfg, ctx.device, trainable_teacher=objective.teacher_trainable(cfg))
    blocks = list(cfg.blocks) if cfg.blocks is not None else list(range(len(space.blocks)))
    bad = [k for k in blocks if not 0 <= k < len(space.blocks)]
    if bad:
        raise ValueError(f'blocks {bad} do not exist: space {space.name!r} has blocks 0..{len(space.blocks) - 1}')
    split = _split(cfg) if ctx.is_main else None
    ctx.barrier()
    split = split or _split(cfg)
    if not objective.teacher_trainable(cfg):
        _prepare_teacher(cfg, teacher, split, ctx.device)
    if cfg.compile_teacher:
        teacher.model = torch.compile(teacher.model)
    runner = objective.runner(cfg, teacher, supernet).to(ctx.device)
    steps_per_epoch = len(split['train']) // cfg.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f'{len(split["train"])} training images cannot fill one batch of {cfg.batch_size}')
    optimizer, scheduler, per_step = objective.optimizer(cfg, runner, blocks, steps_per_epoch)
    total = steps_per_epoch * cfg.epochs
    step = 0
    if resume and ckpt_path.is_file():
        state = engine.load_checkpoint(ckpt_path, ctx.device)
        written = json.loads(state['config'])
        if written['space'] != cfg.space or state.get('objective') != objective.name:
            raise ValueError(
                f'{ckpt_path} was written by {state.get("objective")!r} for space {written["space"]!r}, '
                f'not by {objective.name!r} for {cfg.space!r}'
            )
        missing, unexpected = runner.load_state_dict(state['model'], strict=False)
        if unexpected or [m for m in missing if m in runner.trainable_state()]:
            raise RuntimeError(f'{ckpt_path} does not fit the supernet: unexpected {unexpected[:5]}')
        optimizer.load_state_dict(state['optimizer'])
        scheduler.load_state_dict(state['scheduler'])
        step = int(state['step'])
    elif resume and ctx.is_main:
        print(f'no checkpoint at {ckpt_path}: starting from scratch')
    model: nn.Module = runner
    if ctx.distributed:
        ids = [ctx.device.index] if ctx.device.type == 'cuda' else None
        model = nn.parallel.DistributedDataParallel(runner, device_ids=ids, find_unused_parameters=True)
    log = engine.JsonlLogger(out / 'train_log.jsonl', ctx.is_main, cfg.tensorboard)
    bar = engine.progress(total=total, initial=step, enabled=ctx.is_main, desc=f'{objective.name} supernet')
    supernet.train()
    if objective.teacher_trainable(cfg):
        teacher.train()
    elif cfg.teacher_bn != 'train':
        teacher.eval()
    while step < total:
        epoch, start = divmod(step, steps_per_epoch)
        if not per_step:
            scheduler.step(epoch)
        loader = _train_loader(cfg, split, ctx, epoch, start, objective.transform(cfg))
        it = iter(loader)
        for _ in range(start, steps_per_epoch):
            if per_step:
                scheduler.step_update(step)
            timing: dict[str, float] = {}
            engine.reseed_step(cfg.seed, step, ctx.rank)
            paths = sample_paths(space, blocks, cfg.seed, step, cfg.all_cells)
            block_losses = None
            t0 = time.perf_counter()
            for a in range(cfg.grad_accum):
                with engine.timer(timing, 'data_s', ctx.device):
                    image, _ = next(it)
                    image = _to_device(image, ctx.device)
                sync = a == cfg.grad_accum - 1 or not ctx.distributed
                with engine.timer(timing, 'compute_s', ctx.device):
                    no_sync = model.no_sync() if not sync else contextlib.nullcontext()
                    with no_sync, engine.autocast(ctx.device, cfg.amp):
                        losses = model(image, paths)
                        loss = torch.stack(losses).sum() / cfg.grad_accum
                    loss.backward()
                parts = torch.stack([x.detach().float().cpu() for x in losses]) / cfg.grad_accum
                block_losses = parts if block_losses is None else block_losses + parts
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if ctx.device.type == 'cuda':
                torch.cuda.synchronize(ctx.device)
            step += 1
            elapsed = time.perf_counter() - t0
            if ctx.is_main:
                named = getattr(runner, 'loss_names', None)
                names = named(paths) if named else [f'loss_block{k}' for k, _, _ in paths]
                per_block: dict[str, float] = {}
                for name, value in zip(names, block_losses.tolist(), strict=True):
                    per_block[name] = per_block.get(name, 0.0) + value
                log.log(
                    step=step,
                    epoch=epoch,
                    loss=float(block_losses.sum()),
                    lr=[g['lr'] for g in optimizer.param_groups[::2]],
                    img_per_s=cfg.batch_size / elapsed,
                    step_s=elapsed,
                    **per_block,
                    **timing,
                )
                bar.set_postfix(loss=f'{float(block_losses.sum()):.4f}', epoch=epoch)
            bar.update(1)
            if step % cfg.ckpt_every == 0 or step % steps_per_epoch == 0 or step == total:
                if ctx.is_main:
                    state = {
                        'step': step,
                        'epoch': epoch,
                        'objective': objective.name,
                        'model': runner.trainable_state(),
                        'optimizer': optimizer.state_dict(),
                        'scheduler': scheduler.state_dict(),
                        'config': cfg.to_json(),
                    }
                    engine.save_checkpoint(state, ckpt_path)
                ctx.barrier()
                engine.maybe_fault(step)
    bar.close()
    log.close()
    if ctx.is_main and not ckpt_path.is_file():
        raise RuntimeError(f'{ckpt_path} is missing')
    return ckpt_path


def _to_device(x: Any, device: torch.device) -> Any:
    if isinstance(x, (list, tuple)):
        return type(x)(_to_device(v, device) for v in x)
    return x.to(device, non_blocking=True)


def checkpoint_path(cfg: DNAConfig) -> Path:
    """``checkpoints/last.pt`` for a run over all blocks; ``checkpoints/blocks<k>[-<j>...].pt`` for a block job."""
    if cfg.blocks is None:
        return cfg.out / 'checkpoints' / 'last.pt'
    return cfg.out / 'checkpoints' / f'blocks{"-".join(str(k) for k in sorted(cfg.blocks))}.pt'


def _block_prefixes(k: int) -> tuple[str, ...]:
    prefixes = (f'supernet.blocks.{k}.', f'supernet.in_adapters.{k}.', f'supernet.out_adapters.{k}.')
    if k == 0:
        prefixes += ('supernet.conv_stem.', 'supernet.bn1.', 'supernet.ds.')
    return prefixes


def _merged_state(cfg: DNAConfig, device: torch.device, num_blocks: int) -> tuple[dict, list[Path]]:
    """One state from ``last.pt``, or from the block jobs' checkpoints (each contributes the blocks it trained)."""
    folder = cfg.out / 'checkpoints'
    if (folder / 'last.pt').is_file():
        return engine.load_checkpoint(folder / 'last.pt', device), [folder / 'last.pt']
    files = sorted(folder.glob('blocks*.pt'))
    if not files:
        raise FileNotFoundError(f'no supernet checkpoint in {folder} (last.pt or blocks<k>.pt): train first')
    model: dict[str, torch.Tensor] = {}
    covered: dict[int, Path] = {}
    steps = []
    for path in files:
        state = engine.load_checkpoint(path, device)
        blocks = json.loads(state['config'])['blocks']
        for k in blocks:
            if k in covered:
                raise ValueError(f'block {k} was trained by both {covered[k].name} and {path.name}')
            covered[k] = path
            model.update({n: t for n, t in state['model'].items() if n.startswith(_block_prefixes(k))})
        steps.append(int(state['step']))
    missing = [k for k in range(num_blocks) if k not in covered]
    if missing:
        raise FileNotFoundError(f'blocks {missing} have no checkpoint in {folder} (found {[f.name for f in files]})')
    return {'model': model, 'step': sum(steps), 'objective': state.get('objective')}, files


def load_trained(
    cfg: DNAConfig, ctx: engine.DistContext, checkpoint: Path | None = None, objective: Any = None
) -> tuple:
    """(space, teacher, runner, state) of a trained supernet, in eval mode.

    Reads ``checkpoint`` if given, else ``last.pt``, else merges the checkpoints of independent block jobs.
    """
    objective = objective or DistillObjective()
    space, teacher, supernet = build_supernet(cfg, ctx.device, trainable_teacher=objective.teacher_trainable(cfg))
    if checkpoint is not None:
        state, files = engine.load_checkpoint(checkpoint, ctx.device), [checkpoint]
    else:
        state, files = _merged_state(cfg, ctx.device, len(space.blocks))
    runner = objective.runner(cfg, teacher, supernet).to(ctx.device)
    missing, unexpected = runner.load_state_dict(state['model'], strict=False)
    missing = [m for m in missing if m in runner.trainable_state()]
    if unexpected or missing:
        names = ', '.join(str(f) for f in files)
        raise RuntimeError(f'{names} does not fit this supernet: missing {missing[:5]}, unexpected {unexpected[:5]}')
    return space, teacher, runner.eval(), state


# -- 2. rating ----------------------------------------------------------------------------------------------------
def _rating_fingerprint(cfg: DNAConfig, state: dict) -> str:
    keys = ('space', 'teacher', 'teacher_bn', 'img_size', 'seed', 'calib_batches', 'rating_images')
    return json.dumps({'step': int(state['step']), **{k: getattr(cfg, k) for k in keys}}, sort_keys=True)


@torch.no_grad()
def rate_blocks(
    cfg: DNAConfig, ctx: engine.DistContext, checkpoint: Path | None = None, objective: Any = None
) -> dict[int, list[dict]]:
    """Score every candidate of every block; results cached as ``<output>/ratings/block<k>.json``."""
    objective = objective or DistillObjective()
    if checkpoint is None and cfg.blocks is not None and checkpoint_path(cfg).is_file():
        checkpoint = checkpoint_path(cfg)  # a block job rates the blocks it trained
    space, teacher, runner, state = load_trained(cfg, ctx, checkpoint, objective)
    supernet = runner.supernet
    split = _split(cfg)
    if not objective.teacher_trainable(cfg):
        _prepare_teacher(cfg, teacher, split, ctx.device)
    teacher.eval()
    fingerprint = _rating_fingerprint(cfg, state)
    g = engine.generator(cfg.seed, 'rating-images')
    holdout = [split['holdout'][i] for i in torch.randperm(len(split['holdout']), generator=g).tolist()]
    holdout = holdout[: cfg.rating_images]
    g = engine.generator(cfg.seed, 'rating-calibration')
    calib_idx = torch.randperm(len(split['train']), generator=g)[: cfg.calib_batches * cfg.rating_batch].tolist()
    eval_images = _eval_batches(cfg, holdout, ctx.device)
    calib_images = _eval_batches(cfg, [split['train'][i] for i in calib_idx], ctx.device)
    with engine.autocast(ctx.device, cfg.amp):
        eval_feats = [[f.float() for f in teacher(x)] for x in eval_images]
        calib_feats = [[f.float() for f in teacher(x)] for x in calib_images]
    blocks = list(cfg.blocks) if cfg.blocks is not None else list(range(len(space.blocks)))
    results: dict[int, list[dict]] = {}
    for k in blocks:
        path = cfg.out / 'ratings' / f'block{k}.json'
        if path.is_file():
            doc = json.loads(path.read_text())
            if doc.get('fingerprint') == fingerprint:
                results[k] = doc['candidates']
                continue
        start = time.perf_counter()
        targets = [objective.rating_target(runner, k, f[k]).float() for f in eval_feats]
        heads = [objective.rating_head(runner, k, c) for c in range(len(space.blocks[k].cells))]
        rows = _rate_block(supernet, space, k, eval_images, calib_images, eval_feats, calib_feats, targets, heads, ctx)
        rows = [r for part in ctx.all_gather_object(rows) for r in part]
        rows.sort(key=lambda r: (r['in_width'], r['cell'], r['ops']))
        results[k] = rows
        if ctx.is_main:
            path.parent.mkdir(parents=True, exist_ok=True)
            doc = {'fingerprint': fingerprint, 'block': k, 'seconds': time.perf_counter() - start, 'candidates': rows}
            tmp = path.with_suffix('.tmp')
            tmp.write_text(json.dumps(doc) + '\n')
            tmp.replace(path)
    return results


def _rate_block(
    supernet: MBConvSupernet,
    space: MBConvSpace,
    k: int,
    eval_images: list[torch.Tensor],
    calib_images: list[torch.Tensor],
    eval_feats: list[list[torch.Tensor]],
    calib_feats: list[list[torch.Tensor]],
    targets: list[torch.Tensor],
    heads: list[nn.Module],
    ctx: engine.DistContext,
) -> list[dict]:
    """This rank's share of block ``k``: DFS subtrees (in_width, cell, first op) dealt round-robin to ranks.

    ``heads[c]`` maps a path's output to what is compared with ``targets`` (the teacher feature for DNA, the
    projected teacher feature for DNA++); its BN statistics are recalibrated per path like the path's own.
    """
    block = space.blocks[k]
    numel = sum(t.numel() for t in targets)
    mean = sum(t.sum() for t in targets) / numel
    std = math.sqrt(float(sum(((t - mean) ** 2).sum() for t in targets) / max(numel - 1, 1)))
    rows = []
    subtree = 0
    for w in space.in_widths(k):
        if k == 0:
            stem = nn.Sequential(supernet.conv_stem, supernet.bn1, supernet.ds)
            recalibrate_bn(stem, calib_images)
            cal_in = [stem(x) for x in calib_images]
            ev_in = [stem(x) for x in eval_images]
        else:
            adapter = supernet.in_adapters[k][str(w)]
            recalibrate_bn(adapter, [f[k - 1] for f in calib_feats])
            cal_in = [adapter(f[k - 1]) for f in calib_feats]
            ev_in = [adapter(f[k - 1]) for f in eval_feats]
        for c, cell_def in enumerate(block.cells):
            cell = supernet.blocks[k][c]
            mine = []
            for op in block.ops:
                if subtree % ctx.world_size == ctx.rank:
                    mine.append(op)
                subtree += 1
            if not mine:
                continue

            def layer(j: int, op: str, cell: nn.Module = cell, w: int = w, width: int = cell_def.width) -> nn.Module:
                return cell.layers[j].choice(w if j == 0 else width, op)

            head = heads[c]
            for ops, cal_out, ev_out in dfs_paths(layer, cell_def.layers, block.ops, cal_in, ev_in, first_ops=mine):
                recalibrate_bn(head, cal_out)
                l1 = mse = 0.0
                for y, t in zip(ev_out, targets, strict=True):
                    pred = head(y).float()
                    l1 += float((pred - t).abs().sum())
                    mse += float(((pred - t) ** 2).sum())
                rows.append(
                    {
                        'in_width': w,
                        'cell': c,
                        'ops': list(ops),
                        'score': l1 / numel / std,
                        'mse': mse / numel,
                    }
                )
    return rows


def cached_ratings(cfg: DNAConfig) -> dict[int, list[dict]]:
    """The ratings on disk (``ratings/block<k>.json``), whichever job wrote them."""
    out = {}
    for path in sorted((cfg.out / 'ratings').glob('block*.json')):
        doc = json.loads(path.read_text())
        out[int(doc['block'])] = doc['candidates']
    return out


# -- 3. search ----------------------------------------------------------------------------------------------------
def _costs(cfg: DNAConfig, space: MBConvSpace, device: torch.device) -> tuple[Any, float]:
    """A cost function for (block, in_width, choice) and the fixed cost, in the units of ``cfg.metric``."""
    if cfg.metric == 'latency':
        from ..spaces.mbconv_latency import LatencyTable

        # measured once per device, batch and torch version; kept next to the ratings for later searches
        table = LatencyTable(space, device, batch=cfg.latency_batch, cache=str(cfg.out / 'latency_table.json'))
        return table.choice_latency, table.fixed_latency()
    scale = PAPER_FLOPS_FACTOR if cfg.metric == 'flops' else 1.0
    index = 1 if cfg.metric == 'params' else 0
    fixed = fixed_cost(space)[index] * scale

    def cost(k: int, w: int, choice: BlockChoice) -> float:
        return choice_cost(space, k, w, choice)[index] * scale

    return cost, fixed


def search(cfg: DNAConfig, ratings: dict[int, list[dict]], device: torch.device | None = None) -> list[dict]:
    """Exact constrained search over the rated blocks; writes ``<output>/arch/top<i>.json`` specs, returns them."""
    from ..strategies.budgeted import Candidate, exact_search

    space = _space(cfg)
    missing = [k for k in range(len(space.blocks)) if k not in ratings]
    if missing:
        raise ValueError(f'blocks {missing} are not rated: a search needs ratings of every block')
    cost, fixed = _costs(cfg, space, device or torch.device('cpu'))
    blocks = []
    for k in range(len(space.blocks)):
        cands = []
        for row in ratings[k]:
            choice = BlockChoice(int(row['cell']), tuple(row['ops']))
            out_w = space.blocks[k].cells[choice.cell].width
            c = cost(k, int(row['in_width']), choice)
            cands.append(Candidate(float(row['score']), c, int(row['in_width']), out_w, choice))
        blocks.append(cands)
    solutions = exact_search(blocks, cfg.budget, k=cfg.top_k, fixed_cost=fixed, start_key=space.ds_width)
    found = []
    for rank, sol in enumerate(solutions, 1):
        arch = [c.payload for c in sol.choices]
        spec = space.to_spec(arch)
        provenance = {
            'method': 'dna',
            'space': space.name,
            'teacher': cfg.teacher,
            'rank': rank,
            'score': sol.score,
            'metric': cfg.metric,
            'cost': sol.cost,
            'budget': cfg.budget,
            'arch': [[c.cell, list(c.ops)] for c in arch],
        }
        write_spec(spec, cfg.out / 'arch' / f'top{rank}.json', **provenance)
        found.append({'spec': spec, **provenance})
    summary = cfg.out / 'search_result.json'
    summary.write_text(json.dumps({'config': json.loads(cfg.to_json()), 'results': found}, indent=1) + '\n')
    return found


def run(
    cfg: DNAConfig,
    ctx: engine.DistContext,
    resume: bool = False,
    stages: Sequence[str] = ('train', 'rate', 'search'),
    objective: Any = None,
) -> list[dict]:
    """The whole DNA pipeline (or some of its stages); returns the found architectures (main process)."""
    found: list[dict] = []
    if 'train' in stages:
        train_supernet(cfg, ctx, resume=resume, objective=objective)
    ratings = rate_blocks(cfg, ctx, objective=objective) if 'rate' in stages or 'search' in stages else {}
    if 'search' in stages and ctx.is_main:
        ratings = {**cached_ratings(cfg), **ratings}  # blocks rated by other (block) jobs
        unrated = [k for k in range(len(get_space(cfg.space).blocks)) if k not in ratings]
        if unrated and cfg.blocks is not None:
            print(f'blocks {unrated} are not rated yet: run `--stage search` once every block job has finished')
            ctx.barrier()
            return found
        found = search(cfg, ratings, ctx.device)
    ctx.barrier()
    return found
