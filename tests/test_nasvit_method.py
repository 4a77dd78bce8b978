"""NASViT's method on CPU: gradient projection and its edge cases, the alpha-divergence against a hand computation,
the engine's gradient slots, evolution within a cost bin, the Pareto front, and the tiny NATS-size run end to end
(specs that build, kill/resume to the same specs, 2 gloo processes = 1 process with 2 accumulation steps with the
projection on, the predictor of Alg. 2)."""

from __future__ import annotations

import json
import math
import shutil
import signal
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml

import search
import zoo
from search import engine
from search.cli import main as search_cli
from search.config import ConfigError, load_config
from search.methods.nasvit import (
    NASViTConfig,
    adaptive_alpha_divergence,
    alpha_divergence,
    clip_grads_,
    project_gradients,
)
from search.methods.nasvit_search import pareto_front
from search.pipeline import GradSlots
from search.spaces import get_space
from search.strategies.evolution import evolution_search
from tests._helpers import ENV, ROOT, assert_same_params, assert_same_weights, run_search, torchrun, weights

TINY = ROOT / 'configs/search/nasvit_nats_tiny.yaml'
FULL = ROOT / 'configs/search/nasvit.yaml'


def _t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def _dot(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a * b).sum())


# -- gradient projection ---------------------------------------------------------------------------------------------
def test_conflicting_pair_is_projected_to_a_nonnegative_inner_product_with_the_subnet_gradient() -> None:
    g_sub, g_sup = _t(1.0, 0.0, 0.5), _t(-3.0, 1.0, 0.0)
    assert _dot(g_sub, g_sup) < 0
    exact = project_gradients([g_sup], [g_sub], cap=None, eps=0.0).grads[0]
    eq1 = g_sub + g_sup - _dot(g_sup, g_sub) / _dot(g_sub, g_sub) * g_sub  # the paper's Eq. 1
    torch.testing.assert_close(exact, eq1)
    assert _dot(exact, g_sub) == pytest.approx(_dot(g_sub, g_sub))  # g_sup's conflicting part is gone
    assert _dot(exact - g_sub, g_sub) == pytest.approx(0.0, abs=1e-6)  # proj(g_sup) is orthogonal to g_sub
    # the code's defaults (cap 2, eps 1e-6) do the same while the coefficient stays under the cap
    mild = _t(-1.0, 1.0, 0.0)
    code = project_gradients([mild], [g_sub])
    assert 0 < float(code.coef[0]) < 2 and _dot(code.grads[0], g_sub) >= 0


def test_agreeing_gradients_are_the_plain_sum() -> None:
    g_sub, g_sup = _t(1.0, 0.0, 2.0), _t(2.0, 1.0, 0.0)
    proj = project_gradients([g_sup], [g_sub])
    assert torch.equal(proj.grads[0], g_sub + g_sup) and float(proj.coef[0]) == 0.0


def test_the_projection_is_per_tensor() -> None:
    sub = [_t(1.0, 0.0), _t(0.0, 1.0)]
    sup = [_t(-2.0, 1.0), _t(1.0, 1.0)]  # the first tensor conflicts, the second agrees
    proj = project_gradients(sup, sub, cap=None, eps=0.0)
    assert proj.coef.tolist() == [2.0, 0.0]
    assert torch.equal(proj.grads[1], sub[1] + sup[1])
    # globally the two would not conflict (inner -2 + 1 = -1 < 0 but the per-tensor rule acts on tensor 0 only)
    assert _dot(proj.grads[0], sub[0]) == pytest.approx(1.0)


def test_the_code_cap_leaves_a_strong_conflict_and_no_cap_removes_it() -> None:
    g_sub, g_sup = _t(1.0, 0.0), _t(-5.0, 1.0)
    capped = project_gradients([g_sup], [g_sub])  # a = min(5, 2) = 2: (1 + 2) g_sub + g_sup
    torch.testing.assert_close(capped.grads[0], 3 * g_sub + g_sup)
    assert float(capped.after[0]) < 0 and _dot(capped.grads[0], g_sub) == pytest.approx(-2.0, abs=1e-5)
    exact = project_gradients([g_sup], [g_sub], cap=None, eps=0.0)
    assert float(exact.after[0]) >= 0


