"""NASViT: sandwich supernet training with in-place alpha-divergence distillation and gradient projection.

Paper: Gong et al., "NASViT: Neural Architecture Search for Efficient Vision Transformers with Gradient
Conflict-Aware Supernet Training", ICLR 2022 (section 3, Alg. 1 and 2, Tab. 4, 5, 7); official code
github.com/facebookresearch/NASViT at 0472916 (``main.py``, ``misc/loss_ops.py``, ``misc/constrain_opt.py``), read,
not copied; facts and discrepancies in ../shared/specs/nasvit.md, decisions in docs/search.md (NASViT section).

One optimizer step (Alg. 1; official ``main.py:272-357``), on any space with ``extremes()`` (its min and max path):

1. the **max subnet** against the teacher target: soft-target cross-entropy on ``mean_i softmax(temp * z_i)`` of
   the timm ``teachers`` (the code: two SWSL ResNeXt-101 with ``temp`` 5; the paper: EfficientNet-B5), or
   cross-entropy on the labels with label smoothing when there is no teacher; its gradient is ``g_sup``;
2. the **min subnet and** ``num_random`` (2) **uniform subnets**, each against the detached max-subnet logits with the
   adaptive alpha-divergence (:func:`adaptive_alpha_divergence`: alpha -1 and +1, importance weights clipped at 5,
   per sample the larger divergence); their summed gradient is ``g_sub``;
3. ``g_sub`` clipped to global norm ``clip_grad`` (1.0; the code clips g_sub only, g_sup stays unclipped);
4. per parameter tensor, ``g = (1 + a) g_sub + g_sup`` with ``a = clamp(-<g_sub, g_sup> / (|g_sub|^2 + eps), 0,
   cap)`` (:func:`project_gradients`): Eq. 1 of the paper (g_sup projected onto the normal plane of g_sub when they
   conflict) with the code's eps 1e-6 and cap 2, on from ``projection_start_epoch`` (the code: after epoch 100);
   ``prioritize: sup`` swaps the roles (the paper's Tab. 7 ablation);
5. AdamW, then the EMA of the weights (0.99985, every step).

The two gradients are kept apart by the engine's gradient slots (:class:`search.pipeline.GradSlots`): each is
accumulated over micro-batches and averaged over DDP ranks on its own, so clipping and projection act on the
gradients of the whole global batch, the same in one process with accumulation as on many ranks.

The conflict statistic of the paper's Tab. 4 (share of layers whose supernet and subnet gradients have a negative
cosine) is logged every step as ``conflict_ratio`` (per layer = per module owning parameters) together with
``conflict_ratio_tensors`` (per parameter tensor, the projection's granularity), ``projected`` (tensors whose
g_sup was changed) and ``conflict_after`` (tensors still conflicting after the combination: the cap and eps of the
code can leave some); every ``conflict_log_every`` steps ``conflict_per_layer`` maps each layer to its conflict
share over those steps.

Rating and search: :mod:`search.methods.nasvit_search` (BN recalibration of ``calib_batches`` batches a subnet on
training images, top-1 on the held-out split; evolution per cost bin, the random-forest predictor of Alg. 2, the
Pareto front).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import data as data_lib
from .. import engine
from ..config import ConfigError, SearchConfig
from ..protocols import Arch, StepContext
from ..spaces import get_space
from ..strategies.evolution import EvolutionConfig

__all__ = [
    'NASViT',
    'NASViTConfig',
    'NASViTRunner',
    'adaptive_alpha_divergence',
    'alpha_divergence',
    'clip_grads_',
    'project_gradients',
]

PRIORITIES = ('sub', 'sup')
SEARCHERS = ('evolution', 'predictor')
CALIB_TRANSFORMS = ('train', 'eval')
RECALIBRATIONS = ('reset', 'momentum')
#: NASViT's evolution (paper App. C.1): 1024 random subnets, top 128 parents, 128 mutations + 128 crossovers a
#: generation, 40 generations; mutation probability 0.1 (the code's ``mutate_and_reset``; AlphaNet's search: 0.2).
NASVIT_EVOLUTION = dict(population=1024, parents=128, mutations=128, crossovers=128, iterations=40, mutate_prob=0.1)


# -- the losses ------------------------------------------------------------------------------------------------------
def alpha_divergence(
    student: torch.Tensor, teacher: torch.Tensor, alpha: float, iw_clip: float = 5.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample ``(D_alpha(p || q), surrogate)`` of teacher probabilities p and student probabilities q.

    ``D_alpha = sum q [r^alpha - 1] / (alpha (alpha - 1))`` with ``r = p / q`` and ``r^alpha`` clipped to
    ``[0, iw_clip]``; alpha = 1 is KL(p || q) (no clipping), alpha = 0 is KL(q || p) (r clipped). The surrogate
    ``-sum q rho(r) log q`` (q and rho detached) has the gradient of D_alpha where nothing is clipped (AlphaNet's
    ``f_divergence``): gradients reach the student only, never the teacher.
    """
    q_prob = F.softmax(student, dim=1).detach()
    p_prob = F.softmax(teacher, dim=1).detach()
    q_log = F.log_softmax(student, dim=1)
    ratio = p_prob / q_prob
    if abs(alpha) < 1e-3:
        ratio = ratio.clamp(0, iw_clip)
        f, rho = -ratio.log(), ratio.log() - 1.0
    elif abs(alpha - 1.0) < 1e-3:
        f, rho = ratio * ratio.log(), ratio
    else:
        base = 1.0 / (alpha * (alpha - 1.0))
        powered = ratio.pow(alpha).clamp(0, iw_clip)
        f, rho = powered * base - base, powered / alpha + base
    value = (q_prob * f).sum(dim=1)
    surrogate = -(q_prob * rho * q_log).sum(dim=1)
    return value, surrogate


