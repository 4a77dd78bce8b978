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
path ("in parallel", section 3.3); adapters instead of teacher-width boundary layers (:class:`DNAAdapters`).
"""

from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from backbones._runtime import atomic_write_json

from .. import data as data_lib
from .. import engine, pipeline
from ..config import ConfigError, SearchConfig
from ..protocols import Found
from ..spaces.mbconv import (
    PAPER_FLOPS_FACTOR,
    BlockChoice,
    MBConvSpace,
    MBConvSupernet,
    choice_cost,
    fixed_cost,
    get_space,
)
from ..strategies.traversal import dfs_paths, recalibrate_bn
from .teacher import BlockTeacher, build_teacher

__all__ = [
    'DNA',
    'PAPER_FLOPS_FACTOR',
    'BlockRater',
    'BudgetedSearcher',
    'DNAAdapters',
    'DNAConfig',
    'build_supernet',
    'cached_ratings',
    'run',
    'search',
    'teacher_features',
]


@dataclass
class DNAConfig(SearchConfig):
    """Every option of a DNA run (a YAML file of configs/search/ maps onto it; CLI flags override)."""

    output: str = 'runs/dna'
    space: str = 'dna'
    teacher: str = 'tf_efficientnet_b7.aa_in1k'  # the official teacher: AutoAugment ImageNet weights, not JFT
    teacher_pretrained: bool = True
    teacher_split: str = 'auto'
    teacher_kwargs: dict = field(default_factory=dict)  # e.g. {'spec': {...}} for a zoo 'mbconv' teacher (DNA+)
    teacher_checkpoint: str | None = None  # safetensors weights for the teacher (DNA+: the retrained generation)
    teacher_bn: str = 'recalibrate'  # 'recalibrate' (then frozen), 'eval' (as loaded) or 'train' (official code)
    lr: tuple[float, ...] = (0.002, 0.005, 0.005, 0.005, 0.005, 0.002)
    lr_decay: float = 0.9
    weight_decay: float = 1e-4
    all_cells: bool = True
    compile_teacher: bool = False
    calib_batches: int = 1
    rating_images: int = 2048  # held-out images kept on the device; the official code rates 19 x 64 x 8 = 9728
    rating_batch: int = 128
    latency_batch: int = 1
    train_aug: dict = field(default_factory=lambda: {'color_jitter': 0.4, 're_prob': 0.5, 're_mode': 'pixel'})

    def __post_init__(self) -> None:
        lr = self.lr if isinstance(self.lr, (list, tuple)) else [self.lr]
        if not lr or any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in lr):
            raise ConfigError(f'lr={self.lr!r}: expected a float or a list of floats (one per block)')
        self.lr = tuple(float(x) for x in lr)
        super().__post_init__()
        if self.teacher_bn not in ('recalibrate', 'eval', 'train'):
            raise ConfigError(f'teacher_bn {self.teacher_bn!r}: expected "recalibrate", "eval" or "train"')
        for name in ('calib_batches', 'rating_images', 'rating_batch', 'latency_batch'):
            if getattr(self, name) < 1:
                raise ConfigError(f'{name} must be >= 1, got {getattr(self, name)}')


# -- building -----------------------------------------------------------------------------------------------------
def _space(cfg: DNAConfig) -> MBConvSpace:
    """The configured space at the configured resolution (costs depend on it)."""
    return get_space(cfg.space, img_size=cfg.img_size)


def build_supernet(
    cfg: DNAConfig, device: torch.device, trainable_teacher: bool = False
) -> tuple[MBConvSpace, BlockTeacher, MBConvSupernet, DNAAdapters]:
    """Space, teacher, supernet and DNA's adapters, with the teacher's stages checked against the space's blocks."""
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
    supernet = MBConvSupernet(space).to(device)
    adapters = DNAAdapters(space, channels).to(device)
    return space, teacher, supernet, adapters


def _adapter(in_chs: int, out_chs: int) -> nn.Sequential:
    """1x1 conv + BN (no activation: MBConv outputs are linear bottlenecks)."""
    return nn.Sequential(nn.Conv2d(in_chs, out_chs, 1, bias=False), nn.BatchNorm2d(out_chs))


