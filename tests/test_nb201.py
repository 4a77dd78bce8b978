"""The ``nb201`` family: paper Table 3 parameter counts, the cell's wiring and ops, spec errors, timm/ONNX bits.

The registry-wide contract (tests/test_contract.py, tests/test_timm_conventions.py) runs on the ``nb201`` entry
point too; here are the checks specific to this family, on tiny widths where the numbers are not the point.
"""

from __future__ import annotations

import re

import pytest
import timm
import torch
import torch.nn as nn

import zoo
from backbones import SpecError, nb201
from backbones._pretrained import PretrainedWeightsError
from zoo.onnx import export_onnx

ALL_OPS = ['skip_connect', 'nor_conv_1x1', 'nor_conv_3x3', 'avg_pool_3x3', 'none', 'nor_conv_3x3']


def _spec(**changes) -> dict:
    spec = {'family': 'nb201', 'version': 1, 'channels': 16, 'cells_per_stage': 2, 'edges': list(ALL_OPS)}
    spec.update(changes)
    return spec


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# Paper Table 3 (C 16, 2 cells a stage, CIFAR-10): stem, cells 0/1, reduction 2, cells 3/4, reduction 5, cells 6/7,
# head. A cell of the super-network holds every candidate op, so its count is the sum over the five ops.
TABLE3 = {'stem': 464, 'cells': (16_896, 67_584, 270_336), 'reductions': (14_464, 57_600), 'head': 778}


@pytest.mark.parametrize(('skip', 'total'), [('linear', 782_938), ('identity', 718_426)])
def test_table3_parameter_counts_per_part_and_total(skip: str, total: int) -> None:
    """Fixed parts from one network; each Table 3 cell = the cells of the five single-op networks together."""
    nets = [nb201.build(_spec(edges=[op] * 6, skip=skip), num_classes=10) for op in nb201.OPS]
    net = nets[0]
    assert net.spec['edges'] == ['none'] * 6
    assert _params(net.stem) == TABLE3['stem']
    assert (_params(net.stages[1][0]), _params(net.stages[2][0])) == TABLE3['reductions']
    assert _params(net.final_act) + _params(net.fc) == TABLE3['head']
    cells = tuple(sum(_params(n.stages[s][-1]) for n in nets) for s in range(3))
    extra = 0 if skip == 'linear' else 6 * 16**2  # the 1x1 "linear transformer" skip of every edge
    assert cells == tuple(c - extra * 4**s for s, c in enumerate(TABLE3['cells']))
    fixed = _params(net)  # the all-'none' network: only the fixed parts have weights
    assert fixed == TABLE3['stem'] + sum(TABLE3['reductions']) + TABLE3['head']
    assert fixed + 2 * sum(cells) == total


def test_default_skip_is_the_identity_and_linear_is_a_1x1_conv() -> None:
    spec = _spec(edges=['skip_connect'] * 6)
    plain, linear = nb201.build(spec), nb201.build(_spec(edges=['skip_connect'] * 6, skip='linear'))
    assert isinstance(plain.stages[0][0].edges[0], nn.Identity)
    conv = linear.stages[0][0].edges[0]
    assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1) and conv.bias is None
    assert nb201.validate_spec(spec) == spec and 'skip' not in nb201.validate_spec(spec)


def test_cell_sums_its_edges_along_the_nas_bench_201_dag() -> None:
    """All-skip: node1 = x, node2 = x + node1, out = x + node1 + node2 = 4x; only e3 (0->3) skip: out = x."""
    x = torch.randn(2, 4, 6, 6)
    cell = nb201.NB201Cell([nb201.make_op('skip_connect', 4) for _ in range(6)])
    torch.testing.assert_close(cell(x), 4 * x)
    edges = ['none', 'none', 'none', 'skip_connect', 'none', 'none']
    torch.testing.assert_close(nb201.NB201Cell([nb201.make_op(op, 4) for op in edges])(x), x)
    edges = ['skip_connect', 'none', 'skip_connect', 'none', 'none', 'skip_connect']  # the chain 0->1->2->3
    torch.testing.assert_close(nb201.NB201Cell([nb201.make_op(op, 4) for op in edges])(x), x)


