"""SPOS: single-path one-shot supernet training with uniform sampling, then a search over whole-path top-1.

Paper: Guo et al., "Single Path One-Shot Neural Architecture Search with Uniform Sampling", ECCV 2020 (sections 3.2
to 3.4); official code github.com/megvii-model/SinglePathOneShot (``src/Supernet/train.py``, ``src/Search/``).

* Training: every step draws one path uniformly (one choice per decision of the space, the same on every rank and
  micro-batch: a pure function of the seed and the step) and trains it with cross-entropy on the labels. SGD with
  momentum 0.9 and weight decay 4e-5 on the conv / linear weights only (official ``get_parameters``: ``'weight'`` in
  the name and ``ndim > 1``), learning rate decayed per step, linearly to 0 (official ``LambdaLR(1 - step /
  total)``) or by a cosine; label smoothing off by default (the official code uses 0.1; the full configs set it).
* Rating (:class:`PathRater`): a path's score is its top-1 on the held-out split after BN recalibration: the BN
  statistics are reset and re-estimated on training images (official ``tester.py``: 200 batches of 128, momentum
  0.1; here the plain average over ``calib_images``, as the DNA rating does), or, with ``recalibration:
  momentum``, the trained statistics are updated with the BN momentum over ``calib_images`` (the inter-choice
  paper's protocol, App. B: 20 batches, no reset). Scores are cached per architecture in
  ``ratings/paths.jsonl`` under a fingerprint of the checkpoint step and the rating options, so every evaluated
  architecture is logged and a repeated search costs nothing.
* Search: ``searcher: evolution`` (:class:`EvolutionSearch`, the default) is SPOS's evolutionary search
  (``search.strategies.evolution``: population 50, 10 parents, 25 mutations with probability 0.1 and 25
  crossovers, 20 iterations; set by the ``evolution`` config mapping), under the cost budget, resumable from
  ``search/evolution-<fingerprint>/``; ``searcher: random`` (:class:`RandomSearch`) keeps the best ``top_k`` of
  ``search_samples`` distinct uniform draws under the budget, the protocol of the inter-choice paper;
  ``searcher: action_space`` (:class:`~search.strategies.action_space.ActionSpaceSearch`) is Pi-NAS's LaNAS-style
  search (set by the ``action_space`` config mapping), resumable from ``search/action_space-<fingerprint>/``.

FairNAS sampling (``sampling: fair``; Chu et al., arXiv 1907.01845, strict fairness) as the Pi-NAS code runs its
FairNAS baseline (official ``OpenSelfSup/openselfsup/models/super_classification.py``, ``fairnas=True``): every
``m`` steps (``m`` = options per decision) each decision's options are put in a fresh random order, and step ``t``
trains the ``t mod m``-th path of that permutation, so every option of every decision is trained exactly once per
``m`` steps. One optimizer step per path, as that code does; the FairNAS paper instead accumulates the ``m`` paths'
gradients into one step. Spaces whose decisions have unequal option counts refuse it.

Works on any space of the registry whose supernet has a classifier head (``build_supernet(num_classes=...)``,
``supernet(x, arch)`` gives logits): the DNA MBConv spaces and the FairNAS-style ``fairnas`` space.

Inter-choice dependent weights (Laube and Zell, arXiv 2104.11522) plug in with the ``interchoice`` key, e.g.
``interchoice: {variant: bias, depth: 1}`` or ``{variant: split, split_epoch: 400}``, on spaces whose supernet
supports them (:mod:`search.interchoice`): the bias tables are decayed like the conv weights (as uninas does), and
each step first lets the supernet split when its epoch has come.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

from .. import data as data_lib
from .. import engine
from .. import interchoice as interchoice_lib
from ..config import ConfigError, SearchConfig
from ..path_cache import PathCache
from ..protocols import Arch, Found, StepContext
from ..spaces import get_space
from ..strategies.action_space import ActionSpaceConfig, ActionSpaceSearch
from ..strategies.evolution import EvolutionConfig, evolution_search
from ..strategies.traversal import recalibrate_bn

__all__ = ['SPOS', 'EvolutionSearch', 'PathRater', 'RandomSearch', 'SPOSConfig']

SCHEDULES = ('linear', 'cosine')
RECALIBRATIONS = ('reset', 'momentum')
SEARCHERS = ('evolution', 'random', 'action_space')
SAMPLINGS = ('uniform', 'fair')


@dataclass
class SPOSConfig(SearchConfig):
    """Every option of an SPOS run; the defaults are the official SPOS supernet recipe (see the module docstring)."""

    output: str = 'runs/spos'
    space: str = 'fairnas'
    space_options: dict = field(default_factory=dict)  # fields of the space to replace, e.g. {'img_size': 160}
    num_classes: int | None = None  # default: the number of classes of <data_dir>/train
    epochs: int = 120  # SPOS: 150,000 iterations of 1024 images, about 120 ImageNet epochs
    batch_size: int = 1024
    lr: float = 0.5
    min_lr: float = 0.0
    schedule: str = 'linear'
    warmup_epochs: float = 0.0
    warmup_lr: float = 0.0
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 4e-5
    label_smoothing: float = 0.0
    drop_rate: float = 0.0
    train_aug: dict = field(default_factory=lambda: {'color_jitter': 0.4})
    calib_images: int = 25600  # SPOS tester.py: 200 batches of 128 training images
    rating_images: int = 8000  # SPOS tester.py: 40 batches of 200 held-out images
    rating_batch: int = 200
    recalibration: str = 'reset'  # 'reset' (SPOS) or 'momentum' (inter-choice paper App. B: BN stats kept, updated)
    searcher: str = 'evolution'  # SPOS (official src/Search/search.py); 'random': top-k of uniform samples
    evolution: dict = field(default_factory=dict)  # EvolutionConfig fields; defaults: SPOS's (population 50, ...)
    search_samples: int = 1000  # searcher 'random' only
    action_space: dict = field(default_factory=dict)  # ActionSpaceConfig fields; defaults: Pi-NAS's (1000 samples, ...)
    interchoice: dict | None = None  # inter-choice dependent weights, e.g. {variant: bias, depth: 1} (module docstring)
    sampling: str = 'uniform'  # 'uniform' (SPOS) or 'fair' (FairNAS as the Pi-NAS code runs it; module docstring)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.schedule not in SCHEDULES:
            raise ConfigError(f'schedule {self.schedule!r}: expected one of {", ".join(SCHEDULES)}')
        if self.recalibration not in RECALIBRATIONS:
            raise ConfigError(f'recalibration {self.recalibration!r}: expected one of {", ".join(RECALIBRATIONS)}')
        if self.searcher not in SEARCHERS:
            raise ConfigError(f'searcher {self.searcher!r}: expected one of {", ".join(SEARCHERS)}')
        if self.sampling not in SAMPLINGS:
            raise ConfigError(f'sampling {self.sampling!r}: expected one of {", ".join(SAMPLINGS)}')
        self.evolution_config()  # fails early, naming the key
        self.action_space_config()
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f'label_smoothing must be in [0, 1), got {self.label_smoothing}')
        for name in ('lr', 'calib_images', 'rating_images', 'rating_batch', 'search_samples'):
            if getattr(self, name) <= 0:
                raise ConfigError(f'{name} must be positive, got {getattr(self, name)}')
        try:
            space = get_space(self.space, img_size=self.img_size, **self.space_options)
        except (KeyError, ValueError, TypeError) as err:
            reason = err.args[0] if isinstance(err, KeyError) else err
            raise ConfigError(f'space {self.space!r} with space_options {self.space_options}: {reason}') from None
        counts = {len(space.allowed(i)) for i in range(len(space.num_choices))}
        if self.sampling == 'fair' and len(counts) != 1:
            raise ConfigError(
                f"sampling 'fair' needs the same number of options at every decision; space {self.space!r} has "
                f'{sorted(counts)}'
            )
        options = interchoice_lib.parse_options(self.interchoice)
        if options is not None:
            if not getattr(space, 'supports_interchoice', False):
                raise ConfigError(f'interchoice: space {self.space!r} does not support inter-choice dependent weights')
            if options.variant == 'split' and options.split_epoch >= self.epochs:
                raise ConfigError(
                    f'interchoice.split_epoch: {options.split_epoch} >= epochs {self.epochs}: the weights would never '
                    'split'
                )
        if self.num_classes is not None and self.num_classes < 1:
            raise ConfigError(f'num_classes must be >= 1 (or null: from the data folder), got {self.num_classes}')

    def evolution_config(self) -> EvolutionConfig:
        """The evolution options of ``evolution:`` with the run's seed, metric and budget (checked, named)."""
        if not isinstance(self.evolution, dict):
            raise ConfigError(f'evolution: expected a mapping of evolution options, got {self.evolution!r}')
        names = {f.name for f in dataclasses.fields(EvolutionConfig)} - {'seed', 'metric', 'budget'}
        unknown = sorted(set(self.evolution) - names)
        if unknown:
            raise ConfigError(f'evolution: unknown option(s) {unknown}; expected some of {sorted(names)}')
        try:
            evo = EvolutionConfig(**self.evolution, seed=self.seed, metric=self.metric, budget=self.budget)
        except (TypeError, ValueError) as err:
            raise ConfigError(f'evolution: {err}') from None
        if self.searcher == 'evolution' and self.top_k > evo.parents:
            raise ConfigError(f'top_k {self.top_k} is more than evolution parents {evo.parents} (the kept best)')
        return evo

    def action_space_config(self) -> ActionSpaceConfig:
        """The action-space options of ``action_space:`` with the run's seed, metric and budget (checked, named)."""
        try:
            config = ActionSpaceConfig.from_options(
                self.action_space, seed=self.seed, metric=self.metric, budget=self.budget
            )
        except ValueError as err:
            raise ConfigError(str(err)) from None  # the message names 'action_space' and the option
        if self.searcher == 'action_space' and self.top_k > config.samples:
            raise ConfigError(f'top_k {self.top_k} is more than action_space samples {config.samples}')
        return config


