"""The NASViT search spaces and their dynamic supernet: sizes, extremes, sampling, every path equal to the ``nasvit``
backbone of its spec (and checks that would catch a wrong slice, kernel, BN or layer scale), switchable layer
scaling in both variants, costs, the full-size supernet on the meta device and one CPU step of its largest path.

Tolerance of the path equality: ``atol=1e-6`` in float32 eval mode (the dynamic forward runs the same ops on the
same values as the static model, so in practice the outputs are bitwise equal)."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import backbones.nasvit as nv
import search
from backbones._flops import count_params
from backbones.nasvit_supernet import NASViTSupernet
from search.protocols import SearchSpace, Supernet
from search.spaces.nasvit import NASViTSearchSupernet, NASViTSpace, spec_params

X64 = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
FULL_SIZE = 48_157_949_952


def _trained(space: NASViTSpace, num_classes: int = 10, seed: int = 0) -> NASViTSearchSupernet:
    """A supernet with every tensor perturbed (layer-scale tables and zero-initialised BNs included) and BN
    statistics moved by train-mode passes on random paths, so that no slice is trivially equal to another."""
    net = space.build_supernet(num_classes=num_classes)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
        net.train()
        for _ in range(3):
            net(torch.randn(4, 3, 64, 64, generator=g), space.sample(g))
    return net.eval()


def _path_model(net: NASViTSearchSupernet, arch) -> torch.nn.Module:
    spec = net.space.to_spec(arch)
    model = nv.build(spec, num_classes=net.num_classes, resize_input=net.space.resize_input).eval()
    model.load_state_dict(net.path_state_dict(arch), strict=True)
    return model


def test_registry_sizes_and_protocols() -> None:
    space = search.get_space('nasvit')
    assert isinstance(space, SearchSpace) and len(space.num_choices) == 31
    # counted from the family's choice lists (resolution; per stage width, depth, kernel, expansion)
    per_field = [len(nv.RESOLUTIONS)] + [
        len(c) for lists in (nv.WIDTHS, nv.DEPTHS, nv.KERNELS, nv.EXPANSIONS) for c in lists
    ]
    assert space.size == math.prod(per_field) == FULL_SIZE
    tiny = search.get_space('nasvit_tiny')
    specs = {json.dumps(tiny.to_spec(a)) for a in itertools.product(*(range(n) for n in tiny.num_choices))}
    assert tiny.size == len(specs) == 64  # every decision changes the network
    assert isinstance(search.build_supernet('nasvit_tiny', num_classes=10), Supernet)
    assert search.get_space('nasvit', layer_scale='paper').layer_scale == 'paper'


def test_extremes_are_the_catalog_min_and_max() -> None:
    space = search.get_space('nasvit')
    low, high = space.extremes()
    assert space.to_spec(low) == nv.SPECS['nasvit_min'] and space.to_spec(high) == nv.SPECS['nasvit_max']
    assert round(space.cost(low, 'flops') / 1e6, 1) == 189.8 and round(space.cost(high, 'flops') / 1e6, 1) == 1881.7
    assert space.from_spec(nv.SPECS['nasvit_a3']) in space
    tiny = search.get_space('nasvit_tiny')
    assert tiny.to_spec(tiny.extremes()[0]) == nv.SPECS['nasvit_min']
    g = torch.Generator().manual_seed(0)
    for arch in (space.sample(g) for _ in range(20)):  # min and max bound every cost
        for metric in ('flops', 'params'):
            assert space.cost(low, metric) <= space.cost(arch, metric) <= space.cost(high, metric)


def test_sampling_is_uniform_per_decision_and_reproducible() -> None:
    space = search.get_space('nasvit')
    draws = [space.sample(torch.Generator().manual_seed(7)) for _ in range(2)]
    assert draws[0] == draws[1]
    g = torch.Generator().manual_seed(1)
    archs = [space.sample(g) for _ in range(400)]
    for i, n in enumerate(space.num_choices):  # every option of every decision occurs
        assert {a[i] for a in archs} == set(range(n))
    assert all(space.from_spec(space.to_spec(a)) == a for a in archs[:50])


@pytest.mark.parametrize('layer_scale', ['code', 'paper'])
def test_every_tiny_path_is_the_backbone_of_its_spec(layer_scale: str) -> None:
    space = search.get_space('nasvit_tiny', layer_scale=layer_scale)
    net = _trained(space)
    archs = list(itertools.product(*(range(n) for n in space.num_choices)))
    for arch in archs[:: 8 if layer_scale == 'code' else 16]:
        with torch.no_grad():
            torch.testing.assert_close(net(X64, arch), _path_model(net, arch)(X64), rtol=0, atol=1e-6)


def test_full_space_paths_min_max_random_with_resize() -> None:
    """The official space resizes the input to the path's resolution (192..288) in the supernet and in the model."""
    space = search.get_space('nasvit')
    net = _trained(space)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 3, 64, 64, generator=g)
    for arch in [*space.extremes(), space.sample(g), space.sample(g)]:
        model = _path_model(net, arch)
        assert model.resize_input
        with torch.no_grad():
            torch.testing.assert_close(net(x, arch), model(x), rtol=0, atol=1e-6)
    # a spec dict is a path too
    with torch.no_grad():
        spec = nv.SPECS['nasvit_a1']
        torch.testing.assert_close(net(x, spec), net(x, space.from_spec(spec)), rtol=0, atol=0)


