"""BossNAS: block-wise self-supervised supernet training by ensemble bootstrapping, population-centre rating.

Paper: Li et al., "BossNAS: Exploring Hybrid CNN-transformers with Block-wisely Self-supervised Neural Architecture
Search", ICCV 2021 (arXiv 2103.12424, sections 3.2-3.3, appendix A.2); official code github.com/changlin31/BossNAS
(read, not copied); the facts and ambiguities are in ../shared/specs/bossnas.md sections 2.1-2.3 and 6.

**Driver.** Blocks are searched greedily: block ``k`` is trained and rated on top of the best paths of blocks
``< k``, so :class:`BossNAS` chains one engine run per block (``OUTPUT/block<k>/``: its own checkpoint, log and
``ratings/block.json``; :func:`search.pipeline.train` is the only training loop). Each block run rebuilds the
optimizer, so the LR cosine (with warm-up), the LARS momentum buffers and the EMA-momentum cosine restart per block,
as in the official code; ``epochs`` is per block. Block ``k`` starts from the weights block ``k - 1`` ended with
(online and target supernets, projectors, predictors). A rerun resumes the unfinished block and skips finished ones.

**Training** (:class:`BossRunner`, one block): online and target supernets (the target a deepcopy without
gradients, EMA of the online weights: ``m = 1 - (1 - ema_base)(cos(pi s / S) + 1) / 2``, 0.99 -> 1 over the
block's ``S`` steps; buffers are the target's own). Per block a projector (per output width a ``channel_fix``
1x1 conv + BN to ``proj_in`` channels, as the official NATS code; HyTra's adapter adds the official per-scale
depthwise downsampler to 1/32, ``HyTraAdapter.channel_fix``; then global pool -> Linear ->
BN1d -> ReLU -> Linear) and a predictor (Linear -> BN1d -> ReLU -> Linear); official sizes 2048 -> 4096 -> 256
and 256 -> 4096 -> 256, configurable so tiny configs stay tiny. Every step samples ``paths`` paths of the block
(``sampling: fair``, FairNAS-style, every option once per decision: official for MBConv and NATS; ``uniform``:
distinct paths, official for HyTra; unset: the space's official one; HyTra refuses ``fair``), path ``i`` gets
view pair ``i mod view_pairs`` (official: one pair per path, but NATS shares one pair among its 8 paths:
``view_pairs: 1``). Target = per view, the mean over paths of the L2-
normalised target projections (Eq. 3); loss = sum over paths of ``(2 - 2 cos)(pred(online(v1_p)), T_v2) + (2 - 2
cos)(pred(online(v2_p)), T_v1)`` (Eq. 4; the official head drops the constant 2). Earlier blocks run along their
best paths with the online weights and gradients, so they keep training (``train_previous: true``, the official
code, spec section 6.5); ``false`` runs them without gradients (the paper's "trained separately").

**Optimizer.** LARS (``timm.optim.Lars``, trust coefficient 0.001, momentum 0.9, weight decay 1e-6); every 1-d
parameter (BN weights and biases, all biases) gets weight decay 0 and no LARS adaptation. The official regex
excludes only BNs named ``bn<i>``, so the BNs inside ``nn.Sequential`` (projector, channel_fix) stay adapted there;
here all are excluded (documented deviation). lr = ``base_lr * batch_size / base_batch`` (4.8 at 4096), cosine to
0 after ``warmup_epochs`` of linear warm-up from ``lr * warmup_ratio``.

**Views** (:class:`MultiViewTransform`): timm's training transform (``view_aug``: random resized crop, flip,
colour jitter) applied independently ``2 * view_pairs`` times per image. The BYOL blur and solarisation are left
out: for 16x16 digits and 32x32 CIFAR they destroy the image (the official CIFAR config uses crop + flip only).

**Rating** (:class:`BlockRater`, specs 2.3): per path of the block, BN statistics of the whole siamese model are
reset and re-estimated on ``calib_images`` training images (both views; the official code: one batch of 256);
the held-out split's view pairs are generated once with a seeded generator (the training transform, as the
official ``StoragedBYOLDataset``); centre = mean over all the block's paths of the raw target projections; score
= mean over batches of ``(2 - 2 cos)(pred(online(v1)), c_v2) + (2 - 2 cos)(pred(online(v2)), c_v1)`` (online
net + predictor, as the official code; lower is better). Every path of the block is rated (exhaustive, official).
``rating_paths: N`` (NB201 and NATS-size only) estimates the centre from a seeded uniform sample of N block paths and
scores that sample plus the block paths of ``rating_archs`` (the ground-truth harness sets them): NB201's no-Zero
cell has 4,096 genotypes, each rated in each of the three blocks, more than a CPU run affords; the search then
ranks the architectures all of whose block paths were rated.

**Search.** A fixed architecture's score is the sum of its blocks' scores (lambda_k = 1, the official NATS and
MBConv ranking; the official +4 per block is a constant). NATS with an additive metric (flops, macs, params):
and the DNA-style MBConv spaces (DNA's costs): the exact budgeted k-best search of ``search.strategies.budgeted``
(as DNA's); otherwise the whole space in score
order, the first ``top_k`` within the budget. HyTra (greedy, :class:`ChainSearcher`): blocks are rated only on
the chain of earlier best paths, so the found architecture is that chain (``bossnas.json``); ``top<i>`` swaps in
the last block's ``i``-th best path. Specs are written to ``OUTPUT/arch/top<i>.json`` by the engine.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from backbones._runtime import atomic_write_json

from .. import data as data_lib
from .. import engine, pipeline
from ..config import ConfigError, SearchConfig
from ..protocols import Found, StepContext
from ..spaces import get_space
from ..strategies.traversal import recalibrate_bn
from .bossnas_blocks import BlockAdapter, HyTraAdapter, fair_paths, make_adapter, uniform_paths

__all__ = [
    'BlockRater',
    'BossNAS',
    'BossNASBlock',
    'BossNASConfig',
    'BossRunner',
    'ChainSearcher',
    'MultiViewTransform',
    'Projector',
    'byol_loss',
    'ema_momentum',
]

SAMPLINGS = ('fair', 'uniform')


@dataclass
class BossNASConfig(SearchConfig):
    """Every option of a BossNAS run (module docstring); defaults: the official NATS CIFAR-10 config."""

    output: str = 'runs/bossnas'
    space: str = 'nats_size'
    space_options: dict = field(default_factory=dict)
    img_size: int = 32
    num_classes: int = 10  # the supernet's (unused) classifier
    epochs: int = 50  # per block
    batch_size: int = 4096
    paths: int = 8  # paths per step
    view_pairs: int | None = None  # None: one pair per path
    sampling: str | None = None  # None: the space's official one (fair; uniform for HyTra)
    train_previous: bool = True  # earlier blocks keep training through their best paths (official code)
    proj_in: int = 2048
    proj_hidden: int = 4096
    proj_out: int = 256
    pred_hidden: int = 4096
    ema_base: float = 0.99
    base_lr: float = 4.8
    base_batch: int = 4096
    lars_momentum: float = 0.9
    weight_decay: float = 1e-6
    trust_coeff: float = 0.001
    warmup_epochs: float = 1.0
    warmup_ratio: float = 1e-4
    view_aug: dict = field(default_factory=lambda: {'scale': [0.5, 1.0], 'color_jitter': None})
    calib_images: int = 256
    rating_images: int = 10000
    rating_batch: int = 256
    rating_paths: int = 0  # 0: every path of a block (official); N: a seeded sample of N paths (+ rating_archs)
    rating_archs: list | None = None  # whole architectures whose block paths are always rated (ground truth)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.blocks is not None:
            raise ConfigError('blocks: BossNAS searches blocks greedily in order; block jobs do not apply')
        for name in ('paths', 'proj_in', 'proj_hidden', 'proj_out', 'pred_hidden', 'base_batch', 'num_classes'):
            if getattr(self, name) < 1:
                raise ConfigError(f'{name} must be >= 1, got {getattr(self, name)}')
        for name in ('calib_images', 'rating_images', 'rating_batch'):
            if getattr(self, name) < 2:
                raise ConfigError(f'{name} must be >= 2 (BN statistics need two images), got {getattr(self, name)}')
        if self.view_pairs is not None and not 1 <= self.view_pairs <= self.paths:
            raise ConfigError(
                f'view_pairs must be in [1, paths={self.paths}] (or null: one per path), got {self.view_pairs}'
            )
        if self.sampling is not None and self.sampling not in SAMPLINGS:
            raise ConfigError(f'sampling {self.sampling!r}: expected one of {", ".join(SAMPLINGS)}')
        if not 0.0 <= self.ema_base < 1.0:
            raise ConfigError(f'ema_base must be in [0, 1), got {self.ema_base}')
        for name in ('base_lr', 'trust_coeff', 'warmup_ratio'):
            if getattr(self, name) <= 0:
                raise ConfigError(f'{name} must be positive, got {getattr(self, name)}')
        for name in ('weight_decay', 'warmup_epochs', 'lars_momentum'):
            if getattr(self, name) < 0:
                raise ConfigError(f'{name} must be >= 0, got {getattr(self, name)}')
        if not isinstance(self.view_aug, dict):
            raise ConfigError(f'view_aug: expected a mapping of timm create_transform options, got {self.view_aug!r}')
        try:
            space = get_space(self.space, img_size=self.img_size, **self.space_options)
            adapter = make_adapter(space)
        except (KeyError, ValueError, TypeError) as err:
            reason = err.args[0] if isinstance(err, KeyError) else err
            raise ConfigError(f'space {self.space!r} with space_options {self.space_options}: {reason}') from None
        if self.rating_paths < 0:
            raise ConfigError(f'rating_paths must be >= 0 (0: every path of a block), got {self.rating_paths}')
        if (self.rating_paths or self.rating_archs is not None) and not getattr(adapter, 'partial_rating', False):
            raise ConfigError(
                f'rating_paths / rating_archs: space {self.space!r} is searched over its exhaustive block ratings '
                '(exact budgeted or greedy search); sampled rating applies to the nb201 and nats_size spaces only'
            )
        if self.rating_archs is not None:
            try:
                self.rating_archs = [list(space.check(tuple(a))) for a in self.rating_archs]
            except (ValueError, TypeError) as err:
                raise ConfigError(f'rating_archs: {err}') from None
        if self.sampling is None:
            self.sampling = getattr(adapter, 'default_sampling', 'fair')
        allowed = getattr(adapter, 'samplings', SAMPLINGS)
        if self.sampling not in allowed:
            raise ConfigError(
                f'sampling {self.sampling!r} does not apply to space {self.space!r}: '
                f'expected one of {", ".join(allowed)}'
            )

    @property
    def pairs(self) -> int:
        return self.view_pairs or self.paths

    @property
    def lr(self) -> float:
        """The linearly scaled learning rate (``base_lr`` at ``base_batch``)."""
        return self.base_lr * self.batch_size / self.base_batch


# -- losses and schedules -------------------------------------------------------------------------------------------
def byol_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BYOL's ``2 - 2 cos(pred, target)`` averaged over the batch (both sides L2-normalised here); 0 when aligned."""
    return (2.0 - 2.0 * F.cosine_similarity(pred.float(), target.float(), dim=-1)).mean()