class DNAAdapters(nn.Module):
    """DNA's maps between the teacher's widths and the space's, part of the method and of no emitted network.

    The official supernet makes the last layer of each block output the teacher's width and feeds the next block the
    teacher's tensor, so its paths differ from the final networks at every block boundary. Here every layer has its
    final width; ``inputs[k][str(w)]`` maps the teacher's feature ``k - 1`` to block ``k``'s input width ``w`` and
    ``outputs[k][cell]`` maps a cell's output to the teacher's width ``k`` for the loss (1x1 conv + BN, shared by
    all paths of a cell). Block 0 receives the image through the supernet's fixed stem and DS layer.
    """

    def __init__(self, space: MBConvSpace, teacher_channels: Sequence[int]) -> None:
        super().__init__()
        if len(teacher_channels) != len(space.blocks):
            raise ValueError(
                f'space {space.name!r} has {len(space.blocks)} blocks but the teacher gives '
                f'{len(teacher_channels)} features {list(teacher_channels)}'
            )
        self.teacher_channels = list(teacher_channels)
        self.inputs = nn.ModuleList()
        self.outputs = nn.ModuleList()
        for k, block in enumerate(space.blocks):
            widths = space.in_widths(k) if k else ()
            self.inputs.append(nn.ModuleDict({str(w): _adapter(teacher_channels[k - 1], w) for w in widths}))
            self.outputs.append(nn.ModuleList(_adapter(c.width, teacher_channels[k]) for c in block.cells))

    def block_input(self, supernet: MBConvSupernet, k: int, x: torch.Tensor, in_width: int) -> torch.Tensor:
        """The input of block ``k``: the image through stem + DS (k = 0), else the adapted teacher feature."""
        return supernet.stem(x) if k == 0 else self.inputs[k][str(in_width)](x)

    def forward_block(
        self, supernet: MBConvSupernet, k: int, x: torch.Tensor, in_width: int, choice: BlockChoice
    ) -> torch.Tensor:
        """Block ``k`` on a path, mapped to the teacher's width (what the distillation loss compares)."""
        h = self.block_input(supernet, k, x, in_width)
        for layer in supernet.path_layers(k, in_width, choice):
            h = layer(h)
        return self.outputs[k][choice.cell](h)


def _block_params(supernet: MBConvSupernet, adapters: DNAAdapters, k: int) -> list[nn.Parameter]:
    mods: list[nn.Module] = [supernet.blocks[k], adapters.inputs[k], adapters.outputs[k]]
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


def _optimizer(
    cfg: DNAConfig, supernet: MBConvSupernet, adapters: DNAAdapters, blocks: Sequence[int]
) -> torch.optim.Optimizer:
    """Adam, one pair of parameter groups per block (its own lr; no weight decay on BN weights and biases)."""
    lrs = block_lrs(cfg.lr, len(supernet.space.blocks))
    groups = []
    for k in blocks:
        params = _block_params(supernet, adapters, k)
        decay = [p for p in params if p.ndim > 1]
        no_decay = [p for p in params if p.ndim <= 1]
        groups.append({'params': decay, 'lr': lrs[k], 'weight_decay': cfg.weight_decay, 'block': k})
        groups.append({'params': no_decay, 'lr': lrs[k], 'weight_decay': 0.0, 'block': k})
    return torch.optim.Adam(groups, eps=1e-8)


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

    def __init__(self, teacher: BlockTeacher, supernet: MBConvSupernet, adapters: DNAAdapters) -> None:
        super().__init__()
        self.teacher = teacher
        self.supernet = supernet
        self.adapters = adapters

    def forward(self, image: torch.Tensor, paths: list) -> list[torch.Tensor]:
        with torch.no_grad():
            feats = self.teacher(image)
        losses = []
        for k, w, choice in paths:
            x = image if k == 0 else feats[k - 1]
            y = self.adapters.forward_block(self.supernet, k, x, w, choice)
            losses.append(F.mse_loss(y.float(), feats[k].float()))
        return losses

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """What a checkpoint keeps: the supernet and the adapters (the teacher is rebuilt from its name)."""
        out = {f'supernet.{k}': v for k, v in self.supernet.state_dict().items()}
        out.update({f'adapters.{k}': v for k, v in self.adapters.state_dict().items()})
        return out


