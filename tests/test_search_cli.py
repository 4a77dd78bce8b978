"""The search command line checks everything a user typed before it builds anything: one line, exit code 2."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest

from search import pipeline
from search.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / 'configs/search/dna_tiny.yaml')


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    (tmp_path / 'data' / 'train' / 'a').mkdir(parents=True)
    return tmp_path / 'data'


def _error(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith('error: ') and '\n' not in err and 'Traceback' not in err, err
    return err


@pytest.mark.parametrize(
    ('extra', 'message'),
    [
        (['--batch-size', '0'], 'batch_size must be >= 1, got 0'),
        (['--epochs', '-1'], 'epochs must be >= 0, got -1'),
        (['--set', 'lr=abc'], "lr='abc': expected a float or a list of floats"),
        (['--set', 'epochs=abc'], "epochs='abc': expected int, got str"),
        (['--set', 'teacher_pretrained=3'], 'teacher_pretrained=3: expected bool, got int'),
        (['--set', 'epochz=3'], "unknown config key(s) ['epochz']"),
        (['--set', 'novalue'], "--set expects key=value, got 'novalue'"),
        (['--block', '7'], "blocks [7] do not exist: space 'tiny' has blocks 0..3"),
    ],
)
def test_bad_values_are_one_line_naming_the_key(capsys, data_dir: Path, tmp_path: Path, extra, message) -> None:
    err = _error(
        capsys, ['dna', '--config', TINY, '--data-dir', str(data_dir), '--output', str(tmp_path / 'o'), *extra]
    )
    assert message in err


def test_missing_data_dir_is_refused_before_anything_is_built(capsys, tmp_path: Path) -> None:
    err = _error(capsys, ['dna', '--config', TINY, '--output', str(tmp_path / 'o')])
    assert '--data-dir is required' in err
    err = _error(capsys, ['dna', '--config', TINY, '--data-dir', str(tmp_path / 'nope'), '--output', str(tmp_path)])
    assert 'nope/train' in err
    assert not (tmp_path / 'o').exists()


def test_an_earlier_run_is_not_overwritten_without_resume(capsys, data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / 'run'
    (out / 'checkpoints').mkdir(parents=True)
    (out / 'checkpoints' / 'last.pt').write_bytes(b'PK\x03\x04 truncated')
    (out / 'train_log.jsonl').write_text('{"step": 1}\n')
    argv = ['dna', '--config', TINY, '--data-dir', str(data_dir), '--output', str(out)]
    err = _error(capsys, argv)
    assert 'earlier run' in err and '--resume' in err and '--overwrite' in err
    assert (out / 'checkpoints' / 'last.pt').read_bytes() == b'PK\x03\x04 truncated'  # nothing touched
    err = _error(capsys, [*argv, '--resume'])
    assert 'cannot resume' in err and 'last.pt' in err and 'corrupt' in err
    err = _error(capsys, [*argv, '--resume', '--overwrite'])
    assert 'exclude each other' in err
    # searching again over an earlier run loses nothing and stays allowed
    cfg = type('C', (), {'out': out, 'blocks': None})()
    pipeline.check_run_folder(cfg, ('search',), resume=False, overwrite=False)
    # --overwrite removes the earlier run's checkpoint and log (then trains from step 0)
    pipeline.check_run_folder(cfg, pipeline.STAGES, resume=False, overwrite=True)
    assert not (out / 'checkpoints' / 'last.pt').exists() and not (out / 'train_log.jsonl').exists()


def test_stage_and_block_do_not_apply_to_the_dna_plus_driver(capsys, data_dir: Path, tmp_path: Path) -> None:
    config = str(ROOT / 'configs/search/dna_plus_tiny.yaml')
    argv = ['dna_plus', '--config', config, '--data-dir', str(data_dir), '--output', str(tmp_path / 'p')]
    assert '--stage and --block do not apply' in _error(capsys, [*argv, '--stage', 'search'])


def test_resume_truncates_the_log_and_removes_stale_temporary_checkpoints(tmp_path: Path) -> None:
    log = tmp_path / 'train_log.jsonl'
    log.write_text(''.join(json.dumps({'step': s, 'loss': 1.0}) + '\n' for s in (1, 2, 3, 4)) + '{"step": 5, "lo')
    pipeline._truncate_log(log, 2)
    assert [json.loads(x)['step'] for x in log.read_text().splitlines()] == [1, 2]
    (tmp_path / '.last.pt.tmp-1234').write_bytes(b'torn')
    fd, _ = tempfile.mkstemp(prefix='.last.pt.', suffix='.tmp', dir=tmp_path)  # as backbones._runtime names it
    os.close(fd)
    (tmp_path / 'last.pt').write_bytes(b'kept')
    pipeline._remove_stale_tmp(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['last.pt', 'train_log.jsonl']
