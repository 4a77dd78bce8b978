"""Exact k-best search over block-wise rated candidates under an additive cost budget (DNA, Alg. 2).

A network is split into K blocks; every block offers rated candidates (a score, lower is better, e.g. a
distillation loss; an additive cost such as FLOPs, parameters or latency; and the widths it consumes and
produces). An architecture picks one candidate per block such that consecutive widths match; its score is
the sum of the block scores and its cost ``fixed_cost`` plus the sum of the block costs. The official DNA
code walks a cascade of per-block indices, which is not exhaustive from three blocks on; this module returns
the provably best ``k`` architectures within the budget.

Order of solutions (a strict total order, so the answer is unique and equal to :func:`brute_force_search`):
ascending total score, then ascending total cost, then block by block the candidate's (score, cost, index in
its block). Totals are accumulated left to right (``0.0 + s_0 + s_1 + ...``, ``fixed_cost + c_0 + c_1 + ...``)
and the budget test ``cost <= budget`` is applied to exactly that number.

How :func:`exact_search` stays exact yet fast:

1. *Dominance pruning* (:func:`pareto_front`). Among the candidates of a block with the same ``(in_key,
   out_key)``, say ``b`` beats ``a`` when ``b.score <= a.score``, ``b.cost <= a.cost`` and ``b`` precedes ``a``
   in (score, cost, index) order. If ``a`` is beaten by ``k`` others, it is in none of the ``k`` best
   architectures: swapping ``a`` for any of its beaters in an architecture keeps the widths compatible, does not
   raise the cost (so the budget still holds) and does not raise the score -- floating-point addition is
   monotone, so this holds for the rounded totals too -- and when both totals come out equal the block-wise
   tie-break above prefers the beater. That yields ``k`` distinct, strictly better feasible architectures.
   Exact duplicates beat one another only in index order, so with ``k > 1`` up to ``k`` copies survive.
2. *Suffix fronts.* A backward pass computes, per block and input width, the Pareto front of (cost, score) of
   all completions from that block to the end (the k = 1 front suffices for a bound). It answers "lowest score
   of a completion costing at most r" with a binary search -- a budget-aware lower bound that is exact up to
   rounding, so the depth-first search below visits little more than the paths to the answers. Completions
   no prefix could afford are left out, and a front longer than 4096 points is coarsened into fewer points
   that dominate it (looser bounds, still sound). That only happens when scores follow costs almost exactly,
   where the problem degenerates into subset-sum and the search slows down (seconds to tens of seconds).
3. *Depth-first branch and bound.* At each node the children are ordered by that bound and the loop stops at
   the first child whose bound exceeds the current k-th best score; a bounded list keeps the k best. Bounds
   are compared with a small tolerance covering the rounding of a different summation order, so pruning
   never drops an architecture the exact order would keep.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
from collections import defaultdict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ['Candidate', 'Solution', 'brute_force_search', 'exact_search', 'pareto_front']

_EPS = np.finfo(float).eps
_CHUNK = 1 << 20  # (cost, score) pairs formed at once while building a suffix front: bounds peak memory
_MERGE = 1 << 16  # pending pairs that trigger a merge into the front, which then filters the next ones
_MAX_FRONT = 4096  # points kept per suffix front (see _coarsen)


@dataclass(frozen=True)
class Candidate:
    """One rated choice for a block; ``payload`` is whatever the caller needs to rebuild it (e.g. cell, ops)."""

    score: float
    cost: float
    in_key: Hashable = None
    out_key: Hashable = None
    payload: Any = None


@dataclass
class Solution:
    """A complete architecture: its total score and cost, the chosen candidates and their indices per block."""

    score: float
    cost: float
    choices: tuple[Candidate, ...]
    indices: tuple[int, ...] = ()


def _check(blocks: Sequence[Sequence[Candidate]], budget: float | None, k: int, fixed_cost: float) -> None:
    """Reject malformed input up front, naming the offending block and candidate."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f'k must be a positive integer, got {k!r}')
    if len(blocks) == 0:
        raise ValueError('need at least one block')
    if budget is not None and (math.isnan(budget) or budget == -math.inf):
        raise ValueError(f'budget must be a number or None, got {budget!r}')
    if not math.isfinite(fixed_cost):
        raise ValueError(f'fixed_cost must be finite, got {fixed_cost!r}')
    for b, block in enumerate(blocks):
        if len(block) == 0:
            raise ValueError(f'block {b} has no candidates')
        for i, cand in enumerate(block):
            if not isinstance(cand, Candidate):
                raise TypeError(f'block {b} candidate {i} is a {type(cand).__name__}, not a Candidate')
            if not (math.isfinite(cand.score) and math.isfinite(cand.cost)):
                raise ValueError(f'block {b} candidate {i} has a non-finite score or cost: {cand}')


