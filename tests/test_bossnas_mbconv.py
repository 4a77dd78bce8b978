"""BossNAS's MBConv space: the ``mbconv`` spec field ``shortcut``, the space's sizes, and paths == zoo models."""

from __future__ import annotations

import copy
import json

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models._efficientnet_blocks import InvertedResidual

import zoo
from backbones import mbconv
from backbones._flops import count_macs, count_params
from backbones._spec import SpecError
from search import bossnas_data
from search.spaces import get_space
from search.spaces.mbconv import MBConvSupernet, arch_from_op_string, choice_cost, fixed_cost

torch.set_num_threads(1)

TINY_SPEC = {
    'family': 'mbconv',
    'version': 1,
    'stem_size': 8,
    'num_features': 32,
    'stages': [
        ['ds_r1_k3_s1_c8_se0.25'],
        ['ir_r1_k3_s2_e3_c16_se0.25', 'ir_r1_k5_s1_e6_c16_se0.25'],  # pool + conv, then identity
        ['ir_r1_k3_s2_e3_c16_se0.25'],  # stride 2 at the same width: the pool alone
        ['ir_r1_k3_s1_e6_c24'],  # a width change at stride 1: the conv alone
    ],
    'shortcut': 'avg_down',
}


def _randomise_bn(net: nn.Module) -> nn.Module:
    """Non-trivial BN statistics and affine weights, so that equality is not an accident of fresh buffers."""
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    return net.eval()


def test_existing_specs_are_unchanged() -> None:
    net = timm.create_model('dna_c')
    assert count_params(net) == 5_273_896 and 'shortcut' not in mbconv.validate_spec(mbconv.SPECS['dna_c'])
    assert not any('shortcut' in k for k in net.state_dict())
    assert not any(isinstance(m, mbconv.AvgDownInvertedResidual) for m in net.modules())
    explicit = dict(mbconv.SPECS['dna_c'], shortcut='identity')
    assert net.state_dict().keys() == timm.create_model('mbconv', spec=explicit).state_dict().keys()


def test_avg_down_makes_every_ir_layer_residual() -> None:
    spec = dict(copy.deepcopy(mbconv.SPECS['dna_c']), shortcut='avg_down')
    net = zoo.create_model(spec)
    assert zoo.spec_of(net)['shortcut'] == 'avg_down'
    converted = [n for n, m in net.named_modules() if isinstance(m, mbconv.AvgDownInvertedResidual)]
    assert converted == [f'blocks.{i}.0' for i in range(1, 7)]  # the first layer of every stage after the DS layer
    # 1x1 convs + BN of 16->24, 24->40, 40->80, 80->112, 112->192, 192->320
    widths = [(16, 24), (24, 40), (40, 80), (80, 112), (112, 192), (192, 320)]
    assert count_params(net) - 5_273_896 == sum(a * b + 2 * b for a, b in widths)
    keys = net.state_dict().keys()
    assert 'blocks.1.0.shortcut.1.weight' in keys and 'blocks.1.0.shortcut.2.running_var' in keys


@torch.no_grad()
def test_shortcut_is_the_official_downsample() -> None:
    """Each layer == timm's layer without skip + AvgPool2d(2, ceil, no pad count) / 1x1 conv + BN of its input."""
    torch.manual_seed(0)
    net = _randomise_bn(timm.create_model('mbconv', spec=TINY_SPEC, num_classes=3))
    x = torch.randn(2, 8, 9, 9)  # odd size: ceil_mode and count_include_pad matter
    for name, width_in in (('blocks.1.0', 8), ('blocks.2.0', 16), ('blocks.3.0', 16)):
        layer = net.get_submodule(name)
        x = torch.randn(2, width_in, 9, 9)
        body = InvertedResidual.forward(layer, x)  # timm's forward: no skip at a stride/width change
        ref = x
        if layer.conv_dw.stride[0] == 2:
            ref = F.avg_pool2d(ref, 2, 2, ceil_mode=True, count_include_pad=False)
        convs = [m for m in layer.shortcut.modules() if isinstance(m, nn.Conv2d)]
        bns = [m for m in layer.shortcut.modules() if isinstance(m, nn.BatchNorm2d)]
        if width_in != layer.conv_pwl.out_channels:
            ref = F.batch_norm(F.conv2d(ref, convs[0].weight), bns[0].running_mean, bns[0].running_var,
                               bns[0].weight, bns[0].bias, eps=1e-5)  # fmt: skip
        else:
            assert not convs and not bns
        torch.testing.assert_close(layer(x), body + ref)
        assert not torch.allclose(layer(x), body)
    assert not isinstance(net.get_submodule('blocks.1.1'), mbconv.AvgDownInvertedResidual)  # identity skip kept


