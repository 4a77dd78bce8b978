"""ONNX export checked in onnxruntime (the dynamo exporter is slow on 2 cores: one model per family here)."""

from __future__ import annotations

import onnxruntime as ort
import pytest
import torch

import zoo
from zoo.onnx import export_onnx


@pytest.mark.parametrize(
    ('name', 'size'),
    [('dna_c', None), ('pinas_trans', (3, 64, 64))],  # DNA at its native 224, Pi-NAS small to stay fast
)
def test_export_matches_torch(name, size, tmp_path):
    report = export_onnx(name, tmp_path / f'{name}.onnx', input_size=size)
    assert report.max_abs_diff is not None and report.max_abs_diff <= 1e-4
    assert report.output_names == ['logits'] and report.simplified
    expected = size or zoo.create_model(name).pretrained_cfg['input_size']
    assert report.input_shape == (1, *expected)
    session = ort.InferenceSession(str(report.path), providers=['CPUExecutionProvider'])
    out = session.run(None, {'input': torch.randn(3, *expected).numpy()})  # dynamic batch
    assert out[0].shape == (3, 1000)


def test_features_only_exports_every_level(tmp_path):
    report = export_onnx(
        'dna_a', tmp_path / 'f.onnx', input_size=(3, 64, 64), features_only=True, out_indices=(1, 2, 3, 4)
    )
    assert report.output_names == ['features_0', 'features_1', 'features_2', 'features_3']
    assert report.max_abs_diff <= 1e-4
