"""The Pi-NAS ResNeSt search space (search/spaces/resnest.py): sizes by counting, every path bit-identical to the
``resnest`` network of its spec, shared stage shortcuts, zero-init last BN, exact costs, the zoo's Pi-NAS-cls/-trans
as paths, the optional reduced-width spec fields, and the full-size supernet on the meta device."""

from __future__ import annotations

import itertools

import pytest
import timm
import torch

import search
import zoo
from backbones import resnest as resnest_family
from backbones._flops import count_macs, count_params
from search.protocols import SearchSpace, Supernet
from search.spaces.resnest import PAPER_FLOPS_FACTOR, ResNeStSpace, ResNeStSupernet
from zoo import SpecError

FIRST_LAYERS = {'pinas': (0, 3, 7, 13), 'pinas_tiny': (0, 2, 4, 6)}


def _archs(space: ResNeStSpace, n: int, seed: int = 0) -> list[tuple[int, ...]]:
    g = torch.Generator().manual_seed(seed)
    return [space.sample(g) for _ in range(n)]


def _perturb(net: torch.nn.Module) -> None:
    """Random BN affine values and statistics: at init (zero-init last BN) every path computes the same function,
    which would hide a wrong candidate."""
    g = torch.Generator().manual_seed(1)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data = torch.rand(m.weight.shape, generator=g) + 0.5
            m.bias.data = torch.randn(m.bias.shape, generator=g) * 0.1
            m.running_mean = torch.randn(m.running_mean.shape, generator=g) * 0.1
            m.running_var = torch.rand(m.running_var.shape, generator=g) + 0.5


# -- decisions and size ---------------------------------------------------------------------------------------------
def test_registry_and_sizes() -> None:
    space = search.get_space('pinas')
    assert isinstance(space, SearchSpace) and isinstance(space, ResNeStSpace)
    assert space.num_choices == (4,) * 16 and space.layers == (3, 4, 6, 3)
    assert space.size == 4**16 == 4_294_967_296  # paper section 4.1
    assert [p[2] for p in space.positions][:4] == ['layer1.0', 'layer1.1', 'layer1.2', 'layer2.0']
    tiny = search.get_space('pinas_tiny')
    assert tiny.num_choices == (4,) * 7 and tiny.size == 4**7


def test_size_equals_the_count_of_distinct_networks() -> None:
    """Every tuple of candidate indices is one network of its own: counted over the whole tiny space (16,384 specs),
    and on the full space every layer allows exactly the four candidates and nothing else."""
    tiny = search.get_space('pinas_tiny')
    specs = {tuple(tiny.to_spec(a)['choices']) for a in itertools.product(range(4), repeat=7)}
    assert len(specs) == tiny.size
    full = search.get_space('pinas')
    assert all(full.allowed(i) == (0, 1, 2, 3) for i in range(16))
    for i in range(16):
        for bad in (-1, 4, True):
            arch = [0] * 16
            arch[i] = bad
            assert arch not in full
    assert len(set(full.key(a) for a in _archs(full, 200))) == 200  # no collapsing of distinct decisions


def test_draws_stay_in_the_space_and_are_reproducible() -> None:
    space = search.get_space('pinas')
    a, b = _archs(space, 2, seed=5)
    assert a == _archs(space, 1, seed=5)[0] and a in space and b in space
    g = torch.Generator().manual_seed(0)
    assert space.mutate(a, g, 0.0) == a
    child = space.crossover(a, b, g)
    assert all(c in (x, y) for c, x, y in zip(child, a, b, strict=True))
    assert space.key(a) == '-'.join(map(str, a))


# -- paths are the zoo networks -------------------------------------------------------------------------------------
@pytest.mark.parametrize('mode', ['train', 'eval'])
def test_tiny_paths_are_bit_identical_to_their_zoo_networks(mode: str) -> None:
    space = search.get_space('pinas_tiny')
    net = search.build_supernet(space, num_classes=5)
    assert isinstance(net, Supernet)
    _perturb(net)
    x = torch.randn(2, 3, 32, 32)
    archs = _archs(space, 4) + list(space.extremes())
    outs = []
    for arch in archs:
        model = zoo.create_model(space.to_spec(arch), num_classes=5)
        model.load_state_dict(net.path_state_dict(arch), strict=True)
        net.train(mode == 'train')
        model.train(mode == 'train')
        with torch.no_grad():
            out = net(x, arch)
            assert torch.equal(model(x), out)
        if mode == 'train':  # the same BN statistics updates too
            after = net.path_state_dict(arch)
            assert all(torch.equal(after[k], v) for k, v in model.state_dict().items())
        outs.append(out)
    assert not torch.equal(outs[0], outs[1])  # different paths, different networks


