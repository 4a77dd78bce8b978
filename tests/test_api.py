"""The zoo's public API and its command line."""

from __future__ import annotations

import pytest
import timm

import zoo
from zoo.cli import main

EXPECTED = ['dna_a', 'dna_b', 'dna_c', 'dna_d', 'pinas_cls', 'pinas_trans']


def test_list_models():
    assert set(EXPECTED) <= set(zoo.list_models())
    assert zoo.list_models('dna_*') == ['dna_a', 'dna_b', 'dna_c', 'dna_d']
    assert 'mbconv' in zoo.list_models(include_families=True)
    assert 'mbconv' not in zoo.list_models()


@pytest.mark.parametrize('name', EXPECTED)
def test_timm_create_model_builds_each(name):
    assert timm.create_model(name, num_classes=3).num_classes == 3
    assert name in timm.list_models(name)


def test_create_model_unknown_name_suggests():
    with pytest.raises(KeyError, match=r"unknown model 'dna_e'.*did you mean"):
        zoo.create_model('dna_e')


def test_model_info_claims_and_measurements():
    info = zoo.model_info('dna_b', measure=True)
    assert info['top1'] == 77.5 and info['source_table'] == 'DNA Table 2'
    assert info['params_m'] == 4.9 and info['flops_m'] == 406
    assert info['measured_params_m'] == pytest.approx(4.918, rel=1e-3)
    assert info['measured_flops_rule_m'] == pytest.approx(406, rel=0.02)
    assert info['license'] and info['origin'].startswith('https://github.com/')
    assert info['spec']['family'] == 'mbconv'


def test_cli_list_spec_info(capsys):
    assert main(['list', 'pinas*']) == 0
    assert capsys.readouterr().out.split() == ['pinas_cls', 'pinas_trans']
    assert main(['spec', 'pinas_cls']) == 0
    assert '"choices"' in capsys.readouterr().out
    assert main(['info', 'nope']) == 2
    assert 'unknown model' in capsys.readouterr().err


def test_demo_writes_the_table(tmp_path, capsys):
    out = tmp_path / 'table.md'
    assert main(['demo', '--pattern', 'dna_[ab]', '--no-onnx', '--no-search', '--out', str(out)]) == 0
    table = out.read_text()
    assert '| dna_a | DNA | 4.243 / 4.2 |' in table
    assert 'dna_b' in table and 'pinas' not in table
    assert 'Paper top-1' in capsys.readouterr().out
