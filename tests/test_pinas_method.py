"""Pi-NAS on CPU: the cross-path loss, the path-restricted mean teacher, the queue, path pairs, the ablation switches,
config errors, and the tiny run end to end (spec that builds, kill/resume, gloo DDP = accumulation, rating cache)."""

from __future__ import annotations

import json
import math
import shutil
import signal
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import zoo
from search import engine, pipeline
from search.cli import main as search_cli
from search.config import ConfigError, load_config
from search.methods.pinas import (
    LinearProbeRater,
    PiNAS,
    PiNASConfig,
    cross_path_loss,
    path_parameter_names,
    sample_path_pair,
)
from search.protocols import StepContext
from search.spaces import get_space
from tests._helpers import ENV, ROOT, assert_same_params, assert_same_weights, run_search, torchrun, weights

TINY = ROOT / 'configs/search/pinas_tiny.yaml'
FULL = ROOT / 'configs/search/pinas.yaml'


def _cfg(**kw) -> PiNASConfig:
    return load_config(PiNASConfig, TINY, kw)


def _method(**kw) -> PiNAS:
    method = PiNAS(_cfg(**kw))
    method.build(engine.init_distributed('cpu'))
    return method


@pytest.fixture(scope='module')
def tiny_run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp('pinas_run') / 'run'
    run_search('pinas', TINY, out, tiny_data)
    return out


# -- loss -------------------------------------------------------------------------------------------------------------
def _hand_term(q: list[float], k: list[float], queue: list[list[float]], tau: float) -> float:
    dot = lambda a, b: sum(x * y for x, y in zip(a, b, strict=True))  # noqa: E731
    logits = [dot(q, k) / tau] + [dot(q, n) / tau for n in queue]
    return -(logits[0] - math.log(sum(math.exp(v) for v in logits)))


def test_cross_path_loss_equals_a_hand_computed_case_and_needs_the_right_temperature() -> None:
    s = 1 / math.sqrt(2)
    q_i, k_j, q_j, k_i = [1.0, 0.0], [s, s], [0.0, 1.0], [0.6, 0.8]
    queue = [[-1.0, 0.0], [0.0, -1.0], [0.8, -0.6]]
    want = _hand_term(q_i, k_j, queue, 0.2) + _hand_term(q_j, k_i, queue, 0.2)
    t = lambda v: torch.tensor([v])  # noqa: E731
    got = cross_path_loss(t(q_i), t(k_j), t(q_j), t(k_i), torch.tensor(queue), 0.2)
    assert float(got) == pytest.approx(want, rel=1e-6)
    # the pairing is cross-path: swapping the keys (same-path pairs) gives another value
    same = cross_path_loss(t(q_i), t(k_i), t(q_j), t(k_j), torch.tensor(queue), 0.2)
    assert abs(float(same) - want) > 1e-3
    for wrong in (0.1, 0.07, 1.0):  # a wrong temperature fails the hand value
        assert abs(float(cross_path_loss(t(q_i), t(k_j), t(q_j), t(k_i), torch.tensor(queue), wrong)) - want) > 1e-2
    # without negatives only the consistency term -(q_i.k_j + q_j.k_i) / tau remains
    no_neg = cross_path_loss(t(q_i), t(k_j), t(q_j), t(k_i), None, 0.2)
    assert float(no_neg) == pytest.approx(-(s + 0.8) / 0.2, rel=1e-6)


def test_loss_is_a_batch_mean_of_per_image_terms() -> None:
    g = torch.Generator().manual_seed(0)
    vecs = [F.normalize(torch.randn(3, 4, generator=g), dim=1) for _ in range(4)]
    queue = F.normalize(torch.randn(5, 4, generator=g), dim=1)
    whole = cross_path_loss(*vecs, queue, 0.2)
    parts = [cross_path_loss(*[v[n : n + 1] for v in vecs], queue, 0.2) for n in range(3)]
    torch.testing.assert_close(whole, torch.stack(parts).mean())


