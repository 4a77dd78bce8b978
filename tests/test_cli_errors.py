"""Every command a user types answers bad input with one line ``error: ...`` and exit code 2, never a traceback."""

from __future__ import annotations

import io
import os
import runpy
import subprocess
import sys
from contextlib import redirect_stderr
from pathlib import Path
from unittest.mock import patch

import pytest

from zoo import UnknownModelError
from zoo.cli import main as zoo_main

ROOT = Path(__file__).resolve().parent.parent


def _run(tool: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, 'PYTHONPATH': str(ROOT)}
    return subprocess.run(
        [sys.executable, str(ROOT / 'tools' / tool), *args], capture_output=True, text=True, env=env, timeout=120
    )


def _run_in_process(tool: str, *args: str) -> tuple[int, str]:
    """The tool run as ``__main__`` in this interpreter (its imports are loaded already): (exit code, stderr).

    Same script, argv and exit path as a subprocess; an uncaught exception propagates and fails the test, as a
    traceback would. One tool still runs in a real subprocess (test_tools_prog_is_their_own_name).
    """
    err = io.StringIO()
    with patch.object(sys, 'argv', [str(ROOT / 'tools' / tool), *args]), redirect_stderr(err):
        try:
            runpy.run_path(str(ROOT / 'tools' / tool), run_name='__main__')
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
    return code, err.getvalue()


def _assert_user_error(err: str) -> None:
    assert 'Traceback' not in err
    assert err.strip().splitlines()[-1].split('error: ', 1)[1]  # the last line names the problem


def test_unknown_model_message_has_no_escaped_quotes() -> None:
    err = UnknownModelError("unknown model 'dna_e'")
    assert str(err) == "unknown model 'dna_e'"  # a bare KeyError would print "\"unknown model 'dna_e'\""
    assert isinstance(err, KeyError)


@pytest.mark.parametrize(
    'argv',
    [
        ['info', 'dna_e'],
        ['spec', 'not_a_model'],
        ['demo', '--pattern', 'no_such_*'],
        ['benchmark', '--models', 'not_a_model'],
        ['benchmark'],
    ],
)
def test_zoo_user_errors_one_line(argv: list[str], capsys: pytest.CaptureFixture) -> None:
    assert zoo_main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith('zoo: error: ')
    assert '\\' not in err and not err.startswith('zoo: error: "')


@pytest.mark.parametrize(
    'argv', [['benchmark', '--models', 'dna_a', '--batches', '0'], ['benchmark', '--all', '--iters', '-1']]
)
def test_zoo_benchmark_bad_numbers(argv: list[str], capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        zoo_main(argv)
    assert exit_info.value.code == 2
    assert 'must be a positive integer' in capsys.readouterr().err


def test_zoo_info_and_benchmark_options_have_help(capsys: pytest.CaptureFixture) -> None:
    expected = {'info': ['measure params and FLOPs', 'catalog model name'], 'benchmark': ['batch sizes', 'untimed']}
    for sub, phrases in expected.items():
        with pytest.raises(SystemExit):
            zoo_main([sub, '--help'])
        text = ' '.join(capsys.readouterr().out.split())
        assert all(phrase in text for phrase in phrases), text


@pytest.mark.parametrize(
    ('tool', 'args'),
    [
        ('model_table.py', ['--pattern', 'no_such_*']),
        ('benchmark.py', ['--models', 'not_a_model']),
        ('benchmark.py', ['--models', 'dna_a', '--batches', '0']),
        ('plot_zoo.py', ['--bench', 'missing.json']),
        ('profile_model.py', ['not_a_model', '--device', 'cpu']),
        ('profile_model.py', ['dna_a', '--batch', '0']),
        ('make_tiny_datasets.py', ['out', '--size', '0']),
        ('make_tiny_datasets.py', ['out', '--imagenet', '--num-classes', '-3']),
    ],
)
def test_tools_user_errors(tool: str, args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, err = _run_in_process(tool, *args)
    assert code == 2, err
    _assert_user_error(err)


def test_tools_prog_is_their_own_name() -> None:
    proc = _run('model_table.py', '--help')
    assert proc.returncode == 0 and proc.stdout.startswith('usage: model_table.py')


def test_make_tiny_imagenet_folder(tmp_path: Path) -> None:
    code, err = _run_in_process(
        'make_tiny_datasets.py', str(tmp_path), '--imagenet', '--num-classes', '2', '--num-train', '3'
    )
    assert code == 0, err
    classes = sorted((tmp_path / 'imagenet' / 'train').iterdir())
    assert len(classes) == 2 and all(len(list(c.iterdir())) == 3 for c in classes)
