"""The package layering: backbones imports nothing of ours; search imports backbones only; zoo imports backbones.

Each package (with every submodule) is imported in a fresh interpreter and ``sys.modules`` is checked; a static scan
of every ``import`` statement also catches lazy imports inside functions, against a short list of the known ones.
"""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OURS = ('backbones', 'search', 'zoo', 'tools')
FORBIDDEN = {'backbones': {'search', 'zoo', 'tools'}, 'search': {'zoo', 'tools'}, 'zoo': {'search', 'tools'}}
#: zoo's demo runs a tiny search on purpose, and zoo.cli imports the demo (both import ``search`` only lazily).
SKIP = {'zoo.demo', 'zoo.cli'}
#: Lazy imports across the layers that exist today (file, module). New ones fail the static test.
KNOWN_LAZY = {
    ('zoo/demo.py', 'search'),  # the demo may import search lazily (README)
    ('zoo/demo.py', 'search.methods'),
    ('search/methods/dna_plus.py', 'zoo.training'),  # DNA+ retrains each generation's teacher
}

_IMPORT_ALL = """
import importlib, json, pkgutil, sys
pkg, skip = sys.argv[1], set(json.loads(sys.argv[2]))
root = importlib.import_module(pkg)
skipped = []
for info in pkgutil.walk_packages(root.__path__, pkg + '.'):
    if info.name in skip or info.name.endswith('.__main__'):
        continue
    try:
        importlib.import_module(info.name)
    except ModuleNotFoundError as err:  # an optional third-party dependency (OpenMMLab) is absent
        if (err.name or '').split('.')[0] in ('backbones', 'search', 'zoo', 'tools'):
            raise
        skipped.append(info.name)
print(json.dumps({'modules': sorted(sys.modules), 'skipped': skipped}))
"""


def violations(package: str, loaded: list[str]) -> list[str]:
    """The modules in ``loaded`` that ``package`` may not import (by top-level package)."""
    return sorted(m for m in loaded if m.split('.')[0] in FORBIDDEN[package])


def _loaded(package: str) -> dict:
    out = subprocess.run(
        [sys.executable, '-c', _IMPORT_ALL, package, json.dumps(sorted(SKIP))],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize('package', sorted(FORBIDDEN))
def test_importing_a_package_loads_no_forbidden_layer(package):
    result = _loaded(package)
    assert f'{package}.' in ' '.join(result['modules'])  # the submodules really were imported
    assert violations(package, result['modules']) == []


def test_the_checker_flags_a_forbidden_import():
    assert violations('search', ['torch', 'backbones.mbconv', 'search.engine', 'zoo.training.loop']) == [
        'zoo.training.loop'
    ]
    assert violations('backbones', ['backbones._runtime', 'search']) == ['search']
    assert violations('zoo', ['zoo', 'backbones', 'search.engine', 'tools.train']) == ['search.engine', 'tools.train']
    assert violations('zoo', ['zoo.api', 'backbones.mbconv', 'timm', 'zoology']) == []


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def cross_layer_imports(root: Path) -> set[tuple[str, str]]:
    """Every (file, module) import statement, lazy ones included, that crosses the layering."""
    found = set()
    for package, forbidden in FORBIDDEN.items():
        for path in sorted((root / package).rglob('*.py')):
            for name in _imports(path):
                if name.split('.')[0] in forbidden:
                    found.add((path.relative_to(root).as_posix(), name))
    return found


def test_no_new_lazy_import_crosses_the_layers(tmp_path):
    assert cross_layer_imports(REPO) <= KNOWN_LAZY
    fake = tmp_path / 'search' / 'methods' / 'new.py'
    fake.parent.mkdir(parents=True)
    fake.write_text('def f():\n    from zoo.training import train\n    import zoo\n')
    (tmp_path / 'backbones').mkdir()
    (tmp_path / 'zoo').mkdir()
    assert cross_layer_imports(tmp_path) == {
        ('search/methods/new.py', 'zoo.training'),
        ('search/methods/new.py', 'zoo'),
    }
