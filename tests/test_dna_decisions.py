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