@functools.lru_cache(maxsize=4)
def _eval_folder(root: str, img_size: int) -> Any:
    """The training folder with the eval transform (resize + center crop), scanned once per process."""
    return data_lib.image_folder(root, data_lib.build_transform(img_size, training=False))


class SPOS:
    """The SPOS method (:class:`~search.protocols.Method`): uniform single-path training with cross-entropy."""

    name = 'spos'
    config_class = SPOSConfig
    groups_per_lr = 2  # (decay, no decay) parameter groups share one learning rate

    def __init__(self, cfg: SPOSConfig) -> None:
        self.cfg = cfg
        options = {'img_size': cfg.img_size, **cfg.space_options}
        self.space = get_space(cfg.space, **options)
        self.supernet: nn.Module | None = None
        self.num_classes: int | None = cfg.num_classes

    # -- state ------------------------------------------------------------------------------------------------------
    def _folder(self) -> Any:
        return _eval_folder(str(Path(self.cfg.data_dir) / 'train'), self.cfg.img_size)

    def build(self, ctx: engine.DistContext, split: dict | None = None) -> nn.Module:
        """The supernet with a classifier over the folder's classes, initialised from the run seed."""
        if self.num_classes is None:
            self.num_classes = len(self._folder().reader.class_to_idx)
        torch.manual_seed(engine.derive_seed(self.cfg.seed, 'supernet-init'))
        options: dict[str, Any] = {'drop_rate': self.cfg.drop_rate} if self.cfg.drop_rate else {}
        if self.cfg.interchoice is not None:
            options['interchoice'] = self.cfg.interchoice
        try:
            self.supernet = self.space.build_supernet(num_classes=self.num_classes, **options)
        except TypeError as err:
            raise ValueError(
                f'space {self.space.name!r}: its supernet does not take {sorted(options)} ({err})'
            ) from None
        self.supernet.to(ctx.device)
        return self.supernet

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return self.supernet.state_dict()

    def train_mode(self) -> None:
        self.supernet.train()

    def optimizer(self, steps_per_epoch: int) -> tuple[torch.optim.Optimizer, Any, bool]:
        """SGD on (decayed conv/linear weights and inter-choice bias tables, undecayed rest); a per-step linear or
        cosine schedule (timm)."""
        from timm.scheduler import CosineLRScheduler, PolyLRScheduler

        cfg = self.cfg
        decay, no_decay = [], []
        tables = interchoice_lib.decayed_parameter_names(self.supernet)
        for name, p in self.supernet.named_parameters():
            (decay if ('weight' in name and p.ndim > 1) or name in tables else no_decay).append(p)
        groups = [{'params': decay, 'weight_decay': cfg.weight_decay}, {'params': no_decay, 'weight_decay': 0.0}]
        opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
        total = max(1, steps_per_epoch * cfg.epochs)
        common = dict(
            t_initial=total,
            lr_min=cfg.min_lr,
            warmup_t=round(cfg.warmup_epochs * steps_per_epoch),
            warmup_lr_init=cfg.warmup_lr,
            warmup_prefix=True,
            t_in_epochs=False,
        )
        if cfg.schedule == 'cosine':
            scheduler = CosineLRScheduler(opt, **common)
        else:
            scheduler = PolyLRScheduler(opt, power=1.0, **common)
        return opt, scheduler, True

    def transform(self) -> Any:
        return data_lib.build_transform(self.cfg.img_size, training=True, **self.cfg.train_aug)

    # -- one step ---------------------------------------------------------------------------------------------------
    def sample_paths(self, step: int) -> list[Arch]:
        """One path per step, a pure function of (seed, step): the same on every rank. ``uniform``: drawn uniformly;
        ``fair``: the ``step mod m``-th path of the permutations drawn for steps ``[m * (step // m), ...)``."""
        if self.cfg.sampling == 'uniform':
            return [self.space.sample(engine.generator(self.cfg.seed, 'path', step))]
        space = self.space
        m = len(space.allowed(0))
        g = engine.generator(self.cfg.seed, 'fair-paths', step // m)
        orders = [
            [space.allowed(i)[k] for k in torch.randperm(m, generator=g).tolist()]
            for i in range(len(space.num_choices))
        ]
        return [space.canonical([order[step % m] for order in orders])]

    def train_step(
        self, images: torch.Tensor, labels: torch.Tensor, paths: list[Arch], ctx: StepContext
    ) -> dict[str, torch.Tensor]:
        interchoice_lib.start_epoch(self.supernet, ctx.epoch)  # the inter-choice split, at its epoch on every rank
        logits = ctx.model(images, paths[0])
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=self.cfg.label_smoothing)
        ctx.backward(loss)
        return {'loss_ce': loss.detach()}

    def after_step(self, step: int) -> None:
        """SPOS keeps no EMA or target network."""

    # -- rating and search ------------------------------------------------------------------------------------------
    def rater(self, ctx: engine.DistContext) -> PathRater:
        return PathRater(self, ctx)

    def searcher(self, device: torch.device | None = None) -> EvolutionSearch | RandomSearch | ActionSpaceSearch:
        if self.cfg.searcher == 'random':
            return RandomSearch(self.cfg.search_samples, self.cfg.seed)
        if self.cfg.searcher == 'action_space':
            return ActionSpaceSearch(self.cfg.action_space_config(), self.cfg.out / 'search')
        return EvolutionSearch(self.cfg.evolution_config(), self.cfg.out / 'search')

    def provenance(self) -> dict:
        return {'searcher': self.cfg.searcher, 'sampling': self.cfg.sampling, 'score_name': 'minus held-out top-1 (%)'}


