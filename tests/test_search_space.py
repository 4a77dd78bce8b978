"""The MBConv search space: sizes of Table 1, chosen path == the network its spec builds, exact costs, DFS rating."""

from __future__ import annotations

import itertools
import json

import pytest
import timm
import torch
import torch.nn as nn

import backbones
from backbones._flops import count_macs, count_params
from search.spaces.mbconv import (
    SPACES,
    BlockChoice,
    MBConvSpace,
    MBConvSupernet,
    choice_cost,
    fixed_cost,
    get_space,
)
from search.strategies.traversal import count_dfs_evaluations, dfs_paths, recalibrate_bn

DNA_C = [
    BlockChoice(0, ('k5e6', 'k3e6')),
    BlockChoice(0, ('k5e6', 'k5e6', 'k3e6', 'k5e6')),
    BlockChoice(0, ('k5e6', 'k3e6', 'k5e6', 'k5e6')),
    BlockChoice(0, ('k3e6', 'k5e6', 'k5e6', 'k5e3')),
    BlockChoice(0, ('k5e6', 'k5e3', 'k5e6', 'k5e6')),
    BlockChoice(0, ('k3e6',)),
]


def test_dna_space_sizes_match_table1() -> None:
    space = SPACES['dna']
    per_block = [sum(len(b.ops) ** c.layers for c in b.cells) for b in space.blocks]
    assert per_block[:5] == [288, 1548, 1548, 2808, 16848]  # DNA paper Table 1
    # the paper's 2e17 counts six choices for the last block, which the official code fixes to MB6 3x3
    assert space.num_architectures() * 6 == pytest.approx(1.96e17, rel=0.01)
    assert SPACES['dna_single_cell'].num_architectures() == 6**18  # 6^19 with the last layer searched
    assert SPACES['dna_small'].num_architectures() == 4**18
    # the first layer of a block has one set of weights per width the previous block can end in
    assert space.in_widths(1) == (24, 32) and space.in_widths(4) == (96, 112)
    assert space.num_candidates(1) == 2 * 1548


def test_dna_c_is_a_path_of_the_official_single_cell_space() -> None:
    space = SPACES['dna_single_cell']
    spec = space.to_spec(DNA_C)
    assert spec == backbones.validate_spec(backbones.mbconv.SPECS['dna_c'])
    macs, params = fixed_cost(space)
    width = space.ds_width
    for k, choice in enumerate(DNA_C):
        m, p = choice_cost(space, k, width, choice)
        macs, params, width = macs + m, params + p, space.blocks[k].cells[0].width
    assert params == 5_273_896  # DNA-c, exact
    assert macs == count_macs(timm.create_model('dna_c'))


def test_costs_add_up_to_the_built_network() -> None:
    space = get_space('tiny')
    g = torch.Generator().manual_seed(1)
    for _ in range(4):
        arch = space.sample(g)
        macs, params = fixed_cost(space)
        width = space.ds_width
        for k, choice in enumerate(space.decode(arch)):
            m, p = choice_cost(space, k, width, choice)
            macs, params, width = macs + m, params + p, space.widths(arch)[k]
        net = timm.create_model('mbconv', spec=space.to_spec(arch))
        assert (macs, params) == (count_macs(net, (3, 32, 32)), count_params(net))
        assert (space.cost(arch, 'macs'), space.cost(arch, 'params')) == (macs, params)


@pytest.fixture(scope='module')
def tiny_supernet() -> MBConvSupernet:
    torch.manual_seed(0)
    net = MBConvSupernet('tiny')
    # non-trivial BN statistics, so that equality is not an accident of fresh buffers
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return net.eval()


def test_chosen_path_is_the_network_of_its_spec(tiny_supernet: MBConvSupernet) -> None:
    space = tiny_supernet.space
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    for _ in range(6):
        arch = space.sample(g)
        net = timm.create_model('mbconv', spec=space.to_spec(arch), num_classes=5).eval()
        missing, unexpected = net.load_state_dict(tiny_supernet.path_state_dict(arch), strict=False)
        assert not unexpected
        assert {m.split('.')[0] for m in missing} == {'conv_head', 'bn2', 'classifier'}  # DNA never trains a head
        expected = net.forward_intermediates(x, intermediates_only=True)[-1]
        assert torch.equal(tiny_supernet.forward_path(x, arch), expected)


def test_paths_share_weights_and_adapters_are_not_in_the_network(tiny_supernet: MBConvSupernet) -> None:
    a = [
        BlockChoice(0, ('k3e3',)),
        BlockChoice(0, ('k3e3',)),
        BlockChoice(0, ('k3e3', 'k3e3')),
        BlockChoice(0, ('k3e3',)),
    ]
    b = [
        BlockChoice(0, ('k3e3',)),
        BlockChoice(0, ('k3e6',)),
        BlockChoice(0, ('k3e3', 'k3e3')),
        BlockChoice(0, ('k3e3',)),
    ]
    sa, sb = tiny_supernet.path_state_dict(a), tiny_supernet.path_state_dict(b)
    assert sa['blocks.1.0.conv_pw.weight'].data_ptr() == sb['blocks.1.0.conv_pw.weight'].data_ptr()
    assert sa['blocks.2.0.conv_pw.weight'].shape != sb['blocks.2.0.conv_pw.weight'].shape  # expansion 3 vs 6
    assert not any('adapter' in k for k in sa)


