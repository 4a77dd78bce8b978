"""The seams every search method plugs into: SearchSpace, Supernet, Method, Rater and Searcher.

The engine (:func:`search.engine.run`) owns the loop, DDP, AMP, gradient accumulation, checkpoints, resume, logs and
the ``--stage train|rate|search`` pipeline; a method only says what one step computes. The split follows NNI's
space / strategy / evaluator and AttentiveNAS's ``sample_min_subnet`` / ``sample_max_subnet`` (``extremes``).

An architecture (:data:`Arch`) is an immutable tuple of ints, one choice index per *decision* of the space, so
strategies (evolution, random search) need nothing space-specific. docs/search.md shows the protocols with an example
of adding a method.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import torch
import torch.nn as nn

__all__ = [
    'COST_METRICS',
    'Arch',
    'BlockwiseSpace',
    'Found',
    'Method',
    'Rater',
    'SearchSpace',
    'Searcher',
    'StepContext',
    'Supernet',
]

#: One choice index per decision of a space (immutable, hashable: usable as a cache key).
Arch = tuple[int, ...]

#: The cost metrics every space answers in :meth:`SearchSpace.cost`.
COST_METRICS = ('flops', 'macs', 'params', 'latency')


@runtime_checkable
class SearchSpace(Protocol):
    """What strategies and the engine see of a space; :class:`search.spaces.base.ChoiceSpace` implements most of it.

    ``num_choices[i]`` is the number of options of decision ``i``; ``allowed(i)`` the options a (masked) sub-space
    still allows there. Random draws take an explicit ``torch.Generator`` so that every draw is reproducible.
    """

    name: str

    @property
    def size(self) -> int:
        """Number of distinct architectures."""
        ...

    @property
    def num_choices(self) -> tuple[int, ...]: ...

    def allowed(self, i: int) -> tuple[int, ...]: ...

    def sample(self, generator: torch.Generator) -> Arch: ...

    def mutate(self, arch: Arch, generator: torch.Generator, prob: float) -> Arch: ...

    def crossover(self, a: Arch, b: Arch, generator: torch.Generator) -> Arch: ...

    def extremes(self) -> tuple[Arch, Arch]:
        """(smallest, largest) architecture, by multiply-accumulates."""
        ...

    def cost(self, arch: Arch, metric: str) -> float:
        """``metric`` in :data:`COST_METRICS`: the paper's FLOPs rule, MACs, parameters or measured latency (s)."""
        ...

    def to_spec(self, arch: Arch) -> dict:
        """The backbone spec of ``arch`` (validated by the backbone family)."""
        ...

    def from_spec(self, spec: dict) -> Arch: ...

    def key(self, arch: Arch) -> str:
        """A canonical string of ``arch`` (for caches and logs)."""
        ...

    def build_supernet(self, num_classes: int = 1000, **options: Any) -> Supernet: ...


@runtime_checkable
class BlockwiseSpace(SearchSpace, Protocol):
    """A space cut into blocks whose candidates are rated one block at a time (DNA, BossNAS).

    ``blocks[k]`` describes block ``k``; ``candidates(k)`` yields ``(in_width, choice)`` for every candidate of it in
    depth-first order (what the DFS rating and the exact budgeted search consume); ``encode`` / ``decode`` map a list
    of per-block choices to and from an :data:`Arch`.
    """

    blocks: tuple[Any, ...]

    def in_widths(self, k: int) -> tuple[int, ...]: ...

    def candidates(self, k: int) -> Any: ...

    def num_candidates(self, k: int) -> int: ...

    def encode(self, choices: Sequence[Any]) -> Arch: ...

    def decode(self, arch: Arch) -> list[Any]: ...


@runtime_checkable
class Supernet(Protocol):
    """An ``nn.Module`` that runs one path: ``supernet(x, arch)``.

    ``path_state_dict(arch)`` holds that path's weights keyed exactly like the backbone that
    ``zoo.create_model(space.to_spec(arch))`` builds, so a found architecture inherits its supernet weights.
    """

    def __call__(self, x: torch.Tensor, arch: Arch) -> torch.Tensor: ...

    def path_state_dict(self, arch: Arch) -> dict[str, torch.Tensor]: ...


