"""search/ hands specs to the rest of the package through validated JSON files."""

import pytest

import zoo
from search import read_spec, write_spec


def test_write_then_build(tmp_path):
    spec = zoo.get_spec('pinas_trans')
    path = write_spec(spec, tmp_path / 'out' / 'found.json', method='pinas', kendall_tau=0.79)
    got, provenance = read_spec(path)
    assert got == spec and provenance == {'method': 'pinas', 'kendall_tau': 0.79}
    assert zoo.spec_of(zoo.create_model(got)) == spec


def test_invalid_spec_is_never_written(tmp_path):
    spec = zoo.get_spec('pinas_trans')
    spec['choices'][3] = 7
    with pytest.raises(zoo.SpecError, match=r'choices\[3\]'):
        write_spec(spec, tmp_path / 'bad.json')
    assert not (tmp_path / 'bad.json').exists()


def test_read_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r'nowhere\.json'):
        read_spec(tmp_path / 'nowhere.json')
    (tmp_path / 'broken.json').write_text('{')
    with pytest.raises(zoo.SpecError, match=r'broken\.json'):
        read_spec(tmp_path / 'broken.json')