def test_wrong_paths_untrained_models_and_wrong_kernels_differ() -> None:
    """The equality above can fail: another path, the right network without the supernet's weights, a corner
    instead of the centre of the 5x5 kernel."""
    space = search.get_space('nasvit_tiny')
    net = _trained(space)
    arch = space.from_spec({**space.to_spec(space.extremes()[1]), 'kernel_size': [3, 3, 3, 3, 3, 3, 3]})
    other = space.extremes()[1]  # kernel 5 in MBConv-1
    model = _path_model(net, arch)
    with torch.no_grad():
        assert not torch.allclose(model(X64), net(X64, other))
        fresh = nv.build(space.to_spec(arch), num_classes=10).eval()
        assert not torch.allclose(fresh(X64), net(X64, arch))
        state = net.path_state_dict(arch)
        corner = net.stages[0][0].conv.conv_dw.weight[: state['stages.0.0.conv.conv_dw.weight'].shape[0], :, :3, :3]
        assert torch.equal(
            state['stages.0.0.conv.conv_dw.weight'], net.stages[0][0].conv.conv_dw.weight[:24, :, 1:4, 1:4]
        )
        model.load_state_dict({**state, 'stages.0.0.conv.conv_dw.weight': corner})
        assert not torch.allclose(model(X64), net(X64, arch))
    with pytest.raises(RuntimeError, match='size mismatch'):  # a path's weights do not fit another path's network
        nv.build(space.to_spec(space.extremes()[0]), num_classes=10).load_state_dict(net.path_state_dict(other))


def test_bn_statistics_are_shared_first_channels() -> None:
    """One BN per site whose first channels serve every width (official DynamicBatchNorm2d)."""
    space = search.get_space('nasvit_tiny')
    net = space.build_supernet(num_classes=10).train()
    low = space.extremes()[0]  # MBConv-1 width 16 of 24
    bn = net.stages[0][0].conv.bn2
    before = bn.running_mean.clone()
    with torch.no_grad():
        net(X64, low)
    assert not torch.equal(bn.running_mean[:16], before[:16]) and torch.equal(bn.running_mean[16:], before[16:])
    assert torch.equal(net.path_state_dict(low)['stages.0.0.conv.bn2.running_mean'], bn.running_mean[:16])


def test_switchable_layer_scale_keys() -> None:
    """Code: one row per (stage depth, token count mod 8) of a (10, 8, C) table; paper: one row per width choice.
    Changing one row changes exactly the paths with that key."""
    code = search.get_space('nasvit_tiny')
    paper = search.get_space('nasvit_tiny', layer_scale='paper')
    net_code, net_paper = code.build_supernet(num_classes=10), paper.build_supernet(num_classes=10)
    assert net_code.stages[3][1].gamma_attn.shape == (10, 8, 72)
    assert net_paper.stages[3][1].gamma_attn.shape == (2, 72)  # T4 widths 64, 72
    assert torch.all(net_code.stages[3][1].gamma_mlp == nv.LAYER_SCALE_INIT)
    spec = code.to_spec(code.extremes()[0])  # 192 px: T4 12x12 tokens (N % 8 = 0), T5/T6 6x6 (4), T7 3x3 (1)
    assert [net_code.scale_slot(spec, i) for i in range(3, 7)] == [(3, 0), (3, 4), (3, 4), (3, 1)]
    assert net_paper.scale_slot(spec, 3) == (0,) and net_paper.scale_slot(
        {**spec, 'width': nv.SPECS['nasvit_max']['width']}, 3
    ) == (1,)
    for net, layer, row, hit in (
        (net_code, (4, 1), (4, 4), {**spec, 'depth': [1, 3, 3, 3, 4, 3, 3]}),  # T5 depth 4, 6 x 6 tokens
        (net_paper, (3, 1), (1,), {**spec, 'width': [16, 16, 24, 32, 72, 112, 160, 208, 1792]}),  # T4 width 72
    ):
        key = f'stages.{layer[0]}.{layer[1]}.gamma_attn'
        with torch.no_grad():
            net.get_parameter(key)[row] = 7.0
        assert torch.all(net.path_state_dict(hit)[key] == 7.0)
        assert torch.all(net.path_state_dict(spec)[key] == nv.LAYER_SCALE_INIT)
        net.eval()
        with torch.no_grad():  # the switched row reaches the forward as well
            model = _path_model(net, net.space.from_spec(hit))
            torch.testing.assert_close(net(X64, hit), model(X64), rtol=0, atol=1e-6)


