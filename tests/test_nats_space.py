"""The NATS-Bench size space and its slimmable supernet: sizes and blocks, every path equal to the zoo network of
its spec (and checks that would catch a wrong slice or a wrong BN), spec round trips and errors, costs."""

from __future__ import annotations

import itertools

import pytest
import torch

import search
import zoo
from backbones import SpecError
from search.protocols import BlockwiseSpace, SearchSpace, Supernet
from search.spaces.nats import NATSSizeSupernet
from search.spaces.slimmable import SwitchableBatchNorm2d
from tests.test_nats_size import _formula

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))


def _trained(space, num_classes: int = 10) -> NATSSizeSupernet:
    """A supernet after a few train-mode passes on random paths, so that BN statistics differ between widths."""
    net = search.build_supernet(space, num_classes=num_classes)
    g = torch.Generator().manual_seed(1)
    net.train()
    with torch.no_grad():
        for _ in range(6):
            net(torch.randn(4, 3, 32, 32), space.sample(g))
    return net.eval()


def _path_model(net: NATSSizeSupernet, arch) -> torch.nn.Module:
    model = zoo.create_model(net.space.to_spec(arch), num_classes=net.num_classes).eval()
    model.load_state_dict(net.path_state_dict(arch), strict=True)
    return model


def test_sizes_and_registry() -> None:
    space = search.get_space('nats_size')
    assert space.size == 8**5 == 32_768 and space.num_choices == (8,) * 5
    tiny = search.get_space('nats_size_tiny')
    assert tiny.widths == (4, 8) and tiny.size == 32
    assert len({tiny.key(a) for a in itertools.product(range(2), repeat=5)}) == tiny.size  # counted
    supernet = search.build_supernet('nats_size_tiny', num_classes=10)
    assert isinstance(supernet, NATSSizeSupernet) and isinstance(supernet, Supernet)
    assert isinstance(space, SearchSpace) and isinstance(space, BlockwiseSpace)


@pytest.mark.parametrize(
    ('split', 'blocks', 'counts'),
    [('cifar10', ((0, 1), (2, 3), (4,)), (4, 8, 4)), ('cifar100', ((0, 1), (2,), (3, 4)), (4, 4, 8))],
)
def test_block_splits_of_the_official_configs(split: str, blocks: tuple, counts: tuple) -> None:
    space = search.get_space('nats_size_tiny', split=split)
    assert space.blocks == blocks
    assert tuple(space.num_candidates(k) for k in range(3)) == counts
    for k in range(3):
        cands = list(space.candidates(k))
        assert len(cands) == space.num_candidates(k) and cands == sorted(cands)  # DFS order
    assert space.in_widths(0) == (3,) and space.in_widths(1) == (4, 8)
    full = search.get_space('nats_size', split=split)
    assert [full.num_candidates(k) for k in range(3)] == [
        64 * (1 if k == 0 else 8) if len(b) == 2 else 8 * 8 for k, b in enumerate(full.blocks)
    ]
    arch = (1, 0, 1, 1, 0)
    assert space.encode(space.decode(arch)) == arch
    assert [w for b in space.decode(arch) for w in b] == [8, 4, 8, 8, 4]
    with pytest.raises(ValueError, match='not among'):
        space.encode([(4, 12)] + [(4,) * len(b) for b in blocks[1:]])


@pytest.mark.parametrize('skip_proj', ['conv_bn', 'relu_conv_bn'])
def test_every_path_equals_the_zoo_model_of_its_spec(skip_proj: str) -> None:
    space = search.get_space('nats_size_tiny', skip_proj=skip_proj)
    net = _trained(space)
    archs = list(itertools.product(range(2), repeat=5))  # all 32 (8 with the other projection: only it differs)
    for arch in archs if skip_proj == 'conv_bn' else archs[::4]:
        spec = space.to_spec(arch)
        assert space.from_spec(spec) == arch
        with torch.no_grad():
            assert torch.equal(_path_model(net, arch)(X), net(X, arch)), arch


