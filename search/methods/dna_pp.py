"""DNA++: teacher and supernet trained jointly without labels, block by block, with a VICReg-style loss.

Paper: DNA Family (arXiv 2403.01326) section 3.5, Eq. 10-11. Per block k, two MLP projectors map the teacher's
block output (view A) and the supernet path's block output (fed the teacher's previous-block feature of view B) to
Z_k and Z^_k; the loss is

    L = l_inv / (K M C) sum_k sum_j ||Z_k^j - Z^_k^j||^2                   (invariance, Eq. 10 averaged over C too)
      + l_cov / (K C) sum_k (||offdiag Cov(Z_k)||^2 + ||offdiag Cov(Z^_k)||^2)   (covariance, 1/(M-1))
      + l_var / (C K) sum_k sum_c max(0, gamma - sqrt(Var(Z_k,c) + eps))   (variance hinge, Eq. 11)

The paper gives none of the constants. We take VICReg's published defaults (Bardes et al., ICLR 2022):
l_inv = 25, l_var = 25, l_cov = 1, gamma = 1, eps = 1e-4, and apply the variance hinge to both branches, as
VICReg does (the paper writes it for Z only; ``variance_on='teacher'`` follows the paper literally). Projectors
are VICReg's 3-layer MLP (Linear-BN-ReLU, Linear-BN-ReLU, Linear) on globally pooled features, narrower than
VICReg's 8192 because block features have 24-640 channels: ``projector_dim`` (default 2048). Optimizer: LARS,
lr 0.0025 per 256 images, cosine schedule (paper 4.4); the teacher starts from ImageNet weights unless
``teacher_pretrained`` is false (the paper says "jointly optimize" and does not say from where).

The paper runs DNA++ on a ViT space, which has no public definition; here it runs on any MBConv space with the
same engine. Candidates are rated by the relative L1 between the projected path output and the projected teacher
output (the invariance term in the projector space), after the same BN recalibration as DNA.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from .. import data as data_lib
from .. import engine, pipeline
from ..spaces.mbconv import MBConvSupernet
from . import dna
from .teacher import BlockTeacher

__all__ = ['DNAPP', 'DNAPPConfig', 'VICRegRunner', 'projector', 'run', 'vicreg_loss']


@dataclass
class DNAPPConfig(dna.DNAConfig):
    """DNA's options plus the self-supervised ones (defaults: VICReg's published values; see the module doc)."""

    lambda_inv: float = 25.0
    lambda_var: float = 25.0
    lambda_cov: float = 1.0
    gamma: float = 1.0
    eps: float = 1e-4
    variance_on: str = 'both'
    projector_dim: int = 2048
    base_lr: float = 0.0025  # LARS, per 256 images (paper 4.4)
    warmup_epochs: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.variance_on not in ('both', 'teacher'):
            raise dna.ConfigError(f'variance_on {self.variance_on!r}: expected "both" or "teacher"')


def projector(in_dim: int, dim: int) -> nn.Sequential:
    """VICReg's projector shape: Linear-BN-ReLU, Linear-BN-ReLU, Linear."""
    return nn.Sequential(
        nn.Linear(in_dim, dim),
        nn.BatchNorm1d(dim),
        nn.ReLU(inplace=True),
        nn.Linear(dim, dim),
        nn.BatchNorm1d(dim),
        nn.ReLU(inplace=True),
        nn.Linear(dim, dim),
    )


def _off_diagonal(m: torch.Tensor) -> torch.Tensor:
    n = m.shape[0]
    return m.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


def vicreg_loss(
    z: torch.Tensor,
    z_hat: torch.Tensor,
    lambda_inv: float = 25.0,
    lambda_var: float = 25.0,
    lambda_cov: float = 1.0,
    gamma: float = 1.0,
    eps: float = 1e-4,
    variance_on: str = 'both',
    gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """The three terms of Eq. 10-11 for one block (already weighted); ``z`` is the teacher side, ``z_hat`` the path.

    Invariance is the squared distance averaged over samples and dimensions (as VICReg's implementation, whose
    coefficients assume the mean; Eq. 10 writes a sum over dimensions); covariance sums the squared off-diagonal
    entries of each branch's covariance (1/(M-1)) divided by the dimension C; the variance hinge is averaged over
    dimensions. ``gather`` (DDP: the embeddings of every rank, with gradients) feeds the variance and covariance
    terms, as VICReg does; the invariance term is per sample and stays local.
    """
    if z.shape != z_hat.shape or z.ndim != 2 or z.shape[0] < 2:
        raise ValueError(f'vicreg_loss needs two (batch >= 2, dim) tensors of one shape, got {z.shape} / {z_hat.shape}')
    z, z_hat = z.float(), z_hat.float()
    m, c = z.shape
    inv = F.mse_loss(z, z_hat)
    if gather is not None:
        z, z_hat = gather(z), gather(z_hat)
        m = z.shape[0]
    branches = (z, z_hat) if variance_on == 'both' else (z,)
    var = sum(F.relu(gamma - torch.sqrt(b.var(dim=0) + eps)).mean() for b in branches)
    cov = 0.0
    for b in (z, z_hat):
        centered = b - b.mean(dim=0)
        cov_m = centered.T @ centered / (m - 1)
        cov = cov + _off_diagonal(cov_m).pow(2).sum() / c
    return {'inv': lambda_inv * inv, 'var': lambda_var * var, 'cov': lambda_cov * cov}


def _gather_ranks(x: torch.Tensor) -> torch.Tensor:
    """Every rank's ``x`` concatenated, with gradients flowing back to each (VICReg's ``FullGatherLayer``)."""
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0)