def test_projection_edge_cases() -> None:
    s, b = _t(1.0, -2.0), _t(-1.0, 0.5)
    proj = project_gradients([s, None, None, s, _t(0.0, 0.0)], [None, b, None, _t(0.0, 0.0), b], cap=None, eps=0.0)
    assert proj.grads[0] is s  # only the supernet used it: g_sup once, not doubled
    assert proj.grads[1] is b  # only subnets used it (e.g. a switchable BN of a narrow width)
    assert proj.grads[2] is None  # nothing used it: the optimizer skips it
    assert torch.equal(proj.grads[3], s) and torch.equal(proj.grads[4], b)  # a zero gradient: the plain sum
    assert proj.both == [3, 4] and proj.coef.tolist() == [0.0, 0.0]
    assert all(torch.isfinite(g).all() for g in proj.grads if g is not None)


def test_projection_off_is_the_plain_sum_even_on_conflict() -> None:
    g_sub, g_sup = _t(1.0, 0.0), _t(-3.0, 1.0)
    assert torch.equal(project_gradients([g_sup], [g_sub], project=False).grads[0], g_sub + g_sup)


def test_prioritizing_the_supernet_swaps_the_roles() -> None:
    g_sub, g_sup = _t(-3.0, 1.0), _t(1.0, 0.0)
    proj = project_gradients([g_sup], [g_sub], prioritize='sup', cap=None, eps=0.0)
    assert _dot(proj.grads[0], g_sup) == pytest.approx(_dot(g_sup, g_sup))
    with pytest.raises(ValueError, match='prioritize'):
        project_gradients([g_sup], [g_sub], prioritize='both')


def test_subnet_gradient_clipping_is_global() -> None:
    grads = [_t(3.0, 0.0), None, _t(0.0, 4.0)]
    norm = clip_grads_(grads, 1.0)
    assert float(norm) == pytest.approx(5.0)
    assert math.hypot(*grads[0].tolist(), *grads[2].tolist()) == pytest.approx(1.0, rel=1e-5)
    small = [_t(0.3, 0.4)]
    clip_grads_(small, 1.0)
    torch.testing.assert_close(small[0], _t(0.3, 0.4))


# -- alpha-divergence ------------------------------------------------------------------------------------------------
def _hand_divergence(p: torch.Tensor, q: torch.Tensor, alpha: float) -> torch.Tensor:
    """D_alpha(p || q) per sample, unclipped, written from the definition (alpha = 1: KL(p || q))."""
    if alpha == 1.0:
        return (p * (p / q).log()).sum(1)
    return (q * ((p / q) ** alpha - 1)).sum(1) / (alpha * (alpha - 1))


def test_alpha_divergence_matches_a_hand_computation() -> None:
    p = torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.3, 0.6]])  # q / p stays under the clip 5
    q = torch.tensor([[0.9, 0.05, 0.05], [0.4, 0.3, 0.3]])
    minus_one = 0.5 * ((q**2 / p).sum(1) - 1)  # the closed form of alpha = -1
    kl = (p * (p / q).log()).sum(1)
    value, _ = alpha_divergence(q.log(), p.log(), -1.0)
    torch.testing.assert_close(value, minus_one)
    torch.testing.assert_close(alpha_divergence(q.log(), p.log(), 1.0)[0], kl)
    wrong, _ = alpha_divergence(q.log(), p.log(), -0.5)  # a wrong alpha fails the comparison
    assert not torch.allclose(wrong, minus_one, rtol=1e-3, atol=1e-4)
    # per sample the larger of the two: sample 0 takes KL, sample 1 the alpha = -1 divergence
    assert kl[0] > minus_one[0] and minus_one[1] > kl[1]
    logits = q.log().clone().requires_grad_(True)
    loss, divergence = adaptive_alpha_divergence(logits, p.log())
    torch.testing.assert_close(divergence, torch.stack([kl[0], minus_one[1]]).mean())
    loss.backward()
    hand = logits.detach().clone().requires_grad_(True)
    qh = F.softmax(hand, 1)
    torch.stack([_hand_divergence(p, qh, 1.0)[0], _hand_divergence(p, qh, -1.0)[1]]).mean().backward()
    torch.testing.assert_close(logits.grad, hand.grad)  # the surrogate has the divergence's gradient


