"""Inter-choice dependent weights (search/interchoice.py): parameter counts, the semantics checks of the paper's
method (zero bias at init, which entry a gradient reaches, identical outputs right after the split, divergence
afterwards, save/load), weight decay, config errors, and tiny command-line runs (plain, killed + resumed, DDP)."""

from __future__ import annotations

import io
import json
import signal
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import search
import zoo
from search import engine
from search.cli import main as search_cli
from search.config import ConfigError, load_config
from search.interchoice import ChoiceSite, InterChoice, bias_parameter_count, start_epoch
from search.methods.spos import SPOS, SPOSConfig
from search.spaces.base import ChoiceSpace
from tests._helpers import ENV, ROOT, assert_same_params, assert_same_weights, torchrun, weights
from tests._helpers import run_spos as _spos

BIAS_TINY = ROOT / 'configs/search/interchoice_bias_tiny.yaml'
SPLIT_TINY = ROOT / 'configs/search/interchoice_split_tiny.yaml'  # both on nb201_tiny
FAIRNAS_BIAS_TINY = ROOT / 'configs/search/interchoice_bias_fairnas_tiny.yaml'
FAIRNAS_SPLIT_TINY = ROOT / 'configs/search/interchoice_split_fairnas_tiny.yaml'


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# -- parameter counts -----------------------------------------------------------------------------------------------
def test_fairnas_bias_d1_adds_exactly_61056_parameters() -> None:
    with torch.device('meta'):  # counts only: nothing is computed
        base = search.build_supernet('fairnas', num_classes=100)
        bias = search.build_supernet('fairnas', num_classes=100, interchoice={'variant': 'bias', 'depth': 1})
    assert _count(base) == 14_839_700  # paper Table 4
    assert _count(bias) - _count(base) == 61_056  # 18 of 19 layers: 6 x 6 x C_in each
    assert bias.interchoice.tables['1'].shape == (6, 6, 32) and '0' not in bias.interchoice.tables


def test_fairnas_split_holds_five_copies_of_layers_1_to_18() -> None:
    with torch.device('meta'):
        base = search.build_supernet('fairnas', num_classes=100)
        split = search.build_supernet('fairnas', num_classes=100, interchoice={'variant': 'split', 'split_epoch': 3})
    layers = sum(_count(base.choices[i]) for i in range(1, 19))
    assert _count(split) - _count(base) == 5 * layers == 71_314_080


class _NB201Like(ChoiceSpace):
    """NAS-Bench-201's decisions as the inter-choice paper uses them: 6 edges shared by all cells, 5 ops."""

    name = 'nb201_like'

    def __init__(self, allowed: tuple[int, ...] = (0, 1, 2, 3, 4)) -> None:
        self._allowed = allowed

    @property
    def num_choices(self) -> tuple[int, ...]:
        return (5,) * 6

    def allowed(self, i: int) -> tuple[int, ...]:
        return self._allowed


def _nb201_sites() -> list[ChoiceSite]:
    """Paper Table 3: 3 stages of 2 normal cells (16, 32, 64 channels), 6 edges each in construction order."""
    channels = [c for c in (16, 32, 64) for _ in range(2 * 6)]
    return [ChoiceSite(k % 6, c, nn.ModuleList(nn.Identity() for _ in range(5))) for k, c in enumerate(channels)]


@pytest.mark.parametrize(('depth', 'extra'), [(1, 33_200), (2, 164_400), (3, 812_400)])
def test_nb201_bias_counts_follow_from_the_sequential_priors(depth: int, extra: int) -> None:
    """The numbers the nb201 space must give: 35 of 36 edges get 5^(D+1) x C (fewer at the network start)."""
    sites = _nb201_sites()
    ic = InterChoice(sites, _NB201Like(), {'variant': 'bias', 'depth': depth})
    assert _count(ic) == extra
    decisions, channels = [s.decision for s in sites], [s.in_channels for s in sites]
    assert bias_parameter_count(decisions, channels, (5,) * 6, depth) == extra
    assert '0' not in ic.tables and ic.tables['1'].shape == (5, 5, 16)  # cell 1's e1 depends on e0 only


