"""The spec contract between search/, zoo/ and backbones/: validation and round trips."""

from __future__ import annotations

import json

import pytest
import timm

import zoo
from zoo import SpecError


@pytest.mark.parametrize('name', zoo.list_models())
def test_spec_model_spec_round_trip(name):
    spec = zoo.get_spec(name)
    model = zoo.create_model(spec)
    assert zoo.spec_of(model) == spec
    assert zoo.spec_from_json(zoo.spec_to_json(spec)) == spec
    assert json.loads(json.dumps(spec)) == spec


@pytest.mark.parametrize('name', zoo.list_models())
def test_same_spec_same_state_dict_layout(name):
    a = zoo.create_model(zoo.get_spec(name)).state_dict()
    b = timm.create_model(name).state_dict()
    assert list(a) == list(b)
    assert [v.shape for v in a.values()] == [v.shape for v in b.values()]


def test_family_entrypoints_take_a_spec():
    spec = zoo.get_spec('dna_c')
    assert zoo.spec_of(timm.create_model('mbconv', spec=spec)) == spec
    spec = zoo.get_spec('pinas_trans')
    assert zoo.spec_of(timm.create_model('resnest_nas', spec=spec)) == spec


def test_get_spec_returns_a_copy():
    spec = zoo.get_spec('pinas_cls')
    spec['choices'][0] = 0
    assert zoo.get_spec('pinas_cls')['choices'][0] == 3


def test_spec_from_json_file(tmp_path):
    path = tmp_path / 'dna_a.json'
    path.write_text(zoo.spec_to_json(zoo.get_spec('dna_a')))
    assert zoo.spec_from_json(path) == zoo.get_spec('dna_a')
    model = zoo.create_model(str(path))
    assert zoo.spec_of(model) == zoo.get_spec('dna_a')
    with pytest.raises(FileNotFoundError, match=r'missing\.json'):
        zoo.spec_from_json(tmp_path / 'missing.json')
    bad = tmp_path / 'bad.json'
    bad.write_text('{"family": "mbconv",')
    with pytest.raises(SpecError, match='not valid JSON'):
        zoo.spec_from_json(bad)


def _mutate(name, **changes):
    spec = zoo.get_spec(name)
    spec.update(changes)
    return spec


def _dna_with_block(block):
    spec = zoo.get_spec('dna_c')
    spec['stages'][2][1] = block
    return spec


@pytest.mark.parametrize(
    ('spec', 'match'),
    [
        ({'family': 'nope', 'version': 1}, r"'family'.*known families"),
        ([1, 2], 'must be a dict'),
        (_mutate('dna_c', version=2), "'version'"),
        ({'family': 'mbconv', 'version': 1, 'stages': []}, r"missing field\(s\) \['num_features', 'stem_size'\]"),
        (_mutate('dna_c', extra=1), r"unknown field\(s\) \['extra'\]"),
        (_dna_with_block('ir_r1_k9_s1_e6_c40_se0.25'), r"'stages\[2\]\[1\]'.*kernel 9.*\(3, 5, 7\)"),
        (_dna_with_block('ir_r1_k3_s1_e4_c40_se0.25'), r'expansion 4.*\(3, 6\)'),
        (_dna_with_block('ir_r1_k3_s3_e6_c40_se0.25'), r'stride 3.*\(1, 2\)'),
        (_dna_with_block('ir_r1_k3_s1_e6_c40_se0.5'), r'SE ratio 0.5.*\(0.25,\)'),
        (_dna_with_block('er_r1_k3_s1_e6_c40_se0.25'), r"block type 'er'.*\('ds', 'ir'\)"),
        (_dna_with_block('ir_r1_k3_s1_c40_se0.25'), r"missing option\(s\) \['e'\]"),
        (_dna_with_block('ir_r1_k3_s1_e6_c40_se0.25_x7'), "cannot parse option 'x7'"),
        (_dna_with_block(3), 'arch-def string'),
        (_mutate('dna_c', stem_size='32'), "'stem_size': expected an integer"),
        (
            _mutate('pinas_cls', choices=[4] + [0] * 15),
            r"'choices\[0\]': 4 is not one of the allowed values \(0, 1, 2, 3\)",
        ),
        (_mutate('pinas_cls', choices=[0] * 15), "'choices': expected 16 entries, got 15"),
        (_mutate('pinas_cls', choices=[True] + [0] * 15), r"'choices\[0\]'"),
        (_mutate('pinas_cls', choices='3 0 1'), "'choices': expected a list"),
    ],
)
def test_invalid_specs_raise_one_clear_error(spec, match):
    with pytest.raises(SpecError, match=match):
        zoo.validate_spec(spec)
    with pytest.raises(SpecError, match=match):
        zoo.create_model(spec)


def test_spec_error_is_a_value_error():
    assert issubclass(SpecError, ValueError)
