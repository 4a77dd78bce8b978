"""The ``nats_size`` family: parameter and MAC counts against a closed formula, the cell's wiring, the skip edge,
spec errors and the timm entry point (the registry-wide contract runs in tests/test_contract.py)."""

from __future__ import annotations

import re

import pytest
import timm
import torch
import torch.nn as nn

import zoo
from backbones import SpecError, nats_size, nb201
from backbones._pretrained import PretrainedWeightsError


def _spec(channels: list[int], **extra) -> dict:
    return {'family': 'nats_size', 'version': 1, 'channels': list(channels), **extra}


def _formula(chs: list[int], classes: int = 10, size: int = 32) -> tuple[int, int]:
    """(parameters, MACs) of a 5-layer network by hand: conv weights, affine BN (2 per channel), the linear head.

    Stem 3x3 conv + BN; a cell c_in -> c: 2 3x3 convs from node 0 (c_in -> c), 3 on c (c -> c), a 1x1 projection
    skip + BN only when c_in != c; a reduction: 3x3 s2 (c_in -> c), 3x3 (c -> c), 1x1 shortcut (no BN).
    """
    params = 27 * chs[0] + 2 * chs[0]
    macs = 27 * chs[0] * size**2
    c_in, res = chs[0], size
    for i, c in enumerate(chs):
        if i in (1, 3):  # reduction block, output at half the resolution
            res //= 2
            w = 9 * c_in * c + 9 * c * c + c_in * c
            params += w + 4 * c
        else:  # cell
            w = 2 * 9 * c_in * c + 3 * 9 * c * c + (c_in * c if c_in != c else 0)
            params += w + 5 * 2 * c + (2 * c if c_in != c else 0)
        macs += w * res**2
        c_in = c
    params += 2 * c_in + c_in * classes + classes
    macs += c_in * classes
    return params, macs


@pytest.mark.parametrize('channels', [[64] * 5, [8] * 5, [8, 16, 24, 32, 40], [64, 8, 56, 16, 48], [24, 24, 40, 40, 8]])
def test_parameter_and_mac_counts_follow_the_formula(channels: list[int]) -> None:
    model = zoo.create_model(_spec(channels), num_classes=10)
    params, macs = _formula(channels)
    assert sum(p.numel() for p in model.parameters()) == params
    assert zoo.flops.count_macs(model, (3, 32, 32)) == macs


def test_widest_network_numbers() -> None:
    """The default (NATS-Bench's 64:64:64:64:64) has 713,674 parameters and 274.4M MACs at 32x32, 10 classes."""
    model = zoo.create_model('nats_size')
    assert model.spec == nats_size.SPECS['nats_size'] and model.spec['channels'] == [64] * 5
    assert _formula([64] * 5) == (713_674, 274_399_872)
    assert sum(p.numel() for p in model.parameters()) == 713_674
    assert _formula([64] * 5)[0] != _formula([64, 64, 64, 64, 56])[0]  # the formula sees every width


def test_the_cell_is_the_nats_genotype_on_nb201_modules() -> None:
    assert tuple(nb201.SPECS['nb201']['edges']) == nats_size.CELL_EDGES
    assert nats_size.parse_genotype('|a~0|+|b~0|c~1|+|d~0|e~1|f~2|') == tuple('abcdef')
    with pytest.raises(ValueError, match='does not name the edges'):
        nats_size.parse_genotype('|a~0|+|b~0|c~1|')
    model = zoo.create_model(_spec([8, 16, 24, 32, 40]))
    layers = [model.get_submodule(n) for n in nats_size.layer_names(5)]
    assert [type(m) for m in layers] == [nb201.NB201Cell, nb201.ResNetReduction] * 2 + [nb201.NB201Cell]
    cell = layers[2]  # 16 -> 24: edges from node 0 read 16 channels, the others 24
    in_chs = [e[1].in_channels for e in cell.edges]
    assert in_chs == [16, 16, 24, 16, 24, 24]
    assert all(e[2].affine for e in cell.edges)  # affine BN, as NATS-Bench's InferCell (not the nb201 search cell)
    assert isinstance(layers[0].edges[3], nn.Identity)  # the stem has the first layer's width
    assert nats_size.layer_names(8) == [
        'stages.0.0',
        'stages.0.1',
        'stages.1.0',
        'stages.1.1',
        'stages.1.2',
        'stages.2.0',
        'stages.2.1',
        'stages.2.2',
    ]