def test_alpha_divergence_clips_the_importance_weights_and_spares_the_teacher() -> None:
    p, q = torch.tensor([[0.05, 0.95]]), torch.tensor([[0.5, 0.5]])  # (p/q)^-1 = 10 on class 0: clipped to 5
    value, _ = alpha_divergence(q.log(), p.log(), -1.0, iw_clip=5.0)
    clipped = 0.5 * (0.5 * 5.0 + 0.5 * (0.5 / 0.95) - 1)
    assert float(value) == pytest.approx(clipped)
    teacher = p.log().clone().requires_grad_(True)
    adaptive_alpha_divergence(q.log().requires_grad_(True), teacher)[0].backward()
    assert teacher.grad is None


# -- the engine's gradient slots -------------------------------------------------------------------------------------
def test_gradient_slots_keep_the_gradients_apart() -> None:
    net = nn.Linear(3, 2)
    slots = GradSlots(net, ('sup', 'sub'), engine.init_distributed('cpu'))
    x = torch.randn(4, 3)
    backward = slots.backward(grad_accum=2)
    backward(net(x).sum(), slot='sup')
    backward(net(x).pow(2).sum(), slot='sub')
    backward(net(2 * x).pow(2).sum(), slot='sub')
    assert net.weight.grad is None and net.bias.grad is None
    ref = nn.Linear(3, 2)
    ref.load_state_dict(net.state_dict())
    (ref(x).sum() / 2).backward()
    torch.testing.assert_close(slots.grads['sup'][0], ref.weight.grad)
    ref.zero_grad()
    ((ref(x).pow(2).sum() + ref(2 * x).pow(2).sum()) / 2).backward()
    torch.testing.assert_close(slots.grads['sub'][0], ref.weight.grad)
    with pytest.raises(ValueError, match='slot'):
        backward(net(x).sum())


# -- search pieces ---------------------------------------------------------------------------------------------------
def test_evolution_stays_inside_its_cost_bin() -> None:
    space = get_space('nats_size_tiny')
    costs = sorted(space.cost(space.sample(torch.Generator().manual_seed(i)), 'macs') for i in range(40))
    lo, hi = costs[10], costs[30]
    result = evolution_search(
        space, lambda a: float(sum(a)), output=None, show_progress=False, population=6, parents=3, mutations=3,
        crossovers=3, iterations=2, metric='macs', budget=hi, min_budget=lo, max_tries=50,
    )  # fmt: skip
    assert result.top and all(lo <= i.cost <= hi for i in result.top)
    assert result.rejected > 0
    with pytest.raises(ValueError, match='min_budget'):
        evolution_search(space, lambda a: 0.0, metric='macs', budget=1.0, min_budget=2.0)


def test_pareto_front() -> None:
    points = [(1.0, 50.0, 'a'), (2.0, 40.0, 'b'), (2.0, 60.0, 'c'), (3.0, 60.0, 'd'), (4.0, 70.0, 'e')]
    assert [p[2] for p in pareto_front(points)] == ['a', 'c', 'e']


def test_onnxruntime_latency_is_measured_once_per_arch() -> None:
    pytest.importorskip('onnxruntime')
    from search.spaces.base import measured_latency

    space = get_space('nats_size_tiny')
    arch = space.extremes()[0]
    calls = []

    def build() -> nn.Module:
        calls.append(1)
        return zoo.create_model(space.to_spec(arch), num_classes=10)

    first = measured_latency(space, arch, build, 32, runs=3, runtime='onnxruntime')
    assert first > 0 and measured_latency(space, arch, build, 32, runs=3, runtime='onnxruntime') == first
    assert len(calls) == 1
    with pytest.raises(ValueError, match='runtime'):
        measured_latency(space, arch, build, 32, runtime='tvm')


