"""BossNet-T / HyTra family: exact params, MAdds vs paper Table 1, attention, spec rules, timm contract."""

from __future__ import annotations

import json

import pytest
import timm
import torch
import torch.nn as nn
from timm.layers import DropPath, SEModule

import backbones.hytra as hytra
from backbones._spec import SpecError

MODELS = ('bossnet_t0', 'bossnet_t0_nose', 'bossnet_t1')

# Exact parameter counts of the official module definitions (retraining_hytra/boss_models.py, 1000 classes).
PARAMS = {'bossnet_t0': 38_415_960, 'bossnet_t0_nose': 37_319_080, 'bossnet_t1': 38_415_960}

# (model, input size, paper Table 1 MAdds, output of the official boss_madds.py for that row).
# The script charges an SE to every ResAtt layer as well (BossNet has none there): 1 layer at 1024 channels and 8 at
# 2048 channels, 2 * C^2 / 16 each = 4,325,376 MAdds for the SE variants, which paper_madds leaves out.
MADDS = [
    ('bossnet_t0', 224, 3.4e9, 3_447_303_680),
    ('bossnet_t0', 288, 5.7e9, 5_736_197_632),
    ('bossnet_t0_nose', 224, 3.4e9, 3_441_888_768),
    ('bossnet_t1', 224, 7.9e9, 7_948_768_256),
    ('bossnet_t1', 256, 10.5e9, 10_513_473_536),
]
PHANTOM_SE = 2 * 1024**2 // 16 + 8 * 2 * 2048**2 // 16


def _meta_model(name: str, **kwargs) -> nn.Module:
    with torch.device('meta'):
        return timm.create_model(name, **kwargs)


def _spec(**overrides) -> dict:
    spec = json.loads(json.dumps(hytra.SPECS['bossnet_t0']))
    spec.update(overrides)
    return spec


@pytest.mark.parametrize('name', MODELS)
def test_param_count_exact(name):
    model = _meta_model(name)
    assert sum(p.numel() for p in model.parameters()) == PARAMS[name]


@pytest.mark.parametrize(('name', 'size', 'paper', 'official'), MADDS)
def test_madds_match_table1_and_official_rule(name, size, paper, official):
    madds = hytra.paper_madds(_meta_model(name), (3, size, size))
    assert abs(madds - paper) / paper < 0.02
    phantom = PHANTOM_SE if hytra.SPECS[name]['se'] else 0
    assert madds == official - phantom


@pytest.mark.parametrize(
    ('stages', 'params', 'paper'),
    [
        ([['conv'] * 3, ['conv'] * 4, ['conv'] * 6, ['conv'] * 3], 25_594_792, 4.1e9),  # R50-T (Conv-only)
        ([['conv'] * 3, ['conv'] * 4, ['conv'] * 6, ['att'] * 3], 20_876_200, 3.9e9),  # BoT50-T (Hybrid)
    ],
)
def test_manual_table1_rows_from_the_space(stages, params, paper):
    # cross-check of the generic family: analytic counts of the official retraining_hytra/boss_models.py (no SE, ReLU)
    model = _meta_model('hytra', spec=_spec(stages=stages, act='relu', se=False))
    assert sum(p.numel() for p in model.parameters()) == params
    assert abs(hytra.paper_madds(model) - paper) / paper < 0.02


def test_madds_on_cpu_counts_sdpa():
    # FlopCounterMode has no formula for the CPU SDPA kernel; paper_madds must add it (logits + attn x v).
    model = timm.create_model('bossnet_t0_nose')
    assert hytra.paper_madds(model, (3, 224, 224)) == 3_441_888_768
    assert model.training  # mode restored


