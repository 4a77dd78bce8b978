"""The HyTra search space of BossNAS: sizes by counting (checked by brute force), per-block path counts, draws that
stay in the space, every path equal to the ``hytra`` network of its spec, costs, a full-size supernet on meta."""

from __future__ import annotations

import itertools

import pytest
import torch

import search
import zoo
from backbones import hytra as hytra_family
from backbones._flops import count_params
from search.protocols import BlockwiseSpace, Supernet
from search.spaces.hytra import STEM, HyTraSpace, HyTraSupernet, count_paths, is_path, paths_from

# The official per-layer index -> (stage, op), written out again here so that the counts are checked independently.
STAGE = {0: 3, 1: 3, 2: 2, 3: 2, 4: 1, 5: 0}
T0 = (5, 4, 3, 3, 3, 2, 3, 0, 0, 0, 1, 0, 0, 0, 0, 0)  # BossNet-T0, specs section 3


def _rule_ok(path, in_stage: int, first_stages) -> bool:
    """Brute-force reference: the first layer in ``first_stages`` (from the stem) or keeps / halves ``in_stage``;
    every later layer keeps or halves the scale."""
    stages = [STAGE[c] for c in path]
    if in_stage == STEM:
        if stages[0] not in first_stages:
            return False
    elif stages[0] - in_stage not in (0, 1):
        return False
    return all(b - a in (0, 1) for a, b in itertools.pairwise(stages))


def test_space_sizes() -> None:
    assert isinstance(search.get_space('hytra'), BlockwiseSpace)
    assert search.get_space('hytra').size == 1_703_991
    assert search.get_space('hytra', restricted=False).size == 2_818_103  # paper A.2: "roughly 2.8 x 10^6"
    assert search.get_space('hytra_tiny').size == 1_703_991


@pytest.mark.parametrize('restricted', [True, False])
@pytest.mark.parametrize('layers', [1, 2, 3, 4, 5, 6])
def test_counter_equals_brute_force_on_reduced_depth(layers: int, restricted: bool) -> None:
    first = (0, 1) if restricted else (0, 1, 2, 3)
    brute = [p for p in itertools.product(range(6), repeat=layers) if _rule_ok(p, STEM, first)]
    assert count_paths(layers, STEM, restricted) == len(brute)
    assert all(is_path(p, restricted) for p in brute)
    assert sum(is_path(p, restricted) for p in itertools.product(range(6), repeat=layers)) == len(brute)


@pytest.mark.parametrize('restricted', [True, False])
def test_blockwise_composition_gives_the_size(restricted: bool) -> None:
    """Joining per-block path lists on the scale a block ends at counts the whole space again."""
    space = search.get_space('hytra', restricted=restricted)
    ways = {STEM: 1}
    for k in range(4):
        nxt: dict[int, int] = {}
        for s, n in ways.items():
            for path in space.block_paths(k, s):
                nxt[STAGE[path[-1]]] = nxt.get(STAGE[path[-1]], 0) + n
        ways = nxt
    assert sum(ways.values()) == space.size


