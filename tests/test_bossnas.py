"""BossNAS on CPU: loss and target semantics, EMA schedule, LARS exclusions, fixed rating views, config errors, the
exact budgeted search, and the tiny NATS-size run end to end (spec that builds, kill/resume to the same spec)."""

from __future__ import annotations

import dataclasses
import itertools
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F

import zoo
from search import engine
from search.config import ConfigError, load_config
from search.methods import bossnas
from search.methods.bossnas import (
    BlockRater,
    BlockScores,
    BossNAS,
    BossNASBlock,
    BossNASConfig,
    BossRunner,
    SummedSearcher,
    byol_loss,
    ema_momentum,
)
from search.methods.bossnas_blocks import fair_paths, make_adapter
from search.spaces import get_space
from tests._helpers import ENV

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / 'configs/search/bossnas_nats_tiny.yaml'


def _run(output: Path, data_dir: Path, *extra: str, env: dict | None = None, check: bool = True):
    cmd = [sys.executable, '-m', 'search', 'bossnas', '--config', str(TINY), '--data-dir', str(data_dir)]
    proc = subprocess.run(
        [*cmd, '--output', str(output), *extra], cwd=ROOT, env=env or ENV, capture_output=True, text=True, timeout=600
    )
    if check and proc.returncode != 0:
        raise AssertionError(f'bossnas failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}')
    return proc


@pytest.fixture(scope='module')
def tiny_run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp('bossnas_run') / 'run'
    _run(out, tiny_data)
    return out


def _cfg(**kw) -> BossNASConfig:
    values = dict(space='nats_size_tiny', proj_in=8, proj_hidden=16, proj_out=8, pred_hidden=16, paths=2)
    return BossNASConfig(**{**values, **kw})


def _runner(cfg: BossNASConfig, k: int = 0, best=()) -> BossRunner:
    method = BossNASBlock(cfg, k, best)
    torch.manual_seed(0)
    runner = BossRunner(method.adapter, method.space.build_supernet(), cfg, cfg.train_previous)
    runner.k, runner.best = k, list(best)
    return runner


# -- loss and target semantics --------------------------------------------------------------------------------------
def test_byol_loss_is_zero_for_identical_directions_and_four_for_opposite() -> None:
    z = F.normalize(torch.randn(5, 8), dim=1)
    assert float(byol_loss(z, z)) == pytest.approx(0.0, abs=1e-6)
    assert float(byol_loss(3 * z, z)) == pytest.approx(0.0, abs=1e-6)  # both sides normalised
    assert float(byol_loss(-z, z)) == pytest.approx(4.0, abs=1e-6)
    e = torch.eye(2)
    assert float(byol_loss(e[:1], e[1:])) == pytest.approx(2.0)


def test_ema_momentum_goes_from_base_to_one_on_a_cosine() -> None:
    assert ema_momentum(0, 100) == pytest.approx(0.99)
    assert ema_momentum(100, 100) == pytest.approx(1.0)
    assert ema_momentum(50, 100) == pytest.approx(0.995)
    assert ema_momentum(0, 10, base=0.996) == pytest.approx(0.996)


def test_ema_momentum_restarts_for_every_block() -> None:
    """Block 1's first update uses the base momentum again: target moves by (1 - 0.99) of the gap."""
    cfg = _cfg()
    for k in (0, 1):
        method = BossNASBlock(cfg, k, [(0, 0)] if k else [])
        torch.manual_seed(0)
        method.runner = BossRunner(method.adapter, method.space.build_supernet(), cfg)
        method.runner.k, method.runner.best = k, method.best
        method.optimizer(steps_per_epoch=5)
        assert method.total == 5 * cfg.epochs
        p_online = next(method.runner.online.parameters())
        p_target = next(method.runner.target.parameters())
        with torch.no_grad():
            p_online.copy_(p_target + 1.0)
        before = p_target.detach().clone()
        method.after_step(0)
        torch.testing.assert_close(p_target.detach(), before + 0.01)


