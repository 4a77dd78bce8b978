"""BossNAS on HyTra: the greedy block restriction, per-scale projector inputs, uniform path sampling, the greedy-chain
search, the tiny run end to end (a hytra spec that builds and is the trained path), and the full-size supernet."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import torch.nn as nn

import zoo
from search import data, engine
from search.config import ConfigError, load_config
from search.methods.bossnas import BlockScores, BossNASBlock, BossNASConfig, BossRunner, ChainSearcher
from search.methods.bossnas_blocks import HyTraAdapter, make_adapter
from search.spaces import get_space
from search.spaces.hytra import STEM, stage_of
from tests._helpers import ENV

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / 'configs/search/bossnas_hytra_tiny.yaml'
FULL = ROOT / 'configs/search/bossnas_hytra.yaml'


def _run(data_dir: Path, out: Path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, '-m', 'search', 'bossnas', '--config', str(TINY), '--data-dir', str(data_dir)]
    return subprocess.run(
        [*cmd, '--output', str(out), *extra], cwd=ROOT, env=env or ENV, capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp('bossnas_hytra')
    data.write_synthetic_image_folder(root / 'data' / 'train', num_classes=4, per_class=12, size=40)
    out = root / 'run'
    proc = _run(root / 'data', out)
    if proc.returncode != 0:
        raise AssertionError(f'bossnas failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}')
    return out


def _rows(run: Path, k: int) -> list[dict]:
    return json.loads((run / f'block{k}' / 'ratings' / 'block.json').read_text())['candidates']


# -- the adapter ------------------------------------------------------------------------------------------------------
def test_block_paths_follow_the_last_scale_of_the_previous_best_path() -> None:
    adapter = make_adapter(get_space('hytra'))
    assert isinstance(adapter, HyTraAdapter)
    assert len(adapter.block_paths(0, [])) == 51
    # official restricted_path counts: 51 / 99 / 80 / 16 after a block ending at 1/4, 1/8, 1/16, 1/32
    for last, n in ((5, 51), (4, 99), (3, 80), (1, 16)):
        paths = adapter.block_paths(1, [(5, 5, 5, last)])
        assert len(paths) == n
        assert {stage_of(p[0]) for p in paths} <= {stage_of(last), stage_of(last) + 1}
    with pytest.raises(ValueError, match=r'block 2 needs the best paths of blocks 0..1, got 1'):
        adapter.block_paths(2, [(5, 5, 5, 5)])
    with pytest.raises(ValueError, match='fair path sampling does not apply'):
        adapter.decisions(0)


def test_a_path_outside_the_restriction_is_refused() -> None:
    space = get_space('hytra_tiny')
    adapter, net = make_adapter(space), space.build_supernet(num_classes=0).eval()
    best = [(5, 4, 4, 4)]  # block 0 ends at 1/8: block 1 starts at 1/8 or 1/16
    allowed = adapter.block_paths(1, best)
    wrong = (0, 0, 0, 0)  # starts at 1/32: a 4x jump
    assert wrong not in allowed and (4, 4, 4, 4) in allowed
    with torch.no_grad():
        h = adapter.run_block(net, torch.randn(1, 3, 32, 32), 0, best[0])
        assert h.shape[1] == 4 * space.widths[1]
        assert adapter.run_block(net, h, 1, (4, 3, 2, 0)).shape[1] == 4 * space.widths[3]
        with pytest.raises(ValueError, match=r'block 1: \(0, 0, 0, 0\) is not a path after input stage 1'):
            adapter.run_block(net, h, 1, wrong)
        with pytest.raises(ValueError, match='an input of 3 channels is at no scale'):
            adapter.run_block(net, torch.randn(1, 3, 8, 8), 1, (4, 4, 4, 4))


def test_projector_inputs_are_the_official_per_scale_channel_fix() -> None:
    cfg = load_config(BossNASConfig, FULL, {})
    adapter = make_adapter(get_space('hytra'))
    assert adapter.out_widths(0) == (256, 512, 1024, 2048)
    with torch.device('meta'):
        fixes = {w: adapter.channel_fix(w, cfg.proj_in) for w in adapter.out_widths(0)}
        assert isinstance(fixes[2048], nn.Identity)  # 1/32 has proj_in channels already
        for w, down, res in ((256, 8, 56), (512, 4, 28), (1024, 2, 14)):  # 1/4, 1/8, 1/16 at 224
            dw, pw, bn = fixes[w]
            assert (dw.kernel_size, dw.stride, dw.groups, dw.bias) == ((down, down), (down, down), w, None)
            assert (pw.in_channels, pw.out_channels, pw.kernel_size) == (w, 2048, (1, 1))
            assert isinstance(bn, nn.BatchNorm2d)
            assert fixes[w](torch.empty(2, w, res, res)).shape == (2, 2048, 7, 7)
    tiny = make_adapter(get_space('hytra_tiny'))
    pw, bn = tiny.channel_fix(256, 16)  # a reduced width at 1/32: only the 1x1 conv + BN
    assert (pw.in_channels, pw.out_channels) == (256, 16)


def test_sampling_is_uniform_over_distinct_restricted_paths_and_fair_is_refused() -> None:
    cfg = load_config(BossNASConfig, TINY, {})
    assert cfg.sampling == 'uniform'
    assert BossNASConfig(space='hytra_tiny').sampling == 'uniform' and BossNASConfig().sampling == 'fair'
    with pytest.raises(ConfigError, match="sampling 'fair' does not apply to space 'hytra_tiny'"):
        BossNASConfig(space='hytra_tiny', sampling='fair')
    best = [(5, 5, 4, 3)]
    block = BossNASBlock(cfg, 1, best)
    allowed = set(block.adapter.block_paths(1, best))
    seen = set()
    for step in range(20):
        paths = block.sample_paths(step)
        assert len(paths) == len(set(paths)) == 4 and set(paths) <= allowed
        assert paths == block.sample_paths(step)  # a pure function of the step
        seen |= set(paths)
    assert len(seen) > 40  # not stuck on a few paths (80 allowed)


# -- the greedy-chain search ------------------------------------------------------------------------------------------
def _scores(space, best: list[tuple[int, ...]]) -> BlockScores:
    """Synthetic ratings on the greedy chain ``best`` (each block scored only after the one before's best)."""
    adapter = make_adapter(space)
    g = torch.Generator().manual_seed(0)
    blocks = []
    for k in range(4):
        paths = adapter.block_paths(k, best)
        scores = torch.rand(len(paths), generator=g).tolist()
        scores[paths.index(best[k])] = -1.0
        blocks.append({adapter.block_key(p): s for p, s in zip(paths, scores, strict=True)})
    return BlockScores(adapter, blocks)


def test_chain_search_is_the_greedy_chain_then_the_next_last_block_paths() -> None:
    space = get_space('hytra_tiny')
    best = [(5, 4, 4, 3), (3, 2, 1, 0), (0, 1, 1, 0), (1, 0, 0, 1)]
    rated = _scores(space, best)
    found = ChainSearcher(best).search(space, rated, 'flops', None, 3)
    assert found[0].arch == space.encode(best)
    assert found[0].score == pytest.approx(sum(rated.block_scores(space.encode(best))))
    last = sorted(rated.blocks[3].items(), key=lambda kv: (kv[1], kv[0]))
    assert [f.arch[12:] for f in found] == [tuple(int(c) for c in k) for k, _ in last[:3]]
    assert all(f.arch[:12] == space.encode(best)[:12] for f in found)
    assert ChainSearcher(None).search(space, rated, 'flops', None, 1)[0].arch == found[0].arch  # chain from the ratings
    costs = sorted(space.cost(space.encode([*best[:3], tuple(int(c) for c in k)]), 'flops') for k, _ in last)
    within = ChainSearcher(best).search(space, rated, 'flops', costs[0], 5)
    assert len(within) >= 1 and all(f.cost <= costs[0] for f in within)
    with pytest.raises(
        ValueError, match=r'no greedy HyTra chain within flops budget .* are fixed by the greedy search'
    ):
        ChainSearcher(best).search(space, rated, 'flops', costs[0] - 1, 1)


# -- end to end -------------------------------------------------------------------------------------------------------
def test_tiny_run_writes_the_greedy_chain_as_a_hytra_spec_that_builds(tiny_run: Path) -> None:
    space = get_space('hytra_tiny')
    best = [tuple(p) for p in json.loads((tiny_run / 'bossnas.json').read_text())['best_paths']]
    doc = json.loads((tiny_run / 'arch' / 'top1.json').read_text())
    spec, prov = doc['spec'], doc['search']
    assert spec['family'] == 'hytra' and tuple(prov['arch']) == space.encode(best) == space.from_spec(spec)
    assert timm.create_model('hytra', spec=spec, num_classes=10).eval()(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    zoo.create_model(spec)
    last = _rows(tiny_run, 3)
    for rank in (1, 2, 3):  # top<i>: the chain with the i-th best last-block path
        arch = json.loads((tiny_run / 'arch' / f'top{rank}.json').read_text())['search']['arch']
        assert tuple(arch[:12]) == space.encode(best)[:12] and arch[12:] == last[rank - 1]['path']


def test_killed_run_resumes_to_the_same_greedy_chain_and_specs(tiny_run: Path, tmp_path: Path) -> None:
    out = tmp_path / 'killed'
    proc = _run(tiny_run.parent / 'data', out, env={**ENV, engine.FAULT_ENV: '2'})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert torch.load(out / 'block0' / 'checkpoints' / 'last.pt', weights_only=True)['step'] == 2
    assert not (out / 'arch').exists()
    proc = _run(tiny_run.parent / 'data', out, '--resume')
    assert proc.returncode == 0, proc.stderr[-3000:]
    for k in range(4):
        want = torch.load(tiny_run / f'block{k}' / 'checkpoints' / 'last.pt', weights_only=True)['model']
        got = torch.load(out / f'block{k}' / 'checkpoints' / 'last.pt', weights_only=True)['model']
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=0, atol=0, msg=key)
        assert _rows(out, k) == _rows(tiny_run, k)
    assert json.loads((out / 'bossnas.json').read_text()) == json.loads((tiny_run / 'bossnas.json').read_text())
    for rank in (1, 2, 3):
        a = json.loads((tiny_run / 'arch' / f'top{rank}.json').read_text())['spec']
        assert json.loads((out / 'arch' / f'top{rank}.json').read_text())['spec'] == a


def test_rated_paths_are_the_greedy_restriction(tiny_run: Path) -> None:
    space = get_space('hytra_tiny')
    best = [tuple(p) for p in json.loads((tiny_run / 'bossnas.json').read_text())['best_paths']]
    prev = STEM
    for k in range(4):
        rows = _rows(tiny_run, k)
        paths = [tuple(r['path']) for r in rows]
        assert paths[0] == best[k] and sorted(paths) == sorted(space.block_paths(k, prev))
        if k:  # every rated path starts at the scale block k-1's best path ends at, or half of it
            assert {stage_of(p[0]) for p in paths} <= {prev, prev + 1}
        assert [r['score'] for r in rows] == sorted(r['score'] for r in rows)
        prev = stage_of(best[k][-1])


def test_the_trained_chain_is_the_backbone_of_the_emitted_spec(tiny_run: Path) -> None:
    cfg = load_config(BossNASConfig, TINY, {})
    space = get_space(cfg.space, img_size=cfg.img_size)
    adapter = make_adapter(space)
    runner = BossRunner(adapter, space.build_supernet(num_classes=cfg.num_classes), cfg)
    runner.load_state_dict(engine.load_checkpoint(tiny_run / 'block3' / 'checkpoints' / 'last.pt')['model'])
    supernet = runner.online.supernet.eval()
    doc = json.loads((tiny_run / 'arch' / 'top1.json').read_text())
    arch = tuple(doc['search']['arch'])
    model = zoo.create_model(doc['spec'], num_classes=cfg.num_classes).eval()
    model.load_state_dict(supernet.path_state_dict(arch), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        h = x
        for k, path in enumerate(space.decode(arch)):
            h = adapter.run_block(supernet, h, k, path)
        torch.testing.assert_close(model.forward_features(x), h, rtol=0, atol=0)
        other = space.encode([*space.decode(arch)[:3], tuple(_rows(tiny_run, 3)[1]['path'])])
        assert not torch.allclose(supernet.forward_features(x, other), h, atol=1e-4)


# -- full size --------------------------------------------------------------------------------------------------------
def test_full_size_config_has_the_official_values_and_builds_on_meta() -> None:
    cfg = load_config(BossNASConfig, FULL, {})
    assert (cfg.paths, cfg.pairs, cfg.sampling, cfg.epochs, cfg.batch_size, cfg.grad_accum) == (
        4,
        4,
        'uniform',
        6,
        4096,
        8,
    )
    assert (cfg.proj_in, cfg.proj_hidden, cfg.proj_out, cfg.pred_hidden) == (2048, 4096, 256, 4096)
    assert cfg.lr == pytest.approx(4.8) and cfg.ema_base == 0.99 and cfg.weight_decay == 1e-6
    space = get_space(cfg.space, img_size=cfg.img_size, **cfg.space_options)
    assert space.size == 1_703_991
    with torch.device('meta'):
        runner = BossRunner(make_adapter(space), space.build_supernet(num_classes=cfg.num_classes), cfg)
    assert [len(p.fix) for p in runner.online.projectors] == [4, 4, 4, 4]  # blocks 1-3 reach 1/4 after [5]*4


def test_full_size_supernet_trains_one_step_at_batch_2_on_cpu() -> None:
    """The issue's done-when: the full-size siamese model (online + target supernets, heads of 2048 -> 4096 -> 256)
    takes one LARS step on block 0 with 4 paths x 4 view pairs of 224x224 images (about 25 s, 6 GB on one thread)."""
    torch.set_num_threads(1)
    cfg = load_config(BossNASConfig, FULL, {})
    block = BossNASBlock(cfg, 0)
    torch.manual_seed(0)
    block.runner = runner = BossRunner(block.adapter, block.space.build_supernet(num_classes=cfg.num_classes), cfg)
    opt, _, _ = block.optimizer(steps_per_epoch=10)
    g = torch.Generator().manual_seed(0)
    views = [torch.randn(2, 3, 224, 224, generator=g) for _ in range(2 * cfg.pairs)]
    paths = block.sample_paths(0)
    before = {n: p.detach().clone() for n, p in runner.named_parameters() if p.requires_grad and 'layers.0.' in n}
    runner.train()
    loss = runner(views, paths).sum()
    assert torch.isfinite(loss) and 0 < float(loss.detach()) <= 4 * len(paths) * 2
    loss.backward()
    opt.step()
    block.after_step(0)
    changed = [n for n, p in runner.named_parameters() if n in before and not torch.equal(p, before[n])]
    used = {f'layers.0.{p[0]}.' for p in paths}
    assert changed and all(any(u in n for u in used) for n in changed)  # only the sampled paths' weights move