# -- paths and the mean teacher ---------------------------------------------------------------------------------------
def test_path_pairs_are_distinct_and_a_pure_function_of_the_step() -> None:
    space = get_space('nb201_tiny')
    for step in range(5):
        a, b = sample_path_pair(space, engine.generator(0, step))
        assert all(x != y for x, y in zip(a, b, strict=True))  # official: different at every decision
        assert (a, b) == sample_path_pair(space, engine.generator(0, step))
        c, d = sample_path_pair(space, engine.generator(0, step), 'independent')
        assert c != d
    method = PiNAS(_cfg())
    assert method.sample_paths(3) == method.sample_paths(3) != method.sample_paths(4)
    one = PiNAS(_cfg(cross_path=False)).sample_paths(3)
    assert one[0] == one[1]  # ablation without cross-path: one path for both views


def test_path_parameters_are_those_the_emitted_network_inherits() -> None:
    space = get_space('nb201_tiny')
    net = space.build_supernet(num_classes=0)
    arch = (2, 3, 2, 3, 2, 3)
    names = path_parameter_names(net, arch)
    assert names and all('.candidates.' not in n or n.split('.candidates.')[1][0] in '23' for n in names)
    assert not any('.candidates.4.' in n or '.candidates.0.' in n for n in names)
    all_names = {n for n, _ in net.named_parameters()}
    assert set(names) < all_names


@pytest.mark.parametrize('space', ['pinas_tiny', 'nb201_tiny'])
def test_teacher_moves_by_the_ema_only_on_the_active_paths(space: str) -> None:
    """Also on the ResNeSt space, whose stage shortcut is one module shared by the four candidates."""
    method = _method(space=space)
    runner, lam = method.runner, method.cfg.ema_momentum
    with torch.no_grad():
        for p in runner.student.parameters():
            p.add_(torch.randn_like(p))  # student != teacher
    before = {n: p.clone() for n, p in runner.teacher.named_parameters()}
    student = {n: p.clone() for n, p in runner.student.named_parameters()}
    path_i, path_j = method.sample_paths(0)
    method.update_teacher([path_i, path_j])
    on_i, on_j = set(method._names(path_i)), set(method._names(path_j))
    moved = untouched = 0
    for name, p in runner.teacher.named_parameters():
        t, s = before[name], student[name]
        if name in on_i and name in on_j:  # stem, shared parts, neck: two EMA steps
            want = lam * (lam * t + (1 - lam) * s) + (1 - lam) * s
        elif name in on_i or name in on_j:
            want = lam * t + (1 - lam) * s
        else:
            want = t
            untouched += 1
            assert torch.equal(p, t), name  # candidates on neither path: bit for bit unchanged
        moved += name in on_i or name in on_j
        torch.testing.assert_close(p, want, rtol=1e-6, atol=1e-7, msg=name)
    assert moved and untouched
    assert any(n in on_i and n in on_j for n in before) and any(n.startswith('neck.') for n in on_i)


def test_teacher_variants_of_the_ablation() -> None:
    full = _method(teacher='full_ema')
    with torch.no_grad():
        for p in full.runner.student.parameters():
            p.add_(1.0)
    before = [p.clone() for p in full.runner.teacher.parameters()]
    full.update_teacher(full.sample_paths(0))
    assert all(not torch.equal(a, b) for a, b in zip(before, full.runner.teacher.parameters(), strict=True))
    plain = _method(teacher='student')
    with torch.no_grad():
        for p in plain.runner.student.parameters():
            p.add_(1.0)
    plain.update_teacher(plain.sample_paths(0))
    for a, b in zip(plain.runner.student.parameters(), plain.runner.teacher.parameters(), strict=True):
        assert torch.equal(a, b)
    assert all(not p.requires_grad for p in plain.runner.teacher.parameters())


def test_queue_is_a_fifo_that_wraps_around() -> None:
    runner = _method(queue_size=5, feat_dim=2).runner
    first = torch.arange(6.0).view(3, 2)
    runner.enqueue(first)
    torch.testing.assert_close(runner.queue[:3], first)
    assert int(runner.queue_ptr) == 3
    second = 10 + torch.arange(8.0).view(4, 2)
    runner.enqueue(second)  # rows 3, 4, then 0, 1 (the oldest) are replaced
    torch.testing.assert_close(runner.queue[3:], second[:2])
    torch.testing.assert_close(runner.queue[:2], second[2:])
    torch.testing.assert_close(runner.queue[2], first[2])
    assert int(runner.queue_ptr) == 2


