"""ONNX at native input sizes, features_only export, the demo's ONNX chapter, and a parity check that can fail.

Every registered model is also exported at a small size by tests/test_contract.py. Exports cost 15-60 s each on
2 cores, so each file made here is exported once per module and checked several ways: one model per family
(resnest and nasvit at native size, mbconv and hytra through the demo chapter).
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import onnxruntime as ort
import pytest
import torch

import zoo
from zoo.demo import onnx_chapter
from zoo.onnx import MIN_COSINE, RTOL, SUPPORTED_OPSETS, OnnxParityError, check_onnx, export_onnx

_TOOL = importlib.util.spec_from_file_location(
    'export_onnx_tool', Path(__file__).parents[1] / 'tools' / 'export_onnx.py'
)
export_tool = importlib.util.module_from_spec(_TOOL)
_TOOL.loader.exec_module(export_tool)

NATIVE = ('pinas_trans', 'nasvit_a0')  # dna_c and bossnet_t0: the demo chapter below


@pytest.fixture(scope='module')
def native(tmp_path_factory):
    """One export per model at its native size (resnest and nasvit families)."""
    folder = tmp_path_factory.mktemp('native')
    return {name: export_onnx(name, folder / f'{name}.onnx') for name in NATIVE}


@pytest.fixture(scope='module')
def chapter(tmp_path_factory):
    """The demo's ONNX chapter (mbconv and hytra families) and the folder it wrote to."""
    folder = tmp_path_factory.mktemp('demo')
    return onnx_chapter(out_dir=folder), folder


def _other_weights(name: str) -> torch.nn.Module:
    """The same architecture with different random weights."""
    torch.manual_seed(1234)
    return zoo.create_model(name).eval()


@pytest.mark.parametrize('name', NATIVE)
def test_native_size_export_matches_torch(name, native):
    report = native[name]
    assert report.opset == 18  # read back from the file's opset_import
    assert [p.name for p in report.parity] == ['logits', 'pre_logits']
    assert report.max_rel_diff <= RTOL and report.worst_cosine >= MIN_COSINE
    assert report.output_names == ['logits'] and report.simplified
    expected = zoo.create_model(name).pretrained_cfg['input_size']
    assert report.input_shape == (1, *expected)
    session = ort.InferenceSession(str(report.path), providers=['CPUExecutionProvider'])
    out = session.run(None, {'input': torch.randn(3, *expected).numpy()})  # dynamic batch
    assert len(out) == 1 and out[0].shape == (3, 1000)  # the pre-logits output exists only in the check's copy


def test_demo_onnx_chapter_exports_and_times_at_native_size(chapter):
    text, folder = chapter
    for name in ('dna_c', 'bossnet_t0'):
        assert (folder / f'{name}.onnx').is_file()
        row = next(line for line in text.splitlines() if line.startswith(f'| {name} |'))
        opset, rel, cosine, torch_ms, ort_ms = (float(v) for v in row.strip('| ').split(' | ')[2:])
        assert opset == 18 and rel <= RTOL and cosine >= MIN_COSINE and torch_ms > 0 and ort_ms > 0
    assert 'max rel. diff: max|onnxruntime - torch| / max|torch|' in text


@pytest.mark.parametrize(
    'family, name', [('resnest', 'pinas_trans'), ('nasvit', 'nasvit_a0'), ('mbconv', 'dna_c'), ('hytra', 'bossnet_t0')]
)
def test_export_of_other_weights_is_caught(family, name, native, chapter):
    path = native[name].path if name in native else chapter[1] / f'{name}.onnx'
    wrong = _other_weights(name)
    assert wrong.spec['family'] == family
    with pytest.raises(OnnxParityError, match=rf"{path.name}: onnxruntime does not reproduce torch on output 'logits'"):
        check_onnx(path, wrong)
    # every compared output is far off on its own scale, pre-logits included
    parity = check_onnx(path, wrong, rtol=math.inf, min_cosine=-1.0)
    assert [p.name for p in parity] == ['logits', 'pre_logits']
    assert all(p.max_rel_diff > 0.1 and p.min_cosine < 0.99 for p in parity), [p.line() for p in parity]
    if family == 'mbconv':  # the tiny logits of a random MBConv model: an absolute tolerance of 1e-4 saw nothing
        assert parity[0].max_abs_diff < 1e-4


def test_features_only_exports_every_level_at_the_opset_asked(tmp_path):
    report = export_onnx(
        'dna_a', tmp_path / 'f.onnx', input_size=(3, 64, 64), opset=20, features_only=True, out_indices=(1, 2, 3, 4)
    )
    assert report.output_names == ['features_0', 'features_1', 'features_2', 'features_3']
    assert [p.name for p in report.parity] == report.output_names
    assert report.opset == 20 and report.max_rel_diff <= RTOL
    other = _other_weights('dna_a')
    wrong = zoo.create_model('dna_a', features_only=True, out_indices=(1, 2, 3, 4))
    wrong.load_state_dict(other.state_dict(), strict=False)
    with pytest.raises(OnnxParityError, match="output 'features_0'"):
        check_onnx(report.path, wrong, (3, 64, 64))


@pytest.mark.parametrize('opset', [13, 17, 24])
def test_unsupported_opset_is_refused(opset, tmp_path):
    with pytest.raises(ValueError, match=rf'opset {opset} is not supported; supported: 18, 19, 20, 21, 22, 23'):
        export_onnx('dna_a', tmp_path / 'x.onnx', opset=opset)
    assert not (tmp_path / 'x.onnx').exists()
    assert SUPPORTED_OPSETS == (18, 19, 20, 21, 22, 23)


@pytest.mark.parametrize(
    'size, match',
    [
        ((3, 16, 16), r'nasvit_min: input size 16x16 is below its min_input_size 32x32'),
        ((3, 0, 0), r'input_size must be three positive ints'),
        ((3, -8, 64), r'input_size must be three positive ints'),
    ],
)
def test_bad_input_size_is_refused(size, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        export_onnx('nasvit_min', tmp_path / 'x.onnx', input_size=size)
    assert not (tmp_path / 'x.onnx').exists()


@pytest.mark.parametrize(
    'argv, message',
    [
        (['dna_a', '--size', '0'], 'argument --size: 0 is not a positive size (omit --size for the native size)'),
        (['dna_a', '--size', '-3'], 'argument --size: -3 is not a positive size'),
        (['dna_a', '--opset', '17'], 'argument --opset: invalid choice: 17 (choose from 18, 19, 20, 21, 22, 23)'),
        (['nasvit_min', '--size', '16'], 'error: nasvit_min: input size 16x16 is below its min_input_size'),
    ],
)
def test_export_tool_refuses_bad_options_in_one_line(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        export_tool.main([*argv, '--out-dir', str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and 'Traceback' not in err, err
    assert not list(tmp_path.iterdir())
