"""DNA on a cell space: block-wise distillation of an NB201 supernet from a trained stand-alone network of the space.

DNA (arXiv 2403.01326, sections 3.3 and 4.3; :mod:`search.methods.dna`) splits the supernet into blocks at the
teacher's stage boundaries, trains every block to reproduce the teacher's block output from the teacher's previous
block output, and rates a candidate by the relative L1 of its block outputs (Eq. 7). :mod:`search.methods.dna`
does this for MBConv spaces, whose blocks are searched independently; this module does it for the ``nb201`` cell
space, where one cell genotype is shared by every stage, so the blocks are the three resolution stages and an
architecture is rated as a whole:

* Teacher: an ``nb201`` network of the same width and depth trained stand-alone (``teacher_checkpoint``, a
  safetensors file; ``teacher_spec`` or the file's ``spec`` metadata names its edges): "DNA where its teacher
  fits" (issue 12). Its stage outputs (``stages.0`` .. ``stages.2``, before the final BN + ReLU) are the block
  targets; their shapes equal the supernet's stage outputs, so no adapters are needed. It keeps its trained BN
  statistics (it was trained on the same data at the same resolution).
* Training: every step trains every block on its own uniformly drawn path (as DNA trains blocks "in parallel"),
  block 0 from the image through the supernet's stem, block k > 0 from the teacher's stage k - 1 output, MSE
  loss; Adam with DNA's per-block learning rates (``lr``: 0.002 for the first and last block, 0.005 between) decayed
  by ``lr_decay`` each epoch, weight decay on conv weights only.
* Rating (:class:`CellBlockRater`): a path's score is the sum over blocks of Eq. 7's relative L1 on the held-out
  images, each block's BN statistics re-estimated on ``calib_images`` training images first; lower is better.
  Scores are cached per architecture (``ratings/paths.jsonl``) under a fingerprint.
* Search: the score does not add up over independent block choices (the cell is shared), so DNA's exact budgeted
  search does not apply; SPOS's searchers do (``searcher: random`` or ``evolution``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import data as data_lib
from .. import engine, pipeline
from ..config import ConfigError, SearchConfig
from ..path_cache import PathCache
from ..protocols import Arch, StepContext
from ..spaces import get_space
from ..spaces.nb201 import NB201Space, NB201Supernet
from ..strategies.action_space import ActionSpaceSearch
from ..strategies.traversal import recalibrate_bn
from .dna import _eval_batches, block_lrs, teacher_features
from .spos import SEARCHERS, EvolutionSearch, RandomSearch, SPOSConfig
from .teacher import BlockTeacher, build_teacher

__all__ = ['CellBlockRater', 'DNACell', 'DNACellConfig', 'teacher_spec_from_file']

#: What a found architecture records of its score.
SCORE_NAME = 'relative_l1'


@dataclass
class DNACellConfig(SearchConfig):
    """Every option of a DNA run on the ``nb201`` cell space (a YAML file of configs/search/ maps onto it)."""

    output: str = 'runs/dna_cell'
    space: str = 'nb201'
    space_options: dict = field(default_factory=dict)  # fields of the space to replace, e.g. {'subspace': 'only_conv'}
    num_classes: int = 10  # the supernet's (unused) classifier: DNA trains no head
    teacher_checkpoint: str | None = None  # safetensors weights of the stand-alone trained nb201 teacher (required)
    teacher_spec: dict | None = None  # its nb201 spec; default: the checkpoint's 'spec' metadata
    epochs: int = 20
    batch_size: int = 64
    lr: tuple[float, ...] = (0.002, 0.005)  # DNA: 0.002 for the first and last block, 0.005 for the others
    lr_decay: float = 0.9  # per epoch (DNA)
    weight_decay: float = 1e-4
    train_aug: dict = field(default_factory=dict)
    calib_images: int = 320
    rating_images: int = 250
    rating_batch: int = 125
    searcher: str = 'random'
    evolution: dict = field(default_factory=dict)
    search_samples: int = 100
    action_space: dict = field(default_factory=dict)  # searcher 'action_space' only (ActionSpaceConfig fields)

    def __post_init__(self) -> None:
        lr = self.lr if isinstance(self.lr, (list, tuple)) else [self.lr]
        if not lr or any(isinstance(x, bool) or not isinstance(x, (int, float)) or x <= 0 for x in lr):
            raise ConfigError(f'lr={self.lr!r}: expected a positive float or a list of them (one per block)')
        self.lr = tuple(float(x) for x in lr)
        super().__post_init__()
        if not 0.0 < self.lr_decay <= 1.0:
            raise ConfigError(f'lr_decay must be in (0, 1], got {self.lr_decay}')
        if self.searcher not in SEARCHERS:
            raise ConfigError(f'searcher {self.searcher!r}: expected one of {", ".join(SEARCHERS)}')
        self.action_space_config()  # fails early, naming the key
        for name in ('calib_images', 'rating_images', 'rating_batch', 'search_samples', 'num_classes'):
            if getattr(self, name) < 1:
                raise ConfigError(f'{name} must be >= 1, got {getattr(self, name)}')
        try:
            space = get_space(self.space, img_size=self.img_size, **self.space_options)
        except (KeyError, ValueError, TypeError) as err:
            reason = err.args[0] if isinstance(err, KeyError) else err
            raise ConfigError(f'space {self.space!r} with space_options {self.space_options}: {reason}') from None
        if not isinstance(space, NB201Space):
            raise ConfigError(f'space {self.space!r}: dna_cell runs on nb201 cell spaces (use dna for MBConv spaces)')
        if self.teacher_checkpoint is None:
            raise ConfigError(
                'teacher_checkpoint: dna_cell needs a stand-alone trained nb201 network as teacher (a safetensors '
                'file, e.g. from `python -m search.groundtruth teacher`)'
            )

    def evolution_config(self) -> Any:
        """The ``evolution:`` options, checked as SPOS checks them."""
        return SPOSConfig.evolution_config(self)  # type: ignore[arg-type]

    def action_space_config(self) -> Any:
        """The options of ``action_space:`` (checked as SPOS checks them)."""
        return SPOSConfig.action_space_config(self)  # type: ignore[arg-type]


def teacher_spec_from_file(path: str | Path) -> dict:
    """The ``spec`` metadata of a teacher's safetensors file (what ``python -m search.groundtruth teacher`` writes)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'teacher checkpoint {path} does not exist')
    try:
        with safe_open(str(path), framework='pt') as f:
            meta = f.metadata() or {}
    except Exception as err:  # safetensors raises its own error types for a corrupt header
        raise ValueError(f'teacher checkpoint {path} is not a readable safetensors file: {err}') from None
    if 'spec' not in meta:
        raise ValueError(f'teacher checkpoint {path} has no "spec" metadata: set teacher_spec in the config')
    return json.loads(meta['spec'])