def test_after_step_enqueues_every_micro_batch_in_order() -> None:
    method = _method(queue_size=8, feat_dim=2)
    a, b = torch.ones(2, 2), 2 * torch.ones(2, 2)
    method._pending = [a, b]
    method.after_step(0)
    torch.testing.assert_close(method.runner.queue[:4], torch.cat([a, b]))
    assert method._pending == [] and int(method.runner.queue_ptr) == 4


def test_without_negatives_there_is_no_queue() -> None:
    method = _method(negatives=False)
    assert method.runner.queue is None and 'queue' not in method.runner.state_dict()
    views = [torch.randn(4, 3, 32, 32) for _ in range(4)]
    perms = [torch.randperm(4), torch.randperm(4)]
    loss, keys = method.runner(views, *method.sample_paths(0), perms)
    assert keys.shape == (4, 16) and float(loss.detach()) < 0  # -(cos + cos) / tau


def test_shuffle_bn_changes_the_keys_but_not_their_order() -> None:
    method = _method()
    runner = method.runner.train()
    x = torch.randn(8, 3, 32, 32)
    arch = method.sample_paths(0)[0]
    ident = runner.keys(x, arch, torch.arange(8))
    shuffled = runner.keys(x, arch, torch.tensor([7, 0, 5, 2, 4, 1, 6, 3]))
    assert not torch.allclose(ident, shuffled)  # other images share the key's BN group
    with pytest.raises(ValueError, match='shuffle_bn_groups 2: a micro-batch of 3 images'):
        runner.keys(x[:3], arch, torch.arange(3))
    runner.groups = 1
    torch.testing.assert_close(
        runner.keys(x, arch, torch.tensor([7, 0, 5, 2, 4, 1, 6, 3])), runner.keys(x, arch, torch.arange(8))
    )


# -- config ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ('setting', 'message'),
    [
        ({'teacher': 'ema'}, "teacher 'ema': expected one of path_ema, full_ema, student"),
        ({'path_pairs': 'same'}, "path_pairs 'same': expected one of disjoint, independent"),
        ({'searcher': 'lanas'}, "searcher 'lanas': expected one of evolution, random, action_space"),
        ({'searcher': 'action_space', 'action_space': {'samples': 2}}, 'top_k 3 is more than action_space samples 2'),
        ({'action_space': {'classifier': 'svm'}}, "action_space classifier 'svm'"),
        ({'temperature': 0.0}, 'temperature must be positive'),
        ({'ema_momentum': 1.0}, r'ema_momentum must be in \[0, 1\)'),
        ({'queue_size': 0}, 'queue_size must be positive'),
        ({'shuffle_bn_groups': 0}, 'shuffle_bn_groups must be positive'),
        ({'linear_milestones': [80, 60]}, 'linear_milestones must be increasing'),
        ({'linear_batch_size': 7, 'grad_accum': 2}, 'linear_batch_size 7 is not divisible by grad_accum 2'),
        ({'calib_images': 1}, 'calib_images must be >= 2'),
        ({'recalibration': 'none'}, "recalibration 'none': expected one of reset, momentum"),
        ({'evolution': {'popsize': 3}}, r"evolution: unknown option\(s\) \['popsize'\]"),
        ({'cross_path': 'yes'}, "cross_path='yes': expected bool"),
        ({'blocks': [0]}, 'block jobs do not apply'),
        ({'space': 'nope'}, "space 'nope' .*unknown search space 'nope'"),
    ],
)
def test_bad_config_values_are_named(setting: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _cfg(**setting)


def test_bad_config_value_fails_in_one_line_on_the_command_line(tiny_data: Path, tmp_path: Path, capsys) -> None:
    argv = ['pinas', '--config', str(TINY), '--data-dir', str(tiny_data), '--output', str(tmp_path / 'bad')]
    assert search_cli([*argv, '--set', 'teacher=mean']) == 2
    err = capsys.readouterr().err
    assert "teacher 'mean'" in err and 'Traceback' not in err and len(err.strip().splitlines()) == 1, err


def test_full_size_config_has_the_official_values() -> None:
    cfg = load_config(PiNASConfig, FULL, {})
    assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.momentum, cfg.weight_decay) == (100, 192, 0.03, 0.9, 1e-4)
    assert (cfg.ema_momentum, cfg.temperature, cfg.queue_size, cfg.feat_dim) == (0.999, 0.2, 49152, 128)
    assert (cfg.teacher, cfg.cross_path, cfg.negatives, cfg.path_pairs) == ('path_ema', True, True, 'disjoint')
    assert (cfg.linear_epochs, cfg.linear_batch_size, cfg.linear_lr, cfg.linear_milestones) == (
        100,
        256,
        30.0,
        [60, 80],
    )
    assert cfg.view_aug['color_jitter'] == [0.4, 0.4, 0.4, 0.4] and cfg.view_aug['gaussian_blur_prob'] == 0.5
    assert (cfg.holdout_per_class, cfg.calib_images, cfg.rating_images) == (50, 50000, 50000)
    search = cfg.action_space_config()  # the paper's action-space search, Pi-NAS's sample budget
    assert cfg.searcher == 'action_space' and (search.samples, search.warmup, search.batch) == (1000, 80, 8)