def ema_momentum(step: int, total: int, base: float = 0.99) -> float:
    """BYOL's cosine momentum ``1 - (1 - base)(cos(pi step / total) + 1) / 2``: ``base`` at 0, 1 at ``total``."""
    return 1.0 - (1.0 - base) * (math.cos(math.pi * step / max(total, 1)) + 1.0) / 2.0


class MultiViewTransform:
    """``n`` independent draws of ``base`` on one image (BYOL's views: ``2 * view_pairs`` per image)."""

    def __init__(self, base: Any, n: int) -> None:
        self.base, self.n = base, n

    def __call__(self, img: Any) -> tuple[torch.Tensor, ...]:
        return tuple(self.base(img) for _ in range(self.n))


# -- heads and the siamese model ------------------------------------------------------------------------------------
def _mlp(in_dim: int, hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out)
    )


def _conv_bn_fix(width: int, proj_in: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(width, proj_in, 1, bias=False), nn.BatchNorm2d(proj_in))


class Projector(nn.Module):
    """One block's projector: per input width a ``channel_fix`` (default 1x1 conv + BN to ``proj_in``; the
    adapter's ``channel_fix`` where it has one: HyTra's per-scale depthwise downsampler), then global average pool
    and the MLP (official ``NonLinearNeckSimCLRProject`` / ``online_channels_fix``)."""

    def __init__(self, widths: Sequence[int], proj_in: int, hidden: int, out: int, channel_fix: Any = None) -> None:
        super().__init__()
        fix = channel_fix or _conv_bn_fix
        self.fix = nn.ModuleDict({str(w): fix(w, proj_in) for w in widths})
        self.mlp = _mlp(proj_in, hidden, out)
        for m in self.mlp:
            if isinstance(m, nn.Linear):  # official init_linear='kaiming'
                nn.init.kaiming_normal_(m.weight, mode='fan_in', nonlinearity='relu')
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        key = str(x.shape[1])
        if key not in self.fix:
            raise ValueError(f'projector has no channel_fix for {x.shape[1]} channels (widths {list(self.fix)})')
        return self.mlp(self.fix[key](x).mean((2, 3)))


