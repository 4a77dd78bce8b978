"""DNA-a..d against the official definitions (github.com/changlin31/DNA retraining/model.py) and the paper's Table 2."""

from __future__ import annotations

import pytest
import timm
import torch

import zoo
from backbones.mbconv import MBConvNet

# Parameter counts of the official retraining/model.py definitions (github.com/changlin31/DNA).
OFFICIAL_PARAMS_M = {'dna_a': 4.243, 'dna_b': 4.918, 'dna_c': 5.274, 'dna_d': 6.409}
# DNA Table 2 FLOPs (M); the paper's counter adds ~3.4% BN/activation cost to conv+FC MACs.
TABLE2_FLOPS_M = {'dna_a': 348, 'dna_b': 406, 'dna_c': 466, 'dna_d': 611}


@pytest.mark.parametrize('name', sorted(OFFICIAL_PARAMS_M))
def test_params_match_official_definitions(name):
    params = zoo.count_params(timm.create_model(name)) / 1e6
    assert params == pytest.approx(OFFICIAL_PARAMS_M[name], rel=1e-3)


@pytest.mark.parametrize('name', sorted(TABLE2_FLOPS_M))
def test_flops_match_table2_under_the_rule(name):
    model = timm.create_model(name)
    macs = zoo.count_macs(model, (3, 224, 224))
    rule = zoo.CATALOG[name].flops_rule.factor
    assert rule == pytest.approx(1.034)
    assert macs * rule / 1e6 == pytest.approx(TABLE2_FLOPS_M[name], rel=0.02)


def test_efficientnet_b0_layout_is_timms():
    """The generic entry point's default is EfficientNet-B0: same parameters and FLOPs as timm's."""
    ours, ref = timm.create_model('mbconv'), timm.create_model('efficientnet_b0')
    assert zoo.count_params(ours) == zoo.count_params(ref) == 5_288_548
    assert [v.shape for v in ours.state_dict().values()] == [v.shape for v in ref.state_dict().values()]
    assert zoo.count_macs(ours) == zoo.count_macs(ref)


def test_se_width_follows_block_input_channels():
    """SE reduce width is int(in_chs * 0.25) of the block input (official se_reduce_mid=False)."""
    model = timm.create_model('dna_a')
    block = model.blocks[1][0]  # ir k5 e3 from 16 input channels to 24
    assert block.conv_pw.out_channels == 48
    assert block.se.conv_reduce.out_channels == 4


def test_defaults_follow_official_code():
    model = timm.create_model('dna_c')
    assert isinstance(model, MBConvNet)
    assert model.drop_rate == 0.2
    last = model.blocks[-1][-1].drop_path
    assert last.drop_prob == pytest.approx(0.2 * 19 / 20)
    assert isinstance(model.bn1.act, torch.nn.SiLU)
    bn = model.bn1
    assert (bn.momentum, bn.eps) == (0.1, 1e-5)
    cfg = model.pretrained_cfg
    assert cfg['input_size'] == (3, 224, 224) and cfg['crop_pct'] == 0.875 and cfg['interpolation'] == 'bicubic'
    assert cfg['origin_url'] == 'https://github.com/changlin31/DNA'


def test_layer_table_of_dna_c():
    """DNA-c's searched stages as in the current official definition (github.com/changlin31/DNA, issue #4)."""
    stages = zoo.get_spec('dna_c')['stages']
    assert [len(s) for s in stages] == [1, 2, 4, 4, 4, 4, 1]
    assert stages[4][-1] == 'ir_r1_k5_s1_e3_c112_se0.25'
    assert stages[6] == ['ir_r1_k3_s1_e6_c320_se0.25']