def adaptive_alpha_divergence(
    student: torch.Tensor,
    teacher: torch.Tensor,
    alpha_min: float = -1.0,
    alpha_max: float = 1.0,
    iw_clip: float = 5.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, divergence)``, batch means: per sample the larger of ``D_alpha_min`` and ``D_alpha_max`` (AlphaNet's
    ``AdaptiveLossSoft``, NASViT's subnet loss); ``loss`` is the surrogate to back-propagate, ``divergence`` the
    value to log."""
    left, left_loss = alpha_divergence(student, teacher, alpha_min, iw_clip)
    right, right_loss = alpha_divergence(student, teacher, alpha_max, iw_clip)
    pick_left = left > right
    loss = torch.where(pick_left, left_loss, right_loss).mean()
    return loss, torch.where(pick_left, left, right).mean().detach()


def soft_target_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """timm's ``SoftTargetCrossEntropy``: ``mean_b sum_c -target log_softmax(logits)``."""
    return (-target * F.log_softmax(logits, dim=-1)).sum(dim=-1).mean()


# -- the gradient combination ----------------------------------------------------------------------------------------
def clip_grads_(grads: list[torch.Tensor | None], max_norm: float) -> torch.Tensor | None:
    """Scale ``grads`` in place to global L2 norm at most ``max_norm`` (``clip_grad_norm_``'s rule: factor
    ``min(1, max_norm / (norm + 1e-6))``); returns the norm before clipping (``None`` when no tensor is present)."""
    present = [g for g in grads if g is not None]
    if not present:
        return None
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in present]))
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for g in present:
        g.mul_(coef.to(g.dtype))
    return total


@dataclass
class Projection:
    """What :func:`project_gradients` returns: the combined gradients and, for the tensors that have both
    gradients (``both``: their indices), the inner products, squared norms and projection coefficients."""

    grads: list[torch.Tensor | None]
    both: list[int]
    inner: torch.Tensor
    sup_sq: torch.Tensor
    sub_sq: torch.Tensor
    coef: torch.Tensor
    after: torch.Tensor  # inner product of the combined gradient with the prioritised one