def _predictor(out: int, hidden: int) -> nn.Sequential:
    pred = _mlp(out, hidden, out)
    for m in pred:
        if isinstance(m, nn.Linear):  # official init: normal, std 0.01
            nn.init.normal_(m.weight, std=0.01)
            nn.init.zeros_(m.bias)
    return pred


class SiameseBranch(nn.Module):
    """The supernet with one projector per block (online, or its EMA target)."""

    def __init__(self, supernet: nn.Module, projectors: nn.ModuleList) -> None:
        super().__init__()
        self.supernet, self.projectors = supernet, projectors


class BossRunner(nn.Module):
    """What the engine checkpoints and DDP wraps: online and target branches and the predictors.

    ``k`` (the block in training) and ``best`` (the best paths of blocks ``< k``) are set by the block method;
    ``forward(views, paths)`` returns the loss of every path (module docstring).
    """

    def __init__(
        self, adapter: BlockAdapter, supernet: nn.Module, cfg: BossNASConfig, train_previous: bool = True
    ) -> None:
        super().__init__()
        projectors = nn.ModuleList(
            Projector(
                adapter.out_widths(k), cfg.proj_in, cfg.proj_hidden, cfg.proj_out, getattr(adapter, 'channel_fix', None)
            )
            for k in range(adapter.num_blocks)
        )
        self.online = SiameseBranch(supernet, projectors)
        self.target = copy.deepcopy(self.online).requires_grad_(False)
        self.predictors = nn.ModuleList(_predictor(cfg.proj_out, cfg.pred_hidden) for _ in range(adapter.num_blocks))
        self.adapter, self.train_previous = adapter, train_previous
        self.k, self.best = 0, []

    def prefix(self, branch: SiameseBranch, x: torch.Tensor) -> torch.Tensor:
        """The earlier blocks along their best paths (without gradients unless ``train_previous`` and online)."""
        grad = self.train_previous and branch is self.online and torch.is_grad_enabled()
        with torch.set_grad_enabled(grad):
            for j, path in enumerate(self.best[: self.k]):
                x = self.adapter.run_block(branch.supernet, x, j, path)
        return x

    def project(self, branch: SiameseBranch, h: torch.Tensor, path: tuple[int, ...]) -> torch.Tensor:
        return branch.projectors[self.k](self.adapter.run_block(branch.supernet, h, self.k, path))

    def forward(self, views: Sequence[torch.Tensor], paths: Sequence[tuple[int, ...]]) -> torch.Tensor:
        pairs = len(views) // 2
        with torch.no_grad():
            cache: dict[int, torch.Tensor] = {}
            z: list[list[torch.Tensor]] = [[], []]
            for i, path in enumerate(paths):
                for v in (0, 1):
                    idx = 2 * (i % pairs) + v
                    if idx not in cache:
                        cache[idx] = self.prefix(self.target, views[idx])
                    z[v].append(F.normalize(self.project(self.target, cache[idx], path).float(), dim=1))
            targets = [torch.stack(z[v]).mean(0) for v in (0, 1)]
        cache = {}
        losses = []
        for i, path in enumerate(paths):
            pred = []
            for v in (0, 1):
                idx = 2 * (i % pairs) + v
                if idx not in cache:
                    cache[idx] = self.prefix(self.online, views[idx])
                pred.append(self.predictors[self.k](self.project(self.online, cache[idx], path)))
            losses.append(byol_loss(pred[0], targets[1]) + byol_loss(pred[1], targets[0]))
        return torch.stack(losses)

    @torch.no_grad()
    def update_target(self, momentum: float) -> None:
        """``target = m target + (1 - m) online`` over the parameters (buffers stay the target's own)."""
        for po, pt in zip(self.online.parameters(), self.target.parameters(), strict=True):
            pt.mul_(momentum).add_(po.detach(), alpha=1.0 - momentum)


