"""What timm requires of its own models, checked on every model of the package registry.

TorchScript (``torch.jit.script``) and timm's FX feature extractor (``features_only=True, feature_cls='fx'``), after
timm's tests/test_models.py; ``out_indices`` as an int (the last n levels, timm's ``feature_take_indices``); the
registry is only known to timm once the package is imported.
"""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest
import timm
import torch
import torch.nn as nn

import backbones
import zoo

MODELS = zoo.list_models(include_families=True)
SLOW = {'nasvit_max'}  # the largest model: ~8 s for both checks on 2 cores; its family runs in the default suite
PARAMS = [pytest.param(n, marks=pytest.mark.slow if n in SLOW else ()) for n in MODELS]
SIZE = 32  # the smallest input every family takes (stride 32 -> a 1x1 map; NASViT's min_input_size)


def _input(model: nn.Module) -> torch.Tensor:
    torch.manual_seed(0)
    size = max(SIZE, model.pretrained_cfg.get('min_input_size', (3, SIZE, SIZE))[-1])
    return torch.randn(1, 3, size, size)


def _levels(name: str) -> int:
    return backbones.FAMILIES[zoo.create_model(name).spec['family']].NUM_FEATURE_LEVELS


def _script(model: nn.Module) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():  # torch.jit.script is deprecated in torch 2.x, but timm still supports it
        warnings.simplefilter('ignore', FutureWarning)
        return torch.jit.script(model)


@pytest.mark.parametrize('name', PARAMS)
def test_jit_script_matches_eager(name):
    model = zoo.create_model(name).eval()
    scripted = _script(model)
    x = _input(model)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x))


def test_jit_script_windowed_nasvit():
    """The windowed attention path of NASViT (segmentation, ``window_size``) scripts too."""
    model = zoo.create_model('nasvit_min', window_size=2).eval()
    x = torch.randn(1, 3, 96, 96)  # token grids 6, 3, 3, 2: windows in the first two transformer stages
    with torch.no_grad():
        torch.testing.assert_close(_script(model)(x), model(x))


@pytest.mark.parametrize('name', PARAMS)
def test_fx_feature_extractor_matches_forward_intermediates(name):
    levels = _levels(name)
    fx = timm.create_model(name, features_only=True, feature_cls='fx').eval()
    full = zoo.create_model(name).eval()
    state = full.state_dict()
    fx.load_state_dict({k: state[k.removeprefix('graph_module.')] for k in fx.state_dict()})
    x = _input(full)
    with torch.no_grad():
        outs = fx(x)
        ref = full.forward_intermediates(x, intermediates_only=True)
    assert len(outs) == len(ref) == levels
    assert [o.shape[1] for o in outs] == fx.feature_info.channels()
    for out, expected in zip(outs, ref, strict=True):
        torch.testing.assert_close(out, expected)


@pytest.mark.parametrize('name', ['dna_a', 'pinas_cls', 'bossnet_t0_nose', 'nasvit_min'])
def test_int_out_indices_take_the_last_levels(name):
    levels = _levels(name)
    last2 = zoo.create_model(name, features_only=True, out_indices=2)
    explicit = zoo.create_model(name, features_only=True, out_indices=(levels - 2, levels - 1))
    assert last2.feature_info.out_indices == (levels - 2, levels - 1)
    assert last2.feature_info.channels() == explicit.feature_info.channels()
    full = zoo.create_model(name).eval()
    with torch.no_grad():
        x = _input(full)
        inter = full.forward_intermediates(x, indices=2, intermediates_only=True)
    assert [t.shape[1] for t in inter] == last2.feature_info.channels()
    assert zoo.create_model(name, features_only=True, out_indices=levels).feature_info.out_indices == tuple(
        range(levels)
    )
    for bad in (0, -1, levels + 1, True):
        with pytest.raises(ValueError, match='out_indices'):
            zoo.create_model(name, features_only=True, out_indices=bad)


def test_registry_needs_the_package_import():
    """timm has no plugin entry points: the zoo's names exist for timm once ``zoo`` (or ``backbones``) is imported.

    Without the import timm's own error is all a user gets; the README says so and quotes it. This pins that
    behaviour (in a fresh interpreter): if timm ever changes it, the README must change too.
    """
    code = (
        'import timm\n'
        'try:\n'
        "    timm.create_model('bossnet_t0_nose')\n"
        'except RuntimeError as err:\n'
        '    print(err)\n'
        'import backbones\n'
        "print(type(timm.create_model('bossnet_t0_nose')).__name__)\n"
    )
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ['Unknown model (bossnet_t0_nose)', 'HyTraNet']