def project_gradients(
    g_sup: list[torch.Tensor | None],
    g_sub: list[torch.Tensor | None],
    project: bool = True,
    prioritize: str = 'sub',
    cap: float | None = 2.0,
    eps: float = 1e-6,
) -> Projection:
    """Combine supernet and subnet gradients per tensor (paper Eq. 1, the code's ``Constraint.second_step``).

    With ``prioritize='sub'`` a tensor's gradient is ``(1 + a) g_sub + g_sup``, ``a = clamp(-<g_sub, g_sup> /
    (|g_sub|^2 + eps), 0, cap)``: when the two conflict (negative inner product) g_sup loses its component against
    g_sub, i.e. ``g_sub + proj(g_sup)`` of Eq. 1; otherwise, or with ``project=False``, the plain sum. With
    ``cap=None`` and ``eps=0`` the combination has exactly ``<g, g_sub> = |g_sub|^2 >= 0`` on conflict; the code's
    cap 2 and eps 1e-6 leave a residual conflict when ``g_sup`` is long against ``g_sub`` (logged as
    ``conflict_after``). ``prioritize='sup'`` swaps the roles.

    Edge cases (specs section 2.3), explicit: a tensor with only g_sup (no subnet used it) gets g_sup, once (the
    code doubles it under PyTorch >= 2.0's ``zero_grad(set_to_none=True)``, an accident of in-place addition); a
    tensor with only g_sub gets g_sub (e.g. a switchable BN of a width the max subnet does not use); a tensor with
    neither keeps ``None`` (the optimizer skips it); a zero g_sub or g_sup has inner product 0: the plain sum.
    """
    if prioritize not in PRIORITIES:
        raise ValueError(f'prioritize {prioritize!r}: expected one of {PRIORITIES}')
    if len(g_sup) != len(g_sub):
        raise ValueError(f'{len(g_sup)} supernet gradients but {len(g_sub)} subnet gradients')
    out: list[torch.Tensor | None] = [
        s if b is None else b if s is None else None for s, b in zip(g_sup, g_sub, strict=True)
    ]
    both = [i for i, (s, b) in enumerate(zip(g_sup, g_sub, strict=True)) if s is not None and b is not None]
    if not both:
        empty = torch.zeros(0)
        return Projection(out, both, empty, empty, empty, empty, empty)
    sup = [g_sup[i] for i in both]
    sub = [g_sub[i] for i in both]
    inner = torch.stack([(s.float() * b.float()).sum() for s, b in zip(sup, sub, strict=True)])
    sup_sq = torch.stack([s.float().pow(2).sum() for s in sup])
    sub_sq = torch.stack([b.float().pow(2).sum() for b in sub])
    keep, other, keep_sq = (sub, sup, sub_sq) if prioritize == 'sub' else (sup, sub, sup_sq)
    if project:
        coef = torch.where(inner < 0, -inner / (keep_sq + eps), torch.zeros_like(inner)).clamp(min=0.0, max=cap)
    else:
        coef = torch.zeros_like(inner)
    for j, i in enumerate(both):
        out[i] = keep[j].mul(1.0 + coef[j].to(keep[j].dtype)).add_(other[j])
    after = (1.0 + coef) * keep_sq + inner
    return Projection(out, both, inner, sup_sq, sub_sq, coef, after)