@pytest.mark.parametrize(('depth', 'extra'), [(1, 33_200), (2, 164_400), (3, 812_400)])
def test_the_nb201_supernet_adds_the_paper_bias_counts(depth: int, extra: int) -> None:
    base = search.build_supernet('nb201', num_classes=10)
    net = search.build_supernet('nb201', num_classes=10, interchoice={'variant': 'bias', 'depth': depth})
    assert _count(net) - _count(base) == extra


def test_nb201_paths_with_interchoice_weights_are_the_zoo_models() -> None:
    """Zero biases change nothing; after a split a path runs (and path_state_dict holds) its prior's copies."""
    space = search.get_space('nb201_tiny')
    gen = torch.Generator().manual_seed(0)
    archs = [space.sample(gen) for _ in range(3)]
    x = torch.randn(2, 3, 32, 32)
    base = search.build_supernet(space, num_classes=4).eval()
    bias = search.build_supernet(space, num_classes=4, interchoice={'variant': 'bias', 'depth': 2}).eval()
    bias.load_state_dict(base.state_dict(), strict=False)
    split = search.build_supernet(space, num_classes=4, interchoice={'variant': 'split', 'split_epoch': 0})
    split.load_state_dict(base.state_dict(), strict=False)
    split.interchoice.split()
    for arch in archs:
        _sgd_step(split, arch)  # the copies of this path's priors move away from the live weights
    split.eval()
    with torch.no_grad():
        for arch in archs:
            assert torch.equal(bias(x, arch), base(x, arch))
            model = zoo.create_model(space.to_spec(arch), num_classes=4).eval()
            model.load_state_dict(split.path_state_dict(arch), strict=True)
            assert torch.equal(model(x), split(x, arch))
            assert not torch.equal(split(x, arch), base(x, arch))
        for table in bias.interchoice.tables.values():
            table.fill_(0.1)
        assert not torch.equal(bias(x, archs[0]), base(x, archs[0]))


def test_topology_aware_priors_are_cycled_over_the_cells() -> None:
    """uninas' later NATS demo setting: e2 <- e0, e4 <- e0, e5 <- (e1, e2); e0, e1, e3 get nothing."""
    ic = InterChoice(_nb201_sites(), _NB201Like(), {'variant': 'bias', 'priors': [[], [], [-2], [], [-4], [-4, -3]]})
    assert sorted(map(int, ic.tables)) == [k for k in range(36) if k % 6 in (2, 4, 5)]
    assert ic.priors[8] == (6,) and ic.priors[11] == (7, 8) and ic.tables['35'].shape == (5, 5, 5, 64)


def test_split_allocates_copies_only_for_the_options_a_masked_space_can_draw() -> None:
    only_conv = _NB201Like(allowed=(2, 3))
    ic = InterChoice(_nb201_sites(), only_conv, {'variant': 'split', 'split_epoch': 0})
    assert len(ic.copies) == 35 and all(len(c) == 1 for c in ic.copies.values())


# -- bias semantics -------------------------------------------------------------------------------------------------
def _pair(options: dict) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    base = search.build_supernet('fairnas_tiny', num_classes=4)
    torch.manual_seed(0)
    return base, search.build_supernet('fairnas_tiny', num_classes=4, interchoice=options)


@pytest.mark.parametrize('options', [{'variant': 'bias', 'depth': 3}, {'variant': 'split', 'split_epoch': 0}])
def test_extra_weights_leave_the_supernet_unchanged_at_init(options: dict) -> None:
    base, net = _pair(options)
    base.eval(), net.eval()
    space = search.get_space('fairnas_tiny')
    x = torch.randn(2, 3, 32, 32)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        arch = space.sample(g)
        with torch.no_grad():
            assert torch.equal(net(x, arch), base(x, arch))
        assert net.path_state_dict(arch).keys() == base.path_state_dict(arch).keys()


def _table_grads(net: nn.Module, arch: tuple[int, ...]) -> dict[str, torch.Tensor]:
    net.zero_grad(set_to_none=True)
    net.train()
    F.cross_entropy(net(torch.randn(4, 3, 32, 32), arch), torch.tensor([0, 1, 2, 3])).backward()
    return {k: t.grad for k, t in net.interchoice.tables.items()}


