"""The search protocols: space registry, the generic ChoiceSpace operators, MBConvSpace as a SearchSpace, supernets."""

from __future__ import annotations

import itertools

import pytest
import torch

import search
import zoo
from search.protocols import BlockwiseSpace, SearchSpace, Supernet
from search.spaces import SPACES, ChoiceSpace, register_space


class _Grid(ChoiceSpace):
    """A 3 x 4 x 2 space (the smallest thing the generic operators can be checked on)."""

    name = 'grid'
    num_choices = (3, 4, 2)


def test_registry_names_spaces_and_refuses_unknown_ones() -> None:
    assert {'dna', 'dna_small', 'tiny'} <= set(SPACES)
    space = search.get_space('dna_small', img_size=192)
    assert space.name == 'dna_small' and space.img_size == 192
    assert search.get_space(space) is space
    with pytest.raises(KeyError, match="unknown search space 'nope'; known: "):
        search.get_space('nope')
    with pytest.raises(ValueError, match='already registered'):
        register_space('dna', 'x:y')


def test_generic_operators_are_seeded_and_stay_in_the_space() -> None:
    space = _Grid()
    assert space.size == 24
    g = torch.Generator().manual_seed(0)
    seen = {space.sample(g) for _ in range(400)}
    assert seen == set(itertools.product(range(3), range(4), range(2)))  # uniform draws reach every architecture
    a = space.sample(torch.Generator().manual_seed(5))
    assert a == space.sample(torch.Generator().manual_seed(5))
    assert space.mutate(a, g, 0.0) == a
    changed = sum(space.mutate(a, g, 1.0) != a for _ in range(50))
    assert changed > 30  # redrawn every decision (a redraw may repeat an option)
    b = (2, 3, 1)
    kids = {space.crossover((0, 0, 0), b, g) for _ in range(200)}
    assert kids == set(itertools.product((0, 2), (0, 3), (0, 1)))
    assert space.key((1, 2, 0)) == '1-2-0'
    with pytest.raises(ValueError, match='decision 1: option 4 is not allowed'):
        space.check((0, 4, 0))
    with pytest.raises(ValueError, match='3 decisions'):
        space.check((0, 1))
    with pytest.raises(ValueError, match='probability'):
        space.mutate(a, g, 1.5)


def test_mbconv_space_is_a_blockwise_search_space() -> None:
    space = search.get_space('tiny')
    assert isinstance(space, SearchSpace) and isinstance(space, BlockwiseSpace)
    every = {space.encode([c for _, c in combo]) for combo in _paths(space)}
    assert len(every) == space.size == space.num_architectures() == 192
    g = torch.Generator().manual_seed(3)
    for _ in range(20):
        arch = space.sample(g)
        assert arch in every
        assert space.from_spec(space.to_spec(arch)) == arch
        assert space.encode(space.decode(arch)) == arch
        assert space.mutate(arch, g, 0.5) in every and space.crossover(arch, space.sample(g), g) in every
    macs = {a: space.cost(a, 'macs') for a in every}
    lo, hi = space.extremes()
    assert macs[lo] == min(macs.values()) and macs[hi] == max(macs.values())
    assert space.cost(lo, 'flops') == pytest.approx(1.034 * macs[lo])
    with pytest.raises(ValueError, match='cost metric'):
        space.cost(lo, 'energy')
    other = search.get_space('dna_small').to_spec(search.get_space('dna_small').sample(g))
    with pytest.raises(ValueError, match='stem_size'):
        space.from_spec(other)


def _paths(space):
    """Every path of a block-wise space whose consecutive widths fit (brute force)."""
    per_block = [list(space.candidates(k)) for k in range(len(space.blocks))]
    for combo in itertools.product(*per_block):
        width, ok = space.ds_width, True
        for k, (w_in, choice) in enumerate(combo):
            ok = ok and w_in == width
            width = space.blocks[k].cells[choice.cell].width
        if ok:
            yield combo


def test_supernet_path_is_the_zoo_model_of_its_spec(tmp_path) -> None:
    torch.manual_seed(0)
    net = search.build_supernet('tiny', num_classes=5).eval()
    assert isinstance(net, Supernet)
    for m in net.modules():  # non-trivial BN statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    space = net.space
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 32, 32)
    for _ in range(4):
        arch = space.sample(g)
        model = zoo.create_model(space.to_spec(arch), num_classes=5).eval()
        model.load_state_dict(net.path_state_dict(arch), strict=True)
        assert torch.equal(model(x), net(x, arch))