def test_sdpa_equals_explicit_attention():
    torch.manual_seed(0)
    attn = hytra.Attention(dim=96, heads=2, dim_head=64).eval()
    x = torch.randn(2, 96, 5, 7)
    b, _, h, w = x.shape
    # explicit form of the official retraining code: q, k, v = [q | k | v] channel chunks, heads x 64 each
    q, k, v = attn.qkv(x).view(b, 3 * 2, 64, h * w).chunk(3, dim=1)
    weights = (q.transpose(-2, -1) @ k * 64**-0.5).softmax(dim=-1)  # (b, heads, query, key)
    ref = (v @ weights.transpose(-2, -1)).reshape(b, -1, h, w)
    out = attn(x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    wrong = (v @ weights).reshape(b, -1, h, w)  # the supernet's non-standard orientation
    assert not torch.allclose(out, wrong, atol=1e-3)


def test_structure_of_t0():
    model = _meta_model('bossnet_t0')
    kinds = [type(b).__name__ for s in model.stages for b in s]
    assert kinds == ['ResConv'] * 5 + ['ResAtt', 'ResConv'] + ['ResAtt'] * 3 + ['ResConv'] + ['ResAtt'] * 5
    heads = {b.attn.heads for s in model.stages for b in s if isinstance(b, hytra.ResAtt)}
    assert heads == {4, 8}
    assert model.layer3[3].attn.heads == 4 and model.layer4[0].attn.heads == 8
    assert model.layer2[0].peg.conv.stride == (2, 2) and model.layer2[0].conv2.stride == (1, 1)
    assert model.layer4[0].peg.conv.stride == (2, 2)
    assert isinstance(model.layer2[0].downsample[0], nn.AvgPool2d)
    assert len(model.layer4[0].downsample) == 3  # pool, conv, bn: no activation
    assert not any(
        isinstance(m, SEModule) for s in model.stages for b in s if isinstance(b, hytra.ResAtt) for m in b.modules()
    )
    assert isinstance(model.layer1[0].se, SEModule) and isinstance(model.act1, nn.SiLU)
    nose = _meta_model('bossnet_t0_nose')
    assert isinstance(nose.act1, nn.ReLU) and not any(isinstance(m, SEModule) for m in nose.modules())


def test_zero_init_last_bn_and_drop_path_on_resconv_only():
    model = timm.create_model('bossnet_t0', drop_path_rate=0.1)
    blocks = [b for s in model.stages for b in s]
    assert all(torch.count_nonzero(b.bn3.weight) == 0 for b in blocks)
    for i, block in enumerate(blocks):
        if isinstance(block, hytra.ResAtt) or i == 0:
            assert not any(isinstance(m, DropPath) for m in block.modules())
        else:
            assert isinstance(block.drop_path, DropPath)
            assert block.drop_path.drop_prob == pytest.approx(0.1 * i / 15)


@pytest.mark.parametrize(
    ('field', 'value', 'named'),
    [
        ('stages', [['att'], ['conv'], ['conv'] * 5, ['att'] * 9], 'stages[0][0]'),
        ('stages', [['conv'], ['conv', 'att'], ['conv'] * 5, ['att'] * 9], 'stages[1][1]'),
        ('stages', [['conv'], [], ['conv'] * 6, ['att'] * 9], 'stages[1]'),
        ('stages', [['conv'], ['conv'], ['conv'] * 5, ['att'] * 8], "'stages'"),
        ('stages', [['conv'], ['conv'], ['conv'] * 5], "'stages'"),
        ('stages', [['conv'], ['conv'], ['mlp'] + ['conv'] * 4, ['att'] * 9], 'stages[2][0]'),
        ('act', 'gelu', "'act'"),
        ('se', 1, "'se'"),
        ('last_stride', 4, "'last_stride'"),
    ],
)
def test_invalid_specs_raise(field, value, named):
    with pytest.raises(SpecError, match=named.replace('[', r'\[').replace(']', r'\]')):
        hytra.validate_spec(_spec(**{field: value}))
    with pytest.raises(SpecError):
        timm.create_model('hytra', spec=_spec(**{field: value}))


def test_invalid_header_raises():
    with pytest.raises(SpecError, match='family'):
        hytra.validate_spec(_spec(family='resnest'))
    spec = _spec()
    del spec['act']
    with pytest.raises(SpecError, match='act'):
        hytra.validate_spec(spec)


def test_resolution_jump_message_names_rule():
    with pytest.raises(SpecError, match='halves the resolution'):
        hytra.validate_spec(_spec(stages=[['conv'] * 4, [], ['conv'] * 3, ['att'] * 9]))


@pytest.mark.parametrize('name', [*MODELS, 'hytra'])
def test_spec_round_trip(name):
    spec = json.loads(json.dumps(hytra.SPECS[name]))
    assert hytra.validate_spec(spec) == spec
    with torch.device('meta'):
        model = hytra.build(spec)
        again = hytra.build(json.loads(json.dumps(model.spec)))
    assert model.spec == spec == again.spec
    ref = _meta_model(name)
    assert [(k, v.shape) for k, v in model.state_dict().items()] == [(k, v.shape) for k, v in ref.state_dict().items()]
    assert model.feature_info == ref.feature_info


def test_generic_spec_with_leading_and_trailing_empty_stages():
    vit16 = _spec(stages=[[], [], ['att'] * 16, []], act='relu', se=False)  # ViT-T/16 of the paper (Fig. 10b)
    model = hytra.build(vit16).eval()
    assert [f['reduction'] for f in model.feature_info] == [4, 8, 16, 32]
    assert [f['num_chs'] for f in model.feature_info] == [64, 512, 1024, 2048]
    assert len(model.layer1) == 0  # identity: the stem output is the 1/4 level
    assert model.layer2[0][0].stride == (2, 2) and model.layer4[0][0].stride == (2, 2)  # 3x3/2 conv + BN + act
    assert model.layer3[0].peg.conv.stride == (2, 2)  # the first choice layer halves 1/8 -> 1/16
    feats = model.forward_intermediates(torch.randn(1, 3, 64, 64), intermediates_only=True)
    assert [tuple(f.shape[1:]) for f in feats] == [(64, 16, 16), (512, 8, 8), (1024, 4, 4), (2048, 2, 2)]
    jump_at_start = _spec(stages=[[], ['conv'] * 4, ['conv'] * 6, ['att'] * 6], se=False)
    assert [f['reduction'] for f in hytra.build(jump_at_start).feature_info] == [4, 8, 16, 32]


@pytest.mark.parametrize(('name', 'reductions'), [('bossnet_t0', [4, 8, 16, 32]), ('bossnet_t1', [4, 8, 16, 16])])
def test_features_only(name, reductions):
    model = timm.create_model(name, features_only=True).eval()
    assert model.feature_info.reduction() == reductions
    assert model.feature_info.channels() == [256, 512, 1024, 2048]
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        feats = model(x)
    assert [f.shape[1] for f in feats] == [256, 512, 1024, 2048]
    assert [(64 // f.shape[2], 96 // f.shape[3]) for f in feats] == [(r, r) for r in reductions]
    part = timm.create_model(name, features_only=True, out_indices=(1, -1))
    assert part.feature_info.reduction() == [reductions[1], reductions[3]]


def test_forward_intermediates_agree_with_features_only():
    torch.manual_seed(0)
    model = timm.create_model('bossnet_t1').eval()
    feats = timm.create_model('bossnet_t1', features_only=True, out_indices=(0, 2)).eval()
    assert set(feats.state_dict()) <= set(model.state_dict())  # same parameter names as the full model
    feats.load_state_dict({k: v for k, v in model.state_dict().items() if k in feats.state_dict()})
    assert feats.spec == model.spec
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x, indices=[0, 2])
        torch.testing.assert_close(final, model.forward_features(x))
        for a, b in zip(inter, feats(x), strict=True):
            torch.testing.assert_close(a, b)
        early = model.forward_intermediates(x, indices=[1], stop_early=True, intermediates_only=True)
    assert len(early) == 1 and early[0].shape[1] == 512


@pytest.mark.parametrize('out_indices', [(0, 4), (-5,), (1, 1), 5, 0, ()])
def test_invalid_out_indices_raise(out_indices):
    with pytest.raises(ValueError, match='out_indices'):
        timm.create_model('bossnet_t0', features_only=True, out_indices=out_indices)


def test_any_input_size_divisible_by_32_and_timm_head_contract():
    model = timm.create_model('bossnet_t0', num_classes=10).eval()
    assert model.num_features == model.head_hidden_size == 2048
    with torch.no_grad():
        for size in ((64, 64), (96, 160)):
            assert model(torch.randn(2, 3, *size)).shape == (2, 10)
        x = model.forward_features(torch.randn(1, 3, 64, 64))
        assert model.forward_head(x, pre_logits=True).shape == (1, 2048)
    model.reset_classifier(5)
    assert model.get_classifier().out_features == 5 and model.num_classes == 5
    model.reset_classifier(0, '')
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 2048, 2, 2)
    matcher = model.group_matcher()
    assert set(matcher) == {'stem', 'blocks'}


def test_grad_checkpointing_and_backward_reach_every_parameter():
    torch.manual_seed(0)
    model = timm.create_model('bossnet_t0', num_classes=4, drop_path_rate=0.1)
    model.eval()  # determinism for the comparison (no drop path)
    x = torch.randn(2, 3, 64, 64)
    ref = model(x)
    model.set_grad_checkpointing(True)
    out = model(x)
    torch.testing.assert_close(out, ref)
    model.train()
    model(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_prune_intermediate_layers():
    model = timm.create_model('bossnet_t0').eval()
    kept = model.prune_intermediate_layers(indices=[1])
    assert kept == [1] and len(model.layer3) == 0 and len(model.layer4) == 0
    assert model.num_features == 512
    with torch.no_grad():
        assert (
            model.forward_intermediates(torch.randn(1, 3, 64, 64), indices=[1], intermediates_only=True)[0].shape[1]
            == 512
        )


def test_jit_trace_matches_eager():
    model = timm.create_model('bossnet_t0_nose', num_classes=3).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        traced = torch.jit.trace(model, x, check_trace=False)
        torch.testing.assert_close(traced(x), model(x))


def test_pretrained_cfgs():
    for name in MODELS:
        cfg = _meta_model(name).pretrained_cfg
        assert cfg['hf_hub_id'] == f'supernet-zoo/{name}.official_in1k'
        assert cfg['paper_ids'] == 'arXiv:2103.12424' and cfg['first_conv'] == 'conv1' and cfg['classifier'] == 'fc'
    assert _meta_model('bossnet_t1').pretrained_cfg['pool_size'] == (14, 14)
    assert _meta_model('bossnet_t0').pretrained_cfg['test_input_size'] == (3, 288, 288)


@pytest.mark.parametrize(
    ('field', 'value', 'named'),
    [
        ('stem_down', 'conv3x3', "'stem_down'"),
        ('empty_tail', 'none', "'empty_tail'"),
        ('stem_width', 0, "'stem_width'"),
        ('stem_width', 10**6, "'stem_width'"),
        ('widths', [64, 128, 256], "'widths'"),
        ('widths', [64, 'x', 256, 512], "'widths[1]'"),
        ('widths', [64, 128, 256, 4096], "'widths[3]'"),
        ('dim_head', 48, "'dim_head'"),
        ('dim_head', True, "'dim_head'"),
    ],
)
def test_invalid_optional_fields_raise(field, value, named):
    with pytest.raises(SpecError, match=named.replace('[', r'\[').replace(']', r'\]')):
        hytra.validate_spec(_spec(**{field: value}))


def test_optional_fields_at_their_defaults_build_bossnet_t0():
    explicit = _spec(stem_down='conv', empty_tail='conv', stem_width=64, widths=[64, 128, 256, 512], dim_head=64)
    assert hytra.validate_spec(explicit) == explicit  # kept as given, not stripped
    with torch.device('meta'):
        model, ref = hytra.build(explicit), _meta_model('bossnet_t0')
    assert [(k, v.shape) for k, v in model.state_dict().items()] == [(k, v.shape) for k, v in ref.state_dict().items()]


def test_supernet_layout_dw_downsampler_and_identity_tail():
    """``stem_down: dw`` (the supernet's per-scale downsampler) and ``empty_tail: identity`` (a path ends where it
    ends), here at reduced widths: first layer at 1/8, last at 1/16."""
    spec = _spec(
        stages=[[], ['conv'] * 4, ['conv'] * 3 + ['att'] * 9, []],
        act='relu',
        se=False,
        stem_down='dw',
        empty_tail='identity',
        stem_width=8,
        widths=[8, 16, 32, 64],
        dim_head=16,
    )
    model = hytra.build(spec).eval()
    down = model.stem_down
    assert (down[0].kernel_size, down[0].stride, down[0].groups) == ((2, 2), (2, 2), 8)
    assert (down[1].in_channels, down[1].out_channels) == (8, 16) and len(model.layer1) == len(model.layer4) == 0
    assert model.layer2[0].conv1.in_channels == 16 and model.layer2[0].peg.conv.stride == (1, 1)
    assert model.layer3[0].peg.conv.stride == (2, 2) and model.layer3[3].attn.heads == 2
    assert [f['reduction'] for f in model.feature_info] == [8, 8, 16, 16]
    assert [f['num_chs'] for f in model.feature_info] == [16, 64, 128, 128]
    feats = model.forward_intermediates(torch.randn(1, 3, 64, 64), intermediates_only=True)
    assert [tuple(f.shape[1:]) for f in feats] == [(16, 8, 8), (64, 8, 8), (128, 4, 4), (128, 4, 4)]
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1000) and model.num_features == 128
    assert 'stem_down.1.weight' in model.state_dict()
