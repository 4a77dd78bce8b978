"""DNA end to end on CPU: tiny space, tiny teacher, tiny generated data; kill/resume; gloo DDP; DNA+ and DNA++.

The runs go through the command line (``python -m search``) in subprocesses, as a user would start them.
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

import zoo
from search.cli import main as search_cli
from search.methods.dna import _block_prefixes
from search.strategies import Candidate, brute_force_search
from tests._helpers import ENV, ROOT, assert_same_params, assert_same_weights, run_search, torchrun, weights

CONFIG = ROOT / 'configs/search/dna_tiny.yaml'
COMMON = ['--epochs', '1', '--set', 'ckpt_every=2']


def _search(output: Path, data_dir: Path, *extra: str, **kwargs) -> subprocess.CompletedProcess:
    return run_search('dna', CONFIG, output, data_dir, *COMMON, *extra, **kwargs)


@pytest.fixture(scope='module')
def full_run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp('dna_run') / 'run'
    _search(out, tiny_data)
    return out


def test_dna_search_end_to_end(full_run: Path) -> None:
    from search.spaces.mbconv import get_space

    space = get_space('tiny')
    log = [json.loads(x) for x in (full_run / 'train_log.jsonl').read_text().splitlines()]
    assert [x['step'] for x in log] == [1, 2, 3, 4]
    assert {'loss', 'lr', 'img_per_s', 'loss_block0', 'loss_block3', 'data_s', 'compute_s'} <= set(log[0])
    assert log[0]['lr'][:2] == pytest.approx([0.002 * 0.9, 0.005 * 0.9])  # official: epochs counted from 1
    ratings = {}
    for k in range(len(space.blocks)):
        doc = json.loads((full_run / 'ratings' / f'block{k}.json').read_text())
        assert len(doc['candidates']) == space.num_candidates(k)
        assert all(r['score'] > 0 and r['mse'] > 0 for r in doc['candidates'])
        ratings[k] = doc['candidates']
    result = json.loads((full_run / 'search_result.json').read_text())['results']
    assert [r['rank'] for r in result] == [1, 2, 3]
    assert [r['score'] for r in result] == sorted(r['score'] for r in result)
    # the exact search's best equals brute force over the written ratings
    blocks = [
        [Candidate(r['score'], 0.0, r['in_width'], space.blocks[k].cells[r['cell']].width, r) for r in ratings[k]]
        for k in range(len(space.blocks))
    ]
    best = brute_force_search(blocks, None, k=1, start_key=space.ds_width)[0]
    assert result[0]['score'] == pytest.approx(best.score)
    assert result[0]['choices'] == [[c.payload['cell'], c.payload['ops']] for c in best.choices]
    # the emitted spec goes through timm and the zoo API
    spec_path = full_run / 'arch' / 'top1.json'
    model = zoo.create_model(str(spec_path), num_classes=3).eval()
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 3)
    assert timm.create_model('mbconv', spec=result[0]['spec']).spec == model.spec
    assert (full_run / 'holdout_split.json').is_file()


# Recorded on the CPU (fp32, one thread) after the review's fixes; a refactor of the engine or of DNA must keep them.
# Scores to 1e-5 relative (float summation order may differ across CPUs); architectures and costs exactly.
RECORDED_TOP3 = {
    'score': [4.0974205522171205, 4.104152352803926, 4.106985081032688],
    'cost': [14912.0 + 67106, 16514.0 + 67106, 15746.0 + 67106],  # searched + fixed parameters (1000 classes)
    'top1_arch': [0, 0, 0, 0, 1, 0, 0, 1, 0, 1],
}


def test_tiny_run_reproduces_the_recorded_fingerprint(full_run: Path) -> None:
    result = json.loads((full_run / 'search_result.json').read_text())['results']
    assert [r['score'] for r in result] == pytest.approx(RECORDED_TOP3['score'], rel=1e-5)
    assert [r['cost'] for r in result] == RECORDED_TOP3['cost']
    assert result[0]['arch'] == RECORDED_TOP3['top1_arch']


def test_killed_run_resumes_to_the_same_result(full_run: Path, tiny_data: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / 'killed'
    proc = _search(out, tiny_data, env={**ENV, 'SUPERNET_ZOO_KILL_AFTER_STEP': '2'}, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert torch.load(out / 'checkpoints' / 'last.pt', weights_only=True)['step'] == 2
    assert not (out / 'search_result.json').exists()
    argv = ['dna', '--config', str(CONFIG), '--data-dir', str(tiny_data), '--output', str(out), *COMMON]
    capsys.readouterr()
    assert search_cli(argv) == 2  # the earlier run is never silently overwritten (in process: refused up front)
    err = capsys.readouterr().err
    assert '--resume' in err and 'Traceback' not in err
    with open(out / 'train_log.jsonl', 'a') as f:  # lines a killed run wrote after its last checkpoint
        f.write(json.dumps({'step': 3, 'loss': -1.0}) + '\n{"step": 4, "lo')
    (out / 'checkpoints' / '.last.pt.tmp-999').write_bytes(b'torn')
    _search(out, tiny_data, '--resume')
    log = [json.loads(x) for x in (out / 'train_log.jsonl').read_text().splitlines()]
    assert [x['step'] for x in log] == [1, 2, 3, 4] and all(x['loss'] > 0 for x in log)
    assert sorted(p.name for p in (out / 'checkpoints').iterdir()) == ['last.pt']
    assert_same_weights(weights(out / 'checkpoints' / 'last.pt'), weights(full_run / 'checkpoints' / 'last.pt'))
    a = json.loads((full_run / 'search_result.json').read_text())['results']
    b = json.loads((out / 'search_result.json').read_text())['results']
    assert [r['spec'] for r in a] == [r['spec'] for r in b]
    assert [r['score'] for r in a] == pytest.approx([r['score'] for r in b], rel=1e-6)


def test_two_gloo_processes_equal_one_process_with_the_same_global_batch(tiny_data: Path, tmp_path: Path) -> None:
    """torchrun, 2 CPU processes x 4 images == 1 process x (2 accumulation steps x 4 images), batch 8 both."""
    ddp, single = tmp_path / 'ddp', tmp_path / 'single'
    torchrun('dna', CONFIG, ddp, tiny_data, *COMMON)
    _search(single, tiny_data, '--grad-accum', '2')
    assert_same_params(weights(ddp / 'checkpoints' / 'last.pt'), weights(single / 'checkpoints' / 'last.pt'))
    ra = json.loads((ddp / 'search_result.json').read_text())['results']
    rb = json.loads((single / 'search_result.json').read_text())['results']
    assert ra[0]['spec'] == rb[0]['spec']
    for k in range(4):  # ratings were split over the two ranks and gathered
        sa = json.loads((ddp / 'ratings' / f'block{k}.json').read_text())['candidates']
        sb = json.loads((single / 'ratings' / f'block{k}.json').read_text())['candidates']
        assert [r['ops'] for r in sa] == [r['ops'] for r in sb]
        assert [r['score'] for r in sa] == pytest.approx([r['score'] for r in sb], rel=1e-3)


def test_budget_and_metric_from_the_command_line(full_run: Path, tiny_data: Path, tmp_path: Path, capsys) -> None:
    """Re-search the rated blocks under a params budget (the ratings are reused, no retraining). In process: the
    search stage over cached ratings builds nothing, so a subprocess would only add an interpreter start."""
    import shutil

    out = tmp_path / 'budget'
    shutil.copytree(full_run, out)
    unconstrained = json.loads((full_run / 'search_result.json').read_text())['results'][0]
    budget = unconstrained['cost'] - 1
    argv = ['dna', '--config', str(CONFIG), '--data-dir', str(tiny_data), '--output', str(out), *COMMON]
    argv += ['--stage', 'search', '--metric', 'params', '--budget']
    assert search_cli([*argv, str(budget)]) == 0
    result = json.loads((out / 'search_result.json').read_text())['results']
    assert all(r['cost'] <= budget for r in result)
    net = timm.create_model('mbconv', spec=result[0]['spec'])
    assert sum(p.numel() for p in net.parameters()) == result[0]['cost']
    capsys.readouterr()
    assert search_cli([*argv, '10']) == 2
    err = capsys.readouterr().err
    assert 'below the cheapest architecture' in err and len(err.strip().splitlines()) == 1, err


def test_dna_plus_two_generations(tiny_data: Path, tmp_path: Path) -> None:
    """Generation 1 searches with the timm teacher; its best net, scaled, retrained, teaches generation 2."""
    cmd = [sys.executable, '-m', 'search', 'dna_plus', '--config', str(ROOT / 'configs/search/dna_plus_tiny.yaml')]
    cmd += ['--data-dir', str(tiny_data), '--output', str(tmp_path / 'plus')]
    proc = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    history = json.loads((tmp_path / 'plus' / 'generations.json').read_text())
    assert [h['generation'] for h in history] == [1, 2]
    assert history[0]['teacher'] == 'test_efficientnet'
    assert history[1]['teacher'] == 'mbconv' and history[1]['teacher_spec'] == history[0]['scaled_spec']
    assert Path(history[1]['teacher_checkpoint']).is_file()
    final = zoo.create_model(str(tmp_path / 'plus' / 'final.json'))
    assert final.spec == history[1]['found_spec']


def test_compound_scaling_of_a_spec() -> None:
    from search.methods.dna_plus import compound_scale

    spec = zoo.get_spec('dna_c')
    scaled = compound_scale(spec, 1.0, 1.1)  # EfficientNet-B1's coefficients (DNA-c1 in the paper)
    assert [len(s) for s in scaled['stages']] == [2, 3, 5, 5, 5, 5, 2]  # ceil(n * 1.1)
    assert scaled['stages'][2][-1] == spec['stages'][2][-1] and scaled['stages'][2][0] == spec['stages'][2][0]
    wide = compound_scale(spec, 2.0, 1.0)
    assert wide['stem_size'] == 64 and wide['num_features'] == 2560 and wide['stages'][1][0].endswith('c48_se0.25')
    assert timm.create_model('mbconv', spec=scaled).spec == scaled


def test_vicreg_loss_terms() -> None:
    from search.methods.dna_pp import vicreg_loss

    torch.manual_seed(0)
    z = torch.randn(256, 8) * 2
    same = vicreg_loss(z, z.clone())
    assert same['inv'] == 0 and same['var'] == 0  # std ~2 > gamma = 1: no hinge
    assert 0 < same['cov'] < 2  # nearly uncorrelated dimensions
    collapsed = vicreg_loss(torch.zeros(16, 8), torch.zeros(16, 8), lambda_var=1.0)
    assert collapsed['var'].item() == pytest.approx(2 * (1 - 1e-2), rel=1e-3)  # both branches: 1 - sqrt(eps)
    only = vicreg_loss(torch.zeros(16, 8), torch.zeros(16, 8), lambda_var=1.0, variance_on='teacher')
    assert only['var'].item() == pytest.approx(1 - 1e-2, rel=1e-3)
    correlated = torch.randn(64, 1).repeat(1, 4)
    assert vicreg_loss(correlated, correlated, lambda_cov=1.0)['cov'] > 1
    with pytest.raises(ValueError, match='batch >= 2'):
        vicreg_loss(torch.zeros(1, 4), torch.zeros(1, 4))


def test_dna_pp_self_supervised_search(tiny_data: Path, tmp_path: Path, capsys) -> None:
    """DNA++ runs its stages one at a time (``--stage`` used to be ignored: it retrained) and names itself."""
    cmd = [sys.executable, '-m', 'search', 'dna_pp', '--config', str(CONFIG), '--data-dir', str(tiny_data)]
    cmd += ['--output', str(tmp_path / 'pp'), *COMMON, '--set', 'projector_dim=32', 'batch_size=8']
    proc = subprocess.run([*cmd, '--stage', 'train'], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (tmp_path / 'pp' / 'ratings').exists() and not (tmp_path / 'pp' / 'arch').exists()
    state = torch.load(tmp_path / 'pp' / 'checkpoints' / 'last.pt', weights_only=True)
    assert state['objective'] == 'dna_pp'
    assert any(k.startswith('teacher.') for k in state['model'])  # the teacher is trained jointly
    assert any(k.startswith('proj_student.') for k in state['model'])
    proc = subprocess.run([*cmd, '--stage', 'rate', 'search'], cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = [json.loads(x) for x in (tmp_path / 'pp' / 'train_log.jsonl').read_text().splitlines()]
    assert len(log) == 4 and all(math.isfinite(x['loss']) for x in log)  # not trained again
    result = json.loads((tmp_path / 'pp' / 'search_result.json').read_text())['results']
    assert [r['rank'] for r in result] == [1, 2, 3] and all(math.isfinite(r['score']) for r in result)
    assert {r['method'] for r in result} == {'dna_pp'}
    assert json.loads((tmp_path / 'pp' / 'arch' / 'top1.json').read_text())['search']['method'] == 'dna_pp'
    assert timm.create_model('mbconv', spec=result[0]['spec']).spec == result[0]['spec']
    capsys.readouterr()
    assert search_cli([*cmd[3:], '--block', '0', '--overwrite']) == 2  # in process: refused before anything runs
    err = capsys.readouterr().err
    assert 'own teacher' in err and 'Traceback' not in err
    assert (tmp_path / 'pp' / 'search_result.json').is_file()  # --overwrite removed nothing


def test_search_stage_on_cached_ratings_builds_nothing(full_run: Path, tmp_path: Path, monkeypatch) -> None:
    """``--stage search`` over cached ratings used to build the teacher and supernet before looking at the cache."""
    import shutil

    from search import engine
    from search.methods import dna

    out = tmp_path / 'cached'
    shutil.copytree(full_run, out)

    def no_build(*args, **kwargs):
        raise AssertionError('the search stage built the teacher/supernet although every block is rated')

    monkeypatch.setattr(dna, 'build_supernet', no_build)
    cfg = dna.DNAConfig(**{**_tiny_config(), 'output': str(out), 'top_k': 2})
    found = engine.run('dna', cfg, stages=('search',), ctx=engine.DistContext())
    want = json.loads((full_run / 'search_result.json').read_text())['results']
    assert [r['spec'] for r in found] == [r['spec'] for r in want[:2]]
    provenance = json.loads((out / 'arch' / 'top1.json').read_text())['search']
    assert {'method', 'space', 'budget', 'score', 'seed', 'config', 'arch'} <= set(provenance)
    assert provenance['method'] == 'dna' and provenance['config']['teacher'] == 'test_efficientnet'
    assert dna.DNA(cfg).space.from_spec(found[0]['spec']) == tuple(provenance['arch'])


def _tiny_config() -> dict:
    import yaml

    values = yaml.safe_load(CONFIG.read_text())
    values.pop('method')
    return values


def test_demo_search_chapter(tmp_path: Path) -> None:
    """`make demo`'s search chapter: a tiny DNA search that emits a spec, builds it with timm, exports ONNX."""
    from zoo.demo import search_chapter

    text = search_chapter(tmp_path)
    assert '| 1 |' in text and 'ONNX export matches torch' in text
    assert (tmp_path / 'dna_tiny_top1.onnx').is_file()
    assert (tmp_path / 'dna_run' / 'arch' / 'top1.json').is_file()