@pytest.mark.parametrize(
    ('value', 'message'),
    [
        ('avgpool', r"'shortcut': 'avgpool' is not one of the allowed values \('identity', 'avg_down'\)"),
        (None, "'shortcut'"),
        (1, "'shortcut'"),
    ],
)
def test_bad_shortcut_is_named(value: object, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        mbconv.validate_spec(dict(TINY_SPEC, shortcut=value))


@pytest.mark.filterwarnings('ignore:.*torch.jit.script.*:FutureWarning')
def test_avg_down_scripts_and_traces() -> None:
    torch.manual_seed(0)
    net = _randomise_bn(timm.create_model('mbconv', spec=TINY_SPEC, num_classes=3))
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.script(net)(x), net(x))
    fx = timm.create_model('mbconv', spec=TINY_SPEC, features_only=True, out_indices=(0, 1, 2), feature_cls='fx')
    assert sum('shortcut' in k for k in fx.state_dict()) == 12  # two conv shortcuts (conv + 5 BN entries)


def test_features_only_has_the_shortcuts() -> None:
    feats = timm.create_model('mbconv', spec=TINY_SPEC, features_only=True, out_indices=(0, 1, 2))
    assert sum(isinstance(m, mbconv.AvgDownInvertedResidual) for m in feats.modules()) == 3
    assert [tuple(f.shape[1:]) for f in feats(torch.randn(1, 3, 32, 32))] == [(8, 16, 16), (16, 8, 8), (24, 4, 4)]


def test_space_sizes() -> None:
    space = get_space('bossnas_mbconv')
    assert space.size == 4**18 and space.shortcut == 'avg_down'
    assert [space.num_candidates(k) for k in range(6)] == [16, 256, 256, 256, 256, 1]  # last layer fixed
    assert [b.cells[0].width for b in space.blocks] == [24, 40, 80, 112, 192, 320]
    assert [b.stride for b in space.blocks] == [2, 2, 2, 1, 2, 1]
    assert space.blocks[0].ops == ('k3e6', 'k5e6', 'k3e3', 'k5e3')  # official PRIMITIVES order
    assert get_space('bossnas_mbconv_tiny').size == 4**5


@pytest.fixture(scope='module')
def tiny_supernet() -> MBConvSupernet:
    torch.manual_seed(0)
    return _randomise_bn(MBConvSupernet('bossnas_mbconv_tiny'))


@torch.no_grad()
def test_chosen_path_is_the_network_of_its_spec(tiny_supernet: MBConvSupernet) -> None:
    space = tiny_supernet.space
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    for _ in range(5):
        arch = space.sample(g)
        spec = space.to_spec(arch)
        assert spec['shortcut'] == 'avg_down' and space.from_spec(spec) == arch
        net = zoo.create_model(spec, num_classes=5).eval()
        missing, unexpected = net.load_state_dict(tiny_supernet.path_state_dict(arch), strict=False)
        assert not unexpected and {m.split('.')[0] for m in missing} == {'conv_head', 'bn2', 'classifier'}
        expected = net.forward_intermediates(x, intermediates_only=True)[-1]
        assert torch.equal(tiny_supernet.forward_path(x, arch), expected)
        # deliberately wrong: the same weights in a network without the shortcuts differ
        plain = zoo.create_model({k: v for k, v in spec.items() if k != 'shortcut'}, num_classes=5).eval()
        state = {k: v for k, v in tiny_supernet.path_state_dict(arch).items() if '.shortcut.' not in k}
        plain.load_state_dict(state, strict=False)
        assert not torch.allclose(plain.forward_intermediates(x, intermediates_only=True)[-1], expected)


def test_ops_of_a_layer_share_one_shortcut(tiny_supernet: MBConvSupernet) -> None:
    layer = tiny_supernet.blocks[0][0].layers[0]
    shortcuts = {id(op.shortcut) for op in layer.ops.values()}
    assert len(shortcuts) == 1  # as the official MixOps
    assert not hasattr(tiny_supernet.blocks[0][0].layers[1].ops['16_k3e6'], 'shortcut')  # identity skip


