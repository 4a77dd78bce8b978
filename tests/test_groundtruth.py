"""The stand-alone ground truth (search/groundtruth.py) and the rating harness (search/gt_harness.py) on tiny slices:
a few architectures, one epoch, 4 channels, 8x8 images. The committed benchmark is checked for consistency only."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip('sklearn')

from search import groundtruth as gt
from search import gt_cli, gt_harness, rating

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / 'benchmarks' / 'groundtruth'
TINY = gt.Recipe(subspace='only_conv', channels=4, cells_per_stage=1, img_size=8, epochs=2, batch_size=16)
#: 10 held-out and 150 test images a class leave 197 training images (12 batches of 16 an epoch).
TINY_SPLIT = {'holdout_per_class': 10, 'test_per_class': 150, 'seed': 0}


@pytest.fixture(scope='module')
def tiny_truth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 only-Conv architectures x 2 seeds x 1 epoch, summarised."""
    out = tmp_path_factory.mktemp('gt') / 'only_conv'
    archs = gt.archs_for(TINY.space())[:3]
    gt.train_all(out, TINY, archs, seeds=[1, 2], split=TINY_SPLIT, threads=1, show_progress=False)
    gt.summarize(out)
    return out


def test_split_is_stratified_disjoint_complete_and_seeded() -> None:
    images, labels = gt.digits_images(16)
    assert images.shape == (1797, 16, 16) and images.dtype == np.uint8 and labels.shape == (1797,)
    split = gt.make_split(labels, 25, 60, seed=0)
    parts = [set(split[k]) for k in ('train', 'holdout', 'test')]
    assert sum(len(p) for p in parts) == 1797 and set.union(*parts) == set(range(1797))
    for c in range(10):
        assert (labels[split['test']] == c).sum() == 60 and (labels[split['holdout']] == c).sum() == 25
    assert split == gt.make_split(labels, 25, 60, seed=0)
    assert split['test'] != gt.make_split(labels, 25, 60, seed=1)['test']
    with pytest.raises(ValueError, match='class 0 has 178 images'):
        gt.make_split(labels, 100, 100, seed=0)


def test_committed_split_matches_the_code() -> None:
    doc = json.loads((BENCH / 'only_conv' / 'split.json').read_text())
    labels = gt.digits_images(8)[1]
    split = gt.make_split(labels, doc['holdout_per_class'], doc['test_per_class'], doc['seed'])
    assert {k: doc[k] for k in ('train', 'holdout', 'test')} == split


def test_tensors_equal_what_the_engine_reads_from_the_exported_pngs(tmp_path: Path) -> None:
    """The supernet (timm image folder) and the stand-alone networks (tensors) see the same pixels."""
    from timm.data import create_transform

    from search.data import image_folder

    doc = gt.export_image_folder(tmp_path, img_size=16)
    assert len(doc['train']) == 947 and len(doc['holdout']) == 250
    dataset = image_folder(tmp_path / 'train', create_transform(16, is_training=False, crop_pct=1.0))
    images, labels = gt.digits_images(16)
    rel = doc['holdout'][7]
    index = int(Path(rel).stem)
    k = next(i for i, (p, _) in enumerate(dataset.reader.samples) if p.endswith(rel))
    x, y = dataset[k]
    assert y == labels[index]
    torch.testing.assert_close(x, gt.to_tensor(images[index : index + 1])[0], atol=1e-5, rtol=0)


def test_architecture_lists() -> None:
    only_conv = gt.archs_for(gt.Recipe().space())
    assert len(only_conv) == 64 and len(set(only_conv)) == 64
    assert all(set(a) <= {2, 3} for a in only_conv)
    space = gt.Recipe(subspace='no_zero').space()
    sample = gt.archs_for(space, 64, seed=0)
    assert len(set(sample)) == 64 and all(a in space for a in sample) and all(0 not in a for a in sample)
    assert sample == gt.archs_for(space, 64, seed=0) and sample != gt.archs_for(space, 64, seed=1)


