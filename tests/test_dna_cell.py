"""DNA on the nb201 cell space (search/methods/dna_cell.py) and its teacher (search/gt_teacher.py), on the tiny
ground truth of tests/test_groundtruth.py (4 channels, 8x8 images)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip('sklearn')

import timm

import backbones  # noqa: F401  (registers the families)
from search import engine, gt_cli, gt_harness
from search.config import ConfigError
from search.gt_teacher import train_teacher
from search.methods.dna_cell import DNACell, DNACellConfig, _Block, teacher_spec_from_file
from search.methods.teacher import teacher_boundaries
from search.spaces import get_space
from search.strategies.action_space import ActionSpaceSearch
from search.strategies.traversal import recalibrate_bn
from tests.test_groundtruth import TINY, tiny_truth  # noqa: F401  (a fixture)

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / 'configs' / 'search' / 'dna_groundtruth_tiny.yaml'


@pytest.fixture(scope='module')
def teacher(tiny_truth: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    out = tmp_path_factory.mktemp('teacher') / 'teacher.safetensors'
    train_teacher(tiny_truth, out, epochs=1)
    return out


def test_teacher_file_carries_its_spec_and_is_never_overwritten(teacher: Path, tiny_truth: Path) -> None:  # noqa: F811
    spec = teacher_spec_from_file(teacher)
    assert spec['edges'] == ['nor_conv_3x3'] * 6  # the largest only-Conv architecture
    assert spec['channels'] == TINY.channels
    doc = json.loads(teacher.with_suffix('.json').read_text())
    assert 0 <= doc['test_top1'] <= 100 and doc['recipe']['epochs'] == 1
    with pytest.raises(FileExistsError, match='--overwrite'):
        train_teacher(tiny_truth, teacher, epochs=1)
    with pytest.raises(KeyError, match='neither "largest" nor'):
        train_teacher(tiny_truth, teacher.with_name('x.safetensors'), arch='e0:nope')


def test_teacher_errors_are_one_line(teacher: Path, tiny_truth: Path, capsys: pytest.CaptureFixture) -> None:  # noqa: F811
    argv = ['teacher', '--truth', str(tiny_truth), '--out', str(teacher), '--epochs', '1']
    assert gt_cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'exists' in err[0]


def _cfg(tmp_path: Path, teacher: Path, **values: object) -> DNACellConfig:
    base = {
        'space': 'nb201',
        'space_options': {'subspace': 'only_conv', 'channels': TINY.channels, 'cells_per_stage': 1},
        'img_size': TINY.img_size,
        'teacher_checkpoint': str(teacher),
        'output': str(tmp_path / 'run'),
        'device': 'cpu',
        'workers': 0,
    }
    return DNACellConfig(**{**base, **values})


def test_config_errors_name_the_field(tmp_path: Path, teacher: Path) -> None:
    with pytest.raises(ConfigError, match='teacher_checkpoint'):
        _cfg(tmp_path, teacher, teacher_checkpoint=None)
    with pytest.raises(ConfigError, match='dna_cell runs on nb201'):
        _cfg(tmp_path, teacher, space='fairnas_tiny', space_options={})
    with pytest.raises(ConfigError, match='lr_decay'):
        _cfg(tmp_path, teacher, lr_decay=0.0)
    with pytest.raises(ConfigError, match=r"action_space: unknown option\(s\) \['popsize'\]"):
        _cfg(tmp_path, teacher, action_space={'popsize': 3})
    searcher = DNACell(_cfg(tmp_path, teacher, searcher='action_space', action_space={'samples': 9})).searcher()
    assert isinstance(searcher, ActionSpaceSearch) and searcher.score_name == 'relative_l1'
    assert searcher.config.samples == 9
    with pytest.raises(ValueError, match='is not a readable safetensors'):
        bad = tmp_path / 'bad.safetensors'
        bad.write_bytes(b'not a safetensors file')
        DNACell(_cfg(tmp_path, bad))
    with pytest.raises(FileNotFoundError, match='does not exist'):
        DNACell(_cfg(tmp_path, tmp_path / 'none.safetensors'))


def test_a_teacher_of_another_width_is_refused(tmp_path: Path, teacher: Path) -> None:
    method = DNACell(_cfg(tmp_path, teacher, space_options={'subspace': 'only_conv', 'channels': 8}))
    with pytest.raises((ValueError, RuntimeError), match=r'does not fit|channels'):
        method.build(engine.init_distributed('cpu'))


def test_teacher_boundaries_by_name() -> None:
    model = timm.create_model('nb201', spec=get_space('nb201_tiny').to_spec((3,) * 6))
    assert teacher_boundaries(model, ['stages.0', 'stages.2']) == ['stages.0', 'stages.2']
    with pytest.raises(ValueError, match=r"no module\(s\) \['stages.7'\]"):
        teacher_boundaries(model, ['stages.0', 'stages.7'])


@torch.no_grad()
def test_block_chain_is_the_zoo_network_of_the_path(tmp_path: Path, teacher: Path) -> None:
    """What dna_cell trains and rates, block by block, is the zoo network's stage outputs given path_state_dict;
    another path's weights give other outputs (the check can fail)."""
    method = DNACell(_cfg(tmp_path, teacher))
    method.build(engine.init_distributed('cpu'))
    supernet = method.supernet.eval()
    for p in supernet.parameters():
        p.normal_(0, 0.3)
    arch, other = (2, 3, 2, 3, 3, 2), (3, 3, 2, 3, 3, 2)  # only-Conv: 2 = Conv1x1, 3 = Conv3x3
    x = torch.randn(2, 3, TINY.img_size, TINY.img_size)

    def zoo_stages(a: tuple[int, ...]) -> list[torch.Tensor]:
        net = timm.create_model('nb201', spec=method.space.to_spec(a), num_classes=10).eval()
        net.load_state_dict(supernet.path_state_dict(a))
        return net.forward_intermediates(x, intermediates_only=True)

    supernet.set_arch(arch)
    h, chain = x, []
    for k in range(3):
        h = _Block(supernet, k)(h)
        chain.append(h)
    for got, want in zip(chain, zoo_stages(arch), strict=True):
        torch.testing.assert_close(got, want)
    assert not torch.allclose(chain[-1], zoo_stages(other)[-1])


