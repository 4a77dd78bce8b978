"""SPOS end to end on CPU: learning, the command line, emitted specs with their trained weights, kill/resume, gloo.

The runs go through ``python -m search spos`` in subprocesses, as a user would start them; the tiny configs are
the ones in configs/search/.
"""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import search
import zoo
from search import engine, pipeline
from search.cli import main as search_cli
from search.config import ConfigError, load_config
from search.methods.spos import SPOS, RandomSearch, SPOSConfig
from tests._helpers import ENV, ROOT, assert_same_params, assert_same_weights, check_spos_found, torchrun, weights
from tests._helpers import run_spos as _spos

TINY = ROOT / 'configs/search/spos_tiny.yaml'
FAIRNAS_TINY = ROOT / 'configs/search/spos_fairnas_tiny.yaml'


@pytest.fixture(scope='module')
def tiny_run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp('spos_run') / 'run'
    _spos(TINY, out, tiny_data)
    return out


def test_spos_tiny_search_on_the_dna_family_space(tiny_run: Path) -> None:
    log = [json.loads(x) for x in (tiny_run / 'train_log.jsonl').read_text().splitlines()]
    assert [x['step'] for x in log] == list(range(1, 9))  # 36 training images, batch 8, 2 epochs
    assert log[0]['lr'] == [0.1] and log[-1]['lr'][0] < 0.02  # linear decay per step
    check_spos_found(tiny_run, 'tiny')


def test_spos_tiny_search_is_the_resumable_evolution(tiny_run: Path, tiny_data: Path, tmp_path: Path) -> None:
    """spos_tiny.yaml searches by evolution: every rated architecture is logged, a rerun of the search stage
    resumes the finished evolution (nothing is rated again) and gives the same result."""
    _, provenance = search.read_spec(tiny_run / 'arch' / 'top1.json')
    assert provenance['searcher'] == 'evolution' and 6 <= provenance['evaluations'] <= 6 + 2 * 6
    (state,) = (tiny_run / 'search').glob('evolution-*/evolution.json')
    logged = (state.parent / 'evaluated.jsonl').read_text().splitlines()
    assert len(logged) == provenance['evaluations']
    rated = (tiny_run / 'ratings' / 'paths.jsonl').read_text().splitlines()
    assert len(rated) == provenance['evaluations']
    out = tmp_path / 'copy'
    shutil.copytree(tiny_run, out)
    argv = ['spos', '--config', str(TINY), '--data-dir', str(tiny_data), '--output', str(out)]
    assert search_cli([*argv, '--stage', 'search', '--resume']) == 0  # in process: nothing is trained or rated
    assert (out / 'ratings' / 'paths.jsonl').read_text().splitlines() == rated  # nothing rated twice
    assert search.read_spec(out / 'arch' / 'top1.json')[1]['arch'] == provenance['arch']


def test_spos_tiny_search_by_action_space(tiny_run: Path, tiny_data: Path, tmp_path: Path) -> None:
    """``searcher: action_space`` selects Pi-NAS's search for the same trained supernet: it rates its samples through
    the rater's cache, writes its resumable state, and a rerun gives the same result without rating anything."""
    out = tmp_path / 'copy'
    shutil.copytree(tiny_run, out)
    argv = ['spos', '--config', str(TINY), '--data-dir', str(tiny_data), '--output', str(out), '--stage', 'search']
    argv += ['--resume', '--set', 'searcher=action_space', 'action_space={samples: 10, warmup: 6, batch: 2}']
    assert search_cli(argv) == 0
    spec, provenance = search.read_spec(out / 'arch' / 'top1.json')
    assert provenance['searcher'] == 'action_space' and provenance['evaluations'] == 10
    (state,) = (out / 'search').glob('action_space-*/action_space.json')
    scored = json.loads(state.read_text())['scored']
    assert len(scored) == 10 and provenance['arch'] == max(scored, key=lambda s: s[2])[0]
    assert zoo.create_model(str(out / 'arch' / 'top1.json'), num_classes=4) is not None
    rated = (out / 'ratings' / 'paths.jsonl').read_text().splitlines()
    assert search_cli(argv) == 0
    assert (out / 'ratings' / 'paths.jsonl').read_text().splitlines() == rated  # resumed: nothing rated again
    assert search.read_spec(out / 'arch' / 'top1.json') == (spec, provenance)