@pytest.mark.parametrize('depth', [1, 2])
def test_a_previous_choice_selects_which_bias_entry_gets_the_gradient(depth: int) -> None:
    _, net = _pair({'variant': 'bias', 'depth': depth})
    a = (0, 1, 2, 3, 4, 5)
    b = (0, 1, 4, 3, 4, 5)  # only layer 2 differs: a prior of layer 3
    for arch in (a, b):
        grad = _table_grads(net, arch)['3']
        index = arch[3 - depth : 4]
        nonzero = {tuple(i) for i in grad.abs().sum(-1).nonzero().tolist()}
        assert nonzero == {index}, (arch, nonzero)
    assert _table_grads(net, a)['3'][a[2:4] if depth == 1 else a[1:4]].abs().sum() > 0
    assert _table_grads(net, b)['3'][a[2:4] if depth == 1 else a[1:4]].abs().sum() == 0


def test_bias_tables_are_decayed_like_conv_weights(tmp_path: Path) -> None:
    """uninas decays every parameter with ndim > 1 not named ``*.bias``: its ``_biases`` table included."""
    overrides = {'output': str(tmp_path), 'num_classes': 4}
    assert load_config(SPOSConfig, FAIRNAS_SPLIT_TINY, {}).interchoice == {'variant': 'split', 'split_epoch': 1}
    method = SPOS(load_config(SPOSConfig, FAIRNAS_BIAS_TINY, overrides))
    method.build(engine.init_distributed('cpu'))
    opt, *_ = method.optimizer(4)
    decayed = {id(p) for p in opt.param_groups[0]['params']}
    assert opt.param_groups[0]['weight_decay'] == 4e-5 and opt.param_groups[1]['weight_decay'] == 0.0
    tables = list(method.supernet.interchoice.tables.values())
    assert len(tables) == 5 and all(id(t) in decayed for t in tables)


# -- split semantics ------------------------------------------------------------------------------------------------
def _sgd_step(net: nn.Module, arch: tuple[int, ...], lr: float = 0.1) -> None:
    net.train()
    net.zero_grad(set_to_none=True)
    F.cross_entropy(net(torch.randn(4, 3, 32, 32), arch), torch.tensor([0, 1, 2, 3])).backward()
    with torch.no_grad():
        for p in net.parameters():
            if p.grad is not None:
                p -= lr * p.grad


def test_split_outputs_are_identical_right_after_it_and_diverge_by_prior_afterwards() -> None:
    _, net = _pair({'variant': 'split', 'split_epoch': 2})
    space = search.get_space('fairnas_tiny')
    a, b = (0, 1, 2, 3, 4, 5), (0, 1, 4, 3, 4, 5)  # layer 3's prior (layer 2) differs
    _sgd_step(net, a)  # before the split: one shared set of weights, BN statistics moved
    assert not start_epoch(net, 1) and not bool(net.interchoice.split_done)
    assert net.interchoice.candidate(3, a) is net.interchoice.candidate(3, b) is net.choices[3][3]
    x = torch.randn(2, 3, 32, 32)
    g = torch.Generator().manual_seed(1)
    archs = [a, b, *(space.sample(g) for _ in range(4))]
    net.eval()
    with torch.no_grad():
        before = [net(x, arch) for arch in archs]
    assert start_epoch(net, 2) and bool(net.interchoice.split_done)
    assert not start_epoch(net, 3)  # once
    net.eval()
    with torch.no_grad():
        assert all(torch.equal(net(x, arch), want) for arch, want in zip(archs, before, strict=True))
    assert net.interchoice.candidate(3, a) is not net.interchoice.candidate(3, b)
    wa, wb = net.interchoice.candidate(3, a).state_dict(), net.interchoice.candidate(3, b).state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # both start from the live weights and BN state
    _sgd_step(net, a)
    wa, wb = net.interchoice.candidate(3, a).state_dict(), net.interchoice.candidate(3, b).state_dict()
    assert not torch.equal(wa['conv_pw.weight'], wb['conv_pw.weight'])
    assert not torch.equal(wa['bn1.running_mean'], wb['bn1.running_mean'])  # BN state is split too
    assert net.interchoice.candidate(0, a) is net.choices[0][0]  # the first layer has no prior: never split