# -- the config ------------------------------------------------------------------------------------------------------
@dataclass
class NASViTConfig(SearchConfig):
    """Every option of a NASViT run; defaults are the official code's recipe (module docstring, docs/search.md)."""

    output: str = 'runs/nasvit'
    space: str = 'nasvit'
    space_options: dict = field(default_factory=dict)
    num_classes: int | None = None  # default: the number of classes of <data_dir>/train
    epochs: int = 360  # paper section 2 (cfg.yaml: 400; its default resume file is ckpt_360.pth)
    batch_size: int = 2048  # not stated; AlphaNet's 64 GPUs x 32; the lr follows the batch
    # optimiser (misc/optimizer.py, main.py:112-114, Swin's lr_scheduler.py): AdamW, lr 3e-4 x batch / 512
    base_lr: float = 3e-4
    lr_base_batch: int = 512
    min_lr: float = 5e-6  # scaled like the lr
    warmup_lr: float = 5e-7  # scaled like the lr
    warmup_epochs: float = 5.0
    weight_decay: float = 0.0  # paper Tab. 5
    betas: tuple[float, ...] = (0.9, 0.999)
    eps: float = 1e-8
    clip_grad: float | None = 1.0  # on g_sub only
    ema_decay: float | None = 0.99985  # timm ModelEma every step (main.py:172); null: no EMA
    rate_ema: bool = True  # rate the EMA weights (the released checkpoint is the EMA)
    # the sandwich rule and the distillation (misc/config.py num_arch_training 4; misc/loss_ops.py)
    num_random: int = 2
    alpha_min: float = -1.0
    alpha_max: float = 1.0
    iw_clip: float = 5.0
    teachers: list = field(default_factory=list)  # timm names; [] = labels (with label_smoothing) for the max subnet
    teacher_temp: float = 1.0  # teacher logits x temp before softmax (the code: 5)
    teacher_pretrained: bool = True
    label_smoothing: float = 0.1
    # gradient projection (misc/constrain_opt.py; main.py:242-243 switches it on after epoch 100)
    projection: bool = True
    projection_start_epoch: int = 101  # on for epochs >= this (0-based); 0: from the start
    prioritize: str = 'sub'
    proj_cap: float | None = 2.0  # null: no cap (exact Eq. 1 with proj_eps 0)
    proj_eps: float = 1e-6
    conflict_log_every: int = 100
    # augmentation (Tab. 5; data/build.py through timm's create_transform)
    train_aug: dict = field(
        default_factory=lambda: {
            'auto_augment': 'rand-n1-m1-mstd0.5-inc1',
            'interpolation': 'bicubic',
            're_prob': 0.01,
            're_mode': 'pixel',
        }
    )
    # rating (misc/attentive_nas_eval.py: reset BN, momentum None, 64 training batches with training augmentation)
    calib_batches: int = 64
    calib_batch: int = 64
    calib_transform: str = 'train'
    recalibration: str = 'reset'
    rating_images: int = 5000  # README: the search set is 5 images a class
    rating_batch: int = 250
    holdout_per_class: int = 5
    # search (paper App. C.1, Alg. 2)
    searcher: str = 'evolution'
    evolution: dict = field(default_factory=lambda: dict(NASVIT_EVOLUTION))
    bins: list = field(default_factory=list)  # [[low, high], ...] in metric units; [] = num_bins equal bins
    num_bins: int = 6
    predictor_samples: int = 1024  # Alg. 2: rated subnets, half to fit the random forest, half to check it
    predictor_trees: int = 100
    latency_runtime: str = 'onnxruntime'  # metric latency: batch 1 on the CPU (paper Tab. 12)
    top_k: int = 6

    def __post_init__(self) -> None:
        super().__post_init__()
        choices = {
            'prioritize': (self.prioritize, PRIORITIES),
            'searcher': (self.searcher, SEARCHERS),
            'calib_transform': (self.calib_transform, CALIB_TRANSFORMS),
            'recalibration': (self.recalibration, RECALIBRATIONS),
            'latency_runtime': (self.latency_runtime, ('onnxruntime', 'torch')),
        }
        for name, (value, allowed) in choices.items():
            if value not in allowed:
                raise ConfigError(f'{name} {value!r}: expected one of {", ".join(allowed)}')
        positive = ('base_lr', 'lr_base_batch', 'calib_batches', 'calib_batch', 'rating_images', 'rating_batch')
        positive += ('num_bins', 'predictor_trees', 'conflict_log_every', 'teacher_temp')
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f'{name} must be positive, got {getattr(self, name)}')
        if self.num_random < 0:
            raise ConfigError(f'num_random must be >= 0, got {self.num_random}')
        if not self.alpha_min <= self.alpha_max:
            raise ConfigError(f'alpha_min {self.alpha_min} is above alpha_max {self.alpha_max}')
        if self.iw_clip <= 0:
            raise ConfigError(f'iw_clip must be positive, got {self.iw_clip}')
        if self.clip_grad is not None and self.clip_grad <= 0:
            raise ConfigError(f'clip_grad must be positive (or null: no clipping), got {self.clip_grad}')
        if self.ema_decay is not None and not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f'ema_decay must be in [0, 1) (or null: no EMA), got {self.ema_decay}')
        if self.rate_ema and self.ema_decay is None:
            raise ConfigError('rate_ema: true needs an EMA (ema_decay is null)')
        if self.proj_cap is not None and self.proj_cap < 0:
            raise ConfigError(f'proj_cap must be >= 0 (or null: no cap), got {self.proj_cap}')
        if self.proj_eps < 0:
            raise ConfigError(f'proj_eps must be >= 0, got {self.proj_eps}')
        if self.projection_start_epoch < 0:
            raise ConfigError(f'projection_start_epoch must be >= 0, got {self.projection_start_epoch}')
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f'label_smoothing must be in [0, 1), got {self.label_smoothing}')
        if not all(isinstance(t, str) for t in self.teachers):
            raise ConfigError(f'teachers must be a list of timm model names, got {self.teachers!r}')
        if len(self.betas) != 2:
            raise ConfigError(f'betas must be two numbers, got {self.betas!r}')
        for b in self.bins:
            if not (isinstance(b, (list, tuple)) and len(b) == 2 and float(b[0]) < float(b[1])):
                raise ConfigError(f'bins: each bin must be [low, high] with low < high, got {b!r}')
        if self.predictor_samples < 4:
            raise ConfigError(f'predictor_samples must be >= 4 (half fit, half check), got {self.predictor_samples}')
        self.evolution_config()
        try:
            space = space_of(self)
        except (KeyError, ValueError, TypeError, ImportError) as err:
            reason = err.args[0] if isinstance(err, KeyError) else err
            raise ConfigError(f'space {self.space!r} with space_options {self.space_options}: {reason}') from None
        if not callable(getattr(space, 'extremes', None)):
            raise ConfigError(f'space {self.space!r} has no extremes(): NASViT needs its min and max subnets')

    @property
    def lr(self) -> float:
        """The learning rate of the batch: ``base_lr x batch_size / lr_base_batch`` (main.py:112-114)."""
        return self.base_lr * self.batch_size / self.lr_base_batch

    def evolution_config(self, **replace: Any) -> EvolutionConfig:
        """The evolution options (checked, named) with the run's seed and metric; ``replace`` sets more fields."""
        if not isinstance(self.evolution, dict):
            raise ConfigError(f'evolution: expected a mapping of evolution options, got {self.evolution!r}')
        names = {f.name for f in dataclasses.fields(EvolutionConfig)} - {'seed', 'metric', 'budget', 'min_budget'}
        unknown = sorted(set(self.evolution) - names)
        if unknown:
            raise ConfigError(f'evolution: unknown option(s) {unknown}; expected some of {sorted(names)}')
        try:
            return EvolutionConfig(**{**self.evolution, 'seed': self.seed, 'metric': self.metric, **replace})
        except (TypeError, ValueError) as err:
            raise ConfigError(f'evolution: {err}') from None