def test_spos_fairnas_tiny_search(tiny_data: Path, tmp_path: Path) -> None:
    _spos(FAIRNAS_TINY, tmp_path / 'fairnas', tiny_data)
    check_spos_found(tmp_path / 'fairnas', 'fairnas_tiny')
    spec = zoo.spec_of(zoo.create_model(str(tmp_path / 'fairnas' / 'arch' / 'top1.json')))
    assert spec['act_layer'] == 'relu6' and all('_se' not in b for s in spec['stages'] for b in s)


@pytest.mark.threads(2)
def test_supernet_loss_goes_down_on_a_learnable_folder(tiny_data: Path, tmp_path: Path) -> None:
    """Cross-entropy of fixed paths on fixed training images, before and after a short SPOS run.

    Two threads, as when the margin was set: the 40 steps at lr 0.1 are chaotic, and one thread's float order ends
    at 0.93x the loss before instead of 0.81x (other seeds: 0.8x-0.95x); the 0.85 margin holds for this setting only.
    """
    aug = {'scale': [0.8, 1.0], 'color_jitter': None}
    overrides = {'data_dir': str(tiny_data), 'output': str(tmp_path), 'epochs': 10, 'train_aug': aug}
    cfg = load_config(SPOSConfig, TINY, overrides)
    ctx = engine.init_distributed('cpu')
    method = SPOS(cfg)
    split = pipeline.holdout_split(cfg, ctx)
    images, labels = next(iter(torch.utils.data.DataLoader(method._folder(), batch_size=48, shuffle=False)))
    paths = [method.space.sample(torch.Generator().manual_seed(i)) for i in range(3)]

    @torch.no_grad()
    def loss(net: torch.nn.Module) -> float:
        net.train()  # batch statistics: a fair comparison for an untrained supernet
        return sum(float(F.cross_entropy(net(images, p), labels)) for p in paths) / len(paths)

    before = loss(method.build(ctx, split))
    pipeline.train(method, ctx)
    after = loss(method.supernet)
    assert after < 0.85 * before, (before, after)