def _ranks(block: Sequence[Candidate]) -> list[int]:
    """Position of each candidate in (score, cost, index) order: the per-block part of the tie-break."""
    order = sorted(range(len(block)), key=lambda i: (block[i].score, block[i].cost, i))
    rank = [0] * len(block)
    for r, i in enumerate(order):
        rank[i] = r
    return rank


def _budget_error(budget: float, min_cost: float) -> ValueError:
    shown_b, shown_m = f'{budget:.4g}', f'{min_cost:.4g}'
    if shown_b == shown_m:
        shown_b, shown_m = repr(float(budget)), repr(float(min_cost))
    return ValueError(f'budget {shown_b} is below the cheapest architecture ({shown_m})')


def _kept(block: Sequence[Candidate], idx: Sequence[int], k: int) -> list[int]:
    """Indices (into ``block``) among ``idx`` beaten by fewer than ``k`` others with the same widths."""
    groups: dict[tuple[Hashable, Hashable], list[int]] = defaultdict(list)
    for i in idx:
        groups[block[i].in_key, block[i].out_key].append(i)
    kept = []
    for members in groups.values():
        members.sort(key=lambda i: (block[i].score, block[i].cost, i))
        cheapest: list[float] = []  # max-heap (negated) of the k lowest costs among the predecessors
        for i in members:
            cost = block[i].cost
            # Every predecessor has score <= ours; if k of them also cost <= ours, k others beat us.
            if len(cheapest) < k or -cheapest[0] > cost:
                kept.append(i)
            if len(cheapest) < k:
                heapq.heappush(cheapest, -cost)
            elif -cheapest[0] > cost:
                heapq.heapreplace(cheapest, -cost)
    kept.sort()
    return kept


def pareto_front(candidates: Sequence[Candidate], k: int = 1) -> list[Candidate]:
    """The candidates that can appear in one of the ``k`` best architectures, in input order.

    Candidates only compete with those of the same ``(in_key, out_key)``; one is dropped when ``k`` others
    have no higher score and no higher cost and come first in (score, cost, index) order (see the module
    docstring for why that is safe). With ``k=1`` this is the classic Pareto front of (score, cost) per width
    pair, keeping one copy of exact duplicates.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f'k must be a positive integer, got {k!r}')
    return [candidates[i] for i in _kept(candidates, range(len(candidates)), k)]


def _pareto(costs: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(cost, score) staircase: costs non-decreasing, scores strictly decreasing; the last point at or below a
    cost holds the lowest score available at that cost (equal costs may keep more than one point)."""
    order = np.argsort(costs)
    costs, scores = costs[order], scores[order]
    best_before = np.minimum.accumulate(np.concatenate(([np.inf], scores[:-1])))
    keep = scores < best_before
    return costs[keep], scores[keep]


def _lowest_within(costs: np.ndarray, scores: np.ndarray, limits: np.ndarray) -> np.ndarray:
    """Per limit, the staircase's lowest score costing at most that much (inf where nothing is that cheap)."""
    at = np.searchsorted(costs, limits, side='right') - 1
    return np.where(at >= 0, scores[np.maximum(at, 0)], np.inf)


@dataclass
class _Front:
    """Completions from one (block, input width): ``scores[j]`` is the lowest score costing <= ``costs[j]``."""

    costs: np.ndarray
    scores: np.ndarray