@pytest.mark.parametrize(
    ('setting', 'name'),
    [
        ({'prioritize': 'both'}, 'prioritize'),
        ({'alpha_min': 1.0, 'alpha_max': -1.0}, 'alpha_min'),
        ({'ema_decay': None, 'rate_ema': True}, 'rate_ema'),
        ({'proj_cap': -1.0}, 'proj_cap'),
        ({'bins': [[3, 1]]}, 'bins'),
        ({'evolution': {'pop': 3}}, 'evolution'),
        ({'searcher': 'bayes'}, 'searcher'),
        ({'space': 'no_such_space'}, 'space'),
    ],
)
def test_bad_config_values_are_named(setting: dict, name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        NASViTConfig(**{'space': 'nats_size_tiny', **setting})


def test_full_size_config_has_the_code_recipe() -> None:
    values = yaml.safe_load(FULL.read_text())
    assert values['space'] == 'nasvit' and values['batch_size'] == 2048
    assert (values['base_lr'], values['lr_base_batch'], values['weight_decay']) == (3.0e-4, 512, 0.0)
    assert (values['warmup_epochs'], values['ema_decay'], values['clip_grad']) == (5, 0.99985, 1.0)
    assert values['train_aug']['auto_augment'] == 'rand-n1-m1-mstd0.5-inc1'
    assert values['teacher_temp'] == 5.0 and len(values['teachers']) == 2
    assert (values['projection_start_epoch'], values['proj_cap'], values['calib_batches']) == (101, 2.0, 64)
    evo = values['evolution']
    assert (evo['population'], evo['parents'], evo['mutations'], evo['crossovers'], evo['iterations']) == (
        1024, 128, 128, 128, 40,
    )  # fmt: skip
    cfg = load_config(NASViTConfig, FULL, {'teachers': []})
    assert cfg.lr == pytest.approx(3e-4 * 4)


def test_full_size_supernet_builds_on_meta_and_takes_one_step_at_batch_2_on_cpu(tmp_path: Path) -> None:
    """The full NASViT supernet (space `nasvit`) with its EMA on the meta device; then, on the CPU, one optimizer step
    of the sandwich rule (nasvit_max, nasvit_min and two random subnets) at batch 2 with the projection on."""
    from backbones import nasvit as family
    from search.methods.nasvit import NASViT, NASViTRunner
    from search.protocols import StepContext

    overrides = {'teachers': [], 'num_classes': 1000, 'batch_size': 2, 'output': str(tmp_path)}
    cfg = load_config(NASViTConfig, FULL, overrides)
    method = NASViT(cfg)
    with torch.device('meta'):  # (timm's EMA cannot be built on meta: it is checked on the CPU build below)
        meta = NASViTRunner(method.space.build_supernet(num_classes=1000), None)
    n = sum(p.numel() for p in meta.supernet.parameters())
    assert n > 17_000_000  # at least nasvit_max's 17.1M
    ctx = engine.init_distributed('cpu')
    runner = method.build(ctx)
    assert sum(p.numel() for p in runner.supernet.parameters()) == n
    assert sum(p.numel() for p in runner.ema.parameters()) == n
    paths = method.sample_paths(0)
    assert method.space.to_spec(paths[0]) == family.SPECS['nasvit_max']
    assert method.space.to_spec(paths[1]) == family.SPECS['nasvit_min'] and len(paths) == 4
    opt, _, per_step = method.optimizer(steps_per_epoch=1)
    slots = GradSlots(runner, method.grad_slots, ctx)
    step_ctx = StepContext(0, cfg.projection_start_epoch, 0, 1, runner, ctx.device, slots.backward(1))
    method.train_mode()
    before = {k: v.clone() for k, v in runner.supernet.state_dict().items()}
    parts = method.train_step(torch.randn(2, 3, cfg.img_size, cfg.img_size), torch.tensor([3, 7]), paths, step_ctx)
    record = method.combine_grads(slots.grads, slots.named, step_ctx)
    opt.step()
    method.after_step(0)
    assert per_step and record['projection_on'] and 0 <= record['conflict_ratio'] <= 1
    assert all(math.isfinite(float(v)) for v in parts.values()) and float(parts['loss_kd']) > 0
    moved = [k for k, v in runner.supernet.state_dict().items() if not torch.equal(v, before[k])]
    assert moved and all(torch.isfinite(v).all() for v in runner.supernet.state_dict().values())


# -- end to end ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def tiny_run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp('nasvit_run') / 'run'
    run_search('nasvit', TINY, out, tiny_data)
    return out


def _log(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / 'train_log.jsonl').read_text().splitlines()]