@torch.no_grad()
def teacher_features(teacher: BlockTeacher, batches: Sequence[torch.Tensor], batch_stats: bool) -> list:
    """The teacher's block features of each batch for rating, in fp32 (autocast off, whatever the run's AMP).

    ``batch_stats`` (``teacher_bn: train``): BN normalises each batch with its own statistics, as the training
    targets did (the official code's per-batch BN), without touching the running statistics.
    """
    bns = [m for m in teacher.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [bn.momentum for bn in bns]
    device = batches[0].device if batches else torch.device('cpu')
    try:
        if batch_stats:
            for bn in bns:
                bn.momentum = 0.0
        teacher.train(batch_stats)
        with torch.autocast(device.type, enabled=False):
            return [[f.float() for f in teacher(x.float())] for x in batches]
    finally:
        for bn, momentum in zip(bns, saved, strict=True):
            bn.momentum = momentum
        teacher.eval()


def _block_prefixes(k: int) -> tuple[str, ...]:
    prefixes = (f'supernet.blocks.{k}.', f'adapters.inputs.{k}.', f'adapters.outputs.{k}.')
    if k == 0:
        prefixes += ('supernet.conv_stem.', 'supernet.bn1.', 'supernet.ds.')
    return prefixes


# -- the method ---------------------------------------------------------------------------------------------------
class DNA:
    """DNA as a :class:`~search.protocols.Method`: block-wise distillation from a frozen teacher.

    Each step trains every block (or the ``--block`` ones) on its own sampled path per cell; the rater scores every
    candidate of every block (:class:`BlockRater`); the searcher is the exact budgeted search
    (:class:`BudgetedSearcher`). DNA++ (:class:`search.methods.dna_pp.DNAPP`) overrides the runner, optimizer,
    augmentation and rating head.
    """

    name = 'dna'
    config_class: type = DNAConfig
    groups_per_lr = 2  # parameter groups per logged learning rate (decay / no-decay pairs)
    schedule_epoch_offset = 1  # the official code steps its scheduler with epochs counted from 1 (docs/search.md)
    zero_grad_to_none = False  # official: gradients zeroed, so Adam keeps moving ops not sampled in a step

    def __init__(self, cfg: DNAConfig) -> None:
        self.cfg = cfg
        self.space = _space(cfg)
        self.num_blocks = len(self.space.blocks)
        self.blocks = list(cfg.blocks) if cfg.blocks is not None else list(range(self.num_blocks))
        bad = [k for k in self.blocks if not 0 <= k < self.num_blocks]
        if bad:
            raise ConfigError(
                f'blocks {bad} do not exist: space {self.space.name!r} has blocks 0..{self.num_blocks - 1}'
            )
        self.teacher: BlockTeacher | None = None
        self.supernet: MBConvSupernet | None = None
        self.runner: nn.Module | None = None

    # -- state
    def teacher_trainable(self) -> bool:
        return False

    def make_runner(self, teacher: BlockTeacher, supernet: MBConvSupernet, adapters: DNAAdapters) -> nn.Module:
        return DistillRunner(teacher, supernet, adapters)

    def build(self, ctx: engine.DistContext, split: dict) -> nn.Module:
        """Teacher (BN prepared on ``split``), supernet and the module DDP wraps."""
        cfg = self.cfg
        _, self.teacher, self.supernet, self.adapters = build_supernet(cfg, ctx.device, self.teacher_trainable())
        if not self.teacher_trainable():
            _prepare_teacher(cfg, self.teacher, split, ctx.device)
        self.runner = self.make_runner(self.teacher, self.supernet, self.adapters).to(ctx.device)
        return self.runner

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return self.runner.trainable_state()

    def train_mode(self) -> None:
        if self.cfg.compile_teacher:
            self.teacher.model = torch.compile(self.teacher.model)
        self.supernet.train()
        if self.teacher_trainable():
            self.teacher.train()
        elif self.cfg.teacher_bn != 'train':
            self.teacher.eval()

    def optimizer(self, steps_per_epoch: int) -> tuple:
        """Adam + timm's step schedule (x ``lr_decay`` per epoch); returns (optimizer, scheduler, per_step)."""
        from timm.scheduler import StepLRScheduler

        optimizer = _optimizer(self.cfg, self.supernet, self.adapters, self.blocks)
        return optimizer, StepLRScheduler(optimizer, decay_t=1, decay_rate=self.cfg.lr_decay), False

    def transform(self) -> Any:
        return data_lib.build_transform(self.cfg.img_size, training=True, **self.cfg.train_aug)

    # -- one step
    def sample_paths(self, step: int) -> list[tuple[int, int, BlockChoice]]:
        return sample_paths(self.space, self.blocks, self.cfg.seed, step, self.cfg.all_cells)

    def train_step(self, images: Any, labels: torch.Tensor, paths: list, ctx: Any) -> dict[str, torch.Tensor]:
        """One loss per path (labels unused: the teacher supervises); one backward of their sum."""
        losses = ctx.model(images, paths)
        ctx.backward(torch.stack(losses).sum())
        out: dict[str, torch.Tensor] = {}
        for (k, _, _), loss in zip(paths, losses, strict=True):
            name = f'loss_block{k}'
            out[name] = out.get(name, 0.0) + loss.detach().float()
        return out

    def after_step(self, step: int) -> None:
        """Nothing: DNA's teacher is frozen."""

    # -- rating and search
    def block_prefixes(self, k: int) -> tuple[str, ...]:
        return _block_prefixes(k)

    def rating_head(self, k: int, cell: int) -> nn.Module:
        """What follows a rated path: the cell's output adapter to the teacher's width."""
        return self.adapters.outputs[k][cell]

    def rating_target(self, k: int, feature: torch.Tensor) -> torch.Tensor:
        return feature

    def rater(self, ctx: engine.DistContext) -> BlockRater:
        return BlockRater(self, ctx)

    def searcher(self, device: torch.device) -> BudgetedSearcher:
        return BudgetedSearcher(self.cfg, device)

    def provenance(self) -> dict[str, Any]:
        return {'teacher': self.cfg.teacher}


# -- 2. rating ----------------------------------------------------------------------------------------------------
class BlockRater:
    """Every candidate of every block scored by the relative L1 of Eq. 7 (DFS with prefix sharing), cached in
    ``ratings/block<k>.json`` under a fingerprint; the supernet and teacher are built only if a block is not cached."""

    kind = 'block'
    keys = ('space', 'teacher', 'teacher_bn', 'img_size', 'seed', 'calib_batches', 'rating_images')

    def __init__(self, method: DNA, ctx: engine.DistContext) -> None:
        self.method, self.cfg, self.ctx = method, method.cfg, ctx
        self._steps: dict[Path, int] = {}

    def fingerprint(self, k: int | None = None) -> str:
        """The rating options and the step of the checkpoint holding block ``k`` (all blocks: ``last.pt``)."""
        path = pipeline.block_checkpoint(self.cfg, 0 if k is None else k)
        if path is None:
            return ''
        if path not in self._steps:
            self._steps[path] = int(engine.load_checkpoint(path)['step'])
        return json.dumps({'step': self._steps[path], **{x: getattr(self.cfg, x) for x in self.keys}}, sort_keys=True)

    def _cached(self, k: int) -> list[dict] | None:
        path = self.cfg.out / 'ratings' / f'block{k}.json'
        if not path.is_file():
            return None
        doc = json.loads(path.read_text())
        return doc['candidates'] if doc.get('fingerprint') == self.fingerprint(k) else None

    def rate(self) -> dict[int, list[dict]] | None:
        """Ratings of every block (this job's blocks rated or read from the cache, the others read from disk);
        ``None`` when some block is not rated yet (block jobs still running)."""
        results: dict[int, list[dict]] = {}
        todo = []
        for k in self.method.blocks:
            rows = self._cached(k)
            if rows is None:
                todo.append(k)
            else:
                results[k] = rows
        if todo:
            results.update(self._rate(todo))
        results = {**cached_ratings(self.cfg), **results}  # blocks rated by other (block) jobs
        if any(k not in results for k in range(self.method.num_blocks)):
            return None
        return results

    @torch.no_grad()
    def _rate(self, blocks: Sequence[int]) -> dict[int, list[dict]]:
        cfg, ctx, method = self.cfg, self.ctx, self.method
        checkpoint = None
        if cfg.blocks is not None and pipeline.checkpoint_path(cfg).is_file():
            checkpoint = pipeline.checkpoint_path(cfg)  # a block job rates the blocks it trained
        pipeline.load_trained(method, ctx, checkpoint)
        teacher, supernet, space = method.teacher, method.supernet, method.space
        split = pipeline.holdout_split(cfg, ctx)
        teacher.eval()
        g = engine.generator(cfg.seed, 'rating-images')
        holdout = [split['holdout'][i] for i in torch.randperm(len(split['holdout']), generator=g).tolist()]
        holdout = holdout[: cfg.rating_images]
        g = engine.generator(cfg.seed, 'rating-calibration')
        calib_idx = torch.randperm(len(split['train']), generator=g)[: cfg.calib_batches * cfg.rating_batch].tolist()
        eval_images = _eval_batches(cfg, holdout, ctx.device)
        calib_images = _eval_batches(cfg, [split['train'][i] for i in calib_idx], ctx.device)
        batch_stats = cfg.teacher_bn == 'train' and not method.teacher_trainable()
        eval_feats = teacher_features(teacher, eval_images, batch_stats)
        calib_feats = teacher_features(teacher, calib_images, batch_stats)
        results: dict[int, list[dict]] = {}
        for k in blocks:
            start = time.perf_counter()
            targets = [method.rating_target(k, f[k]).float() for f in eval_feats]
            heads = [method.rating_head(k, c) for c in range(len(space.blocks[k].cells))]
            rows = _rate_block(
                supernet,
                method.adapters,
                space,
                k,
                eval_images,
                calib_images,
                eval_feats,
                calib_feats,
                targets,
                heads,
                ctx,
            )
            rows = [r for part in ctx.all_gather_object(rows) for r in part]
            rows.sort(key=lambda r: (r['in_width'], r['cell'], r['ops']))
            results[k] = rows
            if ctx.is_main:
                path = cfg.out / 'ratings' / f'block{k}.json'
                path.parent.mkdir(parents=True, exist_ok=True)
                doc = {
                    'fingerprint': self.fingerprint(k),
                    'block': k,
                    'seconds': time.perf_counter() - start,
                    'candidates': rows,
                }
                atomic_write_json(path, doc, indent=None)
        return results


def _rate_block(
    supernet: MBConvSupernet,
    adapters: DNAAdapters,
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
            stem = nn.Sequential(supernet.conv_stem, supernet.bn1, supernet.ds)  # == supernet.stem
            recalibrate_bn(stem, calib_images)
            cal_in = [stem(x) for x in calib_images]
            ev_in = [stem(x) for x in eval_images]
        else:
            adapter = adapters.inputs[k][str(w)]
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


class BudgetedSearcher:
    """The exact k-best search over block ratings under an additive budget (``search.strategies.budgeted``)."""

    def __init__(self, cfg: DNAConfig, device: torch.device) -> None:
        self.cfg, self.device = cfg, device

    def search(
        self, space: MBConvSpace, rated: dict[int, list[dict]], metric: str, budget: float | None, top_k: int
    ) -> list[Found]:
        from dataclasses import replace as _replace

        from ..strategies.budgeted import Candidate, exact_search

        missing = [k for k in range(len(space.blocks)) if k not in rated]
        if missing:
            raise ValueError(f'blocks {missing} are not rated: a search needs ratings of every block')
        cost, fixed = _costs(_replace(self.cfg, metric=metric), space, self.device)
        blocks = []
        for k, block in enumerate(space.blocks):
            # a block without choices (DNA's fixed last block) adds nothing to the score, as in the official code:
            # its score would only reward the previous block for the width it hands on
            no_choice = len(block.cells) == 1 and len(block.ops) == 1
            cands = []
            for row in rated[k]:
                choice = BlockChoice(int(row['cell']), tuple(row['ops']))
                out_w = block.cells[choice.cell].width
                c = cost(k, int(row['in_width']), choice)
                cands.append(
                    Candidate(0.0 if no_choice else float(row['score']), c, int(row['in_width']), out_w, choice)
                )
            blocks.append(cands)
        solutions = exact_search(blocks, budget, k=top_k, fixed_cost=fixed, start_key=space.ds_width)
        found = []
        for sol in solutions:
            choices = [c.payload for c in sol.choices]
            extra = {'choices': [[c.cell, list(c.ops)] for c in choices]}
            found.append(Found(space.encode(choices), sol.score, sol.cost, extra))
        return found


def search(cfg: DNAConfig, ratings: dict[int, list[dict]], device: torch.device | None = None) -> list[dict]:
    """Exact constrained search over the rated blocks; writes ``<output>/arch/top<i>.json`` specs, returns them."""
    return pipeline.search(DNA(cfg), ratings, device)


def run(
    cfg: DNAConfig,
    ctx: engine.DistContext,
    resume: bool = False,
    stages: Sequence[str] = pipeline.STAGES,
) -> list[dict]:
    """The whole DNA pipeline (or some of its stages) on the engine; returns the found architectures (main process)."""
    return pipeline.run(DNA(cfg), ctx, stages=stages, resume=resume)