@dataclass
class _Group:
    """Candidates of one block sharing input and output width, in (score, cost, index) order."""

    out_key: Hashable
    scores: np.ndarray
    costs: np.ndarray
    index: np.ndarray
    ranks: np.ndarray
    tail_costs: np.ndarray | None  # the completion front from the next block (None in the last block)
    tail_scores: np.ndarray | None

    @classmethod
    def of(
        cls, block: Sequence[Candidate], members: list[int], ranks: list[int], out_key: Hashable, tail: _Front | None
    ) -> _Group:
        return cls(
            out_key,
            np.array([block[i].score for i in members], dtype=float),
            np.array([block[i].cost for i in members], dtype=float),
            np.array(members, dtype=np.int64),
            np.array([ranks[i] for i in members], dtype=np.int64),
            None if tail is None else tail.costs,
            None if tail is None else tail.scores,
        )


def _merge_front(pieces: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    return _pareto(np.concatenate([c for c, _ in pieces]), np.concatenate([s for _, s in pieces]))


def _suffix_front(
    block: Sequence[Candidate], idx: Sequence[int], nxt: dict[Hashable, _Front] | None, cap: float
) -> dict[Hashable, _Front]:
    """Per input width, the front of (cost, score) over completions from this block (costs above ``cap`` dropped)."""
    by_in: dict[Hashable, dict[Hashable, list[int]]] = defaultdict(lambda: defaultdict(list))
    for i in idx:
        by_in[block[i].in_key][block[i].out_key].append(i)
    fronts = {}
    for in_key, by_out in by_in.items():
        acc: tuple[np.ndarray, np.ndarray] | None = None
        pending: list[tuple[np.ndarray, np.ndarray]] = []
        size = 0
        for out_key, members in by_out.items():
            cc = np.array([block[i].cost for i in members])
            cs = np.array([block[i].score for i in members])
            if nxt is None:
                tail_c, tail_s = np.zeros(1), np.zeros(1)
            elif out_key in nxt:
                tail_c, tail_s = nxt[out_key].costs, nxt[out_key].scores
            else:
                continue  # dead end: no completion from this output width
            step = max(1, _CHUNK // len(tail_c))
            for lo in range(0, len(members), step):
                pc = (cc[lo : lo + step, None] + tail_c[None, :]).ravel()
                ps = (cs[lo : lo + step, None] + tail_s[None, :]).ravel()
                fit = pc <= cap
                if acc is not None:  # drop what the front so far already dominates
                    fit &= ps < _lowest_within(*acc, pc)
                pending.append((pc[fit], ps[fit]))
                size += int(fit.sum())
                if size >= _MERGE:
                    acc = _coarsen(*_merge_front(([acc] if acc else []) + pending))
                    pending, size = [], 0
        if pending:
            acc = _merge_front(([acc] if acc else []) + pending)
        if acc is not None and len(acc[0]):
            fronts[in_key] = _Front(*_coarsen(*acc))
    return fronts


def _coarsen(costs: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """At most ``_MAX_FRONT`` points that still dominate every point of the front, so lookups stay lower bounds.

    Consecutive points are grouped and each group is replaced by (its lowest cost, its lowest score). This keeps
    the backward pass polynomial when scores track costs so closely that nearly every combination is
    Pareto-optimal; the bounds get looser there, never unsound.
    """
    if len(costs) <= _MAX_FRONT:
        return costs, scores
    starts = np.linspace(0, len(costs), _MAX_FRONT, endpoint=False).astype(int)
    ends = np.append(starts[1:], len(costs)) - 1
    return costs[starts], scores[ends]


def _min_costs(blocks: Sequence[Sequence[Candidate]], live: list[list[int]]) -> list[dict[Hashable, float]]:
    """Backward pass: cheapest completion cost from each (block, input width); missing width = no completion."""
    out: list[dict[Hashable, float]] = [{} for _ in blocks]
    for b in range(len(blocks) - 1, -1, -1):
        table = out[b]
        for i in live[b]:
            cand = blocks[b][i]
            if b + 1 < len(blocks):
                if cand.out_key not in out[b + 1]:
                    continue
                cost = cand.cost + out[b + 1][cand.out_key]
            else:
                cost = cand.cost
            if cost < table.get(cand.in_key, math.inf):
                table[cand.in_key] = cost
    return out


def _reachable(blocks: Sequence[Sequence[Candidate]], start_key: Hashable) -> list[list[int]]:
    """Forward pass: per block, the candidates whose input width some prefix can produce."""
    live = []
    keys: set[Hashable] | None = None if start_key is None else {start_key}
    for block in blocks:
        idx = [i for i, c in enumerate(block) if keys is None or c.in_key in keys]
        live.append(idx)
        keys = {block[i].out_key for i in idx}
    return live


def exact_search(
    blocks: Sequence[Sequence[Candidate]],
    budget: float | None,
    k: int = 1,
    fixed_cost: float = 0.0,
    start_key: Hashable = None,
) -> list[Solution]:
    """The ``k`` best architectures with cost <= ``budget`` (``None``: unconstrained), best first.

    ``start_key`` is the width the first block must accept (``None``: any). Returns fewer than ``k`` solutions
    when fewer exist and ``[]`` when no width-compatible chain exists at all; raises ``ValueError`` naming the
    cheapest achievable cost when the budget is below it. See the module docstring for the order and method.
    """
    _check(blocks, budget, k, fixed_cost)
    n_blocks = len(blocks)
    ranks = [_ranks(block) for block in blocks]

    live = _reachable(blocks, start_key)
    min_cost = _min_costs(blocks, live)
    if not min_cost[0]:
        return []
    cheapest = fixed_cost + min(min_cost[0].values())

    # Tolerances for comparing bounds summed in another order than the totals (a few ulps of the magnitudes).
    score_scale = sum(max(abs(c.score) for c in block) for block in blocks)
    tol_s = 4 * (n_blocks + 2) * _EPS * score_scale
    if budget is None or budget == math.inf:
        limit, tol_c = math.inf, 0.0
    else:
        cost_scale = abs(fixed_cost) + abs(budget) + sum(max(abs(c.cost) for c in block) for block in blocks)
        tol_c = 4 * (n_blocks + 3) * _EPS * cost_scale
        if budget < cheapest - tol_c:
            raise _budget_error(budget, cheapest)
        limit = budget

    kept = [_kept(block, idx, k) for block, idx in zip(blocks, live, strict=True)]

    # Suffix fronts for blocks 1..K-1, dropping completions that no prefix could afford.
    prefix_min = [0.0] * n_blocks
    for b in range(1, n_blocks):
        prefix_min[b] = prefix_min[b - 1] + min(blocks[b - 1][i].cost for i in kept[b - 1])
    fronts: list[dict[Hashable, _Front] | None] = [None] * (n_blocks + 1)
    for b in range(n_blocks - 1, 0, -1):
        cap = limit - fixed_cost - prefix_min[b] + tol_c
        # A bound needs only the lowest score per cost, so the k = 1 front of the block suffices here.
        fronts[b] = _suffix_front(blocks[b], _kept(blocks[b], kept[b], 1), fronts[b + 1], cap)

    # Children per (block, input width), grouped by output width (which fixes the completion front), as arrays
    # in (score, cost, index) order so that one node evaluates all its children's bounds at once.
    children: list[dict[Hashable, list[_Group]]] = []
    for b in range(n_blocks):
        last = b + 1 == n_blocks
        grouped: dict[Hashable, dict[Hashable, list[int]]] = defaultdict(lambda: defaultdict(list))
        for i in sorted(kept[b], key=lambda i, b=b: ranks[b][i]):
            cand = blocks[b][i]
            if not last and cand.out_key not in fronts[b + 1]:
                continue  # no completion within the budget
            in_key = None if (b == 0 and start_key is None) else cand.in_key
            grouped[in_key][None if last else cand.out_key].append(i)
        children.append(
            {
                in_key: [
                    _Group.of(blocks[b], members, ranks[b], out_key, None if last else fronts[b + 1][out_key])
                    for out_key, members in by_out.items()
                ]
                for in_key, by_out in grouped.items()
            }
        )

    best: list[tuple[tuple, tuple[int, ...]]] = []  # (order key, indices), ascending, at most k

    def kth_score() -> float:
        return best[-1][0][0] if len(best) == k else math.inf

    def leaf(group: _Group, score: float, cost: float, path: tuple[int, ...], rank: tuple[int, ...]) -> None:
        totals, costs = score + group.scores, cost + group.costs
        for j in np.flatnonzero((totals <= kth_score()) & (costs <= limit)).tolist():
            total = float(totals[j])
            if total > kth_score():
                break  # sorted by score: nothing further can enter the list
            key = (total, float(costs[j]), (*rank, int(group.ranks[j])))
            if len(best) == k and key >= best[-1][0]:
                continue
            bisect.insort(best, (key, (*path, int(group.index[j]))))
            del best[k:]

    def visit(b: int, groups: list[_Group], score: float, cost: float, path: tuple, rank: tuple) -> None:
        if b == n_blocks - 1:
            for group in groups:
                leaf(group, score, cost, path, rank)
            return
        threshold = kth_score() + tol_s
        parts = []
        for g, group in enumerate(groups):
            s, c = score + group.scores, cost + group.costs
            at = np.searchsorted(group.tail_costs, limit - c + tol_c, side='right') - 1
            ok = np.flatnonzero(at >= 0)
            bound = s[ok] + group.tail_scores[at[ok]]
            keep = bound <= threshold
            ok = ok[keep]
            parts.append((bound[keep], group.ranks[ok], np.full(len(ok), g), ok, s[ok], c[ok]))
        if not parts:
            return
        bounds, rs, gs, js, ss, cs = (np.concatenate(x) for x in zip(*parts, strict=True))
        nxt = children[b + 1]
        for o in np.lexsort((rs, bounds)).tolist():
            if bounds[o] > kth_score() + tol_s:
                break
            group, j = groups[gs[o]], js[o]
            path_o, rank_o = (*path, int(group.index[j])), (*rank, int(rs[o]))
            visit(b + 1, nxt[group.out_key], float(ss[o]), float(cs[o]), path_o, rank_o)

    visit(0, children[0].get(start_key, []), 0.0, fixed_cost, (), ())
    if not best and budget is not None:
        raise _budget_error(budget, cheapest)  # only reachable at the rounding edge of the early check
    return [_solution(blocks, key, idx) for key, idx in best]


def _solution(blocks: Sequence[Sequence[Candidate]], key: tuple, idx: tuple[int, ...]) -> Solution:
    return Solution(key[0], key[1], tuple(block[i] for block, i in zip(blocks, idx, strict=True)), idx)


def brute_force_search(
    blocks: Sequence[Sequence[Candidate]],
    budget: float | None,
    k: int = 1,
    fixed_cost: float = 0.0,
    start_key: Hashable = None,
) -> list[Solution]:
    """Reference for :func:`exact_search` (same signature, order and errors) by full enumeration: tiny spaces only."""
    _check(blocks, budget, k, fixed_cost)
    ranks = [_ranks(block) for block in blocks]
    limit = math.inf if budget is None else budget
    found = []
    cheapest = math.inf
    for idx in itertools.product(*(range(len(block)) for block in blocks)):
        chosen = [block[i] for block, i in zip(blocks, idx, strict=True)]
        if start_key is not None and chosen[0].in_key != start_key:
            continue
        if any(a.out_key != b.in_key for a, b in itertools.pairwise(chosen)):
            continue
        score, cost = 0.0, fixed_cost
        for cand in chosen:
            score += cand.score
            cost += cand.cost
        cheapest = min(cheapest, cost)
        if cost <= limit:
            found.append(((score, cost, tuple(r[i] for r, i in zip(ranks, idx, strict=True))), idx))
    if not found and cheapest < math.inf:
        raise _budget_error(limit, cheapest)
    found.sort()
    return [_solution(blocks, key, idx) for key, idx in found[:k]]