def test_killed_run_resumes_to_the_same_result(tiny_run: Path, tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / 'killed'
    proc = _spos(TINY, out, tiny_data, env={**ENV, engine.FAULT_ENV: '3'}, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert torch.load(out / 'checkpoints' / 'last.pt', weights_only=True)['step'] == 3
    assert not (out / 'arch').exists()
    _spos(TINY, out, tiny_data, '--resume')
    assert_same_weights(weights(out / 'checkpoints' / 'last.pt'), weights(tiny_run / 'checkpoints' / 'last.pt'))
    a = json.loads((tiny_run / 'search_result.json').read_text())['results']
    b = json.loads((out / 'search_result.json').read_text())['results']
    assert [r['spec'] for r in a] == [r['spec'] for r in b]
    assert [r['score'] for r in a] == [r['score'] for r in b]


def test_two_gloo_processes_equal_one_process_with_two_accumulation_steps(tiny_data: Path, tmp_path: Path) -> None:
    """torchrun, 2 CPU processes x 4 images == 1 process x (2 accumulation steps x 4 images), batch 8 both."""
    ddp, single = tmp_path / 'ddp', tmp_path / 'single'
    torchrun('spos', TINY, ddp, tiny_data)
    _spos(TINY, single, tiny_data, '--grad-accum', '2')
    assert_same_params(weights(ddp / 'checkpoints' / 'last.pt'), weights(single / 'checkpoints' / 'last.pt'))
    ra = json.loads((ddp / 'search_result.json').read_text())['results']
    rb = json.loads((single / 'search_result.json').read_text())['results']
    assert [r['arch'] for r in ra] == [r['arch'] for r in rb]


def test_random_search_respects_the_budget_and_counts_rejections() -> None:
    space = search.get_space('fairnas_tiny')
    low, high = space.extremes()
    budget = (space.cost(low, 'params') + space.cost(high, 'params')) / 2

    def score(arch: tuple[int, ...]) -> float:  # known optimum under any budget: the most parameters that fit
        return -space.cost(arch, 'params')

    found = RandomSearch(30, seed=0).search(space, score, 'params', budget, 3)
    assert len(found) == 3 and all(f.cost <= budget for f in found)
    assert [f.score for f in found] == sorted(f.score for f in found) and found[0].extra['rejected'] > 0
    assert found == RandomSearch(30, seed=0).search(space, score, 'params', budget, 3)  # seeded
    with pytest.raises(ValueError, match='the smallest one costs'):
        RandomSearch(5, seed=0).search(space, score, 'params', space.cost(low, 'params') - 1, 1)


@pytest.mark.parametrize(
    ('setting', 'message'),
    [
        ({'schedule': 'step'}, "schedule 'step': expected one of linear, cosine"),
        ({'recalibration': 'none'}, "recalibration 'none': expected one of reset, momentum"),
        ({'searcher': 'genetic'}, "searcher 'genetic': expected one of evolution, random"),
        ({'evolution': {'popsize': 3}}, r"evolution: unknown option\(s\) \['popsize'\]"),
        ({'evolution': {'parents': 0}}, 'evolution: evolution parents must be >= 1'),
        ({'evolution': {'parents': 2}}, 'top_k 3 is more than evolution parents 2'),
        ({'action_space': {'popsize': 3}}, r"action_space: unknown option\(s\) \['popsize'\]"),
        ({'action_space': {'classifier': 'svm'}}, "action_space classifier 'svm': expected one of linear, lightgbm"),
        ({'searcher': 'action_space', 'action_space': {'samples': 2}}, 'top_k 3 is more than action_space samples 2'),
        ({'label_smoothing': 1.5}, 'label_smoothing must be in'),
        ({'lrr': 0.1}, r"unknown config key\(s\) \['lrr'\]"),
        ({'lr': 'fast'}, "lr='fast': expected float"),
        ({'space': 'nope'}, "space 'nope' .*unknown search space 'nope'"),
        ({'space': 'fairnas', 'space_options': {'width': 2}}, r"unknown option\(s\) \['width'\]"),
    ],
)
def test_bad_config_values_are_named(setting: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(SPOSConfig, TINY, setting)


def test_bad_config_value_fails_in_one_line_on_the_command_line(tiny_data: Path, tmp_path: Path, capsys) -> None:
    """In process: the command line checks its config before it builds anything (no run needed)."""
    argv = ['spos', '--config', str(TINY), '--data-dir', str(tiny_data), '--output', str(tmp_path / 'bad')]
    assert search_cli([*argv, '--set', 'schedule=step']) == 2
    err = capsys.readouterr().err
    assert "schedule 'step'" in err and 'Traceback' not in err and len(err.strip().splitlines()) == 1, err


def test_dna_space_path_with_its_head_is_the_zoo_model() -> None:
    """SPOS trains the DNA MBConv space with a classifier: a path with its head is the whole zoo network."""
    space = search.get_space('dna')
    net = search.build_supernet('dna', num_classes=5).eval()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    for _ in range(2):
        arch = space.sample(gen)
        model = zoo.create_model(space.to_spec(arch), num_classes=5).eval()
        model.load_state_dict(net.path_state_dict(arch), strict=True)
        with torch.no_grad():
            assert torch.equal(model(x), net(x, arch))