# -- one block: an engine method ------------------------------------------------------------------------------------
class BossNASBlock:
    """Block ``k`` of BossNAS as a :class:`~search.protocols.Method` (one engine run in ``OUTPUT/block<k>``)."""

    name = 'bossnas'
    config_class = BossNASConfig
    groups_per_lr = 2

    def __init__(
        self, cfg: BossNASConfig, k: int, best: Sequence[tuple[int, ...]] = (), init: Path | None = None
    ) -> None:
        self.cfg, self.k, self.best, self.init = cfg, k, [tuple(p) for p in best], init
        self.space = get_space(cfg.space, img_size=cfg.img_size, **cfg.space_options)
        self.adapter = make_adapter(self.space)
        self.runner: BossRunner | None = None
        self.total = 1

    def build(self, ctx: engine.DistContext, split: dict | None = None) -> nn.Module:
        """The siamese model (seeded), with the weights block ``k - 1`` ended with when ``init`` is given."""
        torch.manual_seed(engine.derive_seed(self.cfg.seed, 'supernet-init'))
        supernet = self.space.build_supernet(num_classes=self.cfg.num_classes)
        self.runner = BossRunner(self.adapter, supernet, self.cfg, self.cfg.train_previous).to(ctx.device)
        if self.init is not None:
            state = engine.load_checkpoint(self.init, ctx.device)
            self.runner.load_state_dict(state['model'])
        self.runner.k, self.runner.best = self.k, self.best
        return self.runner

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return self.runner.state_dict()

    def train_mode(self) -> None:
        self.runner.train()

    def optimizer(self, steps_per_epoch: int) -> tuple[torch.optim.Optimizer, Any, bool]:
        """LARS over the online supernet and this block's projector and predictor; per-step cosine with warm-up."""
        from timm.optim import Lars
        from timm.scheduler import CosineLRScheduler

        cfg, r = self.cfg, self.runner
        params = [*r.online.supernet.parameters(), *r.online.projectors[self.k].parameters()]
        params += list(r.predictors[self.k].parameters())
        decay = [p for p in params if p.ndim > 1]
        plain = [p for p in params if p.ndim <= 1]  # BN weights/biases and biases: no decay, no LARS adaptation
        groups = [{'params': decay, 'weight_decay': cfg.weight_decay}, {'params': plain, 'weight_decay': 0.0}]
        opt = Lars(groups, lr=cfg.lr, momentum=cfg.lars_momentum, trust_coeff=cfg.trust_coeff)
        self.total = max(1, steps_per_epoch * cfg.epochs)
        scheduler = CosineLRScheduler(
            opt,
            t_initial=self.total,
            lr_min=0.0,
            warmup_t=round(cfg.warmup_epochs * steps_per_epoch),
            warmup_lr_init=cfg.lr * cfg.warmup_ratio,
            warmup_prefix=True,
            t_in_epochs=False,
        )
        return opt, scheduler, True

    def transform(self) -> MultiViewTransform:
        return view_transform(self.cfg, self.cfg.pairs)

    def sample_paths(self, step: int) -> list[tuple[int, ...]]:
        """``paths`` paths of block ``k``, a pure function of (seed, block, step)."""
        g = engine.generator(self.cfg.seed, 'bossnas-path', self.k, step)
        if self.cfg.sampling == 'fair':
            return [
                self.adapter.canonical(self.k, p) for p in fair_paths(self.adapter.decisions(self.k), self.cfg.paths, g)
            ]
        return uniform_paths(self.adapter.block_paths(self.k, self.best), self.cfg.paths, g)

    def train_step(self, images: Any, labels: torch.Tensor, paths: list, ctx: StepContext) -> dict[str, torch.Tensor]:
        losses = ctx.model(list(images), paths)
        loss = losses.sum()
        ctx.backward(loss)
        return {f'loss_block{self.k}': loss.detach().float()}

    def after_step(self, step: int) -> None:
        self.runner.update_target(ema_momentum(step, self.total, self.cfg.ema_base))

    def rater(self, ctx: engine.DistContext) -> BlockRater:
        return BlockRater(self, ctx)

    def searcher(self, device: torch.device | None = None) -> Any:
        raise NotImplementedError('a block run is rated, not searched: the BossNAS driver searches')

    def provenance(self) -> dict:
        return {'block': self.k, 'best_paths': [list(p) for p in self.best]}


