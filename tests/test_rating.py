"""Rating accuracy: correlations equal scipy's, the improvement curve behaves as in the paper, the CLI works."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from search.rating import (
    improvement_curve,
    kendall_tau,
    main,
    pearson_r,
    rating_report,
    scatter_plot,
    spearman_rho,
    top_k_improvement,
)

ROOT = Path(__file__).resolve().parents[1]

# DNA's "ImageNet NAS bench": stand-alone top-1 of 23 architectures ranked by the supernet.
DNA_NAMES = [f'rank_{i}' for i in range(0, 201, 10)] + ['rank_220', 'rank_250']
DNA_TOP1 = [75.52, 75.00, 74.66, 74.79, 74.76, 74.46, 74.93, 74.766, 74.36, 74.43, 74.57, 74.52]
DNA_TOP1 += [74.89, 74.55, 74.34, 74.62, 74.03, 74.33, 74.14, 73.86, 74.38, 73.85, 73.58]


def test_correlations_equal_scipy():
    rng = np.random.default_rng(0)
    truth = rng.normal(size=40)
    pred = truth + rng.normal(size=40)
    pred[:5] = pred[0]  # ties: kendalltau must be tau-b
    assert kendall_tau(pred, truth) == pytest.approx(stats.kendalltau(pred, truth, variant='b').statistic, abs=1e-12)
    assert spearman_rho(pred, truth) == pytest.approx(stats.spearmanr(pred, truth).statistic, abs=1e-12)
    assert pearson_r(pred, truth) == pytest.approx(stats.pearsonr(pred, truth).statistic, abs=1e-12)
    assert all(type(f(list(pred), list(truth))) is float for f in (kendall_tau, spearman_rho, pearson_r))


def test_known_orders():
    up, down = [1, 2, 3, 4, 5], [5, 4, 3, 2, 1]
    for f in (kendall_tau, spearman_rho, pearson_r):
        assert f(up, up) == pytest.approx(1.0)
        assert f(up, down) == pytest.approx(-1.0)
    # One swapped pair among 4: 5 concordant, 1 discordant.
    assert kendall_tau([1, 2, 4, 3], [1, 2, 3, 4]) == pytest.approx(4 / 6)


@pytest.mark.parametrize(
    ('pred', 'truth', 'match'),
    [
        ([1, 2, 3], [1, 2], 'differ in length: 3 != 2'),
        ([1], [1], 'at least 2'),
        ([1, float('nan'), 3], [1, 2, 3], r'predictions hold NaN.*\[1\]'),
        ([1, 2, 3], [1, 2, float('inf')], 'ground truth hold NaN or infinite'),
        ([1, 1, 1], [1, 2, 3], 'predictions are constant'),
        ([[1, 2], [3, 4]], [1, 2], '1-D'),
    ],
)
def test_correlation_errors(pred, truth, match):
    with pytest.raises(ValueError, match=match):
        kendall_tau(pred, truth)


def test_improvement_curve_endpoints():
    truth = np.array(DNA_TOP1)
    mean, best, worst = truth.mean(), truth.max(), truth.min()
    perfect = improvement_curve(truth, truth)
    assert isinstance(perfect, np.ndarray) and perfect.shape == (23,)
    assert perfect[0] == 0.0  # all candidates remain: random picking
    assert perfect[-1] == pytest.approx(1.0)
    assert np.all(np.diff(perfect) >= -1e-12)  # keeping better-predicted ones never hurts a perfect predictor
    reversed_ = improvement_curve(-truth, truth)
    assert reversed_[0] == 0.0
    assert reversed_[-1] == pytest.approx((worst - mean) / (best - mean))
    rng = np.random.default_rng(1)
    assert improvement_curve(rng.normal(size=23), truth)[0] == 0.0


def test_improvement_curve_by_hand():
    pred, truth = [0.1, 0.4, 0.3, 0.2], [1.0, 4.0, 2.0, 3.0]
    # worst to best predicted: truth 1, 3, 2, 4 -> remaining means 2.5, 3, 3, 4; mean 2.5, max 4.
    np.testing.assert_allclose(improvement_curve(pred, truth), [0.0, 1 / 3, 1 / 3, 1.0])
    assert top_k_improvement(pred, truth, 1) == pytest.approx(1.0)
    assert top_k_improvement(pred, truth, 3) == pytest.approx(1 / 3)
    assert top_k_improvement(pred, truth, 4) == 0.0
    with pytest.raises(ValueError, match=r'k must lie in 1\.\.4'):
        top_k_improvement(pred, truth, 5)
    with pytest.raises(ValueError, match='constant'):
        improvement_curve(pred, [1.0, 1.0, 1.0, 1.0])


def test_lower_is_better_flips():
    rng = np.random.default_rng(2)
    truth = rng.normal(size=30)
    loss = -truth + 0.5 * rng.normal(size=30)
    np.testing.assert_allclose(
        improvement_curve(loss, truth, higher_pred_is_better=False), improvement_curve(-loss, truth)
    )
    assert top_k_improvement(loss, truth, 5, higher_pred_is_better=False) > 0.5
    assert kendall_tau(loss, truth) < 0  # DNA's script reports this raw, negative tau

    scores = {f'a{i}': float(v) for i, v in enumerate(loss)}
    gt = {f'a{i}': float(v) for i, v in enumerate(truth)}
    as_loss = rating_report(scores, gt, lower_score_is_better=True, top_k=(5,))
    as_acc = rating_report(scores, gt, top_k=(5,))
    for key in ('kendall_tau', 'spearman_rho', 'pearson_r'):
        assert as_loss[key] == pytest.approx(-as_acc[key]) and as_loss[key] > 0
    assert as_loss['improvement@5'] == pytest.approx(top_k_improvement(loss, truth, 5, higher_pred_is_better=False))


def test_rating_report_on_dna_bench():
    truth = dict(zip(DNA_NAMES, DNA_TOP1, strict=True))
    # The supernet rank as a score (lower is better), plus keys on either side that must be dropped.
    scores = {name: float(name.split('_')[1]) for name in DNA_NAMES} | {'rank_300': 300.0}
    truth_extra = truth | {'rank_5': 75.1, 'rank_7': 75.0}
    report = rating_report(scores, truth_extra, lower_score_is_better=True, top_k=(10, 20, 30))
    assert report['n'] == 23 and report['dropped_scores'] == 1 and report['dropped_truth'] == 2
    ranks = [float(n.split('_')[1]) for n in DNA_NAMES]
    assert report['kendall_tau'] == pytest.approx(-stats.kendalltau(ranks, DNA_TOP1).statistic)
    assert 0.5 < report['kendall_tau'] < 0.8
    assert report['improvement@10'] == pytest.approx(
        top_k_improvement(ranks, DNA_TOP1, 10, higher_pred_is_better=False)
    )
    assert report['improvement@30'] is None  # more than n
    with pytest.raises(
        ValueError, match=r"found 1 \(only in scores, e.g. \['b'\]; only in ground truth, e.g. \['c'\]\)"
    ):
        rating_report({'a': 1.0, 'b': 2.0}, {'a': 1.0, 'c': 2.0})


def test_scatter_plot(tmp_path):
    truth = dict(zip(DNA_NAMES, DNA_TOP1, strict=True))
    scores = {name: float(name.split('_')[1]) for name in DNA_NAMES}
    path = scatter_plot(scores, truth, tmp_path / 'sub' / 'plot.png', title='DNA', lower_score_is_better=True)
    assert path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_cli_in_process(tmp_path, capsys):
    (tmp_path / 's.json').write_text(json.dumps({'a': 1, 'b': 2, 'c': 3}))
    (tmp_path / 't.json').write_text(json.dumps({'a': 10, 'b': 30, 'c': 20}))
    assert main([str(tmp_path / 's.json'), str(tmp_path / 't.json'), '--top-k', '1', '2']) == 0
    out = capsys.readouterr().out
    assert 'kendall_tau' in out and '+0.3333' in out and 'improvement@2' in out
    (tmp_path / 'bad.json').write_text(json.dumps({'a': 'x'}))
    assert main([str(tmp_path / 'bad.json'), str(tmp_path / 't.json')]) == 1
    assert "value of 'a' is not a number" in capsys.readouterr().err
    (tmp_path / 'list.json').write_text('[1, 2]')
    assert main([str(tmp_path / 'list.json'), str(tmp_path / 't.json')]) == 1
    assert 'expected a JSON object' in capsys.readouterr().err


def test_cli_end_to_end(tmp_path):
    scores = {name: 100.0 - float(name.split('_')[1]) for name in DNA_NAMES}  # higher is better
    truth = dict(zip(DNA_NAMES, DNA_TOP1, strict=True))
    (tmp_path / 'scores.json').write_text(json.dumps(scores))
    (tmp_path / 'truth.json').write_text(json.dumps(truth))
    cmd = [sys.executable, '-m', 'search.rating', 'scores.json', 'truth.json', '--top-k', '10', '20']
    cmd += ['--plot', 'out/plot.png', '--json', 'report.json']
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join(filter(None, [str(ROOT), os.environ.get('PYTHONPATH')]))}
    result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env, check=False)
    assert result.returncode == 0, result.stderr
    assert 'kendall_tau' in result.stdout and 'improvement@20' in result.stdout
    assert (tmp_path / 'out' / 'plot.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    report = json.loads((tmp_path / 'report.json').read_text())
    assert report['n'] == 23 and set(report) >= {'kendall_tau', 'spearman_rho', 'pearson_r', 'improvement@10'}
    assert report['kendall_tau'] == pytest.approx(kendall_tau(list(scores.values()), DNA_TOP1))