def space_of(cfg: NASViTConfig) -> Any:
    """The config's space with its ``space_options``, and ``img_size`` for spaces that have one (NATS-size does; the
    NASViT space does not: a path's resolution is one of its decisions, the supernet resizes its input to it)."""
    options = dict(cfg.space_options)
    if hasattr(get_space(cfg.space), 'img_size'):
        options.setdefault('img_size', cfg.img_size)
    return get_space(cfg.space, **options)


@functools.lru_cache(maxsize=4)
def _folder(root: str, img_size: int, training: bool, aug: str) -> Any:
    """The training folder with the eval (or training) transform, scanned once per process."""
    import json

    return data_lib.image_folder(root, data_lib.build_transform(img_size, training=training, **json.loads(aug)))


# -- the method ------------------------------------------------------------------------------------------------------
class NASViTRunner(nn.Module):
    """What the engine checkpoints and wraps in DDP: the supernet and, when set, its EMA (timm ``ModelEmaV3``).

    ``runner(x, arch)`` runs the supernet's path ``arch``.
    """

    def __init__(self, supernet: nn.Module, ema_decay: float | None) -> None:
        super().__init__()
        self.supernet = supernet
        self.ema = None
        if ema_decay is not None:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(supernet, decay=ema_decay)
            for p in self.ema.parameters():
                p.requires_grad_(False)

    def forward(self, x: torch.Tensor, arch: Arch) -> torch.Tensor:
        return self.supernet(x, arch)