def test_the_teachers_own_path_rates_zero(tmp_path: Path, teacher: Path, tiny_truth: Path) -> None:  # noqa: F811
    """A supernet holding the teacher's weights on the teacher's path reproduces every block target (relative L1
    0); any other path does not."""
    data = tmp_path / 'data'
    from search import groundtruth as gt

    gt.export_image_folder(data, TINY.img_size, gt_harness.load_truth(tiny_truth)['split'])
    cfg = _cfg(tmp_path, teacher, data_dir=str(data), holdout_per_class=10, epochs=1, batch_size=64, calib_images=32)
    method = DNACell(cfg)
    ctx = engine.init_distributed('cpu')
    engine.run(method, cfg, stages=('train',), ctx=ctx, resume=True)
    rater = method.rater(ctx)
    rater.rate()
    rater._load()
    # The teacher's BN statistics as a path's are re-estimated: on the same calibration images, so that a path
    # holding the teacher's weights must reproduce its features exactly.
    recalibrate_bn(method.teacher, rater.calib_images)
    rater.compute_targets()
    top = method.space.extremes()[1]  # the teacher's architecture
    from safetensors.torch import load_file

    state = {k: v for k, v in load_file(teacher).items() if not k.startswith('fc.')}
    names = {k: v for k, v in method.supernet.path_state_dict(top).items()}
    assert set(state) <= set(names)
    sd = method.supernet.state_dict()
    for key in state:  # write the teacher into the path's candidates
        for full, tensor in sd.items():
            if _path_key(full, method, top) == key:
                tensor.copy_(state[key])
    own, other = rater.block_scores(top), rater.block_scores((2,) * 6)
    # Block 0 sees the images: exact. Later blocks see the teacher's features computed with its running statistics,
    # while its own recalibration ran its earlier stages on batch statistics: a small difference remains.
    assert own[0] < 1e-6 and max(own) < 0.02, own
    assert min(other) > 0.1, other


def _path_key(full: str, method: DNACell, arch: tuple[int, ...]) -> str | None:
    """The zoo-network key a supernet state-dict key maps to on ``arch`` (None: another candidate)."""
    head, sep, rest = full.partition('.candidates.')
    if not sep:
        return full
    op, _, tail = rest.partition('.')
    module = dict(method.supernet.named_modules())[head]
    return f'{head}.{tail}' if int(op) == arch[module.decision] else None


def test_harness_end_to_end(teacher: Path, tiny_truth: Path, tmp_path: Path) -> None:  # noqa: F811
    def run() -> dict:
        return gt_harness.run_method(
            'dna_cell',
            CONFIG,
            tiny_truth,
            tmp_path / 'run',
            seed=0,
            overrides={'teacher_checkpoint': str(teacher)},
            top_k=(2,),
            show_progress=False,
        )

    report = run()
    scores = json.loads((tmp_path / 'run' / 'scores.json').read_text())
    assert report['n'] == 3 and len(scores) == 3 and all(s > 0 for s in scores.values())
    rows = [json.loads(line) for line in (tmp_path / 'run' / 'ratings' / 'paths.jsonl').read_text().splitlines()]
    assert {r['key'] for r in rows} == set(scores)
    assert all(r['score'] == pytest.approx(sum(r['blocks'])) and len(r['blocks']) == 3 for r in rows)
    log = [json.loads(line) for line in (tmp_path / 'run' / 'train_log.jsonl').read_text().splitlines()]
    assert {'loss_block0', 'loss_block1', 'loss_block2'} <= set(log[-1])
    again = run()
    assert again['kendall_tau'] == report['kendall_tau']


def test_parameter_count_baseline(tiny_truth: Path, capsys: pytest.CaptureFixture) -> None:  # noqa: F811
    """The trivial predictor (more parameters ranks higher): its tau is that of -params against the truth."""
    from search import rating

    report = gt_harness.baseline_report(tiny_truth, 'params', top_k=(2,))
    rows = gt_harness.load_truth(tiny_truth)['architectures']
    want = rating.kendall_tau([r['params'] for r in rows], [r['test_top1_mean'] for r in rows])
    assert report['n'] == 3 and report['kendall_tau'] == pytest.approx(want)
    assert gt_cli.main(['baseline', str(tiny_truth), '--metric', 'macs']) == 0
    assert 'kendall_tau' in capsys.readouterr().out
    with pytest.raises(ValueError, match='baseline metric'):
        gt_harness.baseline_report(tiny_truth, 'latency')