def test_costs_are_exact_for_the_built_backbone() -> None:
    space = search.get_space('nasvit')
    g = torch.Generator().manual_seed(4)
    for arch in [*space.extremes(), space.sample(g), space.sample(g)]:
        spec = space.to_spec(arch)
        with torch.device('meta'):
            model = nv.build(spec).eval()
        assert space.cost(arch, 'params') == count_params(model) == spec_params(spec)
        res = spec['resolution']
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, 3, res, res, device='meta'))
        assert space.cost(arch, 'macs') == space.cost(arch, 'flops') == counter.get_total_flops() / 2
    low, high = space.extremes()
    assert (space.cost(low, 'params'), space.cost(high, 'params')) == (8_385_792, 17_112_398)
    with pytest.raises(ValueError, match='cost metric'):
        space.cost(low, 'energy')


def test_spec_and_option_errors_name_the_problem() -> None:
    tiny = search.get_space('nasvit_tiny')
    with pytest.raises(ValueError, match=r'width\[7\]=224 \(space: \(208,\)\)'):
        tiny.from_spec(nv.SPECS['nasvit_max'] | {'width': [16, 16, 24, 32, 64, 112, 160, 224, 1792]})
    with pytest.raises(ValueError, match="layer_scale must be one of \\('code', 'paper'\\)"):
        search.get_space('nasvit', layer_scale='cait')
    with pytest.raises(ValueError, match=r'depth\[4\]: \(3, 10\) must be a non-empty subset'):
        search.get_space('nasvit', depths=((1,), (3,), (3,), (3,), (3, 10), (3,), (3,)))
    with pytest.raises(ValueError, match='unknown option'):
        search.get_space('nasvit', widht=1)
    net = tiny.build_supernet(num_classes=10)
    with pytest.raises(
        ValueError, match=r'not a subnet of this supernet: resolution=288 .*width\[8\]=1984 \(choices \(1792,\)\)'
    ):
        net(X64, nv.SPECS['nasvit_max'])
    with pytest.raises(ValueError, match='decision 0'):
        net(X64, (1,) * 31)


def test_full_supernet_builds_on_meta_and_its_max_path_trains_on_cpu() -> None:
    """The full-size supernet (official space, both layer-scale variants) on the meta device, and one forward +
    backward of its largest path at batch 2 on the CPU (64 px inputs, no resize: a few seconds)."""
    with torch.device('meta'):
        code = search.build_supernet('nasvit')
        paper = NASViTSupernet(layer_scale='paper')
    assert next(code.parameters()).is_meta
    assert count_params(code) == 17_712_110 and count_params(paper) == 17_129_998
    assert code.max_spec == nv.SPECS['nasvit_max'] and code.min_spec == nv.SPECS['nasvit_min']
    torch.manual_seed(0)
    net = search.build_supernet('nasvit', space_options={'resize_input': False}, num_classes=10).train()
    high = net.space.extremes()[1]
    loss = net(torch.randn(2, 3, 64, 64), high).logsumexp(-1).mean()
    loss.backward()
    used = {n for n, p in net.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert 'stages.4.7.attn.q.weight' in used and 'stages.0.0.shortcut.conv.weight' not in used  # 24 -> 24: identity
    assert net.stages[4][7].gamma_attn.grad[9, 81 % 8].abs().sum() > 0  # T5 depth 9, 288 px: 9 x 9 tokens