class _OnePath(nn.Module):
    """A supernet fixed to one path, as a plain module (what BN recalibration runs)."""

    def __init__(self, supernet: nn.Module, arch: Arch) -> None:
        super().__init__()
        self.supernet, self.arch = supernet, arch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.supernet(x, self.arch)


class PathRater:
    """Whole-path rater: BN recalibration on training images, then top-1 on the held-out split (lower score =
    ``-top1`` is better). ``rate()`` returns the scoring function; the supernet is loaded on its first cache miss.

    Rating runs on the main process only (the search that calls it does), in fp32.
    """

    kind = 'path'

    def __init__(self, method: SPOS, ctx: engine.DistContext) -> None:
        self.method, self.ctx, self.cfg = method, ctx, method.cfg
        self.path = self.cfg.out / 'ratings' / 'paths.jsonl'
        self._fingerprint: str | None = None
        self.cache = PathCache(self.path, self.fingerprint, 'top1')
        self._loaded = False
        self._trained_bn: dict[str, torch.Tensor] | None = None

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            from ..pipeline import checkpoint_path

            ckpt = checkpoint_path(self.cfg)
            step = int(engine.load_checkpoint(ckpt)['step'])
            keys = ('space', 'space_options', 'img_size', 'seed', 'holdout_per_class')
            keys += ('calib_images', 'rating_images', 'recalibration', 'interchoice')
            self._fingerprint = json.dumps({'step': step, **{k: getattr(self.cfg, k) for k in keys}}, sort_keys=True)
        return self._fingerprint

    def rate(self) -> Any:
        self.cache.read()
        return self.score

    def _batches(self, indices: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        loader = DataLoader(Subset(self.method._folder(), indices), batch_size=self.cfg.rating_batch, shuffle=False)
        return [(x.to(self.ctx.device), y.to(self.ctx.device)) for x, y in loader]

    def _load(self) -> None:
        """Supernet, calibration and held-out images; no collectives (only the main process rates, lazily)."""
        from ..pipeline import checkpoint_path

        cfg = self.cfg
        split = data_lib.holdout_split(
            Path(cfg.data_dir) / 'train', cfg.holdout_per_class, cfg.seed, cfg.out / 'holdout_split.json'
        )
        self.method.build(self.ctx, split)
        state = engine.load_checkpoint(checkpoint_path(cfg), self.ctx.device)
        self.method.supernet.load_state_dict(state['model'])
        self.method.supernet.eval()
        g = engine.generator(self.cfg.seed, 'rating-images')
        holdout = [split['holdout'][i] for i in torch.randperm(len(split['holdout']), generator=g).tolist()]
        g = engine.generator(self.cfg.seed, 'rating-calibration')
        calib = [split['train'][i] for i in torch.randperm(len(split['train']), generator=g).tolist()]
        self.eval_batches = self._batches(holdout[: self.cfg.rating_images])
        self.calib_batches = [x for x, _ in self._batches(calib[: self.cfg.calib_images])]
        self._loaded = True

    @torch.no_grad()
    def top1(self, arch: Arch) -> float:
        """Held-out top-1 (%) of ``arch`` after BN recalibration (cached)."""
        cache = self.cache.read()
        key = self.method.space.key(arch)
        if key in cache:
            return cache[key]
        if not self._loaded:
            self._load()
        path = _OnePath(self.method.supernet, tuple(arch))
        if self.cfg.recalibration == 'reset':
            recalibrate_bn(path, self.calib_batches)
        else:  # the trained statistics, updated with the BN momentum (uninas reset_bn: false)
            if self._trained_bn is None:
                self._trained_bn = {
                    k: v.clone() for k, v in self.method.supernet.state_dict().items() if 'running' in k
                }
            self.method.supernet.load_state_dict(self._trained_bn, strict=False)
            path.train()
            for x in self.calib_batches:
                path(x)
            path.eval()
        correct = total = 0
        for x, y in self.eval_batches:
            correct += int((path(x).argmax(1) == y).sum())
            total += len(y)
        top1 = 100.0 * correct / total
        self.cache.add(key, arch, top1, write=self.ctx.is_main)
        return top1

    def score(self, arch: Arch) -> float:
        return -self.top1(arch)


class EvolutionSearch:
    """SPOS's evolutionary search as an engine searcher: maximises held-out top-1 (``-rated(arch)``) under budget.

    The state lives in ``<root>/evolution-<fingerprint>/`` (``evolution.json`` + ``evaluated.jsonl``), keyed by the
    rater's fingerprint when ``rated`` is a rater's bound ``score`` (the checkpoint step and the rating options): a
    rerun with the same supernet resumes the search, a retrained supernet starts a new one instead of reusing stale
    scores.
    """

    def __init__(self, config: EvolutionConfig, root: Path, score_name: str = 'top1') -> None:
        self.config, self.root, self.score_name = config, Path(root), score_name

    def _folder(self, rated: Any) -> Path:
        owner = getattr(rated, '__self__', None)
        fingerprint = owner.fingerprint() if hasattr(owner, 'fingerprint') else 'unrated'
        return self.root / f'evolution-{hashlib.sha1(fingerprint.encode()).hexdigest()[:12]}'

    def search(self, space: Any, rated: Any, metric: str, budget: float | None, top_k: int) -> list[Found]:
        config = dataclasses.replace(self.config, metric=metric, budget=budget)
        result = evolution_search(space, lambda arch: -rated(arch), config, self._folder(rated))
        print(
            f'evolution: {result.evaluations} architectures rated in {result.iterations} iterations, '
            f'{result.rejected} children over the {metric} budget rejected'
        )
        extra = {'evaluations': result.evaluations, 'rejected': result.rejected}
        return [
            Found(
                i.arch,
                -i.score,
                i.cost if i.cost is not None else space.cost(i.arch, metric),
                {**_describe(self.score_name, -i.score), **extra},
            )
            for i in result.top[:top_k]
        ]


class RandomSearch:
    """The best ``top_k`` of ``samples`` distinct uniform draws whose cost fits the budget (seeded)."""

    def __init__(self, samples: int, seed: int, max_draws_factor: int = 50, score_name: str = 'top1') -> None:
        self.samples, self.seed, self.max_draws = samples, seed, samples * max_draws_factor
        self.score_name = score_name

    def search(self, space: Any, rated: Any, metric: str, budget: float | None, top_k: int) -> list[Found]:
        g = engine.generator(self.seed, 'random-search')
        costs: dict[Arch, float] = {}
        rejected = draws = 0
        while len(costs) < min(self.samples, space.size) and draws < self.max_draws:
            arch = space.sample(g)
            draws += 1
            if arch in costs:
                continue
            cost = space.cost(arch, metric)
            if budget is not None and cost > budget:
                rejected += 1
                continue
            costs[arch] = cost
        if not costs:
            low = space.cost(space.extremes()[0], metric)
            raise ValueError(
                f'no architecture of space {space.name!r} within {metric} budget {budget:g} in {draws} draws '
                f'(the smallest one costs {low:g})'
            )
        print(f'random search: {len(costs)} architectures rated, {rejected} draws over the {metric} budget rejected')
        scored = sorted((rated(a), c, a) for a, c in costs.items())
        return [Found(a, s, c, {**_describe(self.score_name, s), 'rejected': rejected}) for s, c, a in scored[:top_k]]


def _describe(score_name: str, score: float) -> dict[str, float]:
    """What a found architecture records of its rater score: held-out top-1 for SPOS (the score is ``-top1``),
    the score itself under its own name for other raters (e.g. DNA's summed relative L1)."""
    return {'top1': -score} if score_name == 'top1' else {score_name: score}