def view_transform(cfg: BossNASConfig, pairs: int) -> MultiViewTransform:
    """``2 * pairs`` views per image with timm's training transform and ``cfg.view_aug``."""
    return MultiViewTransform(data_lib.build_transform(cfg.img_size, training=True, **cfg.view_aug), 2 * pairs)


def fixed_views(cfg: BossNASConfig, indices: Sequence[int], key: str, device: torch.device) -> list[list[torch.Tensor]]:
    """One view pair per image of the training folder's ``indices``, in batches of ``rating_batch``; every image's
    views come from its own seeded stream (``key`` names it), so every rater instance gets the same tensors."""
    folder = data_lib.image_folder(Path(cfg.data_dir) / 'train', view_transform(cfg, 1))
    samples = data_lib.SeededSamples(folder, indices, engine.derive_seed(cfg.seed, key))
    out = []
    for start in range(0, len(indices), cfg.rating_batch):
        items = [samples[(0, j)][0] for j in range(start, min(start + cfg.rating_batch, len(indices)))]
        out.append([torch.stack([v[i] for v in items]).to(device) for i in (0, 1)])
    return out


class _PathModel(nn.Module):
    """The siamese model on one path of block ``k``: what BN recalibration runs (target and online side)."""

    def __init__(self, runner: BossRunner, path: tuple[int, ...]) -> None:
        super().__init__()
        self.runner, self.path = runner, path

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r = self.runner
        target = r.project(r.target, r.prefix(r.target, x), self.path)
        online = r.predictors[r.k](r.project(r.online, r.prefix(r.online, x), self.path))
        return target, online


class BlockRater:
    """Population-centre rating of every path of block ``k`` (module docstring); ``rate()`` returns the rows
    ``{'path', 'key', 'score'}`` best first, cached in ``ratings/block.json`` under a fingerprint."""

    kind = 'block'
    keys = ('space', 'space_options', 'img_size', 'seed', 'holdout_per_class', 'calib_images', 'rating_images')
    keys += ('view_aug', 'rating_batch', 'rating_paths', 'rating_archs')

    def __init__(self, method: BossNASBlock, ctx: engine.DistContext) -> None:
        self.method, self.ctx, self.cfg = method, ctx, method.cfg
        self.path = self.cfg.out / 'ratings' / 'block.json'

    def fingerprint(self) -> str:
        step = int(engine.load_checkpoint(pipeline.checkpoint_path(self.cfg))['step'])
        doc = {'step': step, 'block': self.method.k, 'best': [list(p) for p in self.method.best]}
        doc.update({k: getattr(self.cfg, k) for k in self.keys})
        return json.dumps(doc, sort_keys=True)

    def views(self) -> tuple[list[list[torch.Tensor]], list[torch.Tensor]]:
        """The fixed held-out view pairs and the calibration batches (both views of training images)."""
        cfg = self.cfg
        split = pipeline.holdout_split(cfg, self.ctx)
        g = engine.generator(cfg.seed, 'rating-images')
        holdout = [split['holdout'][i] for i in torch.randperm(len(split['holdout']), generator=g).tolist()]
        g = engine.generator(cfg.seed, 'rating-calibration')
        calib = [split['train'][i] for i in torch.randperm(len(split['train']), generator=g).tolist()]
        held = fixed_views(cfg, holdout[: cfg.rating_images], 'rating-views', self.ctx.device)
        cal = fixed_views(cfg, calib[: cfg.calib_images], 'calibration-views', self.ctx.device)
        return held, [v for pair in cal for v in pair]

    def rate(self) -> list[dict]:
        fp = self.fingerprint()
        if self.path.is_file():
            doc = json.loads(self.path.read_text())
            if doc.get('fingerprint') == fp:
                return doc['candidates']
        rows = self._rate()
        if self.ctx.is_main:
            doc = {'fingerprint': fp, 'block': self.method.k, 'complete': self.complete, 'candidates': rows}
            atomic_write_json(self.path, doc)
        return rows

    @property
    def complete(self) -> bool:
        """Whether every path of the block is rated (``rating_paths`` 0 or at least the block's path count)."""
        n = self.cfg.rating_paths
        return n == 0 or n >= len(self.method.adapter.block_paths(self.method.k, self.method.best))

    def population(self) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]]]:
        """(paths whose mean target projection is the centre, paths to score). Exhaustive by default (both: every
        path of the block); with ``rating_paths`` N the centre is estimated from a seeded uniform sample of N paths
        (an unbiased estimate of the population centre) and the scored paths are that sample plus the block paths
        of ``rating_archs``."""
        method, cfg = self.method, self.cfg
        paths = method.adapter.block_paths(method.k, method.best)
        if self.complete:
            return paths, paths
        g = engine.generator(cfg.seed, 'bossnas-rating-sample', method.k)
        sample = [paths[i] for i in sorted(torch.randperm(len(paths), generator=g)[: cfg.rating_paths].tolist())]
        scored = list(sample)
        seen = set(sample)
        for arch in cfg.rating_archs or []:
            path = method.adapter.canonical(method.k, method.adapter.split(arch)[method.k])
            if path not in seen:
                seen.add(path)
                scored.append(path)
        return sample, scored

    @torch.no_grad()
    def _rate(self) -> list[dict]:
        method = self.method
        pipeline.load_trained(method, self.ctx)
        runner = method.runner
        held, calib = self.views()
        population, paths = self.population()
        members = set(population)
        centre: list[list[torch.Tensor]] | None = None
        preds = []
        for path in engine.progress(paths, enabled=self.ctx.is_main, desc=f'bossnas rating block {method.k}'):
            model = _PathModel(runner, path)
            recalibrate_bn(model, calib)
            outs = [[model(v) for v in pair] for pair in held]  # per batch, per view: (target, online)
            preds.append([[o.float() for _, o in b] for b in outs])
            if path not in members:
                continue
            targets = [[t.float() for t, _ in b] for b in outs]
            if centre is None:
                centre = targets
            else:
                centre = [[c + t for c, t in zip(cb, tb, strict=True)] for cb, tb in zip(centre, targets, strict=True)]
        centre = [[c / len(population) for c in b] for b in centre]
        rows = []
        for path, pred in zip(paths, preds, strict=True):
            per_batch = [byol_loss(p[0], c[1]) + byol_loss(p[1], c[0]) for p, c in zip(pred, centre, strict=True)]
            score = float(torch.stack(per_batch).mean())
            rows.append({'path': list(path), 'key': method.adapter.block_key(path), 'score': score})
        return sorted(rows, key=lambda r: (r['score'], r['key']))


