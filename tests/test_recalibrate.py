"""BN recalibration: statistics become the plain average over the calibration batches; the CLI writes them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

import backbones  # noqa: F401  (registers the zoo models with timm)
from search import data
from search.recalibrate import recalibrate_model

ROOT = Path(__file__).resolve().parents[1]


def test_statistics_are_the_average_over_the_batches() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    batches = [torch.randn(8, 3, 5, 5) * (i + 1) for i in range(3)]
    recalibrate_model(model, iter(batches), num_batches=3)
    with torch.no_grad():
        means = torch.stack([model[0](b).mean((0, 2, 3)) for b in batches]).mean(0)
    torch.testing.assert_close(model[1].running_mean, means, rtol=1e-5, atol=1e-6)
    assert not model.training and model[1].momentum == 0.1  # momentum restored
    with pytest.raises(ValueError, match='gave 3 batches, 5 were asked'):
        recalibrate_model(model, iter(batches), num_batches=5)


def test_cli_writes_recalibrated_weights(tmp_path: Path) -> None:
    folder = data.write_synthetic_image_folder(tmp_path / 'train', num_classes=2, per_class=4, size=40)
    model = timm.create_model('nasvit_a0')
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / 'in.safetensors')
    out = tmp_path / 'out.safetensors'
    cmd = [sys.executable, 'tools/recalibrate_bn.py', 'nasvit_a0', '--weights', str(tmp_path / 'in.safetensors')]
    cmd += ['--data-dir', str(folder), '--out', str(out), '--batches', '2', '--batch-size', '2', '--img-size', '64']
    cmd += ['--workers', '0', '--device', 'cpu']
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    before, after = model.state_dict(), load_file(out)
    changed = [k for k in before if k.endswith('running_mean') and not torch.equal(before[k], after[k])]
    assert changed and all(torch.equal(before[k], after[k]) for k in before if k.endswith('.weight'))
    proc = subprocess.run(
        [*cmd[:4], str(tmp_path / 'nope.safetensors'), *cmd[5:]], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode != 0 and 'does not exist' in proc.stderr


def test_cli_uses_the_official_protocol_for_weights_from_the_authors_supernet(tmp_path: Path) -> None:
    """Weights converted from the authors' NASViT supernet (metadata family nasvit) are calibrated as the official
    evaluation does: 224 crops resized inside the model to the subnet's resolution; others keep the native size."""
    folder = data.write_synthetic_image_folder(tmp_path / 'train', num_classes=2, per_class=2, size=40)
    model = timm.create_model('nasvit_min')
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, tmp_path / 'conv.safetensors', metadata={'format': 'pt', 'family': 'nasvit', 'ema': 'true'})
    base = [sys.executable, 'tools/recalibrate_bn.py', 'nasvit_min', '--data-dir', str(folder), '--batches', '1']
    base += ['--batch-size', '2', '--workers', '0', '--device', 'cpu', '--img-size', '48']
    out = tmp_path / 'out.safetensors'
    cmd = [*base, '--weights', str(tmp_path / 'conv.safetensors'), '--out', str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 'at 48px, resized in the model to 192px' in proc.stdout
    from safetensors import safe_open

    with safe_open(str(out), framework='pt') as f:
        assert f.metadata()['resize_input'] == 'true' and f.metadata()['family'] == 'nasvit'
    proc = subprocess.run(
        [*cmd, '--resize-input', 'off', '--out', str(tmp_path / 'o2.safetensors')],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0 and 'resized in the model' not in proc.stdout, proc.stderr[-2000:]
