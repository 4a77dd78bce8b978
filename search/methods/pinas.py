"""Pi-NAS: cross-path contrastive supernet learning with a path-restricted mean teacher, linear-probe rating, search.

Paper: Peng, Zhang et al., "Pi-NAS: Improving Neural Architecture Search by Reducing Supernet Training Consistency
Shift" (section 3.2, Eq. 1-4; section 4.1); official code github.com/Ernie1/Pi-NAS at 203b832 (read, not copied:
``OpenSelfSup/openselfsup/models/pinas.py``, ``configs/pinas_*.py``). Facts, ambiguities and official bugs:
../shared/specs/pinas.md sections 2, 3.1-3.2, 6 and 7. Generic over the engine's layer-wise single-path spaces
(``nb201``, ``fairnas``, the DNA MBConv spaces, the ResNeSt space): the supernet is built without a classifier
(``num_classes=0``: ``supernet(x, arch)`` gives pooled features).

**Learning** (:class:`PiNASRunner`, one engine step): two paths per step (``path_pairs: disjoint``, the official
sampling: per decision two distinct options drawn without replacement, so the paths differ wherever a decision has
two options; ``independent``: two uniform paths, redrawn until distinct, the paper's wording), a pure function of
(seed, step). Four views per image (``view_aug``: the official SimCLR-style pipeline, RandomResizedCrop scale
0.2-1, colour jitter 0.4/0.4/0.4/hue 0.4 with p 0.8, grey p 0.2, Gaussian blur sigma 0.1-2 with p 0.5, flip).
``q_i = student_i(v1)``, ``k_i = teacher_i(v2)``, ``q_j = student_j(v3)``, ``k_j = teacher_j(v4)``, each
``normalize(neck(pooled features))``; loss (:func:`cross_path_loss`) = ``CE(q_i; k_j, queue) + CE(q_j; k_i,
queue)`` with logits / ``temperature``, each a batch mean, the two summed; the queue then receives ``(k_i +
k_j) / 2`` (not re-normalised, as the official code).

*Paper Eq. 4 vs code* (chosen: the code). Eq. 4 writes the dot product ``z^T z'`` of raw outputs with no
temperature; the code L2-normalises the 128-d neck outputs and divides by tau = 0.2 (the values every reported
number was made with). Eq. 1 defines the cross-path pairs (z_i with z'_j, z_j with z'_i), the code the same. The
paper never states the queue; the code keeps 49,152 keys (256 x global batch 192).

**Mean teacher** (``teacher: path_ema``): a deep copy of the student (supernet + neck) without gradients. At the
first micro-batch of every step, before the keys, ``W' = lambda W' + (1 - lambda) W`` (lambda 0.999) on the
parameters of path ``i``, then of path ``j`` (the official order): the candidates on neither path stay untouched,
the stem, the shared downsamples and the neck get two EMA steps a step (official). The official code runs the EMA
of path ``j`` after computing ``k_i``; here both run before both keys, so the teacher parts shared by the two paths
are one EMA step further along when ``k_i`` is computed (they differ by lambda (1 - lambda) (W - W')): every
micro-batch of a step sees one teacher (needed for accumulation = DDP). Only parameters are averaged; the teacher's
BN statistics are its own. A path's parameters are the supernet parameters behind ``path_state_dict(arch)`` (the
weights the emitted network inherits), so any space works.

**Shuffle BN, a documented equivalent**: MoCo shuffles the key batch across GPUs so that a key is normalised with
statistics of other images than its query. Here the teacher's micro-batch is permuted (seeded by (seed, step,
micro-batch index)) and forwarded in ``shuffle_bn_groups`` groups, each with its own BN statistics, then restored
to order; the student normalises over its whole micro-batch. It is local to a micro-batch, so 2 processes equal 1
process with 2 accumulation steps; ``shuffle_bn_groups: 1`` turns it off.

**Queue**: ``queue_size`` L2-normalised random keys at start (seeded), FIFO with a wrap-around pointer. The keys of
every micro-batch of a step are enqueued in ``after_step``, all-gathered and ordered by global micro-batch index
(accumulation step x world size + rank, the order of ``GlobalBatchSampler``), so the queue is the same under DDP
and under accumulation; within a step every micro-batch uses the queue of the step's start. Queue, pointer and
teacher are buffers / parameters of the checkpointed module, so a resumed run is exact.

**Optimizer**: SGD lr 0.03, momentum 0.9, weight decay 1e-4 on every student parameter (``pinas_learning.py``),
cosine to 0 per epoch with no warm-up (mmcv ``CosineAnnealing`` hook, ``by_epoch``); gradients of candidates off
the path stay ``None``, so they get neither decay nor momentum (the official ``DistOptimizerHook`` zeroes them).

**Ablations** (Table 7): ``cross_path: false`` trains one path per step (path j = path i, still four views:
``q_i(v1)`` against ``k_i(v4)``, ``q_i(v3)`` against ``k_i(v2)``); ``teacher: student`` is the S-Pi model
("the student and the teacher are identical", section 3.2: the teacher is the student's copy, without gradients,
each step); ``teacher: full_ema`` is a plain MoCo momentum encoder (EMA over all parameters, once a step);
``negatives: false`` has no queue: what remains of Eq. 4 is the consistency term L_Con (Eq. 1), ``-(q_i . k_j +
q_j . k_i) / tau`` per image, which the paper reports to collapse (it does on the ground truth: loss -> -2 / tau,
every path rated at chance). "w/o DS" is the ResNeSt space's option ``share_downsample: false``.

**Linear-probe rating** (:class:`LinearProbe`, :class:`LinearProbeRater`; specs 3.1-3.2): after supernet training,
a second engine run in ``OUTPUT/linear/`` (``search.pipeline.train``: same loop, checkpoints, DDP) trains one
linear classifier (``num_features -> classes``, normal init std 0.01) on the frozen student supernet, a uniform
path per step, BN in train mode (batch statistics, as section 4.1 says), SGD lr 30, momentum 0.9, weight decay 0,
x0.1 at epochs 60 and 80 of 100, batch 256, crop + flip. Then per architecture precise BN recalibration (statistics
reset and averaged over ``calib_images`` training images) and top-1 of the shared classifier on the held-out
split is the fitness, cached in ``ratings/paths.jsonl`` under a fingerprint of both checkpoints and the rating
options (SPOS's :class:`~search.methods.spos.PathRater`); the probe is trained again when the supernet (step and
tensor digest) or a probe option changes. Search: ``searcher: evolution`` (SPOS's, under the
budget), or ``random``; the action-space search of the paper plugs in here later.

Official bugs not carried over (specs section 6): the search reads its options by the names this config defines
(no ``initial_samples`` KeyError), BN recalibration calls the model as the rater builds it (no ``ema=`` TypeError),
every image's augmentation is seeded by (seed, epoch, index) (no per-worker repetition), and paths come from the
run seed by step, not from identically seeded ranks.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from .. import data as data_lib
from .. import engine, pipeline
from ..config import ConfigError, SearchConfig
from ..protocols import Arch, StepContext
from ..spaces import get_space
from ..strategies.action_space import ActionSpaceSearch
from .bossnas import MultiViewTransform
from .spos import SEARCHERS, EvolutionSearch, PathRater, RandomSearch, SPOSConfig, _eval_folder

__all__ = [
    'LinearProbe',
    'LinearProbeRater',
    'PiNAS',
    'PiNASConfig',
    'PiNASRunner',
    'cross_path_loss',
    'path_parameter_names',
    'sample_path_pair',
]

TEACHERS = ('path_ema', 'full_ema', 'student')
PATH_PAIRS = ('disjoint', 'independent')
RECALIBRATIONS = ('reset', 'momentum')
#: What the linear probe depends on besides the supernet: a change trains it again.
PROBE_KEYS = ('seed', 'img_size', 'num_classes', 'linear_epochs', 'linear_batch_size', 'linear_lr')
PROBE_KEYS += ('linear_momentum', 'linear_weight_decay', 'linear_milestones', 'linear_gamma', 'linear_aug')

#: The official SimCLR-style views (``pinas_learning.py``), as timm ``create_transform`` options.
OFFICIAL_VIEW_AUG = {
    'scale': [0.2, 1.0],
    'color_jitter': [0.4, 0.4, 0.4, 0.4],
    'color_jitter_prob': 0.8,
    'grayscale_prob': 0.2,
    'gaussian_blur_prob': 0.5,
    'interpolation': 'bilinear',  # torchvision's RandomResizedCrop default (timm's is 'random')
}


@dataclass
class PiNASConfig(SearchConfig):
    """Every option of a Pi-NAS run; defaults: the official values (module docstring, specs 2.4 and 3.1-3.2)."""

    output: str = 'runs/pinas'
    space: str = 'pinas'
    space_options: dict = field(default_factory=dict)
    num_classes: int | None = None  # linear probe classes; null: the classes of <data_dir>/train
    epochs: int = 100
    batch_size: int = 192  # 24 a GPU x 8
    lr: float = 0.03
    momentum: float = 0.9
    weight_decay: float = 1e-4
    min_lr: float = 0.0
    ema_momentum: float = 0.999
    temperature: float = 0.2
    queue_size: int = 49152
    feat_dim: int = 128
    neck_hidden: int | None = None  # null: the supernet's feature width (official 2048 -> 2048 -> 128)
    path_pairs: str = 'disjoint'
    cross_path: bool = True
    teacher: str = 'path_ema'
    negatives: bool = True
    shuffle_bn_groups: int = 8  # 8 teacher BN groups of 24 at batch 192: the official per-GPU BN batch
    view_aug: dict = field(default_factory=lambda: dict(OFFICIAL_VIEW_AUG))
    linear_epochs: int = 100
    linear_batch_size: int = 256
    linear_lr: float = 30.0
    linear_momentum: float = 0.9
    linear_weight_decay: float = 0.0
    linear_milestones: list[int] = field(default_factory=lambda: [60, 80])
    linear_gamma: float = 0.1
    linear_aug: dict = field(default_factory=lambda: {'color_jitter': None, 'interpolation': 'bilinear'})
    calib_images: int = 50000  # section 4.1: "a further 50k images" of the training set
    rating_images: int = 50000  # the 50-a-class held-out split
    rating_batch: int = 128
    recalibration: str = 'reset'  # precise BN (official bn='update'); 'momentum': SPOS's alternative
    searcher: str = 'evolution'
    evolution: dict = field(default_factory=dict)
    search_samples: int = 1000  # searcher 'random' only; the paper's maximum sample size
    action_space: dict = field(default_factory=dict)  # searcher 'action_space': ActionSpaceConfig fields (Pi-NAS's)

    evolution_config = SPOSConfig.evolution_config
    action_space_config = SPOSConfig.action_space_config

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.blocks is not None:
            raise ConfigError('blocks: Pi-NAS trains whole paths; block jobs do not apply')
        choices = {
            'teacher': TEACHERS,
            'path_pairs': PATH_PAIRS,
            'recalibration': RECALIBRATIONS,
            'searcher': SEARCHERS,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f'{name} {getattr(self, name)!r}: expected one of {", ".join(allowed)}')
        if not 0.0 <= self.ema_momentum < 1.0:
            raise ConfigError(f'ema_momentum must be in [0, 1), got {self.ema_momentum}')
        positive = ('lr', 'temperature', 'linear_lr', 'linear_gamma')
        positive += ('queue_size', 'feat_dim', 'shuffle_bn_groups', 'linear_batch_size', 'rating_batch')
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f'{name} must be positive, got {getattr(self, name)}')
        for name in ('momentum', 'weight_decay', 'min_lr', 'linear_momentum', 'linear_weight_decay'):
            if getattr(self, name) < 0:
                raise ConfigError(f'{name} must be >= 0, got {getattr(self, name)}')
        for name in ('calib_images', 'rating_images'):
            if getattr(self, name) < 2:
                raise ConfigError(f'{name} must be >= 2 (BN statistics need two images), got {getattr(self, name)}')
        if self.linear_epochs < 1:
            raise ConfigError(f'linear_epochs must be >= 1, got {self.linear_epochs}')
        self.action_space_config()  # fails early, naming the option
        if self.neck_hidden is not None and self.neck_hidden < 1:
            raise ConfigError(f'neck_hidden must be >= 1 (or null: the feature width), got {self.neck_hidden}')
        if self.num_classes is not None and self.num_classes < 1:
            raise ConfigError(f'num_classes must be >= 1 (or null: from the data folder), got {self.num_classes}')
        if self.linear_batch_size % self.grad_accum:
            raise ConfigError(
                f'linear_batch_size {self.linear_batch_size} is not divisible by grad_accum {self.grad_accum}'
            )
        if sorted(self.linear_milestones) != list(self.linear_milestones) or any(m < 1 for m in self.linear_milestones):
            raise ConfigError(f'linear_milestones must be increasing epochs >= 1, got {self.linear_milestones}')
        for name in ('view_aug', 'linear_aug'):
            if not isinstance(getattr(self, name), dict):
                raise ConfigError(f'{name}: expected a mapping of timm create_transform options')
        self.evolution_config()  # fails early, naming the key
        try:
            space = get_space(self.space, img_size=self.img_size, **self.space_options)
        except (KeyError, ValueError, TypeError) as err:
            reason = err.args[0] if isinstance(err, KeyError) else err
            raise ConfigError(f'space {self.space!r} with space_options {self.space_options}: {reason}') from None
        if self.cross_path and self.path_pairs == 'independent' and space.size < 2:
            raise ConfigError(f'space {self.space!r} has one architecture: cross-path learning needs two paths')


# -- loss, sampling, path parameters --------------------------------------------------------------------------------
def cross_path_loss(
    q_i: torch.Tensor,
    k_j: torch.Tensor,
    q_j: torch.Tensor,
    k_i: torch.Tensor,
    queue: torch.Tensor | None,
    temperature: float,
) -> torch.Tensor:
    """Eq. 4 as coded: ``CE([q_i.k_j, q_i.queue] / tau, 0) + CE([q_j.k_i, q_j.queue] / tau, 0)``, batch means.

    All vectors are L2-normalised by the caller; ``queue`` is ``(K, dim)``. Without a queue only the consistency
    term of Eq. 1 remains: ``-(q_i.k_j + q_j.k_i) / tau`` averaged over the batch.
    """

    def term(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        pos = (q * k).sum(1, keepdim=True)
        if queue is None:
            return -(pos / temperature).mean()
        logits = torch.cat([pos, q @ queue.t()], dim=1) / temperature
        return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))

    return term(q_i.float(), k_j.float()) + term(q_j.float(), k_i.float())


def sample_path_pair(space: Any, generator: torch.Generator, mode: str = 'disjoint') -> tuple[Arch, Arch]:
    """Two distinct paths: ``disjoint`` draws two different options per decision without replacement (official;
    a decision with one allowed option is shared), ``independent`` two uniform paths redrawn until distinct."""
    if mode == 'independent':
        a = space.sample(generator)
        for _ in range(1000):
            b = space.sample(generator)
            if b != a:
                return a, b
        raise ValueError(f'space {space.name!r}: no second distinct path in 1000 draws')
    first, second = [], []
    for i in range(len(space.num_choices)):
        options = space.allowed(i)
        pick = torch.randperm(len(options), generator=generator)[:2].tolist()
        first.append(options[pick[0]])
        second.append(options[pick[-1]])
    return space.canonical(first), space.canonical(second)


def path_parameter_names(supernet: nn.Module, arch: Arch, by_ptr: dict[int, str] | None = None) -> list[str]:
    """Names of the supernet parameters on path ``arch``: those behind ``path_state_dict(arch)`` (same storage);
    ``by_ptr`` (data pointer -> parameter name) may be passed in to save a traversal."""
    if by_ptr is None:
        by_ptr = {p.data_ptr(): n for n, p in supernet.named_parameters()}
    names = {by_ptr[t.data_ptr()] for t in supernet.path_state_dict(arch).values() if t.data_ptr() in by_ptr}
    return [n for n in by_ptr.values() if n in names]


def _any_path(space: Any) -> Arch:
    return space.sample(engine.generator(0, 'any-path'))


def _feature_width(supernet: nn.Module, arch: Arch, img_size: int) -> int:
    """The pooled feature width of the supernet (its ``num_features``, else measured by one small forward)."""
    width = getattr(supernet, 'num_features', None)
    if isinstance(width, int) and width > 0:
        return width
    param = next(supernet.parameters())
    was = supernet.training
    supernet.eval()
    with torch.no_grad():
        out = supernet(torch.zeros(2, 3, img_size, img_size, device=param.device, dtype=param.dtype), arch)
    supernet.train(was)
    if out.ndim != 2:
        raise ValueError(f'supernet built with num_classes=0 gives {tuple(out.shape)}, not pooled features (N, C)')
    return int(out.shape[1])


# -- the model ------------------------------------------------------------------------------------------------------
class Branch(nn.Module):
    """Supernet + neck (the official ``NonLinearNeckV1``: Linear -> ReLU -> Linear, Kaiming init, no BN)."""

    def __init__(self, supernet: nn.Module, in_dim: int, hidden: int, out: int) -> None:
        super().__init__()
        self.supernet = supernet
        self.neck = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out))
        for m in self.neck:
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, mode='fan_in', nonlinearity='relu')
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor, arch: Arch) -> torch.Tensor:
        return F.normalize(self.neck(self.supernet(x, arch)).float(), dim=1)


class PiNASRunner(nn.Module):
    """What the engine checkpoints and DDP wraps: student, teacher (EMA copy), queue and its pointer."""

    def __init__(self, supernet: nn.Module, cfg: PiNASConfig, feature_width: int) -> None:
        super().__init__()
        self.student = Branch(supernet, feature_width, cfg.neck_hidden or feature_width, cfg.feat_dim)
        self.teacher = copy.deepcopy(self.student).requires_grad_(False)
        self.temperature, self.groups = cfg.temperature, cfg.shuffle_bn_groups
        self._params: tuple[dict, dict] | None = None
        if cfg.negatives:
            g = engine.generator(cfg.seed, 'pinas-queue')
            self.register_buffer('queue', F.normalize(torch.randn(cfg.queue_size, cfg.feat_dim, generator=g), dim=1))
            self.register_buffer('queue_ptr', torch.zeros((), dtype=torch.long))
        else:
            self.register_buffer('queue', None)

    @torch.no_grad()
    def keys(self, x: torch.Tensor, arch: Arch, perm: torch.Tensor) -> torch.Tensor:
        """Teacher embeddings with shuffle BN: permuted, forwarded in ``groups`` groups, restored to order."""
        if self.training and len(x) < 2 * self.groups:
            raise ValueError(
                f'shuffle_bn_groups {self.groups}: a micro-batch of {len(x)} images leaves BN groups of one image '
                f'(at least {2 * self.groups} images per micro-batch, or fewer groups)'
            )
        parts = torch.chunk(x[perm.to(x.device)], self.groups)
        out = torch.cat([self.teacher(p, arch) for p in parts])
        return out[torch.argsort(perm).to(x.device)]

    def forward(
        self, views: Sequence[torch.Tensor], path_i: Arch, path_j: Arch, perms: Sequence[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss of one micro-batch (module docstring) and the keys to enqueue, ``(k_i + k_j) / 2``."""
        v1, v2, v3, v4 = views
        q_i, q_j = self.student(v1, path_i), self.student(v3, path_j)
        k_i, k_j = self.keys(v2, path_i, perms[0]), self.keys(v4, path_j, perms[1])
        loss = cross_path_loss(q_i, k_j, q_j, k_i, self.queue, self.temperature)
        return loss, (k_i + k_j) / 2

    def pairs(self, names: Sequence[str] | None = None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(teacher, student) parameters of the given names (all when ``None``), in the same order."""
        if self._params is None:  # the module tree never changes: one traversal
            self._params = dict(self.student.named_parameters()), dict(self.teacher.named_parameters())
        student, teacher = self._params
        names = list(student) if names is None else names
        return [teacher[n] for n in names], [student[n] for n in names]

    @torch.no_grad()
    def ema(self, momentum: float, names: Sequence[str] | None = None, pairs: tuple[list, list] | None = None) -> None:
        """``teacher = m teacher + (1 - m) student`` on the named parameters (all when ``None``; ``pairs``: the
        tensors of :meth:`pairs`, cached by the caller), in one fused ``foreach`` update."""
        teacher, student = pairs if pairs is not None else self.pairs(names)
        if teacher:
            torch._foreach_mul_(teacher, momentum)
            torch._foreach_add_(teacher, [p.detach() for p in student], alpha=1.0 - momentum)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """FIFO with a wrap-around pointer (the oldest keys are replaced)."""
        if self.queue is None:
            return
        size = self.queue.shape[0]
        keys = keys[-size:]
        idx = (self.queue_ptr + torch.arange(len(keys), device=keys.device)) % size
        self.queue[idx] = keys.to(self.queue.dtype)
        self.queue_ptr.copy_((self.queue_ptr + len(keys)) % size)


# -- the method -----------------------------------------------------------------------------------------------------
class PiNAS:
    """The Pi-NAS method (:class:`~search.protocols.Method`): cross-path contrastive learning, then the linear
    probe and its per-architecture rating, then the search."""

    name = 'pinas'
    config_class = PiNASConfig

    def __init__(self, cfg: PiNASConfig) -> None:
        self.cfg = cfg
        self.space = get_space(cfg.space, img_size=cfg.img_size, **cfg.space_options)
        self.runner: PiNASRunner | None = None
        self.ctx: engine.DistContext | None = None
        self._pending: list[torch.Tensor] = []
        self._path_names: dict[Arch, list[str]] = {}
        self._path_pairs: dict[Arch | None, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
        self._by_ptr: dict[int, str] | None = None

    def build(self, ctx: engine.DistContext, split: dict | None = None) -> nn.Module:
        """Student supernet + neck (seeded), the teacher as its copy, the queue."""
        self.ctx = ctx
        self._path_names, self._path_pairs, self._by_ptr = {}, {}, None
        torch.manual_seed(engine.derive_seed(self.cfg.seed, 'supernet-init'))
        supernet = self.space.build_supernet(num_classes=0).to(ctx.device)
        width = _feature_width(supernet, _any_path(self.space), self.cfg.img_size)
        torch.manual_seed(engine.derive_seed(self.cfg.seed, 'neck-init'))
        self.runner = PiNASRunner(supernet, self.cfg, width).to(ctx.device)
        return self.runner

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return self.runner.state_dict()

    def train_mode(self) -> None:
        self.runner.train()  # the teacher too: its keys use batch statistics (MoCo)

    def optimizer(self, steps_per_epoch: int) -> tuple[torch.optim.Optimizer, Any, bool]:
        """SGD on every student parameter, cosine per epoch to ``min_lr`` without warm-up (official)."""
        from timm.scheduler import CosineLRScheduler

        cfg = self.cfg
        params = list(self.runner.student.parameters())
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        scheduler = CosineLRScheduler(opt, t_initial=max(1, cfg.epochs), lr_min=cfg.min_lr, t_in_epochs=True)
        return opt, scheduler, False

    def transform(self) -> MultiViewTransform:
        base = data_lib.build_transform(self.cfg.img_size, training=True, **self.cfg.view_aug)
        return MultiViewTransform(base, 4)

    def sample_paths(self, step: int) -> list[Arch]:
        """(path i, path j) of ``step``, a pure function of (seed, step); one path twice without cross-path."""
        g = engine.generator(self.cfg.seed, 'pinas-paths', step)
        if not self.cfg.cross_path:
            path = self.space.sample(g)
            return [path, path]
        return list(sample_path_pair(self.space, g, self.cfg.path_pairs))

    def _names(self, arch: Arch) -> list[str]:
        """Student / teacher parameter names of path ``arch``: its supernet parameters and the neck (cached)."""
        if arch not in self._path_names:
            if len(self._path_names) > 4096:
                self._path_names.clear()
            supernet = self.runner.student.supernet
            if self._by_ptr is None:
                self._by_ptr = {p.data_ptr(): n for n, p in supernet.named_parameters()}
            names = path_parameter_names(supernet, arch, self._by_ptr)
            neck = [n for n, _ in self.runner.student.neck.named_parameters()]
            self._path_names[arch] = [f'supernet.{n}' for n in names] + [f'neck.{n}' for n in neck]
        return self._path_names[arch]

    def _pairs(self, arch: Arch | None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        if arch not in self._path_pairs:  # a few paths recur (small spaces); the cache is dropped when it grows
            if len(self._path_pairs) > 256:
                self._path_pairs.clear()
            self._path_pairs[arch] = self.runner.pairs(None if arch is None else self._names(arch))
        return self._path_pairs[arch]

    def update_teacher(self, paths: Sequence[Arch]) -> None:
        """The teacher before this step's keys (module docstring: ``path_ema``, ``full_ema`` or ``student``)."""
        if self.cfg.teacher == 'path_ema':
            for path in paths:
                self.runner.ema(self.cfg.ema_momentum, pairs=self._pairs(tuple(path)))
        else:
            self.runner.ema(self.cfg.ema_momentum if self.cfg.teacher == 'full_ema' else 0.0, pairs=self._pairs(None))

    def _chunk(self, micro_step: int) -> int:
        rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        return micro_step * world + rank

    def train_step(self, images: Any, labels: torch.Tensor, paths: list[Arch], ctx: StepContext) -> dict:
        if ctx.micro_step == 0:
            self._pending = []
            self.update_teacher(paths)
        views = list(images)
        n = len(views[1])
        g = engine.generator(self.cfg.seed, 'pinas-shuffle', ctx.step, self._chunk(ctx.micro_step))
        perms = [torch.randperm(n, generator=g), torch.randperm(n, generator=g)]
        loss, keys = ctx.model(views, tuple(paths[0]), tuple(paths[1]), perms)
        ctx.backward(loss)
        self._pending.append(keys.detach().float())
        return {'loss_contrastive': loss.detach()}

    def after_step(self, step: int) -> None:
        """Enqueue this step's keys in global micro-batch order (identical on every rank)."""
        if not self.cfg.negatives or not self._pending:
            return
        local = torch.stack(self._pending)  # (grad_accum, micro, dim)
        self._pending = []
        if dist.is_initialized() and dist.get_world_size() > 1:
            gathered = [torch.empty_like(local) for _ in range(dist.get_world_size())]
            dist.all_gather(gathered, local.contiguous())
            ordered = [gathered[r][a] for a in range(local.shape[0]) for r in range(len(gathered))]
        else:
            ordered = list(local)
        self.runner.enqueue(torch.cat(ordered))

    # -- rating and search ------------------------------------------------------------------------------------------
    def probe(self) -> LinearProbe:
        return LinearProbe(self.cfg, self.space)

    def rater(self, ctx: engine.DistContext) -> LinearProbeRater:
        return LinearProbeRater(self.probe(), ctx)

    def searcher(self, device: torch.device | None = None) -> EvolutionSearch | RandomSearch | ActionSpaceSearch:
        if self.cfg.searcher == 'random':
            return RandomSearch(self.cfg.search_samples, self.cfg.seed)
        if self.cfg.searcher == 'action_space':
            return ActionSpaceSearch(self.cfg.action_space_config(), self.cfg.out / 'search')
        return EvolutionSearch(self.cfg.evolution_config(), self.cfg.out / 'search')

    def provenance(self) -> dict:
        cfg = self.cfg
        return {
            'searcher': cfg.searcher,
            'score_name': 'minus held-out top-1 (%) of the shared linear probe',
            'ablation': {'cross_path': cfg.cross_path, 'teacher': cfg.teacher, 'negatives': cfg.negatives},
        }


# -- linear probe: a second engine run ------------------------------------------------------------------------------
class ProbeModel(nn.Module):
    """Frozen supernet + the shared linear classifier: ``model(x, arch)`` gives logits."""

    def __init__(self, supernet: nn.Module, width: int, num_classes: int) -> None:
        super().__init__()
        self.supernet = supernet.requires_grad_(False)
        self.classifier = nn.Linear(width, num_classes)
        nn.init.normal_(self.classifier.weight, std=0.01)  # official ClsHead init
        nn.init.zeros_(self.classifier.bias)

    def forward(self, x: torch.Tensor, arch: Arch) -> torch.Tensor:
        with torch.no_grad():
            feats = self.supernet(x, arch)
        return self.classifier(feats.float())


class LinearProbe:
    """The linear-probe stage as an engine :class:`~search.protocols.Method` run in ``OUTPUT/linear/``."""

    name = 'pinas_linear'

    def __init__(self, parent: PiNASConfig, space: Any) -> None:
        self.parent, self.space = parent, space
        self.cfg = dataclasses.replace(
            parent,
            output=str(parent.out / 'linear'),
            epochs=parent.linear_epochs,
            batch_size=parent.linear_batch_size,
        )
        self.supernet: ProbeModel | None = None
        self.num_classes = parent.num_classes
        self._supernet_id: str | None = None

    def _folder(self) -> Any:
        return _eval_folder(str(Path(self.parent.data_dir) / 'train'), self.parent.img_size)

    def supernet_id(self) -> str:
        """``<step>-<digest of the checkpointed tensors>``: which supernet the probe and the ratings belong to (a
        run started again with ``--overwrite`` to the same step is another supernet)."""
        if self._supernet_id is None:
            ckpt = pipeline.checkpoint_path(self.parent)
            if not ckpt.is_file():
                raise FileNotFoundError(f'no Pi-NAS supernet checkpoint {ckpt}: train it first (stage train)')
            state = engine.load_checkpoint(ckpt)
            digest = hashlib.sha1()
            for name in sorted(state['model']):
                digest.update(name.encode())
                digest.update(state['model'][name].detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
            self._supernet_id = f'{int(state["step"])}-{digest.hexdigest()[:16]}'
        return self._supernet_id

    def build(self, ctx: engine.DistContext, split: dict | None = None) -> nn.Module:
        """The student supernet of the Pi-NAS checkpoint, frozen, and a new classifier (seeded)."""
        if self.num_classes is None:
            self.num_classes = len(self._folder().reader.class_to_idx)
        supernet = self.space.build_supernet(num_classes=0).to(ctx.device)
        state = engine.load_checkpoint(pipeline.checkpoint_path(self.parent), ctx.device)['model']
        prefix = 'student.supernet.'
        supernet.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
        width = _feature_width(supernet, _any_path(self.space), self.parent.img_size)
        torch.manual_seed(engine.derive_seed(self.parent.seed, 'linear-probe-init'))
        self.supernet = ProbeModel(supernet, width, self.num_classes).to(ctx.device)
        return self.supernet

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {f'classifier.{k}': v for k, v in self.supernet.classifier.state_dict().items()}

    def train_mode(self) -> None:
        self.supernet.train()  # BN with batch statistics (section 4.1)

    def optimizer(self, steps_per_epoch: int) -> tuple[torch.optim.Optimizer, Any, bool]:
        from timm.scheduler import MultiStepLRScheduler

        p = self.parent
        params = self.supernet.classifier.parameters()
        opt = torch.optim.SGD(params, lr=p.linear_lr, momentum=p.linear_momentum, weight_decay=p.linear_weight_decay)
        scheduler = MultiStepLRScheduler(opt, decay_t=list(p.linear_milestones), decay_rate=p.linear_gamma)
        return opt, scheduler, False

    def transform(self) -> Any:
        return data_lib.build_transform(self.parent.img_size, training=True, **self.parent.linear_aug)

    def sample_paths(self, step: int) -> list[Arch]:
        return [self.space.sample(engine.generator(self.parent.seed, 'linear-path', step))]

    def train_step(self, images: torch.Tensor, labels: torch.Tensor, paths: list[Arch], ctx: StepContext) -> dict:
        loss = F.cross_entropy(ctx.model(images, paths[0]).float(), labels)
        ctx.backward(loss)
        return {'loss_linear': loss.detach()}

    def after_step(self, step: int) -> None:
        """The probe keeps no EMA or queue."""

    def train(self, ctx: engine.DistContext) -> int:
        """Train (or resume) the probe on the current supernet; a probe of another supernet or with other
        ``PROBE_KEYS`` options is started again.
        Returns the probe's checkpoint step."""
        out, source = self.cfg.out, self.cfg.out / 'supernet.json'
        record = {'supernet': self.supernet_id(), 'options': {k: getattr(self.parent, k) for k in PROBE_KEYS}}
        ckpt = pipeline.checkpoint_path(self.cfg)
        if ctx.is_main:
            stale = source.is_file() and json.loads(source.read_text()) != record
            if stale or (ckpt.is_file() and not source.is_file()):
                print(f'{out}: a linear probe of another supernet or other probe options: trained again')
                shutil.rmtree(out)
            out.mkdir(parents=True, exist_ok=True)
            split_file = self.parent.out / 'holdout_split.json'
            if split_file.is_file():
                shutil.copyfile(split_file, out / 'holdout_split.json')
            source.write_text(json.dumps(record) + '\n')
        ctx.barrier()
        split = pipeline.holdout_split(self.cfg, ctx)
        total = len(split['train']) // self.cfg.batch_size * self.cfg.epochs
        if not (ckpt.is_file() and int(engine.load_checkpoint(ckpt)['step']) >= total):
            pipeline.train(self, ctx, resume=True)
        return int(engine.load_checkpoint(ckpt)['step'])


class LinearProbeRater(PathRater):
    """Per architecture: precise BN recalibration, then top-1 of the shared linear classifier on the held-out split
    (score ``-top1``, lower is better), cached by a fingerprint of both checkpoints and the rating options.
    ``rate()`` first trains the probe (all ranks; resumes, or reuses a finished one)."""

    keys = ('space', 'space_options', 'holdout_per_class', 'calib_images', 'rating_images', 'recalibration')
    keys += PROBE_KEYS

    def __init__(self, probe: LinearProbe, ctx: engine.DistContext) -> None:
        self.probe = probe
        super().__init__(probe, ctx)  # type: ignore[arg-type]
        self.cfg = probe.parent  # rating options and output folder: the Pi-NAS run's
        self.path = self.cfg.out / 'ratings' / 'paths.jsonl'
        self.cache.path = self.path
        self._linear_step: int | None = None

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            if self._linear_step is None:
                self._linear_step = int(engine.load_checkpoint(pipeline.checkpoint_path(self.probe.cfg))['step'])
            doc = {'supernet': self.probe.supernet_id(), 'linear_step': self._linear_step}
            doc.update({k: getattr(self.cfg, k) for k in self.keys})
            self._fingerprint = json.dumps(doc, sort_keys=True)
        return self._fingerprint

    def rate(self) -> Any:
        self._linear_step = self.probe.train(self.ctx)
        return super().rate()

    def _load(self) -> None:
        """Supernet + classifier, calibration and held-out images (main process only, no collectives)."""
        cfg = self.cfg
        split = data_lib.holdout_split(
            Path(cfg.data_dir) / 'train', cfg.holdout_per_class, cfg.seed, cfg.out / 'holdout_split.json'
        )
        model = self.probe.build(self.ctx, split)
        state = engine.load_checkpoint(pipeline.checkpoint_path(self.probe.cfg), self.ctx.device)['model']
        model.load_state_dict(state, strict=False)
        model.eval()
        g = engine.generator(cfg.seed, 'rating-images')
        holdout = [split['holdout'][i] for i in torch.randperm(len(split['holdout']), generator=g).tolist()]
        g = engine.generator(cfg.seed, 'rating-calibration')
        calib = [split['train'][i] for i in torch.randperm(len(split['train']), generator=g).tolist()]
        self.eval_batches = self._batches(holdout[: cfg.rating_images])
        self.calib_batches = [x for x, _ in self._batches(calib[: cfg.calib_images])]
        self._loaded = True