# -- the driver -----------------------------------------------------------------------------------------------------
class BlockScores:
    """Per-block scores of every rated path; calling it scores a whole architecture (sum over blocks)."""

    def __init__(self, adapter: BlockAdapter, blocks: list[dict[str, float]], complete: bool = True) -> None:
        self.adapter, self.blocks, self.complete = adapter, blocks, complete

    def rated(self, arch: Sequence[int]) -> bool:
        """Whether every block path of ``arch`` has a score (always, unless the blocks were rated on a sample)."""
        return all(self.adapter.block_key(p) in self.blocks[k] for k, p in enumerate(self.adapter.split(arch)))

    def block_scores(self, arch: Sequence[int]) -> list[float]:
        parts = self.adapter.split(arch)
        try:
            return [self.blocks[k][self.adapter.block_key(p)] for k, p in enumerate(parts)]
        except KeyError as err:
            raise KeyError(f'architecture {tuple(arch)}: block path {err.args[0]} was not rated') from None

    def __call__(self, arch: Sequence[int]) -> float:
        return float(sum(self.block_scores(arch)))


class SummedRater:
    """The driver's rater: the blocks' cached ratings as :class:`BlockScores` (``None`` while a block is unrated)."""

    kind = 'path'

    def __init__(self, driver: BossNAS) -> None:
        self.driver = driver

    def fingerprint(self) -> str:
        files = [self.driver.block_config(k).out / 'ratings' / 'block.json' for k in range(self.driver.num_blocks)]
        return json.dumps([json.loads(f.read_text())['fingerprint'] if f.is_file() else None for f in files])

    def rate(self) -> BlockScores | None:
        blocks, complete = [], True
        for k in range(self.driver.num_blocks):
            f = self.driver.block_config(k).out / 'ratings' / 'block.json'
            if not f.is_file():
                return None
            doc = json.loads(f.read_text())
            complete = complete and doc.get('complete', True)
            blocks.append({r['key']: float(r['score']) for r in doc['candidates']})
        return BlockScores(self.driver.adapter, blocks, complete)