def test_independent_block_jobs_equal_one_joint_run(full_run: Path, tiny_data: Path, tmp_path: Path) -> None:
    """`--block` jobs in one output folder: each trains its blocks exactly as the joint run does (paths and data
    are per-block functions of the seed), rating merges their checkpoints, the search finds the same spec."""
    out = tmp_path / 'jobs'
    _search(out, tiny_data, '--block', '0', '1', '--stage', 'train', 'rate')
    _search(out, tiny_data, '--block', '2', '3', '--stage', 'train', 'rate')
    assert sorted(p.name for p in (out / 'checkpoints').iterdir()) == ['blocks0-1.pt', 'blocks2-3.pt']
    joint = weights(full_run / 'checkpoints' / 'last.pt')
    for name in ('blocks0-1.pt', 'blocks2-3.pt'):
        state = torch.load(out / 'checkpoints' / name, weights_only=True)
        blocks = json.loads(state['config'])['blocks']
        prefixes = tuple(p for b in blocks for p in _block_prefixes(b))
        trained = [k for k in state['model'] if k.startswith(prefixes)]
        assert trained
        for key in trained:
            torch.testing.assert_close(state['model'][key], joint[key], rtol=0, atol=0, msg=key)
    argv = ['dna', '--config', str(CONFIG), '--data-dir', str(tiny_data), '--output', str(out), *COMMON]
    assert search_cli([*argv, '--stage', 'search']) == 0  # in process: the search stage only reads the ratings
    a = json.loads((full_run / 'search_result.json').read_text())['results']
    b = json.loads((out / 'search_result.json').read_text())['results']
    assert [r['spec'] for r in a] == [r['spec'] for r in b]


def test_latency_budgeted_search_on_cached_ratings(full_run: Path, tmp_path: Path) -> None:
    import shutil

    from search.methods import dna

    out = tmp_path / 'lat'
    shutil.copytree(full_run, out)
    cfg = dna.DNAConfig(space='tiny', img_size=32, output=str(out), metric='latency', top_k=2)
    found = dna.search(cfg, dna.cached_ratings(cfg))
    assert [r['rank'] for r in found] == [1, 2] and all(r['cost'] > 0 and r['metric'] == 'latency' for r in found)
    tight = dna.DNAConfig(
        space='tiny', img_size=32, output=str(out), metric='latency', top_k=1, budget=found[0]['cost']
    )
    assert dna.search(tight, dna.cached_ratings(tight))[0]['cost'] <= found[0]['cost'] * 1.000001
