"""The spec contract between search/, zoo/ and backbones/: validation and round trips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm

import backbones
import backbones.mbconv as mbconv
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
        # bounds: absurd numbers are refused before anything is allocated, naming the field and the bound
        (_mutate('dna_c', stem_size=10**12), "'stem_size': must be <= 4096, got 1000000000000"),
        (_mutate('dna_c', num_features=10**40), "'num_features': must be <= 8192"),
        (_mutate('dna_c', stem_size=0), "'stem_size': must be >= 1"),
        (_mutate('dna_c', stem_size=True), "'stem_size': expected an integer, got True"),
        (_mutate('dna_c', num_features=1280.0), "'num_features': expected an integer, got 1280.0"),
        (_dna_with_block('ir_r100000_k3_s1_e6_c24_se0.25'), r"'stages\[2\]\[1\]': repeats r100000 .* 1 and 32"),
        (_dna_with_block('ir_r1_k3_s1_e6_c4097_se0.25'), r"'stages\[2\]\[1\]': channels c4097 .* 1 and 4096"),
        (_dna_with_block('ir_r1_k3_s1_e6_c0_se0.25'), 'channels c0 must be between 1 and 4096'),
        (
            _dna_with_block('ir_r1_k3_s1_e6_c' + '9' * 5000 + '_se0.25'),
            r'channels c9+\.\.\. \(5000 digits\).*at most 4096',
        ),
        (_dna_with_block('ir_r1_k3_s1_e6_c40.5_se0.25'), "option 'c40.5' must be a whole number"),
        (_dna_with_block('ir_r1_k3.0_s1_e6_c40_se0.25'), "option 'k3.0' must be a whole number"),
        (_mutate('dna_c', stages=[['ir_r20_k3_s1_e6_c40_se0.25']] * 7), "'stages': 140 layers in all must be <= 128"),
        (_mutate('dna_c', stages=[['ir_r1_k3_s1_e6_c8_se0.25']] * 17), "'stages': at most 16 entries, got 17"),
        (
            _mutate('dna_c', stages=[['ir_r16_k3_s1_e6_c40_se0.25'] * 2 + ['ds_r1_k3_s1_c40_se0.25']]),
            r"'stages\[0\]': 33 layers .* must be <= 32",
        ),
        (
            _mutate('dna_c', stages=[['ir_r8_k3_s1_e6_c4096_se0.25']] * 4),
            r'about 7,\d{3}M weights, above the bound of 1,000M',
        ),
        (_mutate('pinas_cls', choices=[1.0] + [0] * 15), r"'choices\[0\]': 1.0 is not one of the allowed values"),
        (_mutate('bossnet_t1', last_stride=2.0), r"'last_stride': 2.0 is not one of the allowed values \(2, 1\)"),
        (_mutate('bossnet_t1', last_stride=True), "'last_stride': True is not one of the allowed values"),
        (
            _mutate('bossnet_t1', stages=[['conv'] * 10**5, [], [], []]),
            r"'stages\[0\]': at most 16 entries, got 100000",
        ),
        (_mutate('nasvit_a0', resolution=10**9), r"'resolution': 1000000000 is not one of .*\(192, 224, 256, 288\)"),
        (_mutate('nasvit_a0', resolution=224.0), "'resolution': expected an integer, got 224.0"),
        (_mutate('nasvit_a0', width=[True] + [16] * 8), r"'width\[0\]': expected an integer, got True"),
        (
            _mutate('nasvit_a0', depth=[1, 3, 3, 4, 3, 3, 10**6]),
            r"'depth\[6\]': 1000000 is not one of .*\(3, 4, 5, 6\)",
        ),
    ],
)
def test_invalid_specs_raise_one_clear_error(spec, match):
    with pytest.raises(SpecError, match=match):
        zoo.validate_spec(spec)
    with pytest.raises(SpecError, match=match):
        zoo.create_model(spec)


def test_bounds_hold_every_efficientnet_up_to_l2():
    """The bounds are generous: EfficientNet-L2 (timm's widest and deepest EfficientNet) is a valid spec."""
    stages = [
        ['ds_r6_k3_s1_c72_se0.25'],
        ['ir_r11_k3_s2_e6_c104_se0.25'],
        ['ir_r11_k5_s2_e6_c176_se0.25'],
        ['ir_r16_k3_s2_e6_c344_se0.25'],
        ['ir_r16_k5_s1_e6_c480_se0.25'],
        ['ir_r22_k5_s2_e6_c824_se0.25'],
        ['ir_r6_k3_s1_e6_c1376_se0.25'],
    ]
    spec = {'family': 'mbconv', 'version': 1, 'stem_size': 136, 'num_features': 5504, 'stages': stages}
    assert zoo.validate_spec(spec) == spec


def test_hub_config_with_an_absurd_spec_is_refused_before_building(tmp_path, monkeypatch):
    """A ``config.json`` carries the spec as ``model_args``; timm's loader hands it to the same validation."""
    zoo.save_for_hub(zoo.create_model('dna_a', num_classes=10), tmp_path)
    config = json.loads((tmp_path / 'config.json').read_text())
    built = []
    monkeypatch.setattr(mbconv.EfficientNet, '__init__', lambda *a, **k: built.append(1))  # nothing may be built
    for field, value, match in [
        ('stem_size', 10**12, "'stem_size': must be <= 4096"),
        ('num_features', 10**40, "'num_features': must be <= 8192"),
    ]:
        bad = dict(config, model_args={'spec': dict(config['model_args']['spec'], **{field: value})})
        (tmp_path / 'config.json').write_text(json.dumps(bad))
        for create in (timm.create_model, zoo.create_model):
            with pytest.raises(SpecError, match=match):
                create(f'local-dir:{tmp_path}')
            with pytest.raises(SpecError, match=match):
                create(f'local-dir:{tmp_path}', pretrained=True)
    spec = config['model_args']['spec']
    spec['stages'][1][0] = 'ir_r100000_k3_s1_e6_c24_se0.25'
    (tmp_path / 'config.json').write_text(json.dumps(config))
    with pytest.raises(SpecError, match=r"'stages\[1\]\[0\]': repeats r100000 must be between 1 and 32"):
        timm.create_model(f'local-dir:{tmp_path}', pretrained=True)
    assert not built


def test_spec_files_that_are_not_specs_name_the_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r'spec file not found: found\.spec'):
        zoo.create_model('found.spec')
    with pytest.raises(FileNotFoundError, match=r'spec file not found: sub/found'):
        zoo.create_model('sub/found')
    with pytest.raises(FileNotFoundError, match=r'spec file not found: .*nothing \(it is a folder\)'):
        (tmp_path / 'nothing').mkdir()
        zoo.create_model(tmp_path / 'nothing')
    (tmp_path / 'found.spec').write_text(zoo.spec_to_json(zoo.get_spec('dna_a')))
    assert zoo.spec_of(zoo.create_model('found.spec')) == zoo.get_spec('dna_a')  # any suffix, once it exists
    assert zoo.spec_of(zoo.create_model('dna_a.official_in1k')) == zoo.get_spec('dna_a')  # tags still work
    (tmp_path / 'weights.json').write_bytes(b'\x80\x03}q\x00(X\x01\x00\x00\x00a\xff')  # a pickle, not JSON
    with pytest.raises(SpecError, match=r'weights\.json is not a JSON spec file: it is binary'):
        zoo.create_model('weights.json')
    (tmp_path / 'notes.spec').write_text('family: mbconv')
    with pytest.raises(SpecError, match=r'notes\.spec is not valid JSON'):
        zoo.create_model('notes.spec')
    (tmp_path / 'digits.json').write_text('{"stem_size": ' + '1' * 5000 + '}')
    with pytest.raises(SpecError, match=r'digits\.json is not valid JSON'):
        zoo.spec_from_json(tmp_path / 'digits.json')
    (tmp_path / 'huge.json').write_bytes(b' ' * (backbones.MAX_SPEC_FILE_BYTES + 1))
    with pytest.raises(SpecError, match=r'huge\.json is not a spec file'):
        zoo.spec_from_json('huge.json')

    def unreadable(self):
        raise PermissionError(13, 'Permission denied')

    monkeypatch.setattr(Path, 'read_bytes', unreadable)
    with pytest.raises(OSError, match=r'spec file not readable: found\.spec \(Permission denied\)'):
        zoo.create_model('found.spec')


def test_spec_error_is_a_value_error():
    assert issubclass(SpecError, ValueError)