def test_bad_paths_and_spaces_are_named() -> None:
    space = get_space('tiny')
    with pytest.raises(ValueError, match='4 blocks'):
        space.check_arch([BlockChoice(0, ('k3e3',))])
    with pytest.raises(ValueError, match='cell 5 does not exist'):
        space.check_arch([BlockChoice(5, ('k3e3',))] * 4)
    with pytest.raises(ValueError, match=r"not among the block's ops"):
        space.check_arch([BlockChoice(0, ('k7e6',))] + [BlockChoice(0, ('k3e3',))] * 3)
    with pytest.raises(ValueError, match='multiple of 8'):
        MBConvSpace('bad', (space.blocks[0].__class__(2, (space.blocks[0].cells[0].__class__(1, 12),)),))
    with pytest.raises(KeyError, match='unknown MBConv space'):
        get_space('nope')
    from search.methods.dna import DNAAdapters

    with pytest.raises(ValueError, match='teacher gives 2 features'):
        DNAAdapters(space, [8, 8])


def _naive(layer, depth, ops, calib, evals):  # every path on its own, as the official code rates
    out = {}
    for path in itertools.product(ops, repeat=depth):
        cal, ev = list(calib), list(evals)
        for j, op in enumerate(path):
            mod = layer(j, op)
            recalibrate_bn(mod, cal)
            cal, ev = [mod(x) for x in cal], [mod(x) for x in ev]
        out[path] = ev
    return out


@torch.no_grad()
def test_dfs_rating_equals_rating_each_path_alone(tiny_supernet: MBConvSupernet) -> None:
    cell = tiny_supernet.blocks[2][0]  # two layers, ops k3e3 / k5e3, input widths 8 and 16
    calls = []

    def layer(j: int, op: str) -> nn.Module:
        calls.append((j, op))
        return cell.layers[j].choice(16 if j else 8, op)

    calib = [torch.randn(4, 8, 8, 8)]
    evals = [torch.randn(3, 8, 8, 8), torch.randn(2, 8, 8, 8)]
    ops = ('k3e3', 'k5e3')
    got = {p: ev for p, _, ev in dfs_paths(layer, 2, ops, calib, evals)}
    dfs_calls = len(calls)
    want = _naive(layer, 2, ops, calib, evals)
    assert list(got) == list(want)  # lexicographic order
    for path in want:
        for a, b in zip(got[path], want[path], strict=True):
            torch.testing.assert_close(a, b)
    assert dfs_calls == count_dfs_evaluations(2, 2)[0] == 6  # vs 8 without sharing
    assert count_dfs_evaluations(6, 4) == (1554, 5184)


def test_latency_table_is_measured_once_and_cached(tmp_path) -> None:
    from search.spaces.mbconv_latency import LatencyTable

    space = get_space('tiny')
    cache = tmp_path / 'lat.json'
    table = LatencyTable(space, torch.device('cpu'), min_run_time=0.002, cache=str(cache))
    choice = BlockChoice(1, ('k5e3', 'k5e3'))
    first = table.choice_latency(0, 8, choice)
    assert first > 0 and table.fixed_latency() >= 0
    again = LatencyTable(space, torch.device('cpu'), min_run_time=0.002, cache=str(cache))
    assert again.choice_latency(0, 8, choice) == first  # read back, not re-measured
    assert len(json.loads(cache.read_text())[again.key]) == len(table.table)


@pytest.mark.parametrize('name', ['fairnas_tiny', 'nb201_tiny', 'nasvit_tiny'])
def test_whole_network_latency_is_measured_once_per_architecture(name: str, monkeypatch) -> None:
    """The single-path spaces share one measurement (search.spaces.base.measured_latency): built once, cached."""
    import search
    from search.spaces import base

    space = search.get_space(name)
    arch, other = (space.sample(torch.Generator().manual_seed(seed)) for seed in (0, 1))
    builds = []
    monkeypatch.setattr(base, '_LATENCIES', {})
    real = base.measured_latency

    def counting(space, arch, build, img_size, runs=10):
        return real(space, arch, lambda: builds.append(arch) or build(), img_size, runs)

    monkeypatch.setattr(f'search.spaces.{name.split("_")[0]}.measured_latency', counting)
    first = space.cost(arch, 'latency')
    assert 0 < first < 10 and space.cost(arch, 'latency') == first and builds == [arch]
    assert other != arch and space.cost(other, 'latency') > 0 and builds == [arch, other]
