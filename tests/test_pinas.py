"""Pi-NAS-cls / Pi-NAS-trans against the official choice vectors (github.com/Ernie1/Pi-NAS) and the paper's tables."""

from __future__ import annotations

import pytest
import timm
from timm.layers import SplitAttn

import zoo
from backbones.resnest import CANDIDATES

# Derived from the official module definitions (github.com/Ernie1/Pi-NAS).
OFFICIAL_PARAMS_M = {'pinas_cls': 27.05, 'pinas_trans': 27.04}
# Pi-NAS Table 1/2 FLOPs (G); mmcv's counter adds ~0.9% BN/pool/activation cost to conv+FC MACs.
PAPER_FLOPS_G = {'pinas_cls': 5.38, 'pinas_trans': 5.30}


def _blocks(model):
    return [b for stage in (model.layer1, model.layer2, model.layer3, model.layer4) for b in stage]


@pytest.mark.parametrize('name', sorted(OFFICIAL_PARAMS_M))
def test_params_match_official(name):
    assert zoo.count_params(timm.create_model(name)) / 1e6 == pytest.approx(OFFICIAL_PARAMS_M[name], rel=1e-3)


@pytest.mark.parametrize('name', sorted(PAPER_FLOPS_G))
def test_flops_match_paper_under_the_rule(name):
    macs = zoo.count_macs(timm.create_model(name), (3, 224, 224))
    rule = zoo.CATALOG[name].flops_rule.factor
    assert macs * rule / 1e9 == pytest.approx(PAPER_FLOPS_G[name], rel=0.02)


def test_all_block1_is_exactly_timm_resnest50d():
    ours = timm.create_model('resnest_nas')
    ref = timm.create_model('resnest50d')
    assert zoo.count_params(ours) == zoo.count_params(ref) == 27_483_240
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}


@pytest.mark.parametrize('name', ['pinas_cls', 'pinas_trans'])
def test_each_layer_uses_its_candidate(name):
    choices = zoo.get_spec(name)['choices']
    for block, choice in zip(_blocks(timm.create_model(name)), choices, strict=True):
        radix, cardinality, base_width = CANDIDATES[choice]
        split = block.conv2
        assert isinstance(split, SplitAttn)
        assert split.radix == radix
        planes = block.conv3.out_channels // 4
        group_width = int(planes * base_width / 64) * cardinality
        assert block.conv1.out_channels == group_width
        assert split.conv.groups == cardinality * radix
        # Official attention width: max(gw * radix // 4, 32), without timm's rounding to multiples of 8.
        assert split.fc1.out_channels == max(group_width * radix // 4, 32)


def test_avd_and_shortcuts_follow_resnest50d():
    blocks = _blocks(timm.create_model('pinas_cls'))
    firsts = [blocks[i] for i in (0, 3, 7, 13)]
    assert firsts[0].avd_last is None  # stage 1 first block: no avd (is_first=False in the official code)
    assert all(b.avd_last is not None for b in firsts[1:])
    assert all(b.downsample is not None for b in firsts)
    assert all(b.downsample is None for i, b in enumerate(blocks) if i not in (0, 3, 7, 13))


def test_zero_init_last_bn():
    assert all(float(b.bn3.weight.detach().abs().sum()) == 0 for b in _blocks(timm.create_model('pinas_trans')))