def test_train_all_resumes_and_refuses_another_recipe(tiny_truth: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = gt.load_results(tiny_truth)
    assert len(rows) == 6 and {r['seed'] for r in rows} == {1, 2}
    assert all(0.0 <= r['test_top1'] <= 100.0 and r['params'] > 0 and r['macs'] > 0 for r in rows)

    def boom(*args: object, **kwargs: object) -> dict:
        raise AssertionError('a finished (architecture, seed) was trained again')

    monkeypatch.setattr(gt, 'train_architecture', boom)
    archs = gt.archs_for(TINY.space())[:3]
    assert len(gt.train_all(tiny_truth, TINY, archs, seeds=[1, 2], split=TINY_SPLIT, show_progress=False)) == 6
    with pytest.raises(ValueError, match='holds another recipe'):
        gt.train_all(
            tiny_truth, gt.Recipe(**{**TINY.__dict__, 'epochs': 3}), archs, [1], split=TINY_SPLIT, show_progress=False
        )


def test_same_seed_same_numbers(tiny_truth: Path) -> None:
    """A rerun of one (architecture, seed) reproduces the recorded accuracy: the ground truth is rerunnable."""
    row = gt.load_results(tiny_truth)[0]
    split = json.loads((tiny_truth / 'recipe.json').read_text())['split']
    again = gt.train_architecture(row['spec'], gt._data(TINY, split), TINY, row['seed'])
    assert again['test_top1'] == row['test_top1'] and again['holdout_top1'] == row['holdout_top1']


def test_summary_tables_and_noise_ceiling(tmp_path: Path) -> None:
    """Hand-made results: the noise ceiling is Kendall's tau between the seeds' test accuracies."""
    acc = {1: [90.0, 91.0, 92.0, 93.0], 2: [90.5, 92.5, 91.0, 93.5]}
    with open(tmp_path / gt.RESULTS, 'w') as f:
        for i in range(4):
            for seed in (1, 2):
                row = {
                    'key': f'k{i}',
                    'arch': [i],
                    'seed': seed,
                    'spec': {'edges': ['x']},
                    'test_top1': acc[seed][i],
                    'holdout_top1': 80.0 + i,
                    'train_time_s': 1.0,
                    'params': 10,
                    'macs': 100.0,
                }
                f.write(json.dumps(row) + '\n')
        f.write('{"torn line\n')
    summary = gt.summarize(tmp_path)
    assert summary['noise_ceiling_kendall_tau'] == pytest.approx(rating.kendall_tau(acc[1], acc[2]))
    assert summary['noise_ceiling_kendall_tau'] == pytest.approx(2 / 3)
    truth = json.loads((tmp_path / 'truth.json').read_text())
    assert truth == {f'k{i}': (acc[1][i] + acc[2][i]) / 2 for i in range(4)}
    assert summary['test_top1_mean'] == pytest.approx(np.mean(acc[1] + acc[2]))
    assert len((tmp_path / 'groundtruth.csv').read_text().splitlines()) == 5


def test_harness_end_to_end(tiny_truth: Path, tmp_path: Path) -> None:
    config = ROOT / 'configs' / 'search' / 'spos_groundtruth_tiny.yaml'
    report = gt_harness.run_method(
        'spos', config, tiny_truth, tmp_path / 'run', seed=0, top_k=(2,), show_progress=False
    )
    truth = json.loads((tiny_truth / 'truth.json').read_text())
    scores = json.loads((tmp_path / 'run' / 'scores.json').read_text())
    assert set(scores) == set(truth) and report['n'] == 3
    assert report['kendall_tau'] == pytest.approx(
        rating.kendall_tau([-s for s in scores.values()], [truth[k] for k in scores])
    )
    assert (tmp_path / 'run' / 'rating.png').stat().st_size > 0
    # The engine trained on the ground truth's training images and rated on its held-out ones.
    split = json.loads((tmp_path / 'run' / 'holdout_split.json').read_text())
    assert len(split['holdout']) == 100 and len(split['train']) == 197
    # A rerun resumes the finished supernet and reads every rating from the cache.
    again = gt_harness.run_method('spos', config, tiny_truth, tmp_path / 'run', seed=0, top_k=(2,), show_progress=False)
    assert again['kendall_tau'] == report['kendall_tau']
    # The rating command takes the scores and the ground-truth folder and reports the same numbers.
    out = tmp_path / 'cli.json'
    scores_file = str(tmp_path / 'run' / 'scores.json')
    assert rating.main([scores_file, str(tiny_truth), '--lower-is-better', '--top-k', '2', '--json', str(out)]) == 0
    assert json.loads(out.read_text())['kendall_tau'] == pytest.approx(report['kendall_tau'])


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert gt_cli.main(['method', '--truth', str(tmp_path / 'none'), '--output', str(tmp_path / 'o')]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'groundtruth.json does not exist' in err[0]
    assert gt_cli.main(['summarize', str(tmp_path)]) == 2
    assert 'holds no results' in capsys.readouterr().err


@pytest.mark.parametrize(('folder', 'sample'), [('only_conv', None), ('no_zero', 64), ('nats_size', 64)])
def test_committed_ground_truth_is_consistent(folder: str, sample: int | None) -> None:
    """Every architecture of the list (all only-Conv ones, the seeded no-Zero and NATS-size samples) with every
    seed (at least two); truth.json is the mean test top-1; specs are the space's."""
    doc = json.loads((BENCH / folder / 'groundtruth.json').read_text())
    recipe = gt.recipe_from(json.loads((BENCH / folder / 'recipe.json').read_text())['recipe'])
    space = recipe.space()
    keys = {row['key'] for row in doc['architectures']}
    assert keys == {space.key(a) for a in gt.archs_for(space, sample, seed=0)}
    truth = json.loads((BENCH / folder / 'truth.json').read_text())
    for row in doc['architectures']:
        assert set(row['test_top1']) == {str(seed) for seed in doc['summary']['seeds']}
        assert truth[row['key']] == pytest.approx(np.mean(list(row['test_top1'].values())))
        assert row['spec'] == space.to_spec(tuple(row['arch']))
    assert len(doc['summary']['seeds']) >= 2
    assert -1.0 <= doc['summary']['noise_ceiling_kendall_tau'] <= 1.0


NATS_TINY = gt.Recipe(family='nats_size', widths=(4, 8), img_size=8, epochs=1, batch_size=16)


def test_nats_size_ground_truth_and_harness(tmp_path: Path) -> None:
    """The NATS-size family (issue 13): trained, summarised (widths as the row's choices) and rated end to end by a
    method whose forced space is ``nats_size`` with the recipe's widths."""
    out = tmp_path / 'nats'
    archs = gt.archs_for(NATS_TINY.space(), 3, seed=0)
    gt.train_all(out, NATS_TINY, archs, seeds=[1, 2], split=TINY_SPLIT, threads=1, show_progress=False)
    gt.summarize(out)
    doc = json.loads((out / 'groundtruth.json').read_text())
    assert [r['channels'] for r in doc['architectures']] == [
        NATS_TINY.space().to_spec(tuple(r['arch']))['channels'] for r in doc['architectures']
    ]
    assert json.loads((out / 'recipe.json').read_text())['recipe']['widths'] == [4, 8]
    config = ROOT / 'configs' / 'search' / 'spos_groundtruth_tiny.yaml'
    report = gt_harness.run_method('spos', config, out, tmp_path / 'run', seed=0, top_k=(2,), show_progress=False)
    assert report['n'] == 3 and report['subspace'] == 'nats_size'
    from search import engine

    trained = json.loads(engine.load_checkpoint(tmp_path / 'run' / 'checkpoints' / 'last.pt')['config'])
    assert (trained['space'], trained['space_options']) == ('nats_size', {'widths': [4, 8]})
    assert gt_harness.baseline_report(out)['n'] == 3


def test_recipe_fields_keep_the_nb201_folders_valid() -> None:
    """An nb201 recipe is recorded without the nats_size fields (so the committed folders still match), and the
    family's fields are checked."""
    for folder in ('only_conv', 'no_zero'):
        written = json.loads((BENCH / folder / 'recipe.json').read_text())['recipe']
        assert gt.recipe_fields(gt.recipe_from(written)) == written
    with pytest.raises(ValueError, match='recipe family'):
        gt.Recipe(family='resnest')
    with pytest.raises(ValueError, match='only the nats_size family'):
        gt.Recipe(widths=(4, 8))
