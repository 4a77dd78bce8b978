"""BossNAS's shipped rating outputs reproduce the published tau/rho/R, and wrong or damaged data is caught."""

from __future__ import annotations

import importlib.util
import json
import os
import random
from pathlib import Path

import pytest

from search import bossnas_data as bd
from search.rating import main as rating_main

ROOT = Path(__file__).resolve().parents[1]
TOL = 0.005


@pytest.fixture(scope='module')
def nats_data() -> bd.RatingData:
    return bd.nats()


@pytest.fixture(scope='module')
def mbconv_data() -> bd.RatingData:
    return bd.mbconv()


def _copy_with(tmp_path: Path, space: str, edit) -> Path:
    """A data folder holding ``space``'s file after ``edit(doc)`` (the other file is not needed)."""
    doc = json.loads((bd.DATA_DIR / bd.FILES[space]).read_text())
    edit(doc)
    (tmp_path / bd.FILES[space]).write_text(json.dumps(doc))
    return tmp_path


def test_mbconv_reproduces_published_correlations(mbconv_data):
    rep = bd.report(mbconv_data)
    assert rep['n'] == 23 and rep['dropped_scores'] == rep['dropped_truth'] == 0
    assert rep['raw_kendall_tau'] == pytest.approx(-0.644, abs=TOL)
    assert rep['raw_spearman_rho'] == pytest.approx(-0.777, abs=TOL)
    assert rep['raw_pearson_r'] == pytest.approx(-0.847, abs=TOL)
    assert rep['kendall_tau'] == -rep['raw_kendall_tau']  # the oriented value the paper prints
    assert mbconv_data.best == '11 0110 0111 1100 0110'
    assert bd.verify(rep) == []


def test_nats_reproduces_published_correlations(nats_data):
    rep = bd.report(nats_data)
    assert rep['n'] == 32768
    assert rep['raw_kendall_tau'] == pytest.approx(-0.534, abs=TOL)
    assert rep['raw_spearman_rho'] == pytest.approx(-0.734, abs=TOL)
    assert rep['raw_pearson_r'] == pytest.approx(-0.718, abs=TOL)
    assert (rep['best'], rep['best_truth']) == ('64:40:48:64:56', 93.29)  # Tab. 4, CIFAR-10
    assert bd.verify(rep) == []


def test_authors_rounding_explains_the_papers_mbconv_tau():
    """Rounding scores to 4 decimals (the authors' script) ties two pairs: |tau| 0.6468 -> the paper's 0.65."""
    exact, rounded = bd.report(bd.mbconv()), bd.report(bd.mbconv(round_to=4))
    assert round(exact['kendall_tau'], 2) == 0.64
    assert round(rounded['kendall_tau'], 2) == 0.65 == bd.PAPER['mbconv'][0]
    assert len(set(bd.mbconv(round_to=4).scores.values())) == 21
    assert bd.verify(rounded) == []


def test_scores_are_block_loss_sums(nats_data):
    doc = json.loads((bd.DATA_DIR / bd.FILES['nats']).read_text())
    loss = doc['block_loss']
    # 64:40:48:64:56 -> width indices 7 4 5 7 6 -> blocks [0, 1], [2, 3], [4] -> '74', '57', '6'
    expected = (loss[0]['74'] + 4) + (loss[1]['57'] + 4) + (loss[2]['6'] + 4)
    assert nats_data.scores['64:40:48:64:56'] == pytest.approx(expected, abs=1e-12)
    assert nats_data.truth['8:8:8:8:8'] == 79.79 and nats_data.truth['16:16:16:16:16'] == 87.59
    assert max(nats_data.truth, key=nats_data.truth.get) == '64:64:56:64:24'


def test_shuffled_accuracies_fail_the_check(tmp_path):
    data_dir = _copy_with(tmp_path, 'nats', lambda doc: random.Random(0).shuffle(doc['cifar10_top1']))
    problems = bd.verify(bd.report(bd.nats(data_dir)))
    assert any('kendall_tau' in p for p in problems) and any('best_truth' in p for p in problems)