def test_per_block_path_counts_and_lists() -> None:
    space = search.get_space('hytra')
    assert len(space.block_paths(0, STEM)) == 51
    # after a block ending at 1/8, 1/16, 1/32 (specs 1.1: 99 / 80 / 16), and at 1/4 (the official code cannot)
    for k in (1, 2, 3):
        assert [len(space.block_paths(k, s)) for s in (1, 2, 3, 0)] == [99, 80, 16, 51]
    assert space.in_stages(0) == (STEM,) and space.in_stages(1) == (0, 1, 2, 3)
    assert space.num_candidates(0) == 51 and space.num_candidates(1) == 51 + 99 + 80 + 16
    full = search.get_space('hytra', restricted=False)
    assert len(full.block_paths(0, STEM)) == 131 and len(full.block_paths(1, 1)) == 99
    # the official older all_path lists (jumps at block starts): 131 / 115 / 80 / 16
    assert [len(paths_from(s, 4, 'all_path')) for s in (STEM, 1, 2, 3)] == [131, 115, 80, 16]
    # the lists are the brute-force sets, in lexicographic (DFS) order
    for in_stage, first in [(STEM, (0, 1)), (0, ()), (1, ()), (2, ()), (3, ())]:
        brute = [p for p in itertools.product(range(6), repeat=4) if _rule_ok(p, in_stage, first)]
        k = 0 if in_stage == STEM else 2
        assert list(space.block_paths(k, in_stage)) == brute
    # official restricted_path[3] (after 1/8): starts with 2, 3 or 4, never jumps 1/8 -> 1/32
    after_8 = set(space.block_paths(1, 1))
    assert {(2, 0, 0, 0), (4, 4, 4, 4), (4, 2, 0, 0)} <= after_8 and not {(4, 0, 0, 0), (0, 0, 0, 0)} & after_8
    # BossNet-T0 is a path of the space, block by block
    blocks = space.decode(T0)
    ends = [STEM] + [STAGE[b[-1]] for b in blocks[:-1]]
    assert all(b in space.block_paths(k, e) for k, (b, e) in enumerate(zip(blocks, ends, strict=True)))
    assert space.encode(blocks) == T0
    with pytest.raises(ValueError, match='input stage 1 is not one of'):
        space.block_paths(0, 1)


def test_draws_stay_in_the_space_and_sampling_is_uniform() -> None:
    space = search.get_space('hytra')
    full = search.get_space('hytra', restricted=False)
    g = torch.Generator().manual_seed(0)
    drawn = [space.sample(g) for _ in range(2000)]
    assert all(is_path(a, True) for a in drawn)
    # uniform over architectures: P(first layer at 1/8) = (paths of 15 layers after 1/8) / size
    expected = count_paths(15, 1, True) / space.size
    assert abs(sum(a[0] == 4 for a in drawn) / len(drawn) - expected) < 0.035
    assert {a[0] for a in (full.sample(g) for _ in range(300))} == set(range(6))
    for a, b in itertools.pairwise(drawn[:60]):
        assert is_path(space.mutate(a, g, 1.0), True) and is_path(space.mutate(a, g, 0.3), True)
        assert is_path(space.crossover(a, b, g), True)
    assert space.mutate(T0, g, 0.0) == T0
    assert len({space.mutate(T0, g, 0.5) for _ in range(20)}) > 10


def test_bad_architectures_fail_naming_the_layer() -> None:
    space = search.get_space('hytra')
    with pytest.raises(ValueError, match=r'layer 0 \(block 0, layer 0\): the first layer at scale 1/16'):
        space.check((3,) * 16)
    search.get_space('hytra', restricted=False).check((3,) * 16)  # fine in the full space
    with pytest.raises(ValueError, match=r'layer 5 \(block 1, layer 1\): scale 1/32 after 1/8'):
        space.check((4,) * 5 + (0,) * 11)
    with pytest.raises(ValueError, match=r'layer 4 \(block 1, layer 0\): scale 1/8 after 1/16'):
        space.check((4, 3, 3, 3, 4) + (3,) * 11)
    with pytest.raises(ValueError, match='has 16 decisions'):
        space.check((5,) * 4)
    with pytest.raises(ValueError, match=r'decision 3: option 6 is not a choice index 0\.\.5'):
        space.check((5, 5, 5, 6) + (5,) * 12)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['depth'\]"):
        search.get_space('hytra', depth=3)
    with pytest.raises(ValueError, match="spec field 'act'"):
        search.get_space('hytra', act='gelu')
    with pytest.raises(ValueError, match="spec field 'dim_head'"):
        search.get_space('hytra_tiny', dim_head=24)


