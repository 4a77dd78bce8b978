"""Helpers shared by the end-to-end search tests: the command-line runner, its environment, a free port, weights.

One place, so that every subprocess run gets the same one-thread environment (tiny networks on a shared 2-core
machine run faster on one thread, and one thread keeps the recorded fingerprints reproducible).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

import search
import zoo

ROOT = Path(__file__).resolve().parents[1]
#: Environment of every ``python -m search`` subprocess: one thread, fixed hash seed.
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONHASHSEED': '0'}


def free_port() -> int:
    """A TCP port free right now, for torchrun's rendezvous."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def run_search(
    method: str, config: Path, output: Path, data_dir: Path, *extra: str, env: dict | None = None, check: bool = True
) -> subprocess.CompletedProcess:
    """``python -m search METHOD --config CONFIG --data-dir DATA --output OUT EXTRA...`` as a user would start it."""
    cmd = [sys.executable, '-m', 'search', method, '--config', str(config), '--data-dir', str(data_dir)]
    proc = subprocess.run(
        [*cmd, '--output', str(output), *extra], cwd=ROOT, env=env or ENV, capture_output=True, text=True, timeout=600
    )
    if check and proc.returncode != 0:
        raise AssertionError(f'{method} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}')
    return proc


def run_spos(config: Path, output: Path, data_dir: Path, *extra: str, **kwargs) -> subprocess.CompletedProcess:
    """``python -m search spos ...`` (see :func:`run_search`)."""
    return run_search('spos', config, output, data_dir, *extra, **kwargs)


def torchrun(method: str, config: Path, output: Path, data_dir: Path, *extra: str) -> None:
    """The same command under torchrun with 2 CPU (gloo) processes; fails with the end of its stderr."""
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc-per-node', '2', '--master-port', str(free_port())]
    cmd += ['-m', 'search', method, '--config', str(config), '--data-dir', str(data_dir), '--output', str(output)]
    proc = subprocess.run([*cmd, *extra], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def weights(path: Path) -> dict[str, torch.Tensor]:
    """The model state of a search checkpoint."""
    return torch.load(path, weights_only=True)['model']


def check_spos_found(run: Path, space_name: str, num_classes: int = 4) -> None:
    """top1.json builds with the zoo; with the trained supernet's path weights it *is* the supernet's path."""
    result = json.loads((run / 'search_result.json').read_text())['results']
    assert [r['rank'] for r in result] == [1, 2, 3]
    assert [r['score'] for r in result] == sorted(r['score'] for r in result)
    spec, provenance = search.read_spec(run / 'arch' / 'top1.json')
    assert provenance['method'] == 'spos' and provenance['space'] == space_name and provenance['seed'] == 42
    rated = {
        json.loads(x)['key']: json.loads(x)['top1'] for x in (run / 'ratings' / 'paths.jsonl').read_text().splitlines()
    }
    space = search.get_space(space_name)
    arch = tuple(provenance['arch'])
    assert space.to_spec(arch) == spec and space.from_spec(spec) == arch
    assert result[0]['score'] == -rated[space.key(arch)] == -max(rated.values())
    supernet = search.build_supernet(space, num_classes=num_classes)
    supernet.load_state_dict(weights(run / 'checkpoints' / 'last.pt'))
    supernet.eval()
    model = zoo.create_model(str(run / 'arch' / 'top1.json'), num_classes=num_classes).eval()
    model.load_state_dict(supernet.path_state_dict(arch), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), supernet(x, arch))


def assert_same_params(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    """Parameters match (BN running statistics differ by design under DDP: it keeps rank 0's); returns their keys."""
    params = [k for k in a if not k.endswith(('running_mean', 'running_var', 'num_batches_tracked'))]
    for key in params:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)
    return params


def assert_same_weights(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    """Bit for bit the same state (a resumed run against an uninterrupted one)."""
    assert want.keys() == got.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=0, msg=key)
