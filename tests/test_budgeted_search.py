"""Exact constrained search over block-wise candidates: equal to brute force, fast on DNA-sized spaces."""

from __future__ import annotations

import itertools
import random
import time

import numpy as np
import pytest

from search.strategies import Candidate, Solution, brute_force_search, budgeted, exact_search, pareto_front


def _random_instance(rng: random.Random) -> tuple[list[list[Candidate]], float | None, int, float, int | None]:
    n_blocks = rng.randint(2, 4)
    n_keys = rng.randint(1, 3)
    ties = rng.random() < 0.4  # small integer grids make equal scores, costs and whole duplicates common
    blocks = []
    for b in range(n_blocks):
        block = []
        for _ in range(rng.randint(1, 7)):
            if ties:
                score, cost = float(rng.randint(0, 3)), float(rng.randint(1, 4))
            else:
                score, cost = rng.uniform(-1, 2), rng.uniform(0.5, 5)
            block.append(Candidate(score, cost, rng.randrange(n_keys), rng.randrange(n_keys), payload=(b, len(block))))
        if ties and rng.random() < 0.5:
            block.append(block[rng.randrange(len(block))])  # an exact duplicate
        blocks.append(block)
    roll = rng.random()
    budget = None if roll < 0.2 else (0.5 if roll < 0.3 else rng.uniform(2, 4.5 * n_blocks))
    start_key = rng.randrange(n_keys) if rng.random() < 0.3 else None
    fixed_cost = rng.choice([0.0, 1.5])
    if budget is not None:
        budget += fixed_cost
    return blocks, budget, rng.choice([1, 3, 5]), fixed_cost, start_key