def test_full_size_paths_are_bit_identical_to_their_zoo_networks() -> None:
    space = search.get_space('pinas')
    net = search.build_supernet(space, num_classes=10)
    blocks = [c for s in range(4) for cands in net.get_submodule(f'layer{s + 1}') for c in cands]
    assert len(blocks) == 64 and all(float(b.bn3.weight.detach().abs().sum()) == 0 for b in blocks)  # zero-init
    _perturb(net)
    x = torch.randn(2, 3, 64, 64)
    for arch, mode in zip(_archs(space, 2, seed=3), ('eval', 'train'), strict=True):
        model = timm.create_model('resnest_nas', spec=space.to_spec(arch), num_classes=10)
        model.load_state_dict(net.path_state_dict(arch), strict=True)
        net.train(mode == 'train')
        model.train(mode == 'train')
        with torch.no_grad():
            assert torch.equal(model(x), net(x, arch))


def test_zoo_pinas_models_are_paths_of_the_space() -> None:
    space = search.get_space('pinas')
    for name in ('pinas_cls', 'pinas_trans'):
        spec = zoo.get_spec(name)
        arch = space.from_spec(spec)
        assert list(arch) == spec['choices'] and space.to_spec(arch) == spec
    assert space.from_spec(timm.create_model('resnest_nas').spec) == (1,) * 16  # ResNeSt-50-D


# -- supernet structure -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize('name', ['pinas', 'pinas_tiny'])
def test_stage_shortcuts_are_shared_and_last_bn_is_zero(name: str) -> None:
    space = search.get_space(name)
    with torch.device('meta') if name == 'pinas' else torch.device('cpu'):
        net = search.build_supernet(space, num_classes=1000)
    layers = [net.get_submodule(f'layer{s + 1}')[j] for s, j, _ in space.positions]
    for i, candidates in enumerate(layers):
        assert len(candidates) == 4
        shortcuts = {id(c.downsample) for c in candidates}
        if i in FIRST_LAYERS[name]:
            assert len(shortcuts) == 1 and candidates[0].downsample is not None  # one module for all four
        else:
            assert shortcuts == {id(None)}
    if name == 'pinas_tiny':
        assert all(float(c.bn3.weight.detach().abs().sum()) == 0 for cands in layers for c in cands)
    # parameters: the fixed parts once, every candidate of every layer, each stage's shortcut once
    shortcut = sum(count_params(layers[i][0].downsample) for i in FIRST_LAYERS[name])
    per_layer = sum(count_params(c) for cands in layers for c in cands)
    fixed = sum(count_params(m) for m in (net.conv1, net.bn1, net.fc))
    assert count_params(net) == fixed + per_layer - 3 * shortcut
    if name == 'pinas':
        assert count_params(net) == 93_571_388


def test_shared_shortcut_trains_under_every_candidate() -> None:
    space = search.get_space('pinas_tiny')
    net = search.build_supernet(space, num_classes=4).train()
    shortcut = net.layer2[0][0].downsample[1].weight
    for choice in range(4):
        net.zero_grad()
        arch = (0, 0, choice, 0, 0, 0, 0)
        net(torch.randn(2, 3, 32, 32), arch).sum().backward()
        assert shortcut.grad is not None and float(shortcut.grad.abs().sum()) > 0
        assert net.layer2[0][(choice + 1) % 4].conv1.weight.grad is None  # other candidates untouched
    keys = [k for k in net.state_dict() if k.startswith('layer2.0.') and 'downsample.1.weight' in k]
    assert len(keys) == 4 and len({net.state_dict()[k].data_ptr() for k in keys}) == 1  # one tensor, four names