def test_paths_of_the_full_space_equal_their_zoo_models() -> None:
    space = search.get_space('nats_size')
    net = _trained(space, num_classes=100)
    for arch in [(0, 7, 3, 5, 1), (7, 0, 6, 1, 4), (2, 2, 2, 2, 2)]:
        model = _path_model(net, arch)
        assert model.spec['channels'] == [space.widths[i] for i in arch]
        with torch.no_grad():
            torch.testing.assert_close(model(X), net(X, arch), rtol=0, atol=0)


def test_wrong_paths_and_untrained_models_differ() -> None:
    """The equality above can fail: another path, or the right network without the supernet's weights."""
    space = search.get_space('nats_size_tiny')
    net = _trained(space)
    arch, other = (0, 1, 0, 1, 1), (0, 1, 0, 1, 0)
    with torch.no_grad():
        assert not torch.allclose(_path_model(net, arch)(X), net(X, other))
        fresh = zoo.create_model(space.to_spec(arch), num_classes=10).eval()
        assert not torch.allclose(fresh(X), net(X, arch))
    with pytest.raises(RuntimeError, match='size mismatch'):  # a path's weights do not fit another path's network
        zoo.create_model(space.to_spec(other), num_classes=10).load_state_dict(net.path_state_dict(arch))


def test_first_k_slices_and_the_width_s_own_bn() -> None:
    space = search.get_space('nats_size_tiny')
    net = _trained(space)
    arch = (1, 0, 1, 0, 1)  # 8, 4, 8, 4, 8
    state = net.path_state_dict(arch)
    torch.testing.assert_close(state['stages.1.0.conv_a.1.weight'], net.stages[1][0].conv_a[1].weight[:4, :8])
    torch.testing.assert_close(state['stages.1.1.edges.3.1.weight'], net.stages[1][1].edges[3][1].weight[:8, :4])
    bn = net.stages[1][0].conv_a[2]
    assert isinstance(bn, SwitchableBatchNorm2d) and bn.widths == (4, 8)
    torch.testing.assert_close(state['stages.1.0.conv_a.2.running_mean'], bn.bns[0].running_mean)
    assert 'stages.0.0.edges.3.1.weight' not in state  # 8 -> 8: the skip is the identity there
    with torch.no_grad():
        ref = net(X, arch)
        bn.bns[1].weight.mul_(3.0)  # another width's BN: this path does not use it
        assert torch.equal(net(X, arch), ref)
        bn.bns[0].weight.mul_(3.0)  # the path's BN: the path and its zoo model change together
        out = net(X, arch)
        assert not torch.allclose(out, ref)
        assert torch.equal(_path_model(net, arch)(X), out)


def test_a_path_trains_only_its_slices_and_bns() -> None:
    space = search.get_space('nats_size_tiny')
    net = search.build_supernet(space, num_classes=10).train()
    net(X, (0,) * 5).square().mean().backward()
    conv = net.stages[0][0].edges[0][1].weight
    assert conv.grad[:4, :4].abs().sum() > 0 and conv.grad[4:].abs().sum() == 0 and conv.grad[:, 4:].abs().sum() == 0
    bn = net.stages[0][0].edges[0][2]
    assert bn.bns[0].weight.grad is not None and bn.bns[1].weight.grad is None


@pytest.mark.parametrize('split', ['cifar10', 'cifar100'])
def test_forward_block_composes_to_the_path(split: str) -> None:
    space = search.get_space('nats_size_tiny', split=split)
    net = _trained(space)
    arch = (1, 0, 0, 1, 0)
    with torch.no_grad():
        x = X
        for k in range(len(space.blocks)):
            x = net.forward_block(x, arch, k)
        ref = net.forward_intermediates(X, intermediates_only=True)[-1]  # set_arch(arch) is still in force
        torch.testing.assert_close(x, ref, rtol=0, atol=0)
        assert tuple(net.forward_block(X, arch, 0).shape) == (2, 4, 16, 16)  # cell (8) + reduction (4)