def _run(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except ValueError as err:
        return ('error', str(err).split(' is below')[0])


def _as_tuples(result):
    if isinstance(result, tuple):
        return result
    return [(s.score, s.cost, s.indices, s.choices) for s in result]


@pytest.mark.parametrize('seed', range(4))
def test_equals_brute_force_on_random_instances(seed):
    rng = random.Random(seed)
    outcomes = set()
    for _ in range(50):
        blocks, budget, k, fixed_cost, start_key = _random_instance(rng)
        args = (blocks, budget, k, fixed_cost, start_key)
        want, got = _run(brute_force_search, *args), _run(exact_search, *args)
        assert _as_tuples(got) == _as_tuples(want), args
        outcomes.add('error' if isinstance(want, tuple) else ('empty' if not want else 'found'))
    assert outcomes >= {'found'}


def test_equals_brute_force_with_coarse_fronts(monkeypatch):
    """Tiny internal limits force the chunking, filtering and coarsening paths that only huge spaces reach."""
    monkeypatch.setattr(budgeted, '_MAX_FRONT', 2)
    monkeypatch.setattr(budgeted, '_MERGE', 1)
    monkeypatch.setattr(budgeted, '_CHUNK', 2)
    rng = random.Random(100)
    for _ in range(100):
        args = _random_instance(rng)
        assert _as_tuples(_run(exact_search, *args)) == _as_tuples(_run(brute_force_search, *args)), args


def test_random_instances_cover_every_outcome():
    """The 200 instances above hit all three outcomes: solutions, no compatible chain, budget too small."""
    seen = set()
    for seed in range(4):
        rng = random.Random(seed)
        for _ in range(50):
            result = _run(brute_force_search, *_random_instance(rng))
            seen.add('error' if isinstance(result, tuple) else ('empty' if not result else 'found'))
    assert seen == {'error', 'empty', 'found'}


def test_solutions_are_sorted_consistent_and_feasible():
    rng = random.Random(7)
    blocks = [[Candidate(rng.random(), rng.uniform(1, 3), 0, 0) for _ in range(6)] for _ in range(3)]
    sols = exact_search(blocks, 6.5, k=5, fixed_cost=0.5)
    assert len(sols) == 5 and all(isinstance(s, Solution) for s in sols)
    assert [s.score for s in sols] == sorted(s.score for s in sols)
    for s in sols:
        assert s.cost <= 6.5
        assert s.score == pytest.approx(sum(c.score for c in s.choices))
        assert s.cost == pytest.approx(0.5 + sum(c.cost for c in s.choices))
        assert s.choices == tuple(block[i] for block, i in zip(blocks, s.indices, strict=True))


def test_where_the_cascaded_index_heuristic_fails():
    """The best-scoring prefix (a0, b0) only fits with a bad last block; a worse prefix fits the best one.

    A cascade that fixes each block to its best-scoring index that still fits, and only moves on to later
    indices of later blocks, ends at a0 b0 c2 (score 6). The optimum is a0 b1 c0 (score 1.5).
    """
    a = [Candidate(0.0, 6.0), Candidate(1.0, 4.0)]
    b = [Candidate(0.0, 3.0), Candidate(0.5, 1.0), Candidate(3.0, 0.5)]
    c = [Candidate(1.0, 3.0), Candidate(2.0, 2.5), Candidate(6.0, 0.5)]
    blocks = [a, b, c]
    for k in (1, 2, 4):
        got = exact_search(blocks, 10.0, k=k)
        assert _as_tuples(got) == _as_tuples(brute_force_search(blocks, 10.0, k=k))
    best = exact_search(blocks, 10.0)[0]
    assert best.indices == (0, 1, 0) and best.score == 1.5 and best.cost == 10.0


def test_widths_must_chain():
    blocks = [
        [Candidate(0.0, 1.0, 'in', 16), Candidate(5.0, 1.0, 'in', 24)],
        [Candidate(9.0, 1.0, 24, 40), Candidate(0.0, 1.0, 16, 32)],
        [Candidate(0.0, 1.0, 40, 'out')],
    ]
    (best,) = exact_search(blocks, None)
    assert best.indices == (1, 0, 0) and best.score == 14.0
    assert exact_search(blocks, None, start_key='other') == []
    assert exact_search(blocks, None, start_key='in')[0].indices == (1, 0, 0)


def test_duplicates_survive_for_k_above_one():
    dup = Candidate(1.0, 1.0, payload='x')
    blocks = [[dup, dup, dup, Candidate(2.0, 2.0)], [Candidate(0.0, 1.0)]]
    sols = exact_search(blocks, None, k=3)
    assert [s.indices for s in sols] == [(0, 0), (1, 0), (2, 0)]
    assert [s.indices for s in exact_search(blocks, None, k=1)] == [(0, 0)]


def test_ties_break_by_cost_then_block_order():
    blocks = [[Candidate(1.0, 2.0), Candidate(1.0, 1.0)], [Candidate(0.0, 1.0), Candidate(0.0, 1.0)]]
    sols = exact_search(blocks, None, k=4)
    assert [s.indices for s in sols] == [(1, 0), (1, 1), (0, 0), (0, 1)]
    assert _as_tuples(sols) == _as_tuples(brute_force_search(blocks, None, k=4))


def test_pareto_front():
    a, b, c = Candidate(1.0, 3.0), Candidate(2.0, 1.0), Candidate(2.0, 3.0)  # c is dominated by a and by b
    dup = Candidate(1.0, 3.0)
    assert pareto_front([a, b, c]) == [a, b]
    assert pareto_front([a, b, c], k=2) == [a, b]
    assert pareto_front([a, b, c], k=3) == [a, b, c]
    assert pareto_front([c, a, dup, b]) == [a, b]  # one copy of an exact duplicate at k=1 ...
    assert pareto_front([c, a, dup, b], k=2) == [a, dup, b]  # ... both at k=2
    # Candidates compete only within the same (in_key, out_key).
    other = Candidate(5.0, 5.0, in_key=1)
    assert pareto_front([a, other]) == [a, other]
    with pytest.raises(ValueError, match='k must be'):
        pareto_front([a], k=0)


def test_pareto_front_matches_definition():
    rng = random.Random(3)
    for _ in range(50):
        cands = [Candidate(float(rng.randint(0, 4)), float(rng.randint(0, 4)), rng.randrange(2)) for _ in range(12)]
        k = rng.choice([1, 2, 3])

        def beats(j, i, cands=cands):
            x, y = cands[j], cands[i]
            same = (x.in_key, x.out_key) == (y.in_key, y.out_key)
            return (
                j != i
                and same
                and x.score <= y.score
                and x.cost <= y.cost
                and (x.score, x.cost, j) < (y.score, y.cost, i)
            )

        want = [c for i, c in enumerate(cands) if sum(beats(j, i) for j in range(len(cands))) < k]
        assert pareto_front(cands, k) == want


def test_errors():
    ok = [Candidate(1.0, 1.0)]
    for fn in (exact_search, brute_force_search):
        with pytest.raises(ValueError, match='block 1 has no candidates'):
            fn([ok, []], None)
        with pytest.raises(ValueError, match='need at least one block'):
            fn([], None)
        with pytest.raises(ValueError, match='k must be a positive integer'):
            fn([ok], None, k=0)
        with pytest.raises(ValueError, match='non-finite'):
            fn([[Candidate(float('nan'), 1.0)]], None)
        with pytest.raises(TypeError, match='not a Candidate'):
            fn([[(1.0, 1.0)]], None)
        with pytest.raises(ValueError, match='budget must be a number'):
            fn([ok], float('nan'))
        blocks = [[Candidate(0.0, 1.4e8), Candidate(0.0, 2e8)], [Candidate(0.0, 1e8)]]
        with pytest.raises(ValueError, match=r'budget 3e\+08 is below the cheapest architecture \(3\.4e\+08\)'):
            fn(blocks, 3.0e8, fixed_cost=1e8)
        assert fn(blocks, 3.4e8, fixed_cost=1e8)[0].cost == 3.4e8


def _dna_space(seed: int, corr: float) -> tuple[list[list[Candidate]], float]:
    """DNA's space: 2 then 4 layers per block, 6 MBConv ops (kernel 3/5/7, expansion 3/6) per layer.

    Costs are layer-wise FLOPs sums (the first layer of a block strides), scores a distillation loss that
    falls with cost (``corr``) plus noise; returns the blocks and the fixed cost (stem and head).
    """
    rng = np.random.default_rng(seed)
    ops = [(kernel, expand) for kernel in (3, 5, 7) for expand in (3, 6)]
    blocks = []
    for b, n_layers in enumerate((2, 4, 4, 4, 4)):
        unit = rng.uniform(2e5, 8e5)
        combos = list(itertools.product(range(len(ops)), repeat=n_layers))
        costs = np.array(
            [
                sum(
                    unit * (1.6 if j == 0 else 1.0) * ops[o][1] * (1 + ops[o][0] ** 2 / 20) for j, o in enumerate(combo)
                )
                for combo in combos
            ]
        )
        z = (costs - costs.mean()) / costs.std()
        scores = 5 - corr * z + (1 - corr) * rng.normal(size=len(combos))
        blocks.append(
            [
                Candidate(float(s), float(c), payload=(b, combo))
                for s, c, combo in zip(scores, costs, combos, strict=True)
            ]
        )
    return blocks, 4e7


@pytest.mark.parametrize('corr', [0.0, 0.9])
def test_dna_sized_space_is_fast(corr):
    blocks, fixed = _dna_space(0, corr)
    assert [len(b) for b in blocks] == [36, 1296, 1296, 1296, 1296]
    low = fixed + sum(min(c.cost for c in b) for b in blocks)
    high = fixed + sum(max(c.cost for c in b) for b in blocks)
    for frac in (0.05, 0.5):
        budget = low + frac * (high - low)
        for k in (1, 10):
            start = time.perf_counter()
            sols = exact_search(blocks, budget, k=k, fixed_cost=fixed)
            assert time.perf_counter() - start < 30.0  # a guard against exponential blow-up, not a speed target
            assert len(sols) == k and all(s.cost <= budget for s in sols)
            assert [s.score for s in sols] == sorted(s.score for s in sols)
        # Spot check optimality: no single-block swap of the optimum gives a better feasible architecture.
        best = sols[0]
        for b, block in enumerate(blocks):
            for i, cand in enumerate(block):
                if i == best.indices[b]:
                    continue
                cost = best.cost - best.choices[b].cost + cand.cost
                score = best.score - best.choices[b].score + cand.score
                assert not (cost <= budget and score < best.score - 1e-9)


def _with_widths(rng: np.random.Generator, sizes: tuple[int, ...], corr: float) -> list[list[Candidate]]:
    """Uniform costs, a score falling with cost (``corr``) plus noise, and 3 widths chosen at random."""
    blocks = []
    for n in sizes:
        costs = rng.uniform(1e7, 1e8, n)
        scores = 5 - corr * (costs - 5.5e7) / 2.6e7 + (1 - corr) * rng.normal(size=n)
        ins, outs = rng.integers(0, 3, n).tolist(), rng.integers(0, 3, n).tolist()
        blocks.append([Candidate(*vals) for vals in zip(scores.tolist(), costs.tolist(), ins, outs, strict=True)])
    return blocks


def test_3000_candidates_per_block_with_widths_is_fast():
    blocks = _with_widths(np.random.default_rng(2), (36, 3000, 3000, 3000, 3000), corr=0.9)
    for k in (1, 10):
        start = time.perf_counter()
        sols = exact_search(blocks, 3e8, k=k, start_key=0)
        assert time.perf_counter() - start < 30.0  # a guard against exponential blow-up, not a speed target
        assert len(sols) == k and sols[0].choices[0].in_key == 0
        for s in sols:
            assert s.cost <= 3e8
            assert all(a.out_key == b.in_key for a, b in itertools.pairwise(s.choices))


def _vectorised_brute_force(blocks: list[list[Candidate]], budget: float, k: int) -> list[tuple]:
    """Independent reference for three blocks: numpy over all pairs of blocks 1-2, per candidate of block 0."""
    arrays = []
    for block in blocks:
        score = np.array([c.score for c in block])
        cost = np.array([c.cost for c in block])
        rank = np.empty(len(block), dtype=int)
        rank[np.lexsort((np.arange(len(block)), cost, score))] = np.arange(len(block))
        arrays.append((score, cost, rank, [c.in_key for c in block], [c.out_key for c in block]))
    (s1, c1, r1, in1, out1), (s2, c2, r2, in2, _) = arrays[1], arrays[2]
    chain12 = np.array(out1)[:, None] == np.array(in2)[None, :]
    found = []
    for i0, cand in enumerate(blocks[0]):
        total = (cand.score + s1)[:, None] + s2[None, :]
        cost = (0.0 + cand.cost + c1)[:, None] + c2[None, :]
        ok = chain12 & (np.array(in1) == cand.out_key)[:, None] & (cost <= budget)
        i1, i2 = np.nonzero(ok)
        order = np.lexsort((r2[i2], r1[i1], cost[i1, i2], total[i1, i2]))[:k]
        r0 = arrays[0][2][i0]
        for o in order:
            j1, j2 = i1[o], i2[o]
            found.append((float(total[j1, j2]), float(cost[j1, j2]), (r0, r1[j1], r2[j2]), (i0, int(j1), int(j2))))
    found.sort()
    return [(t, c, idx) for t, c, _, idx in found[:k]]


def test_large_blocks_with_widths_against_a_vectorised_brute_force():
    """36/1000/1000 candidates over 3 widths: the same k best as an exhaustive numpy enumeration."""
    blocks = _with_widths(np.random.default_rng(1), (36, 1000, 1000), corr=0.3)
    budget = 1.2e8
    for k in (1, 10):
        got = exact_search(blocks, budget, k=k)
        assert [(s.score, s.cost, s.indices) for s in got] == _vectorised_brute_force(blocks, budget, k)
