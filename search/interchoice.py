"""Inter-choice dependent supernet weights: a plug-in of single-path supernets (SPOS and anything built on it).

Paper: Laube and Zell, "Inter-choice dependent super-network weights", arXiv 2104.11522, section 3.3 and Fig. 2;
official code github.com/cogsys-tuebingen/uninas (``uninas/modules/mixed/bias.py``, ``weights.py``,
``uninas/training/callbacks/mixedop.py``). A *site* is one place where a path picks one of several candidates (a
layer of the FairNAS space, an edge of one NAS-Bench-201 cell); its *priors* are earlier sites whose choices the
extra weights depend on.

* ``bias`` (depth D in 1, 2, 3): a zero-initialised per-channel table per site, indexed by the choices of its priors
  and its own choice, is added to the site's input before the chosen candidate runs (uninas ``_forward_bias``), so
  it reaches the candidate's first layer and, in an MBConv with a residual, the residual too; for Zero it has no
  effect, through Skip it goes straight to the output. Priors are the D sites run just before, across cell and stage
  boundaries (the paper's sequential priors, uninas [paper-time] ``ordered_names(unique=False)[-D - 1:]``); sites
  with fewer priors get a smaller table and the first site none. ``priors`` sets them per site instead (the later
  uninas ``mixed_priors``, e.g. NB201's topology-aware ``[[], [], [-2], [], [-4], [-4, -3]]``, cycled over sites).
  Weight decay: uninas ``WrappedOptimizer._decay_and_params`` exempts only 1-D parameters and names ending in
  ``.bias``, so the table (``_biases``, ndim > 1) *is* decayed; :func:`decayed_parameter_names` names the tables so
  that a method decays them too (SPOS does). The table is one tensor per site, so momentum and decay touch every
  entry every step, as in the official code.
* ``split`` (D = 1 at epoch N): from the start of epoch N (0-based, i.e. after N epochs: uninas ``milestones``
  checked at ``on_train_epoch_start``) each site with a prior runs one copy of its whole candidate set (weights and
  BN state) per value of the prior's choice. Unlike the official code (a dict of state_dicts swapped into the live
  modules, outside ``parameters()`` and saved under a custom key, "will most likely malfunction in distributed
  settings"), the copies are ordinary submodules allocated when the supernet is built: they are in ``state_dict``
  (saved, resumed, moved by ``.to()``), their parameters exist before DDP wraps the model (unused until the split:
  DDP's ``find_unused_parameters`` skips them), and the split itself is a deterministic copy of the live weights
  into every copy at the same step on every rank; the ``split_done`` buffer records it. The live candidates serve
  the prior's first allowed option, copies the others. Differences from uninas: every copy starts from the
  pre-split weights (uninas clones a copy lazily, when its prior value first occurs, from the copy used last), and
  every copy has its own optimizer state (uninas shares the momentum buffers of the live modules).
  Memory: (allowed options of the prior - 1) copies of every split site's candidates, from the start of training;
  on the FairNAS space 5 copies of layers 1..18, 71,314,080 parameters (285 MB in fp32, plus gradients and
  momentum once trained; tested), on NB201 at most 4 copies of each cell edge.

A space supports the plug-in with a few lines (see :class:`ChoiceSite` and :class:`InterChoice`): its supernet lists
its sites in the order its forward runs them, builds ``InterChoice(sites, space, options)`` as the submodule
``interchoice``, and at site ``k`` of a forward runs ``interchoice.candidate(k, arch)(interchoice.add_bias(k, x,
arch))``; ``path_state_dict`` takes its weights from ``interchoice.candidate(k, arch)`` too.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from .config import ConfigError

__all__ = [
    'DEPTHS',
    'VARIANTS',
    'ChoiceSite',
    'InterChoice',
    'InterChoiceOptions',
    'bias_parameter_count',
    'decayed_parameter_names',
    'parse_options',
    'resolve_priors',
    'start_epoch',
]

VARIANTS = ('bias', 'split')
DEPTHS = (1, 2, 3)
_KEYS = ('variant', 'depth', 'priors', 'split_epoch')


@dataclass(frozen=True)
class InterChoiceOptions:
    """Validated options: ``variant``, ``depth`` (bias: 1-3; split: 1), ``priors`` (relative offsets per site,
    cycled; replaces ``depth``), ``split_epoch`` (split only: the epoch at whose start the weights split)."""

    variant: str
    depth: int | None = None
    priors: tuple[tuple[int, ...], ...] | None = None
    split_epoch: int | None = None


def parse_options(options: Mapping[str, Any] | InterChoiceOptions | None, key: str = 'interchoice') -> Any:
    """``options`` as :class:`InterChoiceOptions` (``None`` stays ``None``); a bad value raises a
    :class:`~search.config.ConfigError` naming ``<key>.<field>``."""
    if options is None or isinstance(options, InterChoiceOptions):
        return options
    if not isinstance(options, Mapping):
        raise ConfigError(f'{key}: expected a mapping with keys {list(_KEYS)}, got {type(options).__name__}')
    unknown = sorted(set(options) - set(_KEYS))
    if unknown:
        raise ConfigError(f'{key}: unknown key(s) {unknown}; known: {list(_KEYS)}')
    variant = options.get('variant')
    if variant not in VARIANTS:
        raise ConfigError(f'{key}.variant: {variant!r} is not one of {VARIANTS}')
    depth, priors, split_epoch = options.get('depth'), options.get('priors'), options.get('split_epoch')
    if depth is not None and (isinstance(depth, bool) or depth not in DEPTHS):
        raise ConfigError(f'{key}.depth: {depth!r} is not one of {DEPTHS}')
    if priors is not None:
        if depth is not None:
            raise ConfigError(f'{key}: give either depth (sequential priors) or priors, not both')
        ok = isinstance(priors, (list, tuple)) and len(priors) > 0
        ok = ok and all(isinstance(p, (list, tuple)) for p in priors)
        ok = ok and all(isinstance(o, int) and not isinstance(o, bool) and o < 0 for p in priors for o in p)
        if not ok or any(len(set(p)) != len(p) for p in priors):
            raise ConfigError(
                f'{key}.priors: {priors!r} is not a non-empty list of lists of distinct negative offsets '
                '(e.g. [[], [], [-2], [], [-4], [-4, -3]])'
            )
        priors = tuple(tuple(p) for p in priors)
    if variant == 'bias':
        if split_epoch is not None:
            raise ConfigError(f'{key}.split_epoch: only the split variant splits (variant is {variant!r})')
        if priors is None and depth is None:
            depth = 1
        if priors is not None and max(len(p) for p in priors) > max(DEPTHS):
            raise ConfigError(f'{key}.priors: at most {max(DEPTHS)} priors per site, got {priors!r}')
    else:
        if depth not in (None, 1):
            raise ConfigError(f'{key}.depth: the split variant has depth 1 (paper section 3.3), got {depth!r}')
        if priors is None:
            depth = 1
        elif any(len(p) > 1 for p in priors):
            raise ConfigError(f'{key}.priors: the split variant takes at most one prior per site, got {priors!r}')
        if isinstance(split_epoch, bool) or not isinstance(split_epoch, int) or split_epoch < 0:
            raise ConfigError(f'{key}.split_epoch: expected an epoch >= 0 for the split variant, got {split_epoch!r}')
    return InterChoiceOptions(variant, depth, priors, split_epoch)


@dataclass(frozen=True, eq=False)
class ChoiceSite:
    """What the plug-in needs of one site: the space ``decision`` whose choice picks its candidate (several sites
    share one when cells share their topology), the ``in_channels`` of its input, and its ``candidates`` (one module
    per option of the decision, index = choice)."""

    decision: int
    in_channels: int
    candidates: nn.ModuleList


def resolve_priors(num_sites: int, depth: int | None, priors: Sequence[Sequence[int]] | None) -> list[tuple[int, ...]]:
    """The prior sites of every site (absolute indices, oldest first for sequential priors): the ``depth`` sites
    just before it, or ``priors[k % len(priors)]`` as offsets from site ``k``; offsets before site 0 are dropped."""
    pattern = [tuple(range(-depth, 0))] if priors is None else [tuple(p) for p in priors]
    out = []
    for k in range(num_sites):
        out.append(tuple(k + o for o in pattern[k % len(pattern)] if k + o >= 0))
    return out


def bias_parameter_count(
    decisions: Sequence[int],
    channels: Sequence[int],
    num_choices: Sequence[int],
    depth: int | None = 1,
    priors: Sequence[Sequence[int]] | None = None,
) -> int:
    """Extra parameters of the bias variant: per site with priors, C_in times the product of the option counts of
    its priors and itself (``decisions[k]``: the decision of site ``k``, ``num_choices``: options per decision)."""
    total = 0
    for k, prev in enumerate(resolve_priors(len(decisions), depth, priors)):
        if prev:
            total += channels[k] * math.prod(num_choices[decisions[j]] for j in (*prev, k))
    return total


class InterChoice(nn.Module):
    """The extra weights of one supernet: ``tables`` (bias) or ``copies`` (split), one entry per site with priors.

    ``sites`` are held without registering them (the supernet owns the candidates); ``space`` gives ``num_choices``
    and ``allowed`` (a masked sub-space allocates split copies only for the prior options it can draw).
    """

    def __init__(self, sites: Sequence[ChoiceSite], space: Any, options: Mapping[str, Any] | InterChoiceOptions):
        super().__init__()
        self.options = parse_options(options)
        self._sites = list(sites)
        num_choices = space.num_choices
        for k, site in enumerate(self._sites):
            if not 0 <= site.decision < len(num_choices) or len(site.candidates) != num_choices[site.decision]:
                raise ValueError(
                    f'interchoice site {k}: decision {site.decision} with {len(site.candidates)} candidates does not '
                    f'fit space {space.name!r} ({len(num_choices)} decisions, options {num_choices})'
                )
        self.priors = resolve_priors(len(self._sites), self.options.depth, self.options.priors)
        self.tables = nn.ParameterDict()
        self.copies = nn.ModuleDict()
        self._slots: dict[int, tuple[int, ...]] = {}
        for k, (site, prev) in enumerate(zip(self._sites, self.priors, strict=True)):
            if not prev:
                continue  # uninas builds no table for a site without priors
            if self.options.variant == 'bias':
                shape = [num_choices[self._sites[j].decision] for j in (*prev, k)] + [site.in_channels]
                self.tables[str(k)] = nn.Parameter(torch.zeros(shape))
            else:
                self._slots[k] = tuple(space.allowed(self._sites[prev[0]].decision))
                copies = [copy.deepcopy(site.candidates) for _ in self._slots[k][1:]]
                self.copies[str(k)] = nn.ModuleList(copies)
        self.register_buffer('split_done', torch.zeros((), dtype=torch.bool))

    def _choices(self, sites: Sequence[int], arch: Sequence[int]) -> tuple[int, ...]:
        return tuple(int(arch[self._sites[j].decision]) for j in sites)

    def add_bias(self, k: int, x: torch.Tensor, arch: Sequence[int]) -> torch.Tensor:
        """``x`` plus the bias of site ``k`` for the choices of its priors and itself (``x`` as is otherwise)."""
        table = self.tables.get(str(k))
        if table is None:
            return x
        bias = table[self._choices((*self.priors[k], k), arch)]
        return x + bias.view(1, -1, *([1] * (x.ndim - 2))).to(x.dtype)

    def candidate(self, k: int, arch: Sequence[int]) -> nn.Module:
        """The module site ``k`` runs for ``arch``: its live candidate, or after the split the copy of its prior's
        choice."""
        site = self._sites[k]
        choice = int(arch[site.decision])
        if k not in self._slots or not bool(self.split_done):
            return site.candidates[choice]
        (prior,) = self._choices(self.priors[k], arch)
        slots = self._slots[k]
        if prior not in slots:
            raise ValueError(f'interchoice site {k}: prior choice {prior} is not an allowed option {slots}')
        slot = slots.index(prior)
        return site.candidates[choice] if slot == 0 else self.copies[str(k)][slot - 1][choice]

    @torch.no_grad()
    def split(self) -> None:
        """Copy every split site's live candidates (weights and BN state) into its copies; from now on
        :meth:`candidate` picks by the prior's choice."""
        for k in self._slots:
            state = self._sites[k].candidates.state_dict()
            for clone in self.copies[str(k)]:
                clone.load_state_dict(state)
        self.split_done.fill_(True)

    def start_epoch(self, epoch: int) -> bool:
        """Split when the split epoch has come and it has not happened yet; returns whether it split now."""
        due = self.options.variant == 'split' and epoch >= self.options.split_epoch and not bool(self.split_done)
        if due:
            self.split()
        return due

    def extra_repr(self) -> str:
        opts = self.options
        what = f'depth={opts.depth}' if opts.priors is None else f'priors={list(map(list, opts.priors))}'
        split = f', split_epoch={opts.split_epoch}' if opts.variant == 'split' else ''
        return f'variant={opts.variant!r}, {what}{split}, sites={len(self._sites)}'


def _instances(module: nn.Module) -> list[tuple[str, InterChoice]]:
    return [(name, m) for name, m in module.named_modules() if isinstance(m, InterChoice)]


def decayed_parameter_names(module: nn.Module) -> set[str]:
    """Names (in ``module.named_parameters()``) of the bias tables, which uninas decays (see the module docstring)."""
    out = set()
    for name, ic in _instances(module):
        out |= {f'{name}.tables.{k}' if name else f'tables.{k}' for k in ic.tables}
    return out


def start_epoch(module: nn.Module, epoch: int) -> bool:
    """The epoch hook: let every :class:`InterChoice` in ``module`` split when its epoch has come (call it on every
    rank before the forward of each step; it is a no-op but at the split step). Returns whether any split."""
    return any([ic.start_epoch(epoch) for _, ic in _instances(module)])