def test_tiny_run_writes_a_pareto_set_and_a_top1_spec_that_builds(tiny_run: Path) -> None:
    log = _log(tiny_run)
    assert [x['step'] for x in log] == list(range(1, 9))  # 36 training images, batch 8, 2 epochs
    assert all(x['projection_on'] and 0 <= x['conflict_ratio'] <= 1 for x in log)
    assert sum(x['projected'] for x in log) > 0 and 'conflict_per_layer' in log[1]
    assert all(x['loss_kd'] > 0 for x in log)
    front = json.loads((tiny_run / 'arch' / 'pareto' / 'pareto.json').read_text())['front']
    assert front and [r['cost'] for r in front] == sorted(r['cost'] for r in front)
    assert [r['top1'] for r in front] == sorted(r['top1'] for r in front)  # a front: more cost, more accuracy
    assert (tiny_run / 'arch' / 'pareto' / 'pareto.png').is_file()
    space = get_space('nats_size_tiny')
    for row in front:
        spec, provenance = search.read_spec(tiny_run / 'arch' / 'pareto' / row['file'])
        assert spec['family'] == 'nats_size' and space.from_spec(spec) == tuple(provenance['arch'])
    spec, provenance = search.read_spec(tiny_run / 'arch' / 'top1.json')
    assert provenance['method'] == 'nasvit' and provenance['top1'] == max(r['top1'] for r in front)
    arch = tuple(provenance['arch'])
    # the emitted network with the supernet's (EMA) path weights is the rated path
    supernet = search.build_supernet(space, num_classes=4)
    state = weights(tiny_run / 'checkpoints' / 'last.pt')
    supernet.load_state_dict({k[len('ema.module.') :]: v for k, v in state.items() if k.startswith('ema.module.')})
    supernet.eval()
    model = zoo.create_model(str(tiny_run / 'arch' / 'top1.json'), num_classes=4).eval()
    model.load_state_dict(supernet.path_state_dict(arch), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), supernet(x, arch))