def test_costs_include_the_shortcuts() -> None:
    space = get_space('bossnas_mbconv_tiny')
    g = torch.Generator().manual_seed(3)
    for _ in range(3):
        arch = space.sample(g)
        macs, params = fixed_cost(space)
        width = space.ds_width
        for k, choice in enumerate(space.decode(arch)):
            m, p = choice_cost(space, k, width, choice)
            macs, params, width = macs + m, params + p, space.widths(arch)[k]
        net = timm.create_model('mbconv', spec=space.to_spec(arch))
        assert (macs, params) == (count_macs(net, (3, 32, 32)), count_params(net))


def test_specs_of_other_spaces_are_refused() -> None:
    dna_small, boss = get_space('dna_small'), get_space('bossnas_mbconv')
    arch = dna_small.sample(torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="shortcut 'identity' is not the space 'bossnas_mbconv' value 'avg_down'"):
        boss.from_spec(dna_small.to_spec(arch))
    assert boss.from_spec(boss.to_spec(arch)) == arch  # same layout, same encoding
    with pytest.raises(ValueError, match="shortcut 'skip' is not one of"):
        type(boss)('bad', boss.blocks, shortcut='skip')


def test_best_dna_encoding_builds_a_zoo_model() -> None:
    """The greedy best of BossNAS's shipped MBConv rating (benchmarks/bossnas, op-index string) is a zoo model."""
    space = get_space('bossnas_mbconv')
    arch = arch_from_op_string(space, '11 0110 0111 1100 0110')
    spec = space.to_spec(arch)
    assert spec['stages'][1] == ['ir_r1_k5_s2_e6_c24_se0.25', 'ir_r1_k5_s1_e6_c24_se0.25']
    assert spec['stages'][6] == ['ir_r1_k3_s1_e6_c320_se0.25']
    with torch.device('meta'):
        net = zoo.create_model(spec)
    assert count_params(net) == space.cost(arch, 'params') == 5_730_632
    with pytest.raises(ValueError, match=r"6 groups, space 'bossnas_mbconv' searches 5"):
        arch_from_op_string(space, '11 0110 0111 1100 0110 0')
    with pytest.raises(ValueError, match='indexes past'):
        arch_from_op_string(space, '14 0110 0111 1100 0110')


def test_the_23_rated_dna_architectures_are_paths() -> None:
    space = get_space('bossnas_mbconv')
    doc = json.loads((bossnas_data.DATA_DIR / bossnas_data.FILES['mbconv']).read_text())
    specs = [space.to_spec(arch_from_op_string(space, a['path'])) for a in doc['dna_archs']]
    assert len(specs) == 23 and len({json.dumps(s) for s in specs}) == 23
    archs = [arch_from_op_string(space, a['path']) for a in doc['dna_archs']]
    assert [space.from_spec(s) for s in specs] == archs


def test_full_supernet_builds_on_meta() -> None:
    with torch.device('meta'):
        net = MBConvSupernet('bossnas_mbconv')
    assert count_params(net) == 10_437_336  # trunk, shared shortcuts counted once (docs/search.md)
    first = net.blocks[0][0].layers[0]
    assert sorted(first.ops) == ['16_k3e3', '16_k3e6', '16_k5e3', '16_k5e6']
    assert first.ops['16_k3e6'].shortcut is first.ops['16_k5e3'].shortcut


def test_full_size_bossnas_config_on_its_mbconv_space_builds_on_meta() -> None:
    """configs/search/bossnas_mbconv.yaml: the official values (4 fair paths, 4 view pairs, 6 epochs a block, LARS
    4.8 at 4096, heads 2048 -> 4096 -> 256) on the 4^18 space; the siamese model builds on the meta device."""
    from pathlib import Path

    from search.config import load_config
    from search.methods.bossnas import BossNASConfig, BossRunner
    from search.methods.bossnas_blocks import make_adapter

    cfg = load_config(BossNASConfig, Path(__file__).resolve().parents[1] / 'configs/search/bossnas_mbconv.yaml', {})
    assert (cfg.paths, cfg.pairs, cfg.sampling, cfg.epochs, cfg.batch_size) == (4, 4, 'fair', 6, 4096)
    assert (cfg.proj_in, cfg.proj_hidden, cfg.proj_out, cfg.pred_hidden) == (2048, 4096, 256, 4096)
    space = get_space(cfg.space, img_size=cfg.img_size)
    assert space.size == 4**18
    with torch.device('meta'):
        runner = BossRunner(make_adapter(space), space.build_supernet(num_classes=cfg.num_classes), cfg)
    assert len(runner.online.projectors) == make_adapter(space).num_blocks
