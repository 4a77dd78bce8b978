"""The FairNAS-style single-path MBConv space (inter-choice paper, Table 4) and the mbconv family's act/SE fields."""

from __future__ import annotations

import pytest
import torch

import search
import zoo
from backbones._flops import count_macs, count_params
from backbones.mbconv import validate_spec
from search.spaces.fairnas import FAIRNAS_OPS, get_space
from zoo import SpecError


def _spec(**changes) -> dict:
    spec = get_space('fairnas_tiny').to_spec((0, 1, 2, 3, 4, 5))
    spec.update(changes)
    return spec


# -- the backbone family: activation and squeeze-excite as validated spec fields ------------------------------------
def test_act_layer_and_se_are_spec_fields() -> None:
    relu6 = zoo.create_model(_spec())
    assert zoo.spec_of(relu6)['act_layer'] == 'relu6'
    acts = {type(m).__name__ for m in relu6.modules() if 'ReLU6' in type(m).__name__ or 'SiLU' in type(m).__name__}
    assert acts == {'ReLU6'}
    assert not any('SqueezeExcite' in type(m).__name__ for m in relu6.modules())
    swish = zoo.create_model(_spec(act_layer='swish'))
    assert {'SiLU'} == {type(m).__name__ for m in swish.modules() if type(m).__name__ in ('SiLU', 'ReLU6')}
    with_se = _spec()
    with_se['stages'] = [[b + '_se0.25' for b in stage] for stage in with_se['stages']]
    assert any('SqueezeExcite' in type(m).__name__ for m in zoo.create_model(with_se).modules())
    # a spec without act_layer keeps building the DNA family's swish networks, and stays without the field
    dna = zoo.get_spec('dna_a')
    assert 'act_layer' not in validate_spec(dna)
    assert any(type(m).__name__ == 'SiLU' for m in zoo.create_model(dna).modules())


@pytest.mark.parametrize(
    ('changes', 'message'),
    [
        ({'act_layer': 'gelu'}, r"'act_layer': 'gelu' is not one of the allowed values \('swish', 'relu6'\)"),
        ({'act_layer': None}, "'act_layer'"),
        ({'activation': 'relu6'}, r"unknown field\(s\) \['activation'\]"),
    ],
)
def test_bad_act_layer_fails_clearly(changes: dict, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        zoo.create_model(_spec(**changes))


def test_bad_se_option_fails_clearly() -> None:
    spec = _spec()
    spec['stages'][1][0] += '_se0.5'
    with pytest.raises(SpecError, match=r'SE ratio 0.5 is not one of the allowed values \(0.25,\)'):
        validate_spec(spec)


# -- the space ------------------------------------------------------------------------------------------------------
def test_fairnas_supernet_has_the_papers_parameter_count() -> None:
    net = search.build_supernet('fairnas', num_classes=100)
    assert sum(p.numel() for p in net.parameters()) == 14_839_700  # paper Table 4
    assert search.get_space('fairnas').num_choices == (6,) * 19
    assert search.get_space('fairnas').size == 6**19
    assert FAIRNAS_OPS == ('k3e3', 'k5e3', 'k7e3', 'k3e6', 'k5e6', 'k7e6')


@pytest.mark.parametrize('name', ['fairnas', 'fairnas_tiny'])
def test_path_equals_the_zoo_model_of_its_spec(name: str) -> None:
    space = search.get_space(name)
    net = search.build_supernet(space, num_classes=5).eval()
    x = torch.randn(2, 3, 32, 32)
    gen = torch.Generator().manual_seed(3)
    archs = [space.sample(gen) for _ in range(2)] + ([] if name == 'fairnas' else list(space.extremes()))
    outs = []
    for arch in archs:
        model = zoo.create_model(space.to_spec(arch), num_classes=5).eval()
        model.load_state_dict(net.path_state_dict(arch), strict=True)
        with torch.no_grad():
            out = net(x, arch)
            assert torch.equal(model(x), out)
        outs.append(out)
        assert space.from_spec(space.to_spec(arch)) == arch
    assert not torch.equal(outs[0], outs[1])  # different paths, different networks


def test_costs_equal_the_zoo_models_and_extremes_bound_them() -> None:
    space = search.get_space('fairnas_tiny')
    low, high = space.extremes()
    assert low == (0,) * len(space.layers) and high == (5,) * len(space.layers)  # k3e3 / k7e6 everywhere
    gen = torch.Generator().manual_seed(0)
    for arch in (low, high, space.sample(gen)):
        model = zoo.create_model(space.to_spec(arch))
        assert space.cost(arch, 'macs') == count_macs(model, (3, 32, 32)) == space.cost(arch, 'flops')
        assert space.cost(arch, 'params') == count_params(model)
        assert space.cost(low, 'macs') <= space.cost(arch, 'macs') <= space.cost(high, 'macs')
    assert 0 < space.cost(low, 'latency') < 10
    with pytest.raises(ValueError, match="cost metric 'energy'"):
        space.cost(low, 'energy')


def test_bad_architectures_and_foreign_specs_fail_clearly() -> None:
    space = search.get_space('fairnas_tiny')
    with pytest.raises(ValueError, match='has 6 decisions'):
        space.to_spec((0, 1))
    with pytest.raises(ValueError, match='decision 2: option 6'):
        space.to_spec((0, 0, 6, 0, 0, 0))
    with pytest.raises(ValueError, match='searchable layers'):
        space.from_spec(zoo.get_spec('dna_a'))
    swish = space.to_spec((0,) * 6)
    swish['act_layer'] = 'swish'
    with pytest.raises(ValueError, match='act_layer differ'):
        space.from_spec(swish)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['width'\]"):
        search.get_space('fairnas', width=2)
    small = search.get_space('fairnas_tiny', img_size=16)
    assert small.img_size == 16 and small.cost((0,) * 6, 'macs') < space.cost((0,) * 6, 'macs')