def test_split_copies_round_trip_through_state_dict_and_path_state_dict() -> None:
    _, net = _pair({'variant': 'split', 'split_epoch': 0})
    start_epoch(net, 0)
    b = (0, 1, 4, 3, 4, 5)
    _sgd_step(net, b)
    buffer = io.BytesIO()
    torch.save(net.state_dict(), buffer)
    assert any(k.startswith('interchoice.copies.3.') for k in net.state_dict())
    buffer.seek(0)
    _, fresh = _pair({'variant': 'split', 'split_epoch': 0})
    assert not bool(fresh.interchoice.split_done)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    assert bool(fresh.interchoice.split_done)
    x = torch.randn(2, 3, 32, 32)
    net.eval(), fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(x, b), net(x, b))
        # the emitted network with its path weights (the copies of its priors) is the supernet's path
        space = search.get_space('fairnas_tiny')
        model = zoo.create_model(space.to_spec(b), num_classes=4).eval()
        model.load_state_dict(fresh.path_state_dict(b), strict=True)
        assert torch.equal(model(x), fresh(x, b))


# -- config errors --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ('interchoice', 'message'),
    [
        ({'variant': 'attention'}, r"interchoice.variant: 'attention' is not one of \('bias', 'split'\)"),
        ({'variant': 'bias', 'depth': 4}, r'interchoice.depth: 4 is not one of \(1, 2, 3\)'),
        ({'variant': 'bias', 'dept': 2}, r"interchoice: unknown key\(s\) \['dept'\]"),
        ({'variant': 'bias', 'depth': 1, 'priors': [[-1]]}, 'give either depth'),
        ({'variant': 'bias', 'priors': [[1]]}, 'interchoice.priors: .* negative offsets'),
        ({'variant': 'bias', 'split_epoch': 3}, 'interchoice.split_epoch: only the split variant'),
        ({'variant': 'split'}, 'interchoice.split_epoch: expected an epoch >= 0'),
        ({'variant': 'split', 'split_epoch': 2}, 'interchoice.split_epoch: 2 >= epochs 2'),
        ({'variant': 'split', 'split_epoch': 1, 'depth': 2}, 'interchoice.depth: the split variant has depth 1'),
        ('bias', "interchoice='bias': expected dict or null"),
    ],
)
def test_bad_interchoice_options_are_named(interchoice: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(SPOSConfig, BIAS_TINY, {'interchoice': interchoice})


def test_a_space_without_support_is_refused_and_build_supernet_checks_too() -> None:
    with pytest.raises(ConfigError, match="interchoice: space 'tiny' does not support"):
        load_config(SPOSConfig, BIAS_TINY, {'space': 'tiny', 'space_options': {}})
    with pytest.raises(ConfigError, match=r'interchoice\.variant'):
        search.build_supernet('fairnas_tiny', num_classes=4, interchoice={'variant': 'sum'})
    with pytest.raises(ValueError, match="space 'tiny' does not support inter-choice dependent weights"):
        search.build_supernet('tiny', num_classes=4, interchoice={'variant': 'bias'})


# -- command line ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def split_run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp('interchoice_split') / 'run'
    _spos(SPLIT_TINY, out, tiny_data)
    return out


def _found_model(run: Path, options: dict) -> tuple[nn.Module, nn.Module, tuple[int, ...]]:
    """The trained supernet and the zoo network of top1.json carrying its path weights."""
    spec, provenance = search.read_spec(run / 'arch' / 'top1.json')
    assert provenance['config']['interchoice'] == options
    assert provenance['space'] == 'nb201_tiny' and spec['family'] == 'nb201'
    supernet = search.build_supernet('nb201_tiny', num_classes=4, interchoice=options)
    supernet.load_state_dict(weights(run / 'checkpoints' / 'last.pt'))
    model = zoo.create_model(str(run / 'arch' / 'top1.json'), num_classes=4).eval()
    arch = tuple(provenance['arch'])
    assert search.get_space('nb201_tiny').from_spec(spec) == arch
    model.load_state_dict(supernet.path_state_dict(arch), strict=True)
    return supernet.eval(), model, arch


def test_bias_config_runs_on_the_command_line_and_emits_a_spec_the_zoo_builds(tiny_data: Path, tmp_path: Path) -> None:
    _spos(BIAS_TINY, tmp_path / 'bias', tiny_data)
    supernet, model, arch = _found_model(tmp_path / 'bias', {'variant': 'bias', 'depth': 1})
    assert any(t.abs().sum() > 0 for t in supernet.interchoice.tables.values())  # trained
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():  # 8 steps leave most of the 36 entries per table untouched: set them
        for t in supernet.interchoice.tables.values():
            t.fill_(0.1)
        assert not torch.equal(model(x), supernet(x, arch))  # the supernet path adds its biases
        for t in supernet.interchoice.tables.values():
            t.zero_()
        assert torch.equal(model(x), supernet(x, arch))


def test_split_config_runs_on_the_command_line_and_emits_a_spec_the_zoo_builds(split_run: Path) -> None:
    log = [json.loads(x) for x in (split_run / 'train_log.jsonl').read_text().splitlines()]
    assert [x['step'] for x in log] == list(range(1, 9))  # 2 epochs of 4 steps; the split at the start of epoch 1
    supernet, model, arch = _found_model(split_run, {'variant': 'split', 'split_epoch': 1})
    assert bool(supernet.interchoice.split_done)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), supernet(x, arch))
    # copies trained after the split differ from the live weights they started from
    ic = supernet.interchoice
    moved = [
        not torch.equal(t, ic._sites[k].candidates.state_dict()[name])
        for k in ic._slots
        for clone in ic.copies[str(k)]
        for name, t in clone.state_dict().items()
        if name.endswith('weight')
    ]
    assert moved and any(moved)