class VICRegRunner(nn.Module):
    """What DDP wraps for DNA++: teacher (trained), supernet and projectors; returns one loss per path."""

    def __init__(
        self, cfg: DNAPPConfig, teacher: BlockTeacher, supernet: MBConvSupernet, adapters: dna.DNAAdapters
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.teacher = teacher
        self.supernet = supernet
        self.adapters = adapters
        chs = adapters.teacher_channels
        self.proj_teacher = nn.ModuleList(projector(c, cfg.projector_dim) for c in chs)
        self.proj_student = nn.ModuleList(projector(c, cfg.projector_dim) for c in chs)

    def forward(self, views: Sequence[torch.Tensor], paths: list) -> list[torch.Tensor]:
        view_a, view_b = views
        feats_a = self.teacher(view_a)
        with torch.no_grad():
            feats_b = self.teacher(view_b)  # student inputs: detached, as in DNA
        losses = []
        for k, w, choice in paths:
            x = view_b if k == 0 else feats_b[k - 1]
            y = self.adapters.forward_block(self.supernet, k, x, w, choice)
            z = self.proj_teacher[k](feats_a[k].mean((2, 3)))
            z_hat = self.proj_student[k](y.mean((2, 3)))
            terms = vicreg_loss(
                z,
                z_hat,
                self.cfg.lambda_inv,
                self.cfg.lambda_var,
                self.cfg.lambda_cov,
                self.cfg.gamma,
                self.cfg.eps,
                self.cfg.variance_on,
                gather=_gather_ranks if dist.is_available() and dist.is_initialized() else None,
            )
            losses.append(sum(terms.values()))
        return losses

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Everything: the teacher is trained too."""
        return self.state_dict()


class _TwoViews:
    """Two independent draws of one transform (the two augmented views of an image)."""

    def __init__(self, transform: Any) -> None:
        self.transform = transform

    def __call__(self, img: Any) -> tuple[Any, Any]:
        return self.transform(img), self.transform(img)


class DNAPP(dna.DNA):
    """DNA++ as a :class:`~search.protocols.Method`: DNA's loop with a trained teacher, projectors and VICReg."""

    name = 'dna_pp'
    config_class: type = DNAPPConfig

    def __init__(self, cfg: DNAPPConfig) -> None:
        if cfg.blocks is not None:
            raise dna.ConfigError(
                'dna_pp trains its teacher jointly with every block: --block jobs would each train their own '
                'teacher, so DNA++ runs all blocks in one job'
            )
        super().__init__(cfg)

    def teacher_trainable(self) -> bool:
        return True

    def make_runner(self, teacher: BlockTeacher, supernet: MBConvSupernet, adapters: dna.DNAAdapters) -> nn.Module:
        return VICRegRunner(self.cfg, teacher, supernet, adapters)

    def optimizer(self, steps_per_epoch: int) -> tuple:
        """LARS (timm) at ``base_lr x batch / 256``, cosine over the run with a warm-up; stepped per step."""
        from timm.optim import create_optimizer_v2
        from timm.scheduler import CosineLRScheduler

        cfg = self.cfg
        lr = cfg.base_lr * cfg.batch_size / 256
        optimizer = create_optimizer_v2(self.runner, 'lars', lr=lr, weight_decay=cfg.weight_decay)
        total = steps_per_epoch * cfg.epochs
        scheduler = CosineLRScheduler(
            optimizer,
            t_initial=total,
            warmup_t=min(cfg.warmup_epochs * steps_per_epoch, max(total - 1, 0)),
            warmup_lr_init=lr * 1e-3,
            t_in_epochs=False,
        )
        return optimizer, scheduler, True

    def transform(self) -> Any:
        return _TwoViews(data_lib.build_transform(self.cfg.img_size, training=True, **self.cfg.train_aug))

    def rating_head(self, k: int, cell: int) -> nn.Module:
        return nn.Sequential(
            self.adapters.outputs[k][cell], nn.AdaptiveAvgPool2d(1), nn.Flatten(), self.runner.proj_student[k]
        )

    @torch.no_grad()
    def rating_target(self, k: int, feature: torch.Tensor) -> torch.Tensor:
        return self.runner.proj_teacher[k].eval()(feature.mean((2, 3)))


def run(
    cfg: DNAPPConfig, ctx: engine.DistContext, resume: bool = False, stages: Sequence[str] = pipeline.STAGES
) -> list[dict]:
    """DNA++ end to end on the engine: joint self-supervised training, rating in projector space, exact search."""
    return pipeline.run(DNAPP(cfg), ctx, stages=stages, resume=resume)