class NASViT:
    """The NASViT method (:class:`~search.protocols.Method`); see the module docstring."""

    name = 'nasvit'
    config_class = NASViTConfig
    groups_per_lr = 2  # (decayed, undecayed) parameter groups share one learning rate
    grad_slots = ('sup', 'sub')

    def __init__(self, cfg: NASViTConfig) -> None:
        self.cfg = cfg
        self.space = space_of(cfg)
        self.supernet: nn.Module | None = None
        self.runner: NASViTRunner | None = None
        self.teachers: list[nn.Module] = []
        self.num_classes: int | None = cfg.num_classes
        self._conflicts: dict[str, list[int]] = {}

    # -- state ------------------------------------------------------------------------------------------------------
    def _folder(self, training: bool = False) -> Any:
        import json

        aug = json.dumps(self.cfg.train_aug if training else {}, sort_keys=True)
        return _folder(str(Path(self.cfg.data_dir) / 'train'), self.cfg.img_size, training, aug)

    def build(self, ctx: engine.DistContext, split: dict | None = None) -> nn.Module:
        """Supernet (+ EMA) initialised from the run seed, and the frozen teachers."""
        if self.num_classes is None:
            self.num_classes = len(self._folder().reader.class_to_idx)
        torch.manual_seed(engine.derive_seed(self.cfg.seed, 'supernet-init'))
        self.supernet = self.space.build_supernet(num_classes=self.num_classes)
        self.runner = NASViTRunner(self.supernet, self.cfg.ema_decay).to(ctx.device)
        self.teachers = [self._teacher(name).to(ctx.device) for name in self.cfg.teachers]
        return self.runner

    def _teacher(self, name: str) -> nn.Module:
        import timm

        import backbones  # noqa: F401  (a zoo name works as a teacher too)

        try:
            model = timm.create_model(name, pretrained=self.cfg.teacher_pretrained, num_classes=self.num_classes)
        except (RuntimeError, ValueError) as err:
            raise ValueError(f'teacher {name!r}: {err}') from None
        for p in model.parameters():
            p.requires_grad_(False)
        return model.eval()

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return self.runner.state_dict()

    def train_mode(self) -> None:
        self.supernet.train()
        for t in self.teachers:
            t.eval()

    def optimizer(self, steps_per_epoch: int) -> tuple[torch.optim.Optimizer, Any, bool]:
        """AdamW on the supernet (no decay on 1-D parameters, biases, BN and scalings; wd 0 anyway), the code's
        timm cosine per iteration over all steps with a linear warm-up (Swin's ``build_scheduler``)."""
        from timm.scheduler import CosineLRScheduler

        cfg = self.cfg
        decay, no_decay = [], []
        for name, p in self.supernet.named_parameters():
            flat = p.ndim <= 1 or name.endswith('.bias') or 'rescale' in name or 'scale' in name.rsplit('.', 1)[-1]
            (no_decay if flat else decay).append(p)
        groups = [{'params': decay, 'weight_decay': cfg.weight_decay}, {'params': no_decay, 'weight_decay': 0.0}]
        opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)
        scale = cfg.batch_size / cfg.lr_base_batch
        scheduler = CosineLRScheduler(
            opt,
            t_initial=max(1, steps_per_epoch * cfg.epochs),
            lr_min=cfg.min_lr * scale,
            warmup_t=round(cfg.warmup_epochs * steps_per_epoch),
            warmup_lr_init=cfg.warmup_lr * scale,
            t_in_epochs=False,
        )
        return opt, scheduler, True

    def transform(self) -> Any:
        return data_lib.build_transform(self.cfg.img_size, training=True, **self.cfg.train_aug)

    # -- one step ---------------------------------------------------------------------------------------------------
    def sample_paths(self, step: int) -> list[Arch]:
        """``[max, min, random...]``: the sandwich rule, random draws a pure function of (seed, step)."""
        smallest, largest = self.space.extremes()
        g = engine.generator(self.cfg.seed, 'path', step)
        return [largest, smallest, *[self.space.sample(g) for _ in range(self.cfg.num_random)]]

    @torch.no_grad()
    def _target(self, images: torch.Tensor) -> torch.Tensor | None:
        if not self.teachers:
            return None
        probs = [F.softmax(t(images).float() * self.cfg.teacher_temp, dim=-1) for t in self.teachers]
        return torch.stack(probs).mean(0)

    def train_step(
        self, images: torch.Tensor, labels: torch.Tensor, paths: list[Arch], ctx: StepContext
    ) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        largest, *subnets = paths
        target = self._target(images)
        logits = ctx.model(images, largest)
        if target is None:
            loss_sup = F.cross_entropy(logits.float(), labels, label_smoothing=cfg.label_smoothing)
        else:
            loss_sup = soft_target_cross_entropy(logits.float(), target)
        ctx.backward(loss_sup, slot='sup')
        soft = logits.detach().float()
        divergence = torch.zeros((), device=soft.device)
        for arch in subnets:
            out = ctx.model(images, arch)
            loss, value = adaptive_alpha_divergence(out.float(), soft, cfg.alpha_min, cfg.alpha_max, cfg.iw_clip)
            ctx.backward(loss, slot='sub')
            divergence = divergence + value
        return {'loss_sup': loss_sup.detach(), 'loss_kd': divergence}

    def combine_grads(
        self, grads: dict[str, list[torch.Tensor | None]], named: list[tuple[str, nn.Parameter]], ctx: StepContext
    ) -> dict[str, Any]:
        """Clip g_sub, project per tensor (when on), set ``p.grad``; returns the conflict statistics to log."""
        cfg = self.cfg
        sub_norm = clip_grads_(grads['sub'], cfg.clip_grad) if cfg.clip_grad is not None else None
        on = cfg.projection and ctx.epoch >= cfg.projection_start_epoch
        proj = project_gradients(grads['sup'], grads['sub'], on, cfg.prioritize, cfg.proj_cap, cfg.proj_eps)
        for (_, p), g in zip(named, proj.grads, strict=True):
            p.grad = g
        record: dict[str, Any] = {'projection_on': on}
        if sub_norm is not None:
            record['g_sub_norm'] = float(sub_norm)
        if not proj.both:
            return record
        layers = [named[i][0].rpartition('.')[0] for i in proj.both]
        valid = (proj.sup_sq > 0) & (proj.sub_sq > 0)
        order = sorted(set(layers))
        index = torch.tensor([order.index(n) for n in layers])
        per_layer = torch.zeros(len(order), 3, dtype=torch.float64).index_add_(
            0, index, torch.stack([proj.inner, proj.sup_sq, proj.sub_sq], 1).cpu().double()
        )
        layer_valid = (per_layer[:, 1] > 0) & (per_layer[:, 2] > 0)
        layer_conflict = (per_layer[:, 0] < 0) & layer_valid
        stats = torch.stack(
            [
                (proj.inner < 0).logical_and(valid).sum(),
                valid.sum(),
                (proj.coef > 0).sum(),
                (proj.after < 0).logical_and(valid).sum(),
            ]
        ).tolist()
        n_valid = max(stats[1], 1)
        record.update(
            conflict_ratio=float(layer_conflict.sum()) / max(int(layer_valid.sum()), 1),
            conflict_ratio_tensors=stats[0] / n_valid,
            projected=int(stats[2]),
            conflict_after=stats[3] / n_valid,
        )
        for name, hit, ok in zip(order, layer_conflict.tolist(), layer_valid.tolist(), strict=True):
            if ok:
                seen = self._conflicts.setdefault(name, [0, 0])
                seen[0] += int(hit)
                seen[1] += 1
        if (ctx.step + 1) % cfg.conflict_log_every == 0:
            record['conflict_per_layer'] = {n: round(c / s, 4) for n, (c, s) in sorted(self._conflicts.items())}
            self._conflicts = {}
        return record

    def after_step(self, step: int) -> None:
        """The EMA of the weights, every step (main.py:355-356)."""
        if self.runner.ema is not None:
            self.runner.ema.update(self.supernet)

    # -- rating and search ------------------------------------------------------------------------------------------
    def rater(self, ctx: engine.DistContext) -> Any:
        from .nasvit_search import NASViTRater

        return NASViTRater(self, ctx)

    def searcher(self, device: torch.device | None = None) -> Any:
        from .nasvit_search import BinnedSearch

        return BinnedSearch(self)

    def provenance(self) -> dict:
        return {'searcher': self.cfg.searcher, 'score_name': 'minus held-out top-1 (%)'}
