"""ONNX at native input sizes, features_only export, and the demo's ONNX chapter.

Every registered model is also exported at a small size by tests/test_contract.py.
"""

from __future__ import annotations

import onnxruntime as ort
import pytest
import torch

import zoo
from zoo.demo import onnx_chapter
from zoo.onnx import export_onnx


@pytest.mark.parametrize('name', ['pinas_trans', 'nasvit_a0'])  # dna_c and bossnet_t0: the demo chapter below
def test_native_size_export_matches_torch(name, tmp_path):
    report = export_onnx(name, tmp_path / f'{name}.onnx')
    assert report.max_abs_diff is not None and report.max_abs_diff <= 1e-4
    assert report.output_names == ['logits'] and report.simplified
    expected = zoo.create_model(name).pretrained_cfg['input_size']
    assert report.input_shape == (1, *expected)
    session = ort.InferenceSession(str(report.path), providers=['CPUExecutionProvider'])
    out = session.run(None, {'input': torch.randn(3, *expected).numpy()})  # dynamic batch
    assert out[0].shape == (3, 1000)


def test_demo_onnx_chapter_exports_and_times_at_native_size(tmp_path):
    chapter = onnx_chapter(out_dir=tmp_path)
    for name in ('dna_c', 'bossnet_t0'):
        assert (tmp_path / f'{name}.onnx').is_file()
        row = next(line for line in chapter.splitlines() if line.startswith(f'| {name} |'))
        diff, torch_ms, ort_ms = (float(v) for v in row.strip('| ').split(' | ')[2:])
        assert diff <= 1e-4 and torch_ms > 0 and ort_ms > 0


def test_features_only_exports_every_level(tmp_path):
    report = export_onnx(
        'dna_a', tmp_path / 'f.onnx', input_size=(3, 64, 64), features_only=True, out_indices=(1, 2, 3, 4)
    )
    assert report.output_names == ['features_0', 'features_1', 'features_2', 'features_3']
    assert report.max_abs_diff <= 1e-4