def test_split_run_killed_after_the_split_resumes_to_the_same_weights(
    split_run: Path, tiny_data: Path, tmp_path: Path
) -> None:
    out = tmp_path / 'killed'
    proc = _spos(SPLIT_TINY, out, tiny_data, env={**ENV, engine.FAULT_ENV: '6'}, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert bool(weights(out / 'checkpoints' / 'last.pt')['interchoice.split_done'])
    _spos(SPLIT_TINY, out, tiny_data, '--resume')
    assert_same_weights(weights(out / 'checkpoints' / 'last.pt'), weights(split_run / 'checkpoints' / 'last.pt'))


def test_split_under_two_gloo_processes_equals_one_process_with_two_accumulation_steps(
    tiny_data: Path, tmp_path: Path
) -> None:
    """The copies exist before DDP wraps the model and split at the same step on every rank."""
    ddp, single = tmp_path / 'ddp', tmp_path / 'single'
    torchrun('spos', SPLIT_TINY, ddp, tiny_data)
    _spos(SPLIT_TINY, single, tiny_data, '--grad-accum', '2')
    params = assert_same_params(weights(ddp / 'checkpoints' / 'last.pt'), weights(single / 'checkpoints' / 'last.pt'))
    assert any(k.startswith('interchoice.copies.') for k in params)


def test_a_bad_interchoice_option_fails_in_one_line_on_the_command_line(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """In process: the command line checks its config before it builds anything (no run needed)."""
    argv = ['spos', '--config', str(BIAS_TINY), '--data-dir', str(tiny_data), '--output', str(tmp_path / 'bad')]
    assert search_cli([*argv, '--set', 'interchoice={variant: bias, depth: 5}']) == 2
    err = capsys.readouterr().err
    assert 'interchoice.depth: 5 is not one of (1, 2, 3)' in err and len(err.strip().splitlines()) == 1, err
    assert 'Traceback' not in err


def test_overhead_benchmark_measures_every_variant_against_spos() -> None:
    """tools/bench_search.py --mode interchoice on a tiny network: every variant timed, increases relative to SPOS
    and next to the paper's Table 1 (no timing is asserted: speed targets live in benchmarks/)."""
    from search.bench_interchoice import PAPER_TABLE1, VARIANTS, interchoice_overhead

    result = interchoice_overhead(subspaces=('only_conv',), batch=4, channels=4, cells=1, rounds=1, steps=1)
    rows = result['results']['only_conv']
    assert set(rows) == set(VARIANTS)
    spos = rows['SPOS']['cpu_s_per_step']
    assert spos > 0 and rows['SPOS']['increase'] is None
    for name in PAPER_TABLE1:
        assert rows[name]['increase'] == pytest.approx(rows[name]['cpu_s_per_step'] / spos - 1, abs=1e-3)
        assert rows[name]['paper_increase'] == PAPER_TABLE1[name]['only_conv']
