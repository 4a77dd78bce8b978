"""backbones/_runtime.py: the one atomic write, checkpoint loader and torchrun set-up of search and retraining."""

import fractions
import json
import os

import pytest
import torch

from backbones import _runtime
from search import engine


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / 'sub' / 'state.json'
    _runtime.atomic_write_json(path, {'a': 1})
    assert json.loads(path.read_text()) == {'a': 1}

    def broken(tmp: str) -> None:
        with open(tmp, 'w') as f:
            f.write('{"half": ')
        raise OSError('disk full')

    with pytest.raises(OSError, match='disk full'):
        _runtime.atomic_write(path, broken)
    assert json.loads(path.read_text()) == {'a': 1}
    assert os.listdir(path.parent) == ['state.json']  # no temporary file left behind
    assert oct(path.stat().st_mode & 0o777) != oct(0o600)  # the usual permissions, not mkstemp's
    _runtime.atomic_write_bytes(path, b'xyz')
    assert path.read_bytes() == b'xyz'


def test_load_checkpoint_errors_name_the_file_and_never_advise_unsafe_loading(tmp_path):
    good = _runtime.save_checkpoint({'step': 1, 'w': torch.ones(3)}, tmp_path / 'good.pt')
    assert torch.equal(_runtime.load_checkpoint(good)['w'], torch.ones(3))
    with pytest.raises(FileNotFoundError, match=r'resume state .*missing\.pt does not exist'):
        _runtime.load_checkpoint(tmp_path / 'missing.pt', what='resume state')
    truncated = tmp_path / 'truncated.pt'
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(
        _runtime.CheckpointError, match=r'truncated\.pt: not a readable .* truncated or corrupt'
    ) as info:
        _runtime.load_checkpoint(truncated)
    assert '\n' not in str(info.value)
    refused = tmp_path / 'refused.pt'
    torch.save({'step': 1, 'ratio': fractions.Fraction(1, 3)}, refused)
    with pytest.raises(
        _runtime.CheckpointRefused, match=r"refused\.pt: refused: .* pickled 'fractions\.Fraction'"
    ) as info:
        _runtime.load_checkpoint(refused)
    assert 'weights_only=False' not in str(info.value) and 'False' not in str(info.value)
    (tmp_path / 'junk.pt').write_bytes(b'not a checkpoint')
    with pytest.raises(RuntimeError, match=r'junk\.pt: not a readable PyTorch checkpoint') as info:
        _runtime.load_checkpoint(tmp_path / 'junk.pt')
    assert 'weights_only' not in str(info.value)
    with pytest.raises(RuntimeError, match=r"good\.pt is not a supernet-zoo checkpoint \(missing \['epoch'\]\)"):
        _runtime.load_checkpoint(good, required=('step', 'epoch'))
    torch.save([1, 2], tmp_path / 'list.pt')
    with pytest.raises(ValueError, match='expected a checkpoint dict, the file holds a list'):
        _runtime.load_checkpoint(tmp_path / 'list.pt')


def test_the_search_engine_delegates_to_the_shared_runtime():
    assert engine.DistContext is _runtime.DistContext
    ctx = engine.init_distributed('cpu')
    assert isinstance(ctx, _runtime.DistContext) and not ctx.distributed and not ctx.owns_group
    assert ctx.all_sum([1.0, 2.0]) == [1.0, 2.0] and ctx.broadcast_object('x') == 'x'
    ctx.close()  # owns no group: a no-op