def test_full_size_supernet_builds_on_meta_and_steps_at_batch_two_on_cpu() -> None:
    cfg = load_config(PiNASConfig, FULL, {'shuffle_bn_groups': 1, 'device': 'cpu'})  # 2 images: one BN group
    method = PiNAS(cfg)
    with torch.device('meta'):
        supernet = method.space.build_supernet(num_classes=0)
    assert sum(p.numel() for p in supernet.parameters()) > 80e6 and supernet.num_features == 2048
    method.build(engine.init_distributed('cpu'))
    neck = method.runner.student.neck
    assert (neck[0].in_features, neck[0].out_features, neck[2].out_features) == (2048, 2048, 128)
    assert method.runner.queue.shape == (49152, 128)
    opt, _, _ = method.optimizer(1)
    views = [torch.randn(2, 3, 224, 224) for _ in range(4)]
    step = StepContext(0, 0, 0, 1, method.runner, torch.device('cpu'), lambda loss: loss.backward())
    parts = method.train_step(views, torch.zeros(2, dtype=torch.long), method.sample_paths(0), step)
    opt.step()
    method.after_step(0)
    assert torch.isfinite(parts['loss_contrastive']) and int(method.runner.queue_ptr) == 2


# -- end to end ------------------------------------------------------------------------------------------------------
def test_action_space_search_over_the_trained_supernet(tiny_run: Path, tmp_path: Path, tiny_data: Path) -> None:
    """The paper's searcher on the cached probe: specs the zoo builds, every one rated by the same rater."""
    out = tmp_path / 'run'
    shutil.copytree(tiny_run, out)
    options = 'action_space={samples: 10, warmup: 4, batch: 3}'
    run_search('pinas', TINY, out, tiny_data, '--stage', 'search', '--set', 'searcher=action_space', options)
    doc = json.loads((out / 'arch' / 'top1.json').read_text())
    assert doc['search']['searcher'] == 'action_space'
    zoo.create_model(doc['spec'], num_classes=4)
    results = json.loads((out / 'search_result.json').read_text())['results']
    assert len(results) == 3 and [r['score'] for r in results] == sorted(r['score'] for r in results)
    rated = {}
    for line in (out / 'ratings' / 'paths.jsonl').read_text().splitlines():
        row = json.loads(line)
        rated[tuple(row['arch'])] = -row['top1']  # score: minus top-1
    for r in results:
        assert r['score'] == pytest.approx(rated[tuple(r['arch'])])


def test_tiny_run_writes_a_spec_that_the_zoo_builds(tiny_run: Path) -> None:
    doc = json.loads((tiny_run / 'arch' / 'top1.json').read_text())
    spec, prov = doc['spec'], doc['search']
    assert prov['method'] == 'pinas' and prov['searcher'] == 'evolution'
    assert prov['ablation'] == {'cross_path': True, 'teacher': 'path_ema', 'negatives': True}
    model = zoo.create_model(spec, num_classes=4).eval()
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 4)
    space = get_space('pinas_tiny')
    assert spec['family'] == 'resnest' and space.to_spec(tuple(prov['arch'])) == spec
    rows = [json.loads(x) for x in (tiny_run / 'ratings' / 'paths.jsonl').read_text().splitlines()]
    assert len(rows) >= 8 and prov['top1'] == max(r['top1'] for r in rows)
    state = weights(tiny_run / 'checkpoints' / 'last.pt')
    assert {'queue', 'queue_ptr'} <= state.keys() and any(k.startswith('teacher.') for k in state)
    assert int(state['queue_ptr']) == (8 * 8) % 32  # 8 steps of 8 keys in a queue of 32
    assert set(weights(tiny_run / 'linear' / 'checkpoints' / 'last.pt')) == {'classifier.weight', 'classifier.bias'}