class BossNAS:
    """The BossNAS driver (module docstring): one engine run per block in ``OUTPUT/block<k>``, then the search."""

    name = 'bossnas'
    config_class = BossNASConfig
    staged = False

    def __init__(self, cfg: BossNASConfig) -> None:
        self.cfg = cfg
        self.space = get_space(cfg.space, img_size=cfg.img_size, **cfg.space_options)
        self.adapter = make_adapter(self.space)
        self.num_blocks = self.adapter.num_blocks

    @staticmethod
    def check_folder(cfg: BossNASConfig, resume: bool, overwrite: bool) -> None:
        """Refuse to run over an earlier run unless ``resume``; ``overwrite`` removes it first."""
        out = Path(cfg.output)
        earlier = sorted(out.glob('block[0-9]*'))
        if resume and overwrite:
            raise pipeline.RunFolderError('--resume and --overwrite exclude each other')
        if earlier and not (resume or overwrite):
            raise pipeline.RunFolderError(
                f'{out} holds an earlier run ({earlier[0].name}): pass --resume to continue it, or --overwrite'
            )
        if overwrite:
            for folder in earlier:
                shutil.rmtree(folder)
            for f in [*(out / 'arch').glob('*.json'), out / 'search_result.json', out / 'bossnas.json']:
                f.unlink(missing_ok=True)

    def block_config(self, k: int) -> BossNASConfig:
        return dataclasses.replace(self.cfg, output=str(self.cfg.out / f'block{k}'))

    def drive(self, ctx: engine.DistContext, resume: bool) -> list[dict]:
        """Train and rate block after block (greedy), then search; finished blocks are skipped on a rerun."""
        cfg = self.cfg
        if not resume:
            self.check_folder(cfg, resume=False, overwrite=False)
        cfg.out.mkdir(parents=True, exist_ok=True)
        split = pipeline.holdout_split(cfg, ctx)
        steps = len(split['train']) // cfg.batch_size * cfg.epochs
        best: list[tuple[int, ...]] = []
        init = None
        for k in range(self.num_blocks):
            bcfg = self.block_config(k)
            if ctx.is_main:
                bcfg.out.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(cfg.out / 'holdout_split.json', bcfg.out / 'holdout_split.json')
            ctx.barrier()
            block = BossNASBlock(bcfg, k, best, init)
            ckpt = pipeline.checkpoint_path(bcfg)
            self._check_prefix(bcfg, best, ctx)
            if not (ckpt.is_file() and int(engine.load_checkpoint(ckpt)['step']) >= steps):
                pipeline.train(block, ctx, resume=True)
            rows = block.rater(ctx).rate()
            best.append(tuple(rows[0]['path']))
            init = ckpt
        if ctx.is_main:
            doc = {'best_paths': [list(p) for p in best]}
            (cfg.out / 'bossnas.json').write_text(json.dumps(doc, indent=1) + '\n')
        self.best = best
        found: list[dict] = []
        if ctx.is_main:
            found = pipeline.search(self, self.rater(ctx).rate(), ctx.device)
        ctx.barrier()
        return found

    @staticmethod
    def _check_prefix(bcfg: BossNASConfig, best: Sequence[tuple[int, ...]], ctx: engine.DistContext) -> None:
        """Record the best paths a block is trained on (``prefix.json``); a block trained on other paths (the
        earlier blocks were rerated with other options) is not reused silently."""
        record = bcfg.out / 'prefix.json'
        want = [list(p) for p in best]
        if record.is_file() and pipeline.checkpoint_path(bcfg).is_file():
            had = json.loads(record.read_text())['best_paths']
            if had != want:
                raise pipeline.RunFolderError(
                    f'{bcfg.out} was trained on the best paths {had} of the earlier blocks, which are now {want}: '
                    'pass --overwrite to train again'
                )
        if ctx.is_main:
            record.parent.mkdir(parents=True, exist_ok=True)
            record.write_text(json.dumps({'best_paths': want}) + '\n')

    def rater(self, ctx: engine.DistContext) -> SummedRater:
        return SummedRater(self)

    def searcher(self, device: torch.device | None = None) -> SummedSearcher | ChainSearcher:
        if isinstance(self.adapter, HyTraAdapter):
            return ChainSearcher(getattr(self, 'best', None))
        return SummedSearcher()

    def provenance(self) -> dict:
        best = getattr(self, 'best', None)
        return {
            'score_name': 'population-centre loss summed over the blocks, lower is better',
            'best_paths': None if best is None else [list(p) for p in best],
        }


# -- search ---------------------------------------------------------------------------------------------------------
def _nats_block_cost(space: Any, k: int, in_w: int, widths: Sequence[int], metric: str) -> float:
    """Block ``k``'s share of a NATS architecture's cost (stem in block 0, head in the last block)."""
    from ..spaces.nats import _cost_table

    table, index = _cost_table(space), 1 if metric == 'params' else 0
    total = table['stem'][widths[0]][index] if k == 0 else 0
    prev = widths[0] if k == 0 else in_w
    for i, c in zip(space.blocks[k], widths, strict=True):
        total += table['layers'][i][(prev, c)][index]
        prev = c
    if k == len(space.blocks) - 1:
        total += table['head'][widths[-1]][index]
    return float(total)