class _Block(nn.Module):
    """Block ``k`` of the supernet on its current path: stem + stage 0 for ``k = 0``, else stage ``k``."""

    def __init__(self, supernet: NB201Supernet, k: int) -> None:
        super().__init__()
        self.supernet, self.k = supernet, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.k == 0:
            x = self.supernet.stem(x)
        return self.supernet.stages[self.k](x)


class CellDistillRunner(nn.Module):
    """What DDP wraps: the frozen teacher and the supernet; ``forward`` returns one MSE per ``(block, path)``."""

    def __init__(self, teacher: BlockTeacher, supernet: NB201Supernet) -> None:
        super().__init__()
        self.teacher, self.supernet = teacher, supernet
        self.blocks = nn.ModuleList(_Block(supernet, k) for k in range(len(supernet.stages)))

    def forward(self, image: torch.Tensor, paths: list[tuple[int, Arch]]) -> list[torch.Tensor]:
        with torch.no_grad():
            feats = self.teacher(image)
        losses = []
        for k, arch in paths:
            self.supernet.set_arch(arch)
            y = self.blocks[k](image if k == 0 else feats[k - 1])
            losses.append(F.mse_loss(y.float(), feats[k].float()))
        return losses


class DNACell:
    """DNA on the ``nb201`` space as a :class:`~search.protocols.Method` (see the module docstring)."""

    name = 'dna_cell'
    config_class = DNACellConfig
    groups_per_lr = 2  # (decay, no decay) parameter groups per block share one learning rate

    def __init__(self, cfg: DNACellConfig) -> None:
        self.cfg = cfg
        self.space: NB201Space = get_space(cfg.space, img_size=cfg.img_size, **cfg.space_options)
        self.num_blocks = 3
        self.teacher_spec = cfg.teacher_spec or teacher_spec_from_file(cfg.teacher_checkpoint)
        self.teacher: BlockTeacher | None = None
        self.supernet: NB201Supernet | None = None
        self.runner: CellDistillRunner | None = None

    def build(self, ctx: engine.DistContext, split: dict | None = None) -> nn.Module:
        """Teacher (loaded, frozen, eval BN) and supernet, with the teacher's stage shapes checked."""
        cfg = self.cfg
        boundaries = [f'stages.{k}' for k in range(self.num_blocks)]
        try:
            teacher = build_teacher(
                'nb201',
                pretrained=False,
                split=boundaries,
                checkpoint=cfg.teacher_checkpoint,
                spec=self.teacher_spec,
                num_classes=cfg.num_classes,
            )
        except (KeyError, TypeError) as err:
            raise ValueError(f'teacher_spec {self.teacher_spec}: {err}') from None
        self.teacher = teacher.to(ctx.device).eval()
        torch.manual_seed(engine.derive_seed(cfg.seed, 'supernet-init'))
        self.supernet = self.space.build_supernet(num_classes=cfg.num_classes).to(ctx.device)
        self._check_shapes(ctx.device)
        self.runner = CellDistillRunner(self.teacher, self.supernet)
        return self.runner

    @torch.no_grad()
    def _check_shapes(self, device: torch.device) -> None:
        x = torch.zeros(2, 3, self.cfg.img_size, self.cfg.img_size, device=device)
        self.teacher.eval()
        feats = self.teacher(x)
        was = self.supernet.training
        self.supernet.eval()
        self.supernet.set_arch(self.space.extremes()[0])
        h = x
        for k in range(self.num_blocks):
            h = _Block(self.supernet, k)(h)
            if h.shape != feats[k].shape:
                raise ValueError(
                    f'teacher {self.teacher_spec} gives stage {k} features of shape {tuple(feats[k].shape[1:])}, '
                    f'the supernet of space {self.space.name!r} {tuple(h.shape[1:])}: the teacher must have the '
                    "space's channels and cells_per_stage"
                )
        self.supernet.train(was)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {f'supernet.{k}': v for k, v in self.supernet.state_dict().items()}

    def train_mode(self) -> None:
        self.supernet.train()
        self.teacher.eval()

    def _block_params(self, k: int) -> list[nn.Parameter]:
        mods: list[nn.Module] = [self.supernet.stages[k]] + ([self.supernet.stem] if k == 0 else [])
        return [p for m in mods for p in m.parameters()]

    def optimizer(self, steps_per_epoch: int) -> tuple[torch.optim.Optimizer, Any, bool]:
        """Adam, a (decay, no decay) pair of groups per block with the block's lr; x ``lr_decay`` per epoch."""
        from timm.scheduler import StepLRScheduler

        lrs = block_lrs(self.cfg.lr, self.num_blocks)
        groups = []
        for k in range(self.num_blocks):
            params = self._block_params(k)
            decay = [p for p in params if p.ndim > 1]
            no_decay = [p for p in params if p.ndim <= 1]
            groups.append({'params': decay, 'lr': lrs[k], 'weight_decay': self.cfg.weight_decay})
            groups.append({'params': no_decay, 'lr': lrs[k], 'weight_decay': 0.0})
        optimizer = torch.optim.Adam(groups)
        return optimizer, StepLRScheduler(optimizer, decay_t=1, decay_rate=self.cfg.lr_decay), False

    def transform(self) -> Any:
        return data_lib.build_transform(self.cfg.img_size, training=True, **self.cfg.train_aug)

    def sample_paths(self, step: int) -> list[tuple[int, Arch]]:
        """One uniformly drawn path per block, a pure function of (seed, block, step)."""
        return [
            (k, self.space.sample(engine.generator(self.cfg.seed, 'path', k, step))) for k in range(self.num_blocks)
        ]

    def train_step(
        self, images: torch.Tensor, labels: torch.Tensor, paths: list, ctx: StepContext
    ) -> dict[str, torch.Tensor]:
        """One MSE per block (labels unused: the teacher supervises); one backward of their sum."""
        losses = ctx.model(images, paths)
        ctx.backward(torch.stack(losses).sum())
        return {f'loss_block{k}': loss.detach().float() for (k, _), loss in zip(paths, losses, strict=True)}

    def after_step(self, step: int) -> None:
        """Nothing: the teacher is frozen."""

    def rater(self, ctx: engine.DistContext) -> CellBlockRater:
        return CellBlockRater(self, ctx)

    def searcher(self, device: torch.device | None = None) -> EvolutionSearch | RandomSearch | ActionSpaceSearch:
        if self.cfg.searcher == 'random':
            return RandomSearch(self.cfg.search_samples, self.cfg.seed, score_name=SCORE_NAME)
        if self.cfg.searcher == 'action_space':
            return ActionSpaceSearch(self.cfg.action_space_config(), self.cfg.out / 'search', score_name=SCORE_NAME)
        return EvolutionSearch(self.cfg.evolution_config(), self.cfg.out / 'search', score_name=SCORE_NAME)

    def provenance(self) -> dict:
        return {
            'teacher_spec': self.teacher_spec,
            'teacher_checkpoint': str(self.cfg.teacher_checkpoint),
            'score_name': 'summed relative L1 of the blocks (DNA Eq. 7), lower is better',
        }