def test_a_rerun_without_resume_is_refused(tiny_run: Path, tiny_data: Path) -> None:
    proc = run_search('pinas', TINY, tiny_run, tiny_data, check=False)
    assert proc.returncode == 2 and '--resume' in proc.stderr


def test_ratings_are_cached_by_fingerprint(tiny_run: Path, tiny_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load_config(PiNASConfig, TINY, {'data_dir': str(tiny_data), 'output': str(tiny_run)})
    ctx = engine.init_distributed('cpu')
    rows = [json.loads(x) for x in (tiny_run / 'ratings' / 'paths.jsonl').read_text().splitlines()]

    def refuse(*args, **kwargs):
        raise AssertionError('a cached rating must not train or load anything')

    monkeypatch.setattr(pipeline, 'train', refuse)
    monkeypatch.setattr(LinearProbeRater, '_load', refuse)
    score = PiNAS(cfg).rater(ctx).rate()
    for row in rows[:3]:
        assert score(tuple(row['arch'])) == -row['top1']
    monkeypatch.undo()
    other = PiNAS(
        load_config(PiNASConfig, TINY, {'data_dir': str(tiny_data), 'output': str(tiny_run), 'calib_images': 8})
    )
    rater = other.rater(ctx)
    assert rater.rate()(tuple(rows[0]['arch'])) <= 0 and rater.fingerprint() != PiNAS(cfg).rater(ctx).fingerprint()
    assert rater._loaded  # another rating option: rated again


def test_killed_run_resumes_to_the_same_spec(tiny_run: Path, tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / 'killed'
    proc = run_search('pinas', TINY, out, tiny_data, env={**ENV, engine.FAULT_ENV: '3'}, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert torch.load(out / 'checkpoints' / 'last.pt', weights_only=True)['step'] == 3
    run_search('pinas', TINY, out, tiny_data, '--resume')
    assert_same_weights(weights(out / 'checkpoints' / 'last.pt'), weights(tiny_run / 'checkpoints' / 'last.pt'))
    a = json.loads((tiny_run / 'search_result.json').read_text())['results']
    b = json.loads((out / 'search_result.json').read_text())['results']
    assert [r['arch'] for r in a] == [r['arch'] for r in b] and [r['score'] for r in a] == [r['score'] for r in b]


def test_two_gloo_processes_equal_one_process_with_two_accumulation_steps(tiny_data: Path, tmp_path: Path) -> None:
    """torchrun 2 CPU processes x 4 images == 1 process x (2 accumulation steps x 4 images), batch 8 both.

    Equal means: student and teacher parameters, the queue and its pointer, the linear classifier and the found
    architectures; BN running statistics differ by design (DDP keeps rank 0's; keys and rating use batch or
    recalibrated statistics, never these)."""
    ddp, single = tmp_path / 'ddp', tmp_path / 'single'
    torchrun('pinas', TINY, ddp, tiny_data)
    run_search('pinas', TINY, single, tiny_data, '--grad-accum', '2')
    a, b = weights(ddp / 'checkpoints' / 'last.pt'), weights(single / 'checkpoints' / 'last.pt')
    params = assert_same_params(a, b)
    assert 'queue' in params and any(k.startswith('teacher.') for k in params)
    assert torch.equal(a['queue_ptr'], b['queue_ptr'])
    assert_same_params(weights(ddp / 'linear/checkpoints/last.pt'), weights(single / 'linear/checkpoints/last.pt'))
    ra = json.loads((ddp / 'search_result.json').read_text())['results']
    rb = json.loads((single / 'search_result.json').read_text())['results']
    assert [r['arch'] for r in ra] == [r['arch'] for r in rb]


def test_a_probe_of_another_supernet_or_options_is_trained_again(
    tiny_run: Path, tiny_data: Path, tmp_path: Path
) -> None:
    import shutil

    out = tmp_path / 'copy'
    shutil.copytree(tiny_run, out)
    source = out / 'linear' / 'supernet.json'
    recorded = json.loads(source.read_text())['supernet']
    assert recorded.startswith('8-')  # step 8, then the digest of the supernet checkpoint
    cfg = load_config(PiNASConfig, TINY, {'data_dir': str(tiny_data), 'output': str(out)})
    ctx = engine.init_distributed('cpu')
    before = weights(out / 'linear' / 'checkpoints' / 'last.pt')
    (out / 'linear' / 'train_log.jsonl').write_text('{"step": 0, "marker": true}\n')
    PiNAS(cfg).rater(ctx).rate()  # the same supernet: the finished probe is kept
    assert 'marker' in (out / 'linear' / 'train_log.jsonl').read_text()
    doc = json.loads(source.read_text())
    source.write_text(json.dumps({**doc, 'supernet': '8-0000'}) + '\n')  # as if the supernet had been trained again
    PiNAS(cfg).rater(ctx).rate()
    assert json.loads(source.read_text())['supernet'] == recorded
    log = (out / 'linear' / 'train_log.jsonl').read_text().splitlines()
    assert len(log) == 8 and 'marker' not in log[0]  # trained from step 0 again in a new folder
    assert_same_weights(weights(out / 'linear' / 'checkpoints' / 'last.pt'), before)  # same supernet, same probe
    other = load_config(PiNASConfig, TINY, {'data_dir': str(tiny_data), 'output': str(out), 'linear_lr': 0.05})
    PiNAS(other).rater(ctx).rate()  # another probe option: trained again, to other weights
    assert json.loads(source.read_text())['options']['linear_lr'] == 0.05
    changed = weights(out / 'linear' / 'checkpoints' / 'last.pt')
    assert not torch.equal(changed['classifier.weight'], before['classifier.weight'])


def test_step_overhead_benchmark_times_every_part() -> None:
    """tools/bench_search.py --mode pinas on the tiny config (no timing asserted: numbers live in benchmarks/)."""
    from search.bench_pinas import PARTS, pinas_step_overhead

    result = pinas_step_overhead(epochs=2, per_class=8)
    assert set(result['parts_s']) == set(PARTS) and all(v >= 0 for v in result['parts_s'].values())
    assert result['steps'] == 4 and result['sum_of_parts_s'] > 0 and math.isfinite(result['overhead'])


@pytest.mark.parametrize(
    ('space', 'options', 'family'),
    [
        ('fairnas_tiny', {}, 'mbconv'),
        ('nb201_tiny', {}, 'nb201'),
        ('pinas_tiny', {'share_downsample': False}, 'resnest'),
    ],
)
def test_the_whole_pipeline_runs_on_other_single_path_spaces(
    space: str, options: dict, family: str, tiny_data: Path, tmp_path: Path
) -> None:
    """Other spaces, and Table 7's "w/o DS" row (one shortcut per candidate: a space option)."""
    out = str(tmp_path / space)
    values = dict(data_dir=str(tiny_data), output=out, epochs=1, linear_epochs=1, linear_milestones=[])
    cfg = _cfg(space=space, space_options=options, **values)
    found = engine.run('pinas', cfg, ctx=engine.init_distributed('cpu'))
    assert found[0]['spec']['family'] == family and found[0]['method'] == 'pinas'
    zoo.create_model(found[0]['spec'], num_classes=4)


def test_search_under_a_flops_budget_on_the_trained_supernet(tiny_run: Path, tiny_data: Path, tmp_path: Path) -> None:
    import shutil

    out = tmp_path / 'budget'
    shutil.copytree(tiny_run, out)
    shutil.rmtree(out / 'search')  # the evolution state is keyed by the rating, not the budget: a new search
    space = get_space('pinas_tiny', img_size=32)
    low, high = (space.cost(a, 'flops') for a in space.extremes())
    budget = low + 0.3 * (high - low)
    cfg = _cfg(data_dir=str(tiny_data), output=str(out), budget=budget, metric='flops')
    found = engine.run('pinas', cfg, stages=('search',), ctx=engine.init_distributed('cpu'))
    assert len(found) == 3 and all(f['cost'] <= budget for f in found)
    assert all(space.cost(tuple(f['arch']), 'flops') <= budget for f in found)
    assert json.loads((out / 'arch' / 'top1.json').read_text())['search']['budget'] == budget