def test_specs_round_trip_and_foreign_specs_fail() -> None:
    space = search.get_space('hytra')
    spec = space.to_spec(T0)
    assert spec['stages'] == hytra_family.SPECS['bossnet_t0']['stages']
    assert (spec['stem_down'], spec['empty_tail'], spec['act'], spec['se']) == ('dw', 'identity', 'relu', False)
    assert 'widths' not in spec and space.from_spec(spec) == T0
    with pytest.raises(ValueError, match=r"field\(s\) \['empty_tail', 'stem_down'\] differ"):
        space.from_spec(hytra_family.SPECS['bossnet_t0_nose'])
    with pytest.raises(ValueError, match=r"field\(s\) \['dim_head', 'stem_width', 'widths'\] differ"):
        space.from_spec(search.get_space('hytra_tiny').to_spec(T0))
    vit = search.get_space('hytra', restricted=False).to_spec((0,) * 16)
    assert vit['stages'] == [[], [], [], ['att'] * 16]
    with pytest.raises(ValueError, match='the first layer at scale 1/32'):
        space.from_spec(vit)


@pytest.fixture(scope='module')
def tiny_supernets() -> dict[bool, tuple[HyTraSpace, HyTraSupernet]]:
    """Tiny supernets (restricted and full) whose BN statistics differ from their init."""
    torch.manual_seed(0)
    out = {}
    for restricted in (True, False):
        space = search.get_space('hytra_tiny', restricted=restricted)
        net = search.build_supernet(space, num_classes=10)
        with torch.no_grad():  # no zero-init last BN: every block's body must count in the comparisons
            for m in net.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.normal_(0.0, 0.1)
        g = torch.Generator().manual_seed(1)
        net.train()
        with torch.no_grad():
            for _ in range(4):
                net(torch.randn(4, 3, 32, 32), space.sample(g))
        out[restricted] = (space, net.eval())
    return out


# restricted: random ones, one starting at 1/8 that halves right away (its layer 1 at 1/16 is reached only by
# halving), attention at 1/16 and 1/32, all 1/4; full: starts at 1/16 and at 1/32 with attention in layer 0
FIXED = {
    True: [(4, 2, 2, 0) + (0,) * 12, (4, 3, 2, 3, 3, 1, 0, 1) + (0,) * 8, (5,) * 16, (5, 5, 4, 4) + (3,) * 12, T0],
    False: [(2, 0) + (1,) * 14, (0,) * 16, (3, 3, 2, 2) + (2,) * 12],
}


@pytest.mark.parametrize('restricted', [True, False])
def test_every_path_equals_the_backbone_of_its_spec(tiny_supernets, restricted: bool) -> None:
    space, net = tiny_supernets[restricted]
    assert isinstance(net, Supernet)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 32, 32)
    archs = FIXED[restricted] + [space.sample(g) for _ in range(4)]
    assert any(5 not in a[:1] for a in archs) and any({0, 2} & set(a) for a in archs)
    for arch in archs:
        spec = space.to_spec(arch)
        assert space.from_spec(spec) == arch
        model = zoo.create_model(spec, num_classes=10).eval()
        model.load_state_dict(net.path_state_dict(arch), strict=True)
        with torch.no_grad():
            ref = net(x, arch)
            torch.testing.assert_close(model(x), ref, rtol=0, atol=0)
            feats = net.forward_features(x, arch)
        assert feats.shape[1] == model.num_features == 4 * space.widths[STAGE[arch[-1]]]


def test_a_wrong_state_dict_is_caught(tiny_supernets) -> None:
    """The equality check fails on wrong weights: another path's weights do not load, and the same shapes taken
    from the wrong layers load but give other outputs."""
    space, net = tiny_supernets[True]
    x = torch.randn(2, 3, 32, 32)
    arch, other = (5,) * 16, (5,) * 15 + (4,)
    model = zoo.create_model(space.to_spec(arch), num_classes=10).eval()
    with pytest.raises(RuntimeError, match='Missing key'):
        model.load_state_dict(net.path_state_dict(other), strict=True)
    state = net.path_state_dict(arch)
    swapped = dict(state)
    for key in [k for k in state if k.startswith('layer1.1.')]:
        swapped[key], swapped[key.replace('layer1.1.', 'layer1.2.')] = (
            state[key.replace('layer1.1.', 'layer1.2.')],
            (state[key]),
        )
    model.load_state_dict(swapped, strict=True)
    with torch.no_grad():
        assert not torch.allclose(model(x), net(x, arch), atol=1e-4)
        model.load_state_dict(state, strict=True)
        torch.testing.assert_close(model(x), net(x, arch), rtol=0, atol=0)
        assert not torch.allclose(model(x), net(x, other), atol=1e-4)