def test_killed_run_resumes_to_the_same_specs(tiny_run: Path, tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / 'killed'
    proc = run_search('nasvit', TINY, out, tiny_data, env={**ENV, engine.FAULT_ENV: '3'}, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert torch.load(out / 'checkpoints' / 'last.pt', weights_only=True)['step'] == 3
    run_search('nasvit', TINY, out, tiny_data, '--resume')
    assert_same_weights(weights(out / 'checkpoints' / 'last.pt'), weights(tiny_run / 'checkpoints' / 'last.pt'))
    a = json.loads((tiny_run / 'search_result.json').read_text())['results']
    b = json.loads((out / 'search_result.json').read_text())['results']
    assert [r['spec'] for r in a] == [r['spec'] for r in b] and [r['score'] for r in a] == [r['score'] for r in b]
    pa = json.loads((tiny_run / 'arch' / 'pareto' / 'pareto.json').read_text())['front']
    pb = json.loads((out / 'arch' / 'pareto' / 'pareto.json').read_text())['front']
    assert [r['arch'] for r in pa] == [r['arch'] for r in pb]


def test_two_gloo_processes_equal_one_process_with_two_accumulation_steps(tiny_data: Path, tmp_path: Path) -> None:
    """torchrun, 2 CPU processes x 4 images == 1 process x (2 accumulation steps x 4 images), batch 8 both, with the
    projection on from the first step: each gradient slot is the mean over the same 2 micro-batches in both runs
    (GradSlots), so clipping and projection see the same g_sup and g_sub."""
    ddp, single = tmp_path / 'ddp', tmp_path / 'single'
    torchrun('nasvit', TINY, ddp, tiny_data)
    run_search('nasvit', TINY, single, tiny_data, '--grad-accum', '2')
    a, b = weights(ddp / 'checkpoints' / 'last.pt'), weights(single / 'checkpoints' / 'last.pt')
    # BN biases right before another BN (the last cell's edges feed final_act's BN, whose batch statistics remove
    # any per-channel shift) have a gradient of exactly zero in exact arithmetic; AdamW divides their rounding noise
    # (about 1e-10, depending on the summation order of DDP's all-reduce or of accumulation) by sqrt(v) + 1e-8 and
    # moves them by up to about 1e-4 over the run. They stay at noise level in both runs; every other parameter
    # moved by up to lr = 1e-3 a step and must match.
    dead = {k for k in a if 'bias' in k and max(a[k].abs().max(), b[k].abs().max()) < 1e-3}
    assert len(dead) < len(a) // 10
    params = assert_same_params(
        {k: v for k, v in a.items() if k not in dead}, {k: v for k, v in b.items() if k not in dead}
    )
    assert any(k.startswith('ema.') for k in params)
    la, lb = _log(ddp), _log(single)
    assert sum(x['projected'] for x in la) > 0  # the projection did act
    for x, y in zip(la, lb, strict=True):
        # per layer the statistic is stable; per tensor the dead biases (inner products of rounding noise) may flip
        assert x['conflict_ratio'] == pytest.approx(y['conflict_ratio'])
        assert abs(x['projected'] - y['projected']) <= len(dead) // 2
        assert x['g_sub_norm'] == pytest.approx(y['g_sub_norm'], rel=1e-4)  # (the losses are rank 0's own half)


def test_predictor_search_on_the_trained_supernet(tiny_run: Path, tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / 'copy'
    shutil.copytree(tiny_run, out)
    argv = ['nasvit', '--config', str(TINY), '--data-dir', str(tiny_data), '--output', str(out), '--stage', 'search']
    assert search_cli([*argv, '--set', 'searcher=predictor', 'predictor_samples=12', 'predictor_trees=5']) == 0
    report = json.loads((out / 'search' / 'predictor.json').read_text())
    tau = report['check_kendall_tau']
    assert report['fit'] == 6 and report['check'] == 6 and (tau is None or -1 <= tau <= 1)
    front = json.loads((out / 'arch' / 'pareto' / 'pareto.json').read_text())['front']
    assert front and all('predicted_top1' in r for r in front)
    assert search.read_spec(out / 'arch' / 'top1.json')[1]['searcher'] == 'predictor'


def test_tiny_nasvit_space_run_writes_nasvit_specs_that_build(tiny_data: Path, tmp_path: Path) -> None:
    """The done-when command of issue 15: nasvit_tiny.yaml writes a Pareto set of nasvit specs and a top1.json that
    zoo.create_model builds, and which with the supernet's EMA path weights computes the supernet's path."""
    out = tmp_path / 'run'
    run_search('nasvit', ROOT / 'configs/search/nasvit_tiny.yaml', out, tiny_data)
    front = json.loads((out / 'arch' / 'pareto' / 'pareto.json').read_text())['front']
    assert front
    for row in front:
        assert search.read_spec(out / 'arch' / 'pareto' / row['file'])[0]['family'] == 'nasvit'
    spec, provenance = search.read_spec(out / 'arch' / 'top1.json')
    assert spec['family'] == 'nasvit' and provenance['method'] == 'nasvit'
    space = get_space('nasvit_tiny')
    arch = tuple(provenance['arch'])
    assert space.from_spec(spec) == arch
    supernet = search.build_supernet(space, num_classes=4)
    state = weights(out / 'checkpoints' / 'last.pt')
    supernet.load_state_dict({k[len('ema.module.') :]: v for k, v in state.items() if k.startswith('ema.module.')})
    supernet.eval()
    model = zoo.create_model(str(out / 'arch' / 'top1.json'), num_classes=4).eval()
    model.load_state_dict(supernet.path_state_dict(arch), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), supernet(x, arch), rtol=1e-5, atol=1e-5)


def test_ground_truth_config_runs_in_the_harness_with_and_without_projection(tmp_path: Path) -> None:
    """nasvit_groundtruth.yaml through `python -m search.groundtruth method` on a 3-network NATS-size ground truth
    (widths 4/8, 8 px, 1 epoch): the projection is on from the first step, and `projection=false` switches it off."""
    from search import groundtruth as gt
    from search import gt_harness

    recipe = gt.Recipe(family='nats_size', widths=(4, 8), img_size=8, epochs=1, batch_size=16)
    truth = tmp_path / 'truth'
    split = {'holdout_per_class': 10, 'test_per_class': 150, 'seed': 0}
    gt.train_all(truth, recipe, gt.archs_for(recipe.space(), 3, seed=0), seeds=[1], split=split, threads=1)
    gt.summarize(truth)
    config = ROOT / 'configs' / 'search' / 'nasvit_groundtruth.yaml'
    small = {'epochs': 1, 'batch_size': 16, 'lr_base_batch': 16, 'calib_batches': 2, 'calib_batch': 16}
    logs = {}
    for projection in (True, False):
        out = tmp_path / f'run_{projection}'
        report = gt_harness.run_method(
            'nasvit', config, truth, out, seed=0, overrides={**small, 'projection': projection}, top_k=(2,),
            show_progress=False,
        )  # fmt: skip
        assert report['n'] == 3 and report['method'] == 'nasvit' and report['subspace'] == 'nats_size'
        logs[projection] = _log(out)
    assert all(x['projection_on'] for x in logs[True]) and sum(x['projected'] for x in logs[True]) > 0
    assert not any(x['projection_on'] for x in logs[False]) and all(x['projected'] == 0 for x in logs[False])
    assert logs[True][0]['conflict_ratio'] == pytest.approx(logs[False][0]['conflict_ratio'])  # same first step
    assert logs[True][-1]['loss'] != logs[False][-1]['loss']


def test_two_teachers_give_the_sharpened_average_target_of_the_code() -> None:
    """teachers + teacher_temp: target = mean_i softmax(temp * z_i) (the code's two SWSL ResNeXt-101 with temp 5);
    the max subnet's loss is the soft-target cross-entropy against it."""
    from search.methods.nasvit import NASViT, soft_target_cross_entropy

    cfg = NASViTConfig(
        space='nats_size_tiny', img_size=32, num_classes=4, teachers=['resnet10t', 'resnet10t'], teacher_temp=5.0,
        teacher_pretrained=False,
    )  # fmt: skip
    method = NASViT(cfg)
    method.teachers = [method._teacher(name) for name in cfg.teachers]
    assert all(not p.requires_grad for t in method.teachers for p in t.parameters())
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        z = [t(x) for t in method.teachers]
    want = (F.softmax(5 * z[0], -1) + F.softmax(5 * z[1], -1)) / 2
    target = method._target(x)
    torch.testing.assert_close(target, want)
    assert not torch.allclose(target, (F.softmax(z[0], -1) + F.softmax(z[1], -1)) / 2)  # the temperature matters
    logits = torch.randn(3, 4)
    assert float(soft_target_cross_entropy(logits, target)) == pytest.approx(
        float((-target * F.log_softmax(logits, -1)).sum(-1).mean())
    )
    with pytest.raises(ValueError, match='no_such_net'):
        method._teacher('no_such_net')