def test_ops_follow_nas_bench_201() -> None:
    pool = nb201.make_op('avg_pool_3x3', 3)
    torch.testing.assert_close(pool(torch.ones(1, 3, 5, 5)), torch.ones(1, 3, 5, 5))  # padding not counted
    conv = nb201.make_op('nor_conv_3x3', 8)
    assert [type(m) for m in conv] == [nn.ReLU, nn.Conv2d, nn.BatchNorm2d]
    assert not conv[2].affine and conv[1].bias is None and not conv[0].inplace
    x = torch.randn(1, 3, 4, 4)
    assert torch.equal(nb201.make_op('none', 3)(x), torch.zeros_like(x))
    red = nb201.ResNetReduction(4, 8)
    assert red.conv_a[2].affine and red(torch.randn(1, 4, 7, 7)).shape == (1, 8, 4, 4)  # odd sizes run


@pytest.mark.parametrize(
    ('changes', 'message'),
    [
        ({'channels': 0}, "'channels': must be >= 1, got 0"),
        ({'channels': 129}, "'channels': must be <= 128, got 129"),
        ({'channels': 16.0}, "'channels': expected an integer"),
        ({'cells_per_stage': 17}, "'cells_per_stage': must be <= 16, got 17"),
        ({'cells_per_stage': True}, "'cells_per_stage': expected an integer"),
        ({'edges': ALL_OPS[:5]}, "'edges': expected 6 entries, got 5"),
        ({'edges': 'nor_conv_3x3'}, "'edges': expected a list"),
        ({'edges': [*ALL_OPS[:2], 'conv3x3', *ALL_OPS[3:]]}, "'edges[2]': 'conv3x3' is not one of the allowed"),
        ({'skip': 'conv'}, "'skip': 'conv' is not one of the allowed values ('identity', 'linear')"),
        ({'stem': 3}, "unknown field(s) ['stem']"),
        ({'version': 2}, "'version': nb201 specs are version 1"),
    ],
)
def test_bad_specs_name_the_field_and_its_bound(changes: dict, message: str) -> None:
    with pytest.raises(SpecError, match=re.escape(message)):
        zoo.create_model(_spec(**changes))


def test_missing_field_is_named() -> None:
    spec = _spec()
    del spec['edges']
    with pytest.raises(SpecError, match=r"missing field\(s\) \['edges'\]"):
        nb201.validate_spec(spec)


def test_timm_entry_point_features_and_cfg() -> None:
    model = timm.create_model('nb201', spec=_spec(channels=4, cells_per_stage=1))
    assert model.spec['channels'] == 4 and model.num_classes == 10
    cfg = model.pretrained_cfg
    assert cfg['input_size'] == (3, 32, 32) and cfg.get('hf_hub_id') is None and cfg['first_conv'] == 'stem.0'
    feat = zoo.create_model(_spec(channels=4, cells_per_stage=1), features_only=True, out_indices=2)
    assert feat.feature_info.out_indices == (1, 2)
    assert feat.feature_info.channels() == [8, 16] and feat.feature_info.reduction() == [2, 4]
    outs = feat(torch.randn(1, 3, 32, 32))
    assert [tuple(o.shape) for o in outs] == [(1, 8, 16, 16), (1, 16, 8, 8)]
    for bad in (0, 4, (3,), (0, 0)):
        with pytest.raises(ValueError, match='out_indices'):
            zoo.create_model('nb201', features_only=True, out_indices=bad)


def test_pretrained_says_that_no_weights_are_published() -> None:
    with pytest.raises(PretrainedWeightsError, match='no pretrained weights are published'):
        zoo.create_model('nb201', pretrained=True)


@pytest.mark.filterwarnings('ignore:.*torch.jit.script.*:FutureWarning')
def test_every_op_scripts_traces_and_exports_to_onnx(tmp_path) -> None:
    """All five ops and the linear skip through TorchScript, the FX feature extractor and ONNX (onnxruntime)."""
    spec = _spec(channels=4, cells_per_stage=1, skip='linear')
    model = zoo.create_model(spec).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.script(model)(x), model(x))
    fx = timm.create_model('nb201', spec=spec, features_only=True, feature_cls='fx').eval()
    fx.load_state_dict({k: model.state_dict()[k.removeprefix('graph_module.')] for k in fx.state_dict()})
    with torch.no_grad():
        for a, b in zip(fx(x), model.forward_intermediates(x, intermediates_only=True), strict=True):
            torch.testing.assert_close(a, b)
    report = export_onnx(model, tmp_path / 'nb201.onnx', input_size=(3, 32, 32), simplify=False, optimize=False)
    assert report.max_abs_diff <= 1e-4