@dataclass
class StepContext:
    """What the engine hands a method for one optimizer step.

    ``backward(loss)`` scales by the accumulation steps and runs the backward pass (outside autocast); a method may
    call it several times (several paths). A method with ``grad_slots`` calls ``backward(loss, slot=name)`` to keep
    gradients apart until its ``combine_grads`` (gradient projection; :class:`search.pipeline.GradSlots`). ``model``
    is the method's module wrapped by DDP when distributed: call it rather than the bare module so that gradients
    are reduced.
    """

    step: int
    epoch: int
    micro_step: int
    grad_accum: int
    model: nn.Module
    device: torch.device
    backward: Callable[..., None]


@dataclass
class Found:
    """One architecture a searcher returns: lower ``score`` is better (negate accuracies)."""

    arch: Arch
    score: float
    cost: float
    extra: dict = field(default_factory=dict)


@runtime_checkable
class Rater(Protocol):
    """Scores candidates of a trained supernet; ``kind`` is ``'block'`` (per-block candidate scores, DFS prefix
    sharing) or ``'path'`` (whole paths: BN recalibration, then a score on the held-out split).

    ``fingerprint()`` names everything the scores depend on (checkpoint step, rating options); a cached result with
    another fingerprint is recomputed.
    """

    kind: Literal['block', 'path']

    def fingerprint(self) -> str: ...

    def rate(self) -> Any:
        """What the searcher consumes: ``'block'``: ``{block: [row, ...]}`` (``None`` while block jobs are
        missing); ``'path'``: the rater itself or a callable ``score(arch) -> float`` (lower is better)."""
        ...


@runtime_checkable
class Searcher(Protocol):
    """Turns rated candidates into the ``top_k`` best architectures under ``cost(arch, metric) <= budget``."""

    def search(self, space: SearchSpace, rated: Any, metric: str, budget: float | None, top_k: int) -> list[Found]: ...


@runtime_checkable
class Method(Protocol):
    """A supernet training method, constructed from its config (``Method(cfg)``); the engine calls, in order:

    1. ``build(ctx, split)`` makes its state (supernet, teachers, heads) on ``ctx.device`` (``split``: the
       held-out split, for anything calibrated on training images) and returns the module the engine checkpoints
       and wraps in DDP; ``trainable_state()`` says what a checkpoint keeps of it; ``train_mode()`` sets train/eval
       modes before the loop.
    2. ``optimizer(steps_per_epoch)`` returns ``(optimizer, scheduler, per_step)``: timm schedulers stepped per
       epoch (``scheduler.step(epoch)``) or per step (``scheduler.step_update(step)``) when ``per_step``.
    3. Per optimizer step: ``sample_paths(step)`` (a pure function of the seed and the step, so identical on every
       rank), then per micro-batch ``train_step(images, labels, paths, ctx)`` under autocast (and DDP ``no_sync``
       but for the last micro-batch), which calls ``ctx.backward`` once or more and returns the detached losses to
       log, then ``after_step(step)`` (e.g. an EMA target's update) after the optimizer step.
    4. ``rater(ctx).rate()`` rates the trained supernet (looking at its cache before building anything);
       ``searcher(device).search(space, rated, metric, budget, top_k)`` picks the architectures, which the engine
       writes as ``arch/top<i>.json`` with ``provenance()`` added.

    Optional: ``groups_per_lr`` (parameter groups per logged learning rate, default 1); ``grad_slots`` (names of
    gradients kept apart, e.g. ``('sup', 'sub')``) with ``combine_grads(grads, named_params, ctx)``, which sets every
    ``p.grad`` from the slots' rank-averaged gradients before the optimizer step and returns scalars to log
    (:class:`search.pipeline.GradSlots` says how accumulation and DDP treat them); block-wise methods (with
    ``--block`` jobs) also have ``num_blocks`` and ``block_prefixes(k)`` (the state-dict prefixes of block ``k``).
    """

    name: str
    config_class: type
    space: SearchSpace
    cfg: Any

    def build(self, ctx: Any, split: dict) -> nn.Module: ...

    def trainable_state(self) -> dict[str, torch.Tensor]: ...

    def train_mode(self) -> None: ...

    def optimizer(self, steps_per_epoch: int) -> tuple[torch.optim.Optimizer, Any, bool]: ...

    def transform(self) -> Any: ...

    def sample_paths(self, step: int) -> list[Any]: ...

    def train_step(
        self, images: Any, labels: torch.Tensor, paths: list[Any], ctx: StepContext
    ) -> dict[str, torch.Tensor]: ...

    def after_step(self, step: int) -> None: ...

    def rater(self, ctx: Any) -> Rater: ...

    def searcher(self, device: torch.device) -> Searcher: ...

    def provenance(self) -> dict[str, Any]: ...
