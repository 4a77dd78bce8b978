"""The benchmark and plot tools produce their files (tiny runs; no timing is asserted)."""

from __future__ import annotations

import json

from zoo.benchmark import run, save, to_markdown
from zoo.plots import plot_zoo


def test_benchmark_run_and_save(tmp_path):
    results = run(['dna_a'], batches=(2,), backends=('eager', 'onnxruntime'), img_size=64, warmup=0, iters=1)
    assert [r.backend for r in results] == ['eager', 'onnxruntime']
    assert all(r.img_per_s > 0 and r.img_size == 64 and r.params_m > 4 for r in results)
    paths = save(results, tmp_path, stem='b')
    rows = json.loads(paths['json'].read_text())
    assert rows[0]['model'] == 'dna_a' and rows[0]['device']
    assert '| dna_a | onnxruntime | infer | 2 | 64 |' in to_markdown(results)


def test_zoo_benchmark_command(tmp_path, capsys):
    from zoo.cli import main

    argv = ['benchmark', '--models', 'dna_a', '--backends', 'eager', '--batches', '1', '--img-size', '32']
    assert main([*argv, '--iters', '1', '--warmup', '0', '--out-dir', str(tmp_path)]) == 0
    assert (tmp_path / 'benchmark.json').is_file() and '| dna_a | eager |' in capsys.readouterr().out


def test_plot_zoo_writes_a_png(tmp_path):
    bench = tmp_path / 'bench.json'
    rows = [{'model': 'dna_c', 'mode': 'infer', 'backend': 'eager', 'img_per_s': 100.0, 'device': 'cpu'}]
    bench.write_text(json.dumps(rows))
    out = plot_zoo(tmp_path / 'fig.png', bench)
    assert out.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