class SummedSearcher:
    """Top-k by summed block score under the budget: exact budgeted search (NATS, additive metrics), else the
    whole space in score order."""

    def search(self, space: Any, rated: BlockScores, metric: str, budget: float | None, top_k: int) -> list[Found]:
        from ..spaces.mbconv import MBConvSpace
        from ..spaces.nats import NATSSizeSpace

        if isinstance(space, NATSSizeSpace) and metric != 'latency' and rated.complete:
            return self._exact(space, rated, metric, budget, top_k)
        if isinstance(space, MBConvSpace):
            return self._exact_mbconv(space, rated, metric, budget, top_k)
        allowed = [space.allowed(i) for i in range(len(space.num_choices))]
        # Blocks rated on a sample (rating_paths): the architectures all of whose block paths were rated.
        archs = [a for a in itertools.product(*allowed) if rated.complete or rated.rated(a)]
        scored = sorted((rated(a), space.key(a), a) for a in archs)
        found = []
        for score, _, arch in scored:
            cost = space.cost(arch, metric)
            if budget is None or cost <= budget:
                found.append(Found(arch, score, cost, {'block_scores': rated.block_scores(arch)}))
                if len(found) == top_k:
                    break
        if not found:
            low = min(space.cost(a, metric) for a in archs)
            raise ValueError(f'no architecture of space {space.name!r} within {metric} budget {budget:g} (min {low:g})')
        return found

    def _exact(self, space: Any, rated: BlockScores, metric: str, budget: float | None, top_k: int) -> list[Found]:
        from ..strategies.budgeted import Candidate, exact_search

        blocks = []
        for k in range(len(space.blocks)):
            cands = []
            for in_w, widths in space.candidates(k):
                path = tuple(space.widths.index(w) for w in widths)
                score = rated.blocks[k][rated.adapter.block_key(path)]
                cost = _nats_block_cost(space, k, in_w, widths, metric)
                cands.append(Candidate(score, cost, in_w, widths[-1], widths))
            blocks.append(cands)
        solutions = exact_search(blocks, budget, k=top_k, start_key=space.in_widths(0)[0])
        found = []
        for sol in solutions:
            arch = space.encode([c.payload for c in sol.choices])
            found.append(Found(arch, sol.score, sol.cost, {'block_scores': [c.score for c in sol.choices]}))
        return found

    def _exact_mbconv(self, space: Any, rated: BlockScores, metric: str, budget: float | None, top_k: int) -> list:
        """DNA's costs (paper FLOPs rule, MACs, params) per (block, input width, choice); the block score does not
        depend on the input width (the block was rated on the previous best path's width, as the official code)."""
        from ..spaces.mbconv import PAPER_FLOPS_FACTOR, choice_cost, fixed_cost
        from ..strategies.budgeted import Candidate, exact_search

        if metric == 'latency':
            raise ValueError('bossnas on MBConv spaces: latency budgets are not supported (use flops, macs or params)')
        scale, index = (PAPER_FLOPS_FACTOR if metric == 'flops' else 1.0), (1 if metric == 'params' else 0)
        blocks = []
        for k in range(len(space.blocks)):
            cands = []
            for in_w, choice in space.candidates(k):
                path = (choice.cell, *(space.blocks[k].ops.index(op) for op in choice.ops))
                score = rated.blocks[k][rated.adapter.block_key(path)]
                cost = choice_cost(space, k, in_w, choice)[index] * scale
                cands.append(Candidate(score, cost, in_w, space.blocks[k].cells[choice.cell].width, choice))
            blocks.append(cands)
        fixed = fixed_cost(space)[index] * scale
        solutions = exact_search(blocks, budget, k=top_k, fixed_cost=fixed, start_key=space.ds_width)
        return [
            Found(
                space.encode([c.payload for c in s.choices]),
                s.score,
                s.cost,
                {'block_scores': [c.score for c in s.choices]},
            )
            for s in solutions
        ]


class ChainSearcher:
    """HyTra: the found architecture is the greedy chain of the per-block best paths (``bossnas.json``), not a sum
    over independent blocks: block ``k`` was rated only on top of the best paths of blocks ``< k`` (its scales
    limited by where they end), so other combinations have no score. ``top1`` is the chain; ``top<i>`` keeps the
    best paths of blocks 0 .. 2 and takes the ``i``-th best path of the last block (every last-block path was rated
    on that prefix). A budget keeps the chains within it in that order (the prefix is fixed: the greedy search does
    not trade earlier blocks for cost); none within it raises naming the cheapest. Score: the chain's block scores
    summed (lower is better), ``block_scores`` in the extra."""

    def __init__(self, best: Sequence[tuple[int, ...]] | None = None) -> None:
        self.best = None if best is None else [tuple(p) for p in best]

    def search(self, space: Any, rated: BlockScores, metric: str, budget: float | None, top_k: int) -> list[Found]:
        adapter = rated.adapter
        last = len(rated.blocks) - 1
        ranked = [sorted(b, key=lambda key, b=b: (b[key], key)) for b in rated.blocks]  # the rating's order
        best = self.best or [adapter.path_of(r[0]) for r in ranked]
        prefix = [tuple(p) for p in best[:last]]
        prefix_scores = [rated.blocks[k][adapter.block_key(p)] for k, p in enumerate(prefix)]
        found, cheapest = [], math.inf
        for key in ranked[last]:
            arch = space.encode([*prefix, adapter.path_of(key)])
            cost = space.cost(arch, metric)
            cheapest = min(cheapest, cost)
            if budget is not None and cost > budget:
                continue
            scores = [*prefix_scores, rated.blocks[last][key]]
            found.append(Found(arch, float(sum(scores)), cost, {'block_scores': scores, 'selection': 'greedy chain'}))
            if len(found) == top_k:
                break
        if not found:
            raise ValueError(
                f'no greedy HyTra chain within {metric} budget {budget:g} (cheapest {cheapest:g}): the best paths '
                f'{[list(p) for p in prefix]} of blocks 0..{last - 1} are fixed by the greedy search'
            )
        return found
