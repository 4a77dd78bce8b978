"""The DNA review's decisions (docs/search.md, "Decisions"): each one checked so that it cannot silently regress."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
import yaml

from search.methods import dna
from search.methods.teacher import build_teacher

ROOT = Path(__file__).resolve().parents[1]


def test_the_official_teacher_weights_are_pinned() -> None:
    """``tf_efficientnet_b7`` alone resolves to the Noisy Student (JFT) weights; the official code used AA ImageNet."""
    tag = 'tf_efficientnet_b7.aa_in1k'
    assert dna.DNAConfig().teacher == tag
    assert yaml.safe_load((ROOT / 'configs/search/dna_mbconv.yaml').read_text())['teacher'] == tag
    assert yaml.safe_load((ROOT / 'configs/search/dna_plus.yaml').read_text())['search']['teacher'] == tag
    assert tag in timm.list_pretrained('tf_efficientnet_b7*')


def test_rating_images_default_is_the_documented_one() -> None:
    config = yaml.safe_load((ROOT / 'configs/search/dna_mbconv.yaml').read_text())
    assert dna.DNAConfig().rating_images == config['rating_images'] == 2048
    assert '9728' in (ROOT / 'docs/search.md').read_text()  # the official count, offered as a value


@pytest.fixture(scope='module')
def teacher():
    torch.manual_seed(0)
    t = build_teacher('test_efficientnet', pretrained=False)
    for m in t.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    return t.eval()


def test_rating_targets_are_fp32_whatever_the_autocast(teacher) -> None:
    x = [torch.randn(4, 3, 32, 32)]
    plain = dna.teacher_features(teacher, x, batch_stats=False)
    with torch.autocast('cpu', dtype=torch.bfloat16):  # as a bf16 run would be
        inside = dna.teacher_features(teacher, x, batch_stats=False)
    for a, b in zip(plain[0], inside[0], strict=True):
        assert b.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_teacher_bn_train_rates_against_the_training_targets(teacher) -> None:
    """With ``teacher_bn: train`` the training targets use batch statistics; so must the rating targets."""
    x = torch.randn(6, 3, 32, 32)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    got = dna.teacher_features(teacher, [x], batch_stats=True)[0]
    teacher.train()
    with torch.no_grad():
        want = teacher(x)
    teacher.load_state_dict(before)
    teacher.eval()
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)
    running = dna.teacher_features(teacher, [x], batch_stats=False)[0]
    assert not torch.allclose(running[-1], got[-1])  # running statistics give other targets
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), k  # rating never changes the teacher's statistics


def test_adapters_belong_to_the_dna_method_not_the_space() -> None:
    import inspect

    from search.spaces.mbconv import MBConvSupernet

    assert 'teacher_channels' not in inspect.signature(MBConvSupernet).parameters
    net = MBConvSupernet('tiny')
    assert not any('adapter' in name for name, _ in net.named_modules())
    cfg = dna.DNAConfig(space='tiny', teacher='test_efficientnet', teacher_pretrained=False, img_size=32)
    _, teacher, supernet, adapters = dna.build_supernet(cfg, torch.device('cpu'))
    state = dna.DistillRunner(teacher, supernet, adapters).trainable_state()
    assert any(k.startswith('adapters.inputs.1.') for k in state) and any(
        k.startswith('adapters.outputs.') for k in state
    )
    assert all(k.startswith(('supernet.', 'adapters.')) for k in state)


def test_unsampled_ops_keep_moving_as_in_the_official_code() -> None:
    """Zeroed (not None) gradients: Adam keeps updating an op after the step that sampled it (momentum, L2)."""
    assert dna.DNA.zero_grad_to_none is False and dna.DNA.schedule_epoch_offset == 1
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.Adam([p], lr=0.1, weight_decay=1e-4)
    p.grad = torch.ones(3)
    opt.step()
    opt.zero_grad(set_to_none=dna.DNA.zero_grad_to_none)
    before = p.detach().clone()
    opt.step()  # a step in which the op was not sampled
    assert not torch.equal(p.detach(), before)


def test_a_block_without_choices_adds_nothing_to_the_score() -> None:
    """Official code: the fixed last block is left out of the sum (it would favour the width it is fed)."""
    from search.spaces.mbconv import BlockDef, CellDef, MBConvSpace

    space = MBConvSpace(
        'two',
        (BlockDef(2, (CellDef(1, 16), CellDef(1, 24)), ('k3e3',)), BlockDef(1, (CellDef(1, 32),), ('k3e6',))),
        stem_size=8,
        ds_width=8,
        num_features=64,
        img_size=32,
    )
    rated = {
        0: [
            {'in_width': 8, 'cell': 0, 'ops': ['k3e3'], 'score': 1.0},
            {'in_width': 8, 'cell': 1, 'ops': ['k3e3'], 'score': 1.1},
        ],
        1: [
            {'in_width': 16, 'cell': 0, 'ops': ['k3e6'], 'score': 0.9},
            {'in_width': 24, 'cell': 0, 'ops': ['k3e6'], 'score': 0.5},
        ],
    }
    cfg = dna.DNAConfig(space='tiny', metric='params')
    found = dna.BudgetedSearcher(cfg, torch.device('cpu')).search(space, rated, 'params', None, 2)
    assert [f.extra['choices'][0][0] for f in found] == [0, 1]  # block 0's own scores decide: cell 0 (width 16)
    assert [f.score for f in found] == [1.0, 1.1]


def test_dna_pp_variance_and_covariance_see_every_rank() -> None:
    from search.methods.dna_pp import vicreg_loss

    torch.manual_seed(0)
    z, z_hat = torch.randn(16, 8), torch.randn(16, 8)
    whole = vicreg_loss(z, z_hat)
    # this rank holds the first half; the gather brings the other rank's half (as all_gather would)
    local = vicreg_loss(
        z[:8], z_hat[:8], gather=lambda t: torch.cat([t, (z if t.data_ptr() == z.data_ptr() else z_hat)[8:]])
    )
    torch.testing.assert_close(local['var'], whole['var'])
    torch.testing.assert_close(local['cov'], whole['cov'])
    alone = vicreg_loss(z[:8], z_hat[:8])
    assert not torch.allclose(alone['cov'], whole['cov'])