def test_at_init_every_path_is_the_same_function() -> None:
    """Zero-init last BN: every block starts as its shortcut (then ReLU), so all paths agree before training."""
    space = search.get_space('pinas_tiny')
    net = search.build_supernet(space, num_classes=4).eval()
    x = torch.randn(2, 3, 32, 32)
    a, b = space.extremes()
    with torch.no_grad():
        assert torch.equal(net(x, a), net(x, b))


# -- costs ------------------------------------------------------------------------------------------------------------
def test_tiny_costs_equal_the_zoo_networks_and_extremes_bound_them() -> None:
    space = search.get_space('pinas_tiny')
    low, high = space.extremes()
    for arch in (low, high, *_archs(space, 3)):
        model = zoo.create_model(space.to_spec(arch))
        macs = count_macs(model, (3, 32, 32))
        assert space.cost(arch, 'macs') == macs
        assert space.cost(arch, 'flops') == pytest.approx(macs * PAPER_FLOPS_FACTOR, rel=1e-12)
        assert space.cost(arch, 'params') == count_params(model)
        assert space.cost(low, 'macs') <= space.cost(arch, 'macs') <= space.cost(high, 'macs')
    assert 0 < space.cost(low, 'latency') < 10
    with pytest.raises(ValueError, match="cost metric 'energy'"):
        space.cost(low, 'energy')


@pytest.mark.parametrize(('name', 'params', 'macs'), [('pinas_cls', 27_046_278, 5_332_293_584)])
def test_full_costs_of_pinas_cls(name: str, params: int, macs: int) -> None:
    space = search.get_space('pinas')
    arch = space.from_spec(zoo.get_spec(name))
    model = timm.create_model(name)
    assert space.cost(arch, 'params') == count_params(model) == params  # specs section 4: 27.05M derived
    assert space.cost(arch, 'macs') == count_macs(model, (3, 224, 224)) == macs  # specs section 4: 5.332G derived
    assert zoo.CATALOG[name].flops_rule.factor == PAPER_FLOPS_FACTOR
    assert space.cost(arch, 'flops') / 1e9 == pytest.approx(5.38, rel=2e-3)  # paper Table 2


def test_full_costs_of_pinas_trans_and_extremes() -> None:
    space = search.get_space('pinas')
    arch = space.from_spec(zoo.get_spec('pinas_trans'))
    assert space.cost(arch, 'params') == 27_039_016 == count_params(timm.create_model('pinas_trans'))
    assert space.cost(arch, 'flops') / 1e9 == pytest.approx(5.30, rel=2e-3)  # paper Table 1
    low, high = space.extremes()
    assert space.cost(low, 'macs') < space.cost((1,) * 16, 'macs') < space.cost(high, 'macs')


# -- bad input ---------------------------------------------------------------------------------------------------------
def test_bad_architectures_and_foreign_specs_fail_clearly() -> None:
    space, tiny = search.get_space('pinas'), search.get_space('pinas_tiny')
    with pytest.raises(ValueError, match='has 16 decisions'):
        space.to_spec((0, 1))
    with pytest.raises(ValueError, match='decision 2: option 4'):
        space.to_spec((0, 0, 4) + (0,) * 13)
    with pytest.raises(ValueError, match="spec has 16 layers, space 'pinas_tiny' has 7"):
        tiny.from_spec(zoo.get_spec('pinas_cls'))
    spec = tiny.to_spec((0,) * 7)
    spec['channels'] = [32, 16, 32, 32]
    with pytest.raises(ValueError, match=r"field\(s\) \['channels'\] differ"):
        tiny.from_spec(spec)
    with pytest.raises(SpecError, match="'family'"):
        space.from_spec(zoo.get_spec('bossnet_t0'))
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['width'\]"):
        search.get_space('pinas', width=2)
    with pytest.raises(ValueError, match=r"space 'pinas_tiny': spec field 'channels\[0\]': 8 gives candidate 3"):
        search.get_space('pinas_tiny', channels=(8, 16, 32, 32))
    with pytest.raises(ValueError, match='need 4 entries'):
        search.get_space('pinas_tiny', layers=(2, 2, 2))
    small = search.get_space('pinas_tiny', img_size=64)
    assert small.cost((0,) * 7, 'macs') > tiny.cost((0,) * 7, 'macs')