class CellBlockRater:
    """Whole-path rater: per block, BN recalibration on training images, then Eq. 7's relative L1 against the
    teacher on the held-out images; the score is the sum over blocks (lower is better), cached per architecture."""

    kind = 'path'
    keys = ('space', 'space_options', 'img_size', 'seed', 'holdout_per_class', 'calib_images', 'rating_images')

    def __init__(self, method: DNACell, ctx: engine.DistContext) -> None:
        self.method, self.ctx, self.cfg = method, ctx, method.cfg
        self.path = self.cfg.out / 'ratings' / 'paths.jsonl'
        self._fingerprint: str | None = None
        self.cache = PathCache(self.path, self.fingerprint, 'score')
        self._loaded = False

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            step = int(engine.load_checkpoint(pipeline.checkpoint_path(self.cfg))['step'])
            doc = {'step': step, 'teacher': self.method.teacher_spec, **{k: getattr(self.cfg, k) for k in self.keys}}
            self._fingerprint = json.dumps(doc, sort_keys=True)
        return self._fingerprint

    def rate(self) -> Any:
        self.cache.read()
        return self.score

    def _load(self) -> None:
        cfg, ctx = self.cfg, self.ctx
        pipeline.load_trained(self.method, ctx)
        split = pipeline.holdout_split(cfg, ctx)
        g = engine.generator(cfg.seed, 'rating-images')
        holdout = [split['holdout'][i] for i in torch.randperm(len(split['holdout']), generator=g).tolist()]
        g = engine.generator(cfg.seed, 'rating-calibration')
        calib = [split['train'][i] for i in torch.randperm(len(split['train']), generator=g).tolist()]
        self.eval_images = _eval_batches(cfg, holdout[: cfg.rating_images], ctx.device)
        self.calib_images = _eval_batches(cfg, calib[: cfg.calib_images], ctx.device)
        self.compute_targets()
        self._loaded = True

    def compute_targets(self) -> None:
        """The teacher's block features of the rating and calibration images, and Eq. 7's scale per block."""
        self.eval_feats = teacher_features(self.method.teacher, self.eval_images, batch_stats=False)
        self.calib_feats = teacher_features(self.method.teacher, self.calib_images, batch_stats=False)
        self.scales = []
        for k in range(self.method.num_blocks):
            targets = [f[k] for f in self.eval_feats]
            numel = sum(t.numel() for t in targets)
            mean = sum(t.sum() for t in targets) / numel
            var = float(sum(((t - mean) ** 2).sum() for t in targets)) / max(numel - 1, 1)
            self.scales.append((numel, var**0.5))

    @torch.no_grad()
    def block_scores(self, arch: Arch) -> list[float]:
        """Eq. 7's relative L1 of every block of ``arch`` (uncached)."""
        if not self._loaded:
            self._load()
        supernet = self.method.supernet
        supernet.set_arch(arch)
        out = []
        for k in range(self.method.num_blocks):
            block = _Block(supernet, k)
            calib_in = self.calib_images if k == 0 else [f[k - 1] for f in self.calib_feats]
            eval_in = self.eval_images if k == 0 else [f[k - 1] for f in self.eval_feats]
            recalibrate_bn(block, calib_in)
            pairs = zip(eval_in, self.eval_feats, strict=True)
            l1 = sum(float((block(x).float() - f[k]).abs().sum()) for x, f in pairs)
            numel, std = self.scales[k]
            out.append(l1 / numel / std)
        return out

    def score(self, arch: Arch) -> float:
        cache = self.cache.read()
        arch = self.method.space.check(arch)
        key = self.method.space.key(arch)
        if key in cache:
            return cache[key]
        blocks = self.block_scores(arch)
        value = float(sum(blocks))
        self.cache.add(key, arch, value, write=self.ctx.is_main, blocks=blocks)
        return value