def test_target_is_the_mean_over_paths_of_normalised_target_projections(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _cfg(paths=2)
    runner = _runner(cfg, k=1, best=[(1, 0)])
    views = [torch.randn(4, 3, 32, 32) for _ in range(4)]
    paths = [(0, 1), (1, 0)]
    seen = []
    real = bossnas.byol_loss
    monkeypatch.setattr(bossnas, 'byol_loss', lambda p, t: seen.append(t) or real(p, t))
    runner.train()
    losses = runner(views, paths)
    assert losses.shape == (2,)
    with torch.no_grad():  # by hand: prefix along the best path, block 1 along each path, projector, normalise
        t = runner.target
        z = {0: [], 1: []}
        for i, path in enumerate(paths):
            for v in (0, 1):
                h = runner.adapter.run_block(t.supernet, views[2 * i + v], 0, (1, 0))
                z[v].append(F.normalize(t.projectors[1](runner.adapter.run_block(t.supernet, h, 1, path)), dim=1))
        want = [torch.stack(z[v]).mean(0) for v in (0, 1)]
        unnormalised_mean = torch.stack([zz * 3 for zz in z[1]]).mean(0)
    # each path's loss compares view 1 with the view-2 target and view 2 with the view-1 target
    for got in seen[0::2]:
        torch.testing.assert_close(got, want[1])
    for got in seen[1::2]:
        torch.testing.assert_close(got, want[0])
    assert not torch.allclose(seen[0], unnormalised_mean)


def test_the_target_never_receives_gradients() -> None:
    cfg = _cfg()
    runner = _runner(cfg, k=1, best=[(0, 1)])
    runner.train()
    views = [torch.randn(4, 3, 32, 32) for _ in range(4)]
    runner(views, [(0, 0), (1, 1)]).sum().backward()
    assert all(not p.requires_grad and p.grad is None for p in runner.target.parameters())
    online = [p for p in runner.online.supernet.parameters() if p.grad is not None]
    assert online, 'the online supernet got no gradient'
    # train_previous: the best path of block 0 (stem) is trained too; without it, block 0 gets nothing
    assert runner.online.supernet.stem[0].weight.grad is not None
    frozen = _runner(_cfg(train_previous=False), k=1, best=[(0, 1)])
    frozen.train()
    frozen(views, [(0, 0), (1, 1)]).sum().backward()
    assert frozen.online.supernet.stem[0].weight.grad is None


def test_lars_excludes_one_dimensional_parameters_from_decay_and_adaptation() -> None:
    cfg = _cfg(batch_size=64, base_batch=4096)
    method = BossNASBlock(cfg, 0)
    method.runner = _runner(cfg)
    opt, _, per_step = method.optimizer(steps_per_epoch=3)
    assert per_step and type(opt).__name__ == 'Lars'
    decay, plain = opt.param_groups
    assert all(p.ndim > 1 for p in decay['params']) and decay['weight_decay'] == cfg.weight_decay
    assert all(p.ndim <= 1 for p in plain['params']) and plain['weight_decay'] == 0.0
    assert not plain.get('always_adapt', False)  # timm's Lars adapts only groups with weight decay
    assert cfg.lr == pytest.approx(4.8 * 64 / 4096)
    ids = {id(p) for g in opt.param_groups for p in g['params']}
    assert not ids & {id(p) for p in method.runner.target.parameters()}
    assert not ids & {id(p) for p in method.runner.predictors[1].parameters()}  # only this block's heads


def test_fair_sampling_uses_every_option_once_per_decision() -> None:
    g = torch.Generator().manual_seed(0)
    paths = fair_paths([tuple(range(8))] * 2, 8, g)
    for d in range(2):
        assert sorted(p[d] for p in paths) == list(range(8))
    nb201 = make_adapter(get_space('nb201', subspace='only_conv'))
    paths = fair_paths(nb201.decisions(0), 4, g)
    for d in range(6):
        assert sorted(p[d] for p in paths) == sorted(nb201.decisions(0)[d] * 2)


# -- config --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ('setting', 'name'),
    [
        ({'paths': 0}, 'paths'),
        ({'view_pairs': 3, 'paths': 2}, 'view_pairs'),
        ({'sampling': 'greedy'}, 'sampling'),
        ({'ema_base': 1.0}, 'ema_base'),
        ({'base_lr': 0.0}, 'base_lr'),
        ({'rating_images': 1}, 'rating_images'),
        ({'view_aug': 'crop'}, 'view_aug'),
        ({'space': 'fairnas'}, 'space'),
        ({'blocks': (0,)}, 'blocks'),
        ({'proj_out': 0}, 'proj_out'),
        ({'rating_paths': -1}, 'rating_paths'),
        ({'rating_archs': [[0, 1]]}, 'rating_archs'),
        ({'space': 'bossnas_mbconv_tiny', 'rating_paths': 4}, 'rating_paths'),
    ],
)
def test_bad_config_values_are_named(setting: dict, name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        load_config(BossNASConfig, TINY, setting)


def test_block_runs_refuse_the_block_option_on_the_command_line(tiny_data: Path, tmp_path: Path) -> None:
    proc = _run(tmp_path / 'x', tiny_data, '--block', '0', check=False)
    assert proc.returncode == 2 and 'error:' in proc.stderr


# -- search --------------------------------------------------------------------------------------------------------
def test_exact_budgeted_search_equals_the_exhaustive_one_on_nats() -> None:
    space = get_space('nats_size_tiny')
    adapter = make_adapter(space)
    g = torch.Generator().manual_seed(3)
    blocks = [
        {adapter.block_key(p): float(torch.rand((), generator=g)) for p in adapter.block_paths(k, [])}
        for k in range(adapter.num_blocks)
    ]
    rated = BlockScores(adapter, blocks)
    costs = sorted(space.cost(a, 'macs') for a in itertools.product(range(2), repeat=5))
    budget = costs[len(costs) // 2]
    exact = SummedSearcher()._exact(space, rated, 'macs', budget, 4)
    allowed = [space.allowed(i) for i in range(5)]
    brute = sorted((rated(a), a) for a in itertools.product(*allowed) if space.cost(a, 'macs') <= budget)[:4]
    assert [f.arch for f in exact] == [a for _, a in brute]
    for f in exact:
        assert f.cost == pytest.approx(space.cost(f.arch, 'macs')) and f.cost <= budget
        assert f.score == pytest.approx(rated(f.arch))


# -- end to end -----------------------------------------------------------------------------------------------------
def test_tiny_run_writes_a_nats_spec_that_builds(tiny_run: Path) -> None:
    doc = json.loads((tiny_run / 'arch' / 'top1.json').read_text())
    spec = doc['spec']
    assert spec['family'] == 'nats_size'
    net = timm.create_model(spec['family'], spec=spec)
    assert net(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    zoo.create_model(spec)
    best = json.loads((tiny_run / 'bossnas.json').read_text())['best_paths']
    assert [len(p) for p in best] == [2, 2, 1]
    for k, n in enumerate((4, 4, 2)):  # every path of every block is rated, best first
        rows = json.loads((tiny_run / f'block{k}' / 'ratings' / 'block.json').read_text())['candidates']
        assert len(rows) == n and rows[0]['path'] == best[k]
        assert [r['score'] for r in rows] == sorted(r['score'] for r in rows)
    results = json.loads((tiny_run / 'search_result.json').read_text())['results']
    assert [r['score'] for r in results] == sorted(r['score'] for r in results)


def test_a_rerun_without_resume_is_refused(tiny_run: Path, tiny_data: Path) -> None:
    proc = _run(tiny_run, tiny_data, check=False)
    assert proc.returncode == 2 and '--resume' in proc.stderr


def test_rating_views_are_fixed_across_rater_instances(tiny_run: Path, tiny_data: Path) -> None:
    cfg = load_config(BossNASConfig, TINY, {'data_dir': str(tiny_data), 'output': str(tiny_run)})
    driver = BossNAS(cfg)
    bcfg = driver.block_config(0)
    ctx = engine.init_distributed('cpu')
    a = BlockRater(BossNASBlock(bcfg, 0), ctx).views()
    b = BlockRater(BossNASBlock(bcfg, 0), ctx).views()
    for (ha, ca), (hb, cb) in zip(zip(*a, strict=False), zip(*b, strict=False), strict=True):
        for x, y in zip(ha, hb, strict=True):
            torch.testing.assert_close(x, y, rtol=0, atol=0)
        torch.testing.assert_close(ca, cb, rtol=0, atol=0)
    assert not torch.equal(a[0][0][0], a[0][0][1])  # the two views of a pair differ
    other = BlockRater(BossNASBlock(dataclasses.replace(bcfg, seed=7), 0), ctx).views()
    assert not torch.equal(other[0][0][0], a[0][0][0])


def test_sampled_rating_scores_the_sample_and_the_asked_architectures(
    tiny_run: Path, tiny_data: Path, tmp_path: Path
) -> None:
    """rating_paths: the centre comes from a seeded sample; the asked architectures are scored too; a sample as
    large as the block is the exhaustive rating, to the bit."""
    shutil.copytree(tiny_run / 'block0', tmp_path / 'block0')
    (tmp_path / 'block0' / 'ratings' / 'block.json').unlink()
    full = json.loads((tiny_run / 'block0' / 'ratings' / 'block.json').read_text())['candidates']
    ctx = engine.init_distributed('cpu')
    values = {'data_dir': str(tiny_data), 'output': str(tmp_path / 'block0')}

    def rate(**kw):
        cfg = load_config(BossNASConfig, TINY, {**values, **kw})
        rater = BlockRater(BossNASBlock(cfg, 0), ctx)
        return rater, rater.rate()

    rater, rows = rate(rating_paths=4)
    assert rater.complete and [(r['key'], r['score']) for r in rows] == [(r['key'], r['score']) for r in full]
    rater, _ = rate(rating_paths=2, rating_archs=[])
    sample, _ = rater.population()
    outside = next(tuple(r['path']) for r in full if tuple(r['path']) not in sample)
    arch = (*outside, 0, 0, 0)
    rater, rows = rate(rating_paths=2, rating_archs=[list(arch)])
    assert not rater.complete and len(sample) == 2
    assert sorted(tuple(r['path']) for r in rows) == sorted([*sample, outside])
    by_key = {r['key']: r['score'] for r in full}
    assert any(abs(r['score'] - by_key[r['key']]) > 1e-6 for r in rows)  # another centre: other scores
    doc = json.loads((tmp_path / 'block0' / 'ratings' / 'block.json').read_text())
    assert doc['complete'] is False


def test_search_over_sampled_ratings_ranks_only_fully_rated_architectures() -> None:
    space = get_space('nats_size_tiny')
    adapter = make_adapter(space)
    g = torch.Generator().manual_seed(5)
    blocks = []
    for k in range(adapter.num_blocks):
        paths = adapter.block_paths(k, [])[:-1] if k == 0 else adapter.block_paths(k, [])  # one block-0 path unrated
        blocks.append({adapter.block_key(p): float(torch.rand((), generator=g)) for p in paths})
    rated = BlockScores(adapter, blocks, complete=False)
    found = SummedSearcher().search(space, rated, 'macs', None, 32)
    allowed = [space.allowed(i) for i in range(5)]
    want = sorted((rated(a), a) for a in itertools.product(*allowed) if rated.rated(a))
    assert len(found) == len(want) == 24 and [f.arch for f in found] == [a for _, a in want]


def test_killed_run_resumes_to_the_same_spec(tiny_run: Path, tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / 'killed'
    proc = _run(out, tiny_data, env={**ENV, engine.FAULT_ENV: '2'}, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert torch.load(out / 'block0' / 'checkpoints' / 'last.pt', weights_only=True)['step'] == 2
    assert not (out / 'arch').exists()
    _run(out, tiny_data, '--resume')
    for k in range(3):
        want = torch.load(tiny_run / f'block{k}' / 'checkpoints' / 'last.pt', weights_only=True)['model']
        got = torch.load(out / f'block{k}' / 'checkpoints' / 'last.pt', weights_only=True)['model']
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=0, atol=0, msg=key)
    a = json.loads((tiny_run / 'search_result.json').read_text())['results']
    b = json.loads((out / 'search_result.json').read_text())['results']
    assert [r['spec'] for r in a] == [r['spec'] for r in b]
    assert [r['score'] for r in a] == [r['score'] for r in b]


def test_tiny_mbconv_run_writes_an_mbconv_spec_that_builds(tiny_data: Path, tmp_path: Path) -> None:
    config = ROOT / 'configs/search/bossnas_mbconv_tiny.yaml'
    cmd = [sys.executable, '-m', 'search', 'bossnas', '--config', str(config), '--data-dir', str(tiny_data)]
    proc = subprocess.run(
        [*cmd, '--output', str(tmp_path / 'mb')], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((tmp_path / 'mb' / 'arch' / 'top1.json').read_text())
    net = timm.create_model('mbconv', spec=doc['spec'], num_classes=10).eval()
    assert net(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    assert doc['spec']['shortcut'] == 'avg_down'  # BossNAS's MBConv layers: every layer residual
    space = get_space('bossnas_mbconv_tiny', img_size=32)
    best = json.loads((tmp_path / 'mb' / 'bossnas.json').read_text())['best_paths']
    assert len(best) == len(space.blocks)
    rows = json.loads((tmp_path / 'mb' / 'block1' / 'ratings' / 'block.json').read_text())['candidates']
    assert len(rows) == sum(len(b.ops) ** c.layers for b in space.blocks[1:2] for c in b.cells)


def test_full_size_nats_config_has_the_official_values_and_builds_on_meta() -> None:
    cfg = load_config(BossNASConfig, ROOT / 'configs/search/bossnas_nats.yaml', {})
    assert (cfg.paths, cfg.pairs, cfg.sampling, cfg.epochs) == (8, 1, 'fair', 50)
    assert (cfg.proj_in, cfg.proj_hidden, cfg.proj_out, cfg.pred_hidden) == (2048, 4096, 256, 4096)
    assert cfg.lr == pytest.approx(0.48) and cfg.ema_base == 0.99 and cfg.warmup_epochs == 2.0
    space = get_space(cfg.space, img_size=cfg.img_size)
    with torch.device('meta'):
        runner = BossRunner(make_adapter(space), space.build_supernet(), cfg)
    assert len(runner.online.projectors) == 3 and len(runner.online.projectors[0].fix) == 8


def test_two_gloo_processes_equal_one_process_with_two_accumulation_steps(tiny_data: Path, tmp_path: Path) -> None:
    """torchrun, 2 CPU processes x 4 images == 1 process x (2 accumulation steps x 4 images), batch 8 both."""
    from tests._helpers import free_port as _free_port

    ddp = tmp_path / 'ddp'
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc-per-node', '2', '--master-port', str(_free_port())]
    cmd += ['-m', 'search', 'bossnas', '--config', str(TINY), '--data-dir', str(tiny_data), '--output', str(ddp)]
    proc = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    single = tmp_path / 'single'
    _run(single, tiny_data, '--grad-accum', '2')
    for k in range(3):
        a = torch.load(ddp / f'block{k}' / 'checkpoints' / 'last.pt', weights_only=True)['model']
        b = torch.load(single / f'block{k}' / 'checkpoints' / 'last.pt', weights_only=True)['model']
        # parameters (online and EMA target) match; BN running statistics differ by design (DDP keeps rank 0's)
        params = [n for n in a if not n.endswith(('running_mean', 'running_var', 'num_batches_tracked'))]
        for key in params:
            torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)
    ra = json.loads((ddp / 'search_result.json').read_text())['results']
    rb = json.loads((single / 'search_result.json').read_text())['results']
    assert [r['arch'] for r in ra] == [r['arch'] for r in rb]


def test_a_block_trained_on_other_best_paths_is_not_reused(tmp_path: Path) -> None:
    from search.pipeline import RunFolderError

    cfg = dataclasses.replace(_cfg(), output=str(tmp_path / 'block1'))
    ctx = engine.init_distributed('cpu')
    BossNAS._check_prefix(cfg, [(0, 1)], ctx)  # first time: recorded
    (tmp_path / 'block1' / 'checkpoints').mkdir(parents=True)
    (tmp_path / 'block1' / 'checkpoints' / 'last.pt').write_bytes(b'')
    BossNAS._check_prefix(cfg, [(0, 1)], ctx)  # same prefix: fine
    with pytest.raises(RunFolderError, match='--overwrite'):
        BossNAS._check_prefix(cfg, [(1, 1)], ctx)