# -- the optional spec fields of the backbone family ------------------------------------------------------------------
def test_catalog_specs_keep_their_fields_and_reduced_specs_build() -> None:
    for name in ('pinas_cls', 'pinas_trans'):
        assert set(zoo.get_spec(name)) == {'family', 'version', 'choices'}
    spec = search.get_space('pinas_tiny').to_spec((0, 1, 2, 3, 0, 1, 2))
    assert (spec['stem_width'], spec['channels'], spec['layers']) == (8, [16, 16, 32, 32], [2, 2, 2, 1])
    model = zoo.create_model(spec, num_classes=3)
    assert model.conv1[0].out_channels == 8 and model.bn1.num_features == 16 and model.fc.in_features == 128
    assert [len(getattr(model, f'layer{s}')) for s in (1, 2, 3, 4)] == [2, 2, 2, 1]
    assert zoo.spec_of(model) == spec


@pytest.mark.parametrize(
    ('changes', 'message'),
    [
        ({'layers': [2, 2, 2, 1]}, r"'choices': expected 7 entries \(the sum of layers \[2, 2, 2, 1\]\), got 16"),
        ({'layers': [3, 4, 6]}, "'layers': expected 4 entries"),
        ({'layers': [3, 4, 6, 9], 'choices': [0] * 22}, r"'layers\[3\]': must be <= 8"),
        ({'channels': [64, 128, 256, 2048]}, r"'channels\[3\]': must be <= 1024"),
        ({'channels': [65, 128, 256, 512]}, r"'channels\[0\]': 65 gives candidate 1 \(2s1x64d\) the group width 65"),
        ({'channels': [64, 128, 256, 8]}, r"'channels\[3\]': 8 gives candidate 3 \(2s2x40d\) the group width 10"),
        ({'stem_width': 0}, "'stem_width': must be >= 1"),
        ({'stem_width': 32.0}, "'stem_width': expected an integer"),
        ({'widths': [64, 128, 256, 512]}, r"unknown field\(s\) \['widths'\]"),
    ],
)
def test_bad_optional_fields_fail_clearly(changes: dict, message: str) -> None:
    spec = {**zoo.get_spec('pinas_cls'), **changes}
    with pytest.raises(SpecError, match=message):
        resnest_family.validate_spec(spec)


def test_full_size_supernet_builds_on_meta() -> None:
    with torch.device('meta'):
        net = search.get_space('pinas').build_supernet(num_classes=1000)
        out = net(torch.empty(2, 3, 224, 224), (3,) * 16)
    assert isinstance(net, ResNeStSupernet) and out.shape == (2, 1000)
    assert count_params(net) == 93_571_388
    assert net.path_state_dict((0,) * 16).keys() == timm.create_model('resnest_nas').state_dict().keys()


def test_without_downsample_sharing_each_candidate_keeps_its_shortcut() -> None:
    """Table 7's "w/o DS": four shortcuts per stage, paths still the zoo networks, costs of a path unchanged."""
    shared, own = search.get_space('pinas_tiny'), search.get_space('pinas_tiny', share_downsample=False)
    net = search.build_supernet(own, num_classes=5)
    first = net.layer2[0]
    assert len({id(c.downsample) for c in first}) == 4
    extra = 3 * sum(count_params(net.get_submodule(f'layer{s}')[0][0].downsample) for s in (1, 2, 3, 4))
    assert count_params(net) == count_params(search.build_supernet(shared, num_classes=5)) + extra
    _perturb(net)
    net.eval()
    x = torch.randn(2, 3, 32, 32)
    for arch in _archs(own, 3):
        model = zoo.create_model(own.to_spec(arch), num_classes=5).eval()
        model.load_state_dict(net.path_state_dict(arch), strict=True)
        with torch.no_grad():
            assert torch.equal(model(x), net(x, arch))
        assert own.cost(arch, 'params') == shared.cost(arch, 'params') and own.to_spec(arch) == shared.to_spec(arch)
    with pytest.raises(ValueError, match='share_downsample must be true or false'):
        search.get_space('pinas_tiny', share_downsample='no')