def test_skip_projection_readings() -> None:
    """Default: NATS-Bench's stride-1 FactorizedReduce (Conv1x1 + BN); relu_conv_bn: the BossNAS supernet's."""
    x = -torch.rand(1, 8, 4, 4)  # all negative: a ReLU first zeroes the projection's input
    plain = nats_size.SkipProjection(8, 16).eval()
    relu = nats_size.SkipProjection(8, 16, relu=True).eval()
    relu.load_state_dict(plain.state_dict())
    assert not torch.allclose(plain(x), relu(x))
    torch.testing.assert_close(relu(x), relu[2](torch.zeros(1, 16, 4, 4)))
    a = zoo.create_model(_spec([8, 8, 16, 16, 8], skip_proj='relu_conv_bn'))
    b = zoo.create_model(_spec([8, 8, 16, 16, 8]))
    assert isinstance(a.stages[1][1].edges[3][0], nn.ReLU) and isinstance(b.stages[1][1].edges[3][0], nn.Identity)
    assert a.state_dict().keys() == b.state_dict().keys()
    assert 'skip_proj' not in nats_size.validate_spec(_spec([8] * 5))


def test_cell_counts_per_stage_and_features() -> None:
    model = zoo.create_model(_spec([4, 6, 8, 10, 12, 14, 16, 18]), features_only=True)  # N = 2
    assert model.feature_info.channels() == [6, 12, 18] and model.feature_info.reduction() == [1, 2, 4]
    outs = model(torch.randn(1, 3, 16, 16))
    assert [tuple(o.shape) for o in outs] == [(1, 6, 16, 16), (1, 12, 8, 8), (1, 18, 4, 4)]


@pytest.mark.parametrize(
    ('changes', 'message'),
    [
        ({'channels': [8] * 4}, "'channels': expected 3N+2 widths (N >= 1 cells a stage: 5, 8, 11, ...), got 4"),
        ({'channels': [8] * 6}, "'channels': expected 3N+2 widths"),
        ({'channels': [8] * 51}, "'channels': at most 50 entries, got 51"),
        ({'channels': 64}, "'channels': expected a list"),
        ({'channels': [8, 16, 0, 8, 8]}, "'channels[2]': must be >= 1, got 0"),
        ({'channels': [8, 16, 8, 8, 129]}, "'channels[4]': must be <= 128, got 129"),
        ({'channels': [8, 16.0, 8, 8, 8]}, "'channels[1]': expected an integer"),
        ({'skip_proj': 'relu'}, "'skip_proj': 'relu' is not one of the allowed values ('conv_bn', 'relu_conv_bn')"),
        ({'genotype': 'x'}, "unknown field(s) ['genotype']"),
        ({'version': 2}, "'version': nats_size specs are version 1"),
    ],
)
def test_bad_specs_name_the_field(changes: dict, message: str) -> None:
    spec = {**_spec([8] * 5), **changes}
    with pytest.raises(SpecError, match=re.escape(message)):
        zoo.create_model(spec)


def test_good_spec_passes_and_round_trips_through_json() -> None:
    import json

    spec = _spec([8, 16, 24, 32, 40], skip_proj='relu_conv_bn')
    assert nats_size.validate_spec(json.loads(json.dumps(spec))) == spec


def test_timm_entry_point_cfg_and_pretrained() -> None:
    model = timm.create_model('nats_size', spec=_spec([8] * 5))
    cfg = model.pretrained_cfg
    assert cfg['input_size'] == (3, 32, 32) and cfg.get('hf_hub_id') is None and cfg['first_conv'] == 'stem.0'
    assert model.num_classes == 10 and 'nats_size' in zoo.list_models(include_families=True)
    with pytest.raises(PretrainedWeightsError, match='no pretrained weights are published'):
        zoo.create_model('nats_size', pretrained=True)
    for bad in (0, 4, (3,), (0, 0)):
        with pytest.raises(ValueError, match='out_indices'):
            zoo.create_model('nats_size', features_only=True, out_indices=bad)


@pytest.mark.filterwarnings('ignore:.*torch.jit.script.*:FutureWarning')
@pytest.mark.parametrize('skip_proj', ['conv_bn', 'relu_conv_bn'])
def test_projection_skips_script_trace_and_export_to_onnx(skip_proj: str, tmp_path) -> None:
    """The contract tests build the default (equal widths: identity skips); here every skip edge projects."""
    from zoo.onnx import export_onnx

    spec = _spec([4, 8, 6, 8, 4], skip_proj=skip_proj)
    model = zoo.create_model(spec).eval()
    assert all(
        isinstance(model.get_submodule(f'{n}.edges.3'), nats_size.SkipProjection) for n in ('stages.1.1', 'stages.2.1')
    )
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.script(model)(x), model(x))
    fx = timm.create_model('nats_size', spec=spec, features_only=True, feature_cls='fx').eval()
    fx.load_state_dict({k: model.state_dict()[k.removeprefix('graph_module.')] for k in fx.state_dict()})
    with torch.no_grad():
        for a, b in zip(fx(x), model.forward_intermediates(x, intermediates_only=True), strict=True):
            torch.testing.assert_close(a, b)
    report = export_onnx(model, tmp_path / 'nats.onnx', input_size=(3, 32, 32), simplify=False, optimize=False)
    assert report.max_abs_diff <= 1e-4
