"""The NAS-Bench-201 search space and its SPOS supernet: sub-space sizes and masks, Table 3 counts of the
supernet, every sampled path equal to the zoo network of its spec, costs, clear errors, and a tiny CLI run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import search
import zoo
from backbones import nb201 as nb201_family
from search.spaces.nb201 import EdgeChoice, NB201Supernet
from tests._helpers import ROOT, check_spos_found, run_spos

NB201_TINY = ROOT / 'configs/search/spos_nb201_tiny.yaml'


@pytest.mark.parametrize(
    ('subspace', 'size', 'ops'), [('full', 15_625, 5), ('no_zero', 4_096, 4), ('only_conv', 64, 2)]
)
def test_subspace_sizes_and_masks(subspace: str, size: int, ops: int) -> None:
    space = search.get_space('nb201', subspace=subspace)
    assert space.size == size and space.num_choices == (5,) * 6
    allowed = set(space.allowed(0))
    assert len(allowed) == ops and (subspace != 'no_zero' or 0 not in allowed)
    g = torch.Generator().manual_seed(0)
    drawn = {c for _ in range(50) for c in space.sample(g)}
    assert drawn == allowed


@pytest.mark.parametrize(('skip', 'total'), [('linear', 782_938), ('identity', 718_426)])
def test_supernet_has_the_table3_parameter_counts(skip: str, total: int) -> None:
    """Paper Table 3 counts the supernet (every candidate): with the 1x1 skip 782,938, with the plain skip 718,426."""
    net = search.build_supernet('nb201', num_classes=10, space_options={'skip': skip})
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    extra = 0 if skip == 'linear' else 6 * 16**2
    cells = [count(net.stages[s][j + (s > 0)]) for s in range(3) for j in range(2)]
    assert cells == [16_896 - extra] * 2 + [67_584 - 4 * extra] * 2 + [270_336 - 16 * extra] * 2
    assert (count(net.stem), count(net.stages[1][0]), count(net.stages[2][0])) == (464, 14_464, 57_600)
    assert count(net.final_act) + count(net.fc) == 778
    assert count(net) == total


def _shuffle_bn_stats(net: NB201Supernet, space) -> None:
    """A few train-mode passes on random paths, so that running BN statistics differ from their init."""
    g = torch.Generator().manual_seed(1)
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(4, 3, 32, 32), space.sample(g))
    net.eval()


@pytest.mark.parametrize(
    ('subspace', 'skip'), [('full', 'identity'), ('no_zero', 'identity'), ('only_conv', 'identity'), ('full', 'linear')]
)
def test_every_sampled_path_equals_the_zoo_model_of_its_spec(subspace: str, skip: str) -> None:
    space = search.get_space('nb201_tiny', subspace=subspace, skip=skip)
    net = search.build_supernet(space, num_classes=10)
    _shuffle_bn_stats(net, space)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    for arch in [space.sample(g) for _ in range(3)] + list(space.extremes()):
        spec = space.to_spec(arch)
        assert space.from_spec(spec) == arch
        model = zoo.create_model(spec, num_classes=10).eval()
        model.load_state_dict(net.path_state_dict(arch), strict=True)
        with torch.no_grad():
            assert torch.equal(model(x), net(x, arch)), (subspace, arch)


def test_choice_points_for_plugins() -> None:
    """One EdgeChoice per edge of every normal cell, in construction order, set from the path before forward."""
    space = search.get_space('nb201_tiny', cells_per_stage=2)
    net = space.build_supernet(num_classes=10)
    points = net.choice_modules()
    assert len(points) == 6 * 3 * 2 and all(isinstance(p, EdgeChoice) for p in points)
    assert [p.decision for p in points] == list(range(6)) * 6
    assert [p.channels for p in points] == [4] * 12 + [8] * 12 + [16] * 12
    assert [type(c) for c in points[0].candidates] == [type(nb201_family.make_op(op, 4)) for op in nb201_family.OPS]
    arch = (4, 3, 2, 1, 0, 3)
    net.eval()(torch.randn(1, 3, 32, 32), arch)
    assert [p.choice for p in points] == list(arch) * 6


def test_costs_equal_the_zoo_models_and_extremes_bound_them() -> None:
    space = search.get_space('nb201_tiny', subspace='no_zero')
    low, high = space.extremes()
    assert high == (3,) * 6 and all(c != 3 for c in low)  # conv3x3 dearest; a free op cheapest
    g = torch.Generator().manual_seed(0)
    for arch in [space.sample(g) for _ in range(3)] + [low, high]:
        model = zoo.create_model(space.to_spec(arch), num_classes=10)
        assert space.cost(arch, 'params') == sum(p.numel() for p in model.parameters())
        assert space.cost(arch, 'macs') == space.cost(arch, 'flops') == zoo.flops.count_macs(model, (3, 32, 32))
        assert space.cost(low, 'macs') <= space.cost(arch, 'macs') <= space.cost(high, 'macs')
    with pytest.raises(ValueError, match='cost metric'):
        space.cost(low, 'energy')


def test_bad_architectures_options_and_foreign_specs_fail_clearly() -> None:
    space = search.get_space('nb201_tiny', subspace='only_conv')
    with pytest.raises(ValueError, match=r'decision 0: option 0 is not allowed \(2, 3\)'):
        space.build_supernet()(torch.randn(1, 3, 32, 32), (0, 2, 2, 2, 2, 2))
    with pytest.raises(ValueError, match='has 6 decisions'):
        space.to_spec((2, 3))
    with pytest.raises(ValueError, match="edge 1 'none' is not allowed in sub-space 'only_conv'"):
        space.from_spec(search.get_space('nb201_tiny').to_spec((2, 0, 2, 2, 2, 2)))
    with pytest.raises(ValueError, match=r"field\(s\) \['channels'\] differ"):
        space.from_spec(search.get_space('nb201_tiny', subspace='only_conv', channels=8).to_spec((2,) * 6))
    with pytest.raises(ValueError, match="subspace 'no_conv' is not one of"):
        search.get_space('nb201', subspace='no_conv')
    with pytest.raises(ValueError, match=r"'channels': must be <= 128"):
        search.get_space('nb201', channels=1000)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['width'\]"):
        search.get_space('nb201', width=2)


def test_spos_tiny_search_on_nb201_emits_specs_that_build(tiny_data: Path, tmp_path: Path) -> None:
    run_spos(NB201_TINY, tmp_path / 'run', tiny_data)
    check_spos_found(tmp_path / 'run', 'nb201_tiny')
    model = zoo.create_model(str(tmp_path / 'run' / 'arch' / 'top1.json'))
    assert model.spec['family'] == 'nb201' and model.spec['channels'] == 4