def test_sign_flipped_losses_fail_the_check(tmp_path):
    def negate(doc):
        doc['block_loss'] = [{k: -v for k, v in table.items()} for table in doc['block_loss']]

    problems = bd.verify(bd.report(bd.mbconv(_copy_with(tmp_path, 'mbconv', negate))))
    assert any('kendall_tau' in p and '+0.6' in p for p in problems) and any('best' in p for p in problems)


def test_missing_file_names_it_and_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match=r'mbconv_imagenet\.json.*convert_bossnas_data'):
        bd.mbconv(tmp_path)


@pytest.mark.parametrize(
    ('space', 'edit', 'message'),
    [
        ('mbconv', lambda doc: doc['block_loss'][1].pop('0110'), r'block_loss\[1\] must map all 256 paths'),
        ('mbconv', lambda doc: doc['dna_archs'][3].update(path='11 0110'), r'dna_archs\[3\] path'),
        ('mbconv', lambda doc: doc['dna_archs'][0].update(imagenet_top1=None), r'imagenet_top1'),
        ('nats', lambda doc: doc['cifar10_top1'].pop(), r'32767 values, expected 32768'),
        ('nats', lambda doc: doc.pop('blocks'), r"field 'blocks'"),
        ('nats', lambda doc: doc.update(blocks=[[0, 1], 2, [3, 4]]), r'must split layers'),
        ('mbconv', lambda doc: doc.update(layers_per_block=[2, 4, 4, 4, '4']), r'positive integers'),
    ],
)
def test_corrupt_content_is_a_clear_error(tmp_path, space, edit, message):
    with pytest.raises(ValueError, match=message):
        bd.LOADERS[space](_copy_with(tmp_path, space, edit))


def test_truncated_json_is_a_clear_error(tmp_path):
    text = (bd.DATA_DIR / bd.FILES['mbconv']).read_text()
    (tmp_path / bd.FILES['mbconv']).write_text(text[: len(text) // 2])
    with pytest.raises(ValueError, match='corrupt BossNAS data file'):
        bd.mbconv(tmp_path)


def test_cli(tmp_path, capsys):
    assert bd.main(['--space', 'mbconv', '--export', str(tmp_path), '--json', str(tmp_path / 'r.json')]) == 0
    out = capsys.readouterr().out
    assert '-0.6443' in out and '11 0110 0111 1100 0110' in out
    # the exported files feed the generic rater, which gives the same (oriented) tau
    scores, truth = str(tmp_path / 'mbconv_scores.json'), str(tmp_path / 'mbconv_truth.json')
    assert rating_main([scores, truth, '--lower-is-better']) == 0
    assert '+0.6443' in capsys.readouterr().out

    def reverse_top1(doc):  # pair each architecture with another one's accuracy
        top1 = [a['imagenet_top1'] for a in doc['dna_archs']][::-1]
        for arch, acc in zip(doc['dna_archs'], top1, strict=True):
            arch['imagenet_top1'] = acc

    (tmp_path / 'bad').mkdir()
    bad = _copy_with(tmp_path / 'bad', 'mbconv', reverse_top1)
    assert bd.main(['--space', 'mbconv', '--data-dir', str(bad)]) == 1
    assert 'mismatch: mbconv kendall_tau' in capsys.readouterr().err
    assert bd.main(['--space', 'nats', '--data-dir', str(tmp_path / 'none')]) == 1
    assert 'error: BossNAS nats data file not found' in capsys.readouterr().err


@pytest.mark.skipif(not os.environ.get('BOSSNAS_GIT_DIR'), reason='set BOSSNAS_GIT_DIR to a BossNAS clone (git dir)')
def test_converter_rebuilds_the_committed_files(tmp_path):
    spec = importlib.util.spec_from_file_location('convert_bossnas_data', ROOT / 'tools' / 'convert_bossnas_data.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.convert(os.environ['BOSSNAS_GIT_DIR'], module.COMMIT, tmp_path)
    for name in bd.FILES.values():
        assert (tmp_path / name).read_bytes() == (bd.DATA_DIR / name).read_bytes()


def test_docs_show_the_commands_output(capsys):
    assert bd.main([]) == 0
    text = (ROOT / 'docs' / 'bossnas_data.md').read_text()
    for line in capsys.readouterr().out.splitlines():
        assert line in text, f'docs/bossnas_data.md is out of date: {line!r}'