def test_blockwise_forward_equals_the_whole_path(tiny_supernets) -> None:
    space, net = tiny_supernets[True]
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        h, prev = net.forward_stem(x), STEM
        for k, path in enumerate(space.decode(T0)):
            h = net.forward_block(k, h, prev, path)
            prev = STAGE[path[-1]]
        torch.testing.assert_close(h, net.forward_features(x, T0), rtol=0, atol=0)
        with pytest.raises(ValueError, match=r'block 1: \(0, 0, 0, 0\) is not a path after input stage 1'):
            net.forward_block(1, h, 1, (0, 0, 0, 0))
    trunk = search.build_supernet('hytra_tiny', num_classes=0).eval()
    assert trunk(x, T0).shape == (1, 256, 1, 1)


def test_costs_equal_the_built_networks_and_extremes_bound_them() -> None:
    space = search.get_space('hytra_tiny')
    low, high = space.extremes()
    g = torch.Generator().manual_seed(3)
    for arch in [space.sample(g) for _ in range(3)] + [low, high]:
        model = zoo.create_model(space.to_spec(arch))
        assert space.cost(arch, 'params') == count_params(model)
        assert space.cost(arch, 'macs') == space.cost(arch, 'flops') == hytra_family.paper_madds(model, (3, 32, 32))
        assert space.cost(low, 'macs') <= space.cost(arch, 'macs') <= space.cost(high, 'macs')
    # full size, 224: the T0 path is BossNet-T0 w/o SE plus the 1/4 downsampler (64 + 64 x 64 + BN 2 x 64)
    full = search.get_space('hytra')
    assert full.cost(T0, 'params') == 37_319_080 + 64 + 64 * 64 + 2 * 64
    assert full.cost(T0, 'macs') == 3_454_934_528
    with pytest.raises(ValueError, match='cost metric'):
        space.cost(T0, 'energy')


def test_full_size_supernet_on_meta() -> None:
    with torch.device('meta'):
        net = search.build_supernet('hytra', num_classes=1000)
        out = net(torch.zeros(2, 3, 224, 224), T0)
        full = search.build_supernet('hytra', space_options={'restricted': False})
    assert out.shape == (2, 1000)
    assert count_params(net) == 233_654_176 and count_params(full) == 258_852_256
    # restricted: layer 0 holds only 1/4 and 1/8 (through their downsamplers); layer 1 reaches 1/16 only by halving
    assert sorted(net.stem_down) == ['0', '1'] and sorted(net.layers[0]) == ['4', '5']
    assert net.layers[1]['3'].block_halves and net.layers[1]['3'].halving is None
    assert net.layers[2]['3'].halving is not None and not net.layers[2]['3'].block_halves
    assert sorted(full.layers[0]) == [str(c) for c in range(6)]


def test_silu_se_variant_is_the_backbone_of_its_spec() -> None:
    """``act`` / ``se`` (BossNet-T0's retraining settings) go into the shared part of every candidate and the spec."""
    torch.manual_seed(4)
    space = search.get_space('hytra_tiny', act='silu', se=True)
    net = search.build_supernet(space, num_classes=10).eval()
    spec = space.to_spec(T0)
    assert (spec['act'], spec['se']) == ('silu', True)
    model = zoo.create_model(spec, num_classes=10).eval()
    model.load_state_dict(net.path_state_dict(T0), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), net(x, T0), rtol=0, atol=0)