def test_spec_round_trip_and_foreign_specs_fail_clearly() -> None:
    space = search.get_space('nats_size')
    g = torch.Generator().manual_seed(0)
    for arch in [space.sample(g) for _ in range(5)] + list(space.extremes()):
        spec = space.to_spec(arch)
        assert spec == {'family': 'nats_size', 'version': 1, 'channels': [space.widths[i] for i in arch]}
        assert space.from_spec(spec) == arch
    spec = space.to_spec((0,) * 5)
    with pytest.raises(ValueError, match=r'channels\[1\]=12 not among the widths'):
        space.from_spec({**spec, 'channels': [8, 12, 8, 8, 8]})
    with pytest.raises(ValueError, match=r'has 8 layers; space .* has 5'):
        space.from_spec({**spec, 'channels': [8] * 8})
    with pytest.raises(ValueError, match=r"field\(s\) \['skip_proj'\] differ"):
        space.from_spec({**spec, 'skip_proj': 'relu_conv_bn'})
    with pytest.raises(SpecError, match="'family'"):
        space.from_spec({**spec, 'family': 'nb201'})
    assert search.get_space('nats_size', skip_proj='relu_conv_bn').to_spec((0,) * 5)['skip_proj'] == 'relu_conv_bn'
    assert space.nats_str((7, 0, 1, 2, 3)) == '64:8:16:24:32'
    assert space.from_nats_str('64:8:16:24:32') == (7, 0, 1, 2, 3)
    for bad in ('64:8:16:24', '64:8:16:24:12', '64:8:16:24:x'):
        with pytest.raises(ValueError, match='not a NATS-Bench size-space name'):
            space.from_nats_str(bad)


def test_bad_architectures_and_options_fail_clearly() -> None:
    space = search.get_space('nats_size_tiny')
    with pytest.raises(ValueError, match=r'decision 2: option 2 is not allowed \(0, 1\)'):
        space.build_supernet()(X, (0, 0, 2, 0, 0))
    with pytest.raises(ValueError, match='has 5 decisions'):
        space.to_spec((0, 1))
    with pytest.raises(ValueError, match="split 'imagenet' is not one of"):
        search.get_space('nats_size', split='imagenet')
    with pytest.raises(ValueError, match='distinct and increasing'):
        search.get_space('nats_size', widths=(16, 8))
    with pytest.raises(SpecError, match=r"'channels\[0\]': must be <= 128"):
        search.get_space('nats_size', widths=(8, 256))
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['channels'\]"):
        search.get_space('nats_size', channels=2)


def test_costs_equal_the_zoo_models_and_the_formula() -> None:
    space = search.get_space('nats_size')
    low, high = space.extremes()
    assert (space.cost(high, 'params'), space.cost(high, 'macs')) == _formula([64] * 5) == (713_674, 274_399_872)
    g = torch.Generator().manual_seed(0)
    for arch in [space.sample(g) for _ in range(3)] + [low, high]:
        chs = space.channels(arch)
        model = zoo.create_model(space.to_spec(arch), num_classes=10)
        params, macs = sum(p.numel() for p in model.parameters()), zoo.flops.count_macs(model, (3, 32, 32))
        assert (space.cost(arch, 'params'), space.cost(arch, 'macs')) == (params, macs) == _formula(chs)
        assert space.cost(arch, 'flops') == macs
        assert space.cost(low, 'macs') <= macs <= space.cost(high, 'macs')
    with pytest.raises(ValueError, match='cost metric'):
        space.cost(low, 'energy')
    tiny = search.get_space('nats_size_tiny')
    assert tiny.cost((0,) * 5, 'latency') > 0


def test_spos_tiny_search_emits_nats_size_specs_that_are_the_trained_paths(tmp_path, tiny_data) -> None:
    """The space in the engine: SPOS trains the slimmable supernet, rates paths and writes ``nats_size`` specs; the
    found spec with the trained path weights (BN statistics included) is the supernet's path (``_check_found``)."""
    from tests._helpers import ROOT, check_spos_found, run_spos

    run_spos(ROOT / 'configs/search/spos_nats_size_tiny.yaml', tmp_path / 'run', tiny_data)
    check_spos_found(tmp_path / 'run', 'nats_size_tiny')
    assert zoo.create_model(str(tmp_path / 'run' / 'arch' / 'top1.json')).spec['family'] == 'nats_size'
