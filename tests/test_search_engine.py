"""The search engine's run-time pieces: seeds, atomic checkpoints, the held-out split and seeded global batches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from search import data, engine


def test_derive_seed_is_stable_and_key_dependent() -> None:
    assert engine.derive_seed(42, 'path', 3, 17) == engine.derive_seed(42, 'path', 3, 17)
    assert engine.derive_seed(42, 'path', 3, 17) != engine.derive_seed(42, 'path', 3, 18)
    assert engine.derive_seed(42, 'path', 3, 17) != engine.derive_seed(43, 'path', 3, 17)
    assert 0 <= engine.derive_seed(0) < 2**63


def test_checkpoints_are_atomic_and_load_weights_only(tmp_path: Path) -> None:
    path = tmp_path / 'ckpt' / 'last.pt'
    engine.save_checkpoint({'step': 3, 'w': torch.ones(2)}, path)
    assert sorted(p.name for p in path.parent.iterdir()) == ['last.pt']  # no temporary file left
    assert engine.load_checkpoint(path)['step'] == 3
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(RuntimeError, match=r'last\.pt: not a readable PyTorch checkpoint'):
        engine.load_checkpoint(path)
    with pytest.raises(FileNotFoundError, match='does not exist'):
        engine.load_checkpoint(tmp_path / 'missing.pt')
    torch.save({'w': 1}, path)
    with pytest.raises(RuntimeError, match='no "step" entry'):
        engine.load_checkpoint(path)


def test_jsonl_logger(tmp_path: Path) -> None:
    log = engine.JsonlLogger(tmp_path / 'log.jsonl')
    log.log(step=1, loss=0.5)
    log.log(step=2, loss=0.25)
    engine.JsonlLogger(tmp_path / 'other.jsonl', enabled=False).log(step=1)
    lines = [json.loads(x) for x in (tmp_path / 'log.jsonl').read_text().splitlines()]
    assert [x['loss'] for x in lines] == [0.5, 0.25] and 'time' in lines[0]
    assert not (tmp_path / 'other.jsonl').exists()


@pytest.fixture(scope='module')
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return data.write_synthetic_image_folder(tmp_path_factory.mktemp('imgs') / 'train', 3, 7, size=24)


def test_holdout_split_is_deterministic_and_reused(folder: Path, tmp_path: Path) -> None:
    split = data.holdout_split(folder, per_class=2, seed=1, path=tmp_path / 'split.json')
    assert len(split['holdout']) == 6 and len(split['train']) == 15
    assert not set(split['holdout']) & set(split['train'])
    again = data.holdout_split(folder, per_class=2, seed=1)
    assert again == split
    assert data.holdout_split(folder, per_class=2, seed=2) != split
    doc = json.loads((tmp_path / 'split.json').read_text())
    assert doc['per_class'] == 2 and all(f.startswith('class_') for f in doc['holdout'])
    assert data.holdout_split(folder, per_class=5, seed=9, path=tmp_path / 'split.json') == split  # file wins
    with pytest.raises(ValueError, match='cannot hold out 7'):
        data.holdout_split(folder, per_class=7)
    with pytest.raises(FileNotFoundError, match='does not exist'):
        data.image_folder(tmp_path / 'nope')


def _chunks(world: int, accum: int, **kw) -> list[list[tuple[int, int]]]:
    out = []
    for rank in range(world):
        sampler = data.GlobalBatchSampler(20, 8, seed=5, epoch=1, rank=rank, world_size=world, grad_accum=accum, **kw)
        out.append(list(sampler))
    return out


def test_global_batches_do_not_depend_on_world_size_or_accumulation() -> None:
    one = _chunks(1, 1)[0]  # 2 steps of 8
    two_ranks = _chunks(2, 1)
    accum = _chunks(1, 2)[0]
    assert len(one) == 2 and all(len(b) == 8 for b in one)
    for step in range(2):
        assert two_ranks[0][step] + two_ranks[1][step] == one[step]
        assert accum[2 * step] == two_ranks[0][step] and accum[2 * step + 1] == two_ranks[1][step]
    resumed = _chunks(1, 1, start_step=1)[0]
    assert resumed == one[1:]
    assert _chunks(1, 1)[0] != list(data.GlobalBatchSampler(20, 8, seed=5, epoch=2))
    with pytest.raises(ValueError, match='not divisible'):
        data.GlobalBatchSampler(20, 8, seed=0, world_size=3)


def test_seeded_samples_draw_the_same_augmentation_whatever_the_order(folder: Path) -> None:
    transform = data.build_transform(16, training=True)
    samples = data.SeededSamples(data.image_folder(folder, transform), None, seed=3)
    a = samples[(0, 4)][0]
    samples[(0, 1)]
    torch.rand(5)
    assert torch.equal(samples[(0, 4)][0], a)
    assert not torch.equal(samples[(1, 4)][0], a)  # another epoch, another crop
    state = torch.get_rng_state()
    samples[(0, 2)]
    assert torch.equal(torch.get_rng_state(), state)  # the global stream is untouched
