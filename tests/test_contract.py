"""The timm contract, checked on every model of the package registry (after timm's tests/test_models.py).

Inputs are small (64 px) so that the whole registry runs in well under a minute per check on 2 CPU cores.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import backbones
import zoo
from backbones._pretrained import hub_id
from zoo.onnx import MIN_COSINE, RTOL, export_onnx

MODELS = zoo.list_models(include_families=True)
SIZE = 64


def _input(model: nn.Module, batch: int = 2) -> torch.Tensor:
    size = max(SIZE, model.pretrained_cfg.get('min_input_size', (3, SIZE, SIZE))[-1])
    return torch.randn(batch, 3, size, size)


def _num_levels(model: nn.Module) -> int:
    return backbones.FAMILIES[model.spec['family']].NUM_FEATURE_LEVELS


@pytest.mark.parametrize('name', MODELS)
def test_forward_and_head(name):
    model = zoo.create_model(name, num_classes=7).eval()
    x = _input(model)
    with torch.no_grad():
        out = model(x)
        feats = model.forward_features(x)
        pre = model.forward_head(feats, pre_logits=True)
        logits = model.forward_head(feats)
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    torch.testing.assert_close(logits, out)
    assert pre.shape == (2, model.head_hidden_size)
    assert model.num_classes == 7 and model.get_classifier() is not None
    model.reset_classifier(0)
    with torch.no_grad():
        assert model(x).shape == (2, model.head_hidden_size)
    model.reset_classifier(3)
    with torch.no_grad():
        assert model(x).shape == (2, 3)


@pytest.mark.parametrize('name', MODELS)
def test_backward_reaches_every_parameter(name):
    model = zoo.create_model(name, num_classes=5).train()
    out = model(_input(model))
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f'parameters without gradient: {missing[:10]}'


@pytest.mark.parametrize('name', MODELS)
def test_features_only_matches_feature_info(name):
    full = zoo.create_model(name)
    levels = _num_levels(full)
    feat = zoo.create_model(name, features_only=True, out_indices=tuple(range(levels))).eval()
    assert [f['num_chs'] for f in full.feature_info[-levels:]] == feat.feature_info.channels()
    x = _input(full, batch=1)
    with torch.no_grad():
        outs = feat(x)
    assert len(outs) == levels
    for out, chs, red in zip(outs, feat.feature_info.channels(), feat.feature_info.reduction(), strict=True):
        assert out.shape[1] == chs
        assert out.shape[-1] == x.shape[-1] // red
    assert feat.spec == full.spec


@pytest.mark.parametrize('name', MODELS)
def test_forward_intermediates_agrees_with_features_only(name):
    full = zoo.create_model(name).eval()
    levels = _num_levels(full)
    feat = zoo.create_model(name, features_only=True, out_indices=tuple(range(levels))).eval()
    state = full.state_dict()
    # timm's feature wrappers keep the model's names; the 'getter' wrapper nests the model under 'model.'
    source = {k: k.removeprefix('model.') if k.removeprefix('model.') in state else k for k in feat.state_dict()}
    missing = [k for k, src in source.items() if src not in state]
    assert not missing
    feat.load_state_dict({k: state[src] for k, src in source.items()})
    x = _input(full, batch=1)
    with torch.no_grad():
        inter = full.forward_intermediates(x, intermediates_only=True)
        final, inter2 = full.forward_intermediates(x)
        ref = feat(x)
        torch.testing.assert_close(final, full.forward_features(x))
    assert len(inter) == len(ref) == levels
    for a, b, c in zip(inter, inter2, ref, strict=True):
        torch.testing.assert_close(a, c)
        torch.testing.assert_close(b, c)


@pytest.mark.parametrize('name', MODELS)
def test_invalid_out_indices_raise(name):
    levels = _num_levels(zoo.create_model(name))
    for bad in [(levels,), (-levels - 1,), (0, 0), (1, -levels + 1), 0, levels + 1, True, ('a',)]:
        with pytest.raises(ValueError, match='out_indices'):
            zoo.create_model(name, features_only=True, out_indices=bad)


@pytest.mark.parametrize('name', MODELS)
def test_prune_intermediate_layers(name):
    model = zoo.create_model(name).eval()
    x = _input(model, batch=1)
    with torch.no_grad():
        ref = model.forward_intermediates(x, indices=[1], intermediates_only=True)
    model.prune_intermediate_layers(indices=[1], prune_head=True)
    with torch.no_grad():
        pruned = model.forward_intermediates(x, indices=[1], intermediates_only=True)
    torch.testing.assert_close(pruned[0], ref[0])


@pytest.mark.parametrize('name', MODELS)
def test_export_and_determinism(name):
    """Eval is deterministic and torch.export captures the model (what the ONNX exporter builds on)."""
    model = zoo.create_model(name).eval()
    x = _input(model, batch=1)
    with torch.no_grad():
        ref = model(x)
        torch.testing.assert_close(model(x), ref, rtol=0, atol=0)
        torch.testing.assert_close(torch.export.export(model, (x,)).module()(x), ref)


# ONNX export + onnxruntime parity for every catalog model; the default run exports one model per family (each
# export costs ~15 s on 2 cores), the rest run with `make test-slow`. The family entry points build the same
# modules as the catalog models; every model (they included) goes through torch.export above.
ONNX_FAST = {'dna_a', 'pinas_cls', 'bossnet_t0_nose', 'nasvit_min'}


@pytest.mark.parametrize(
    'name', [pytest.param(n, marks=() if n in ONNX_FAST else pytest.mark.slow) for n in zoo.list_models()]
)
def test_onnx_export_matches_torch(name, tmp_path):
    model = zoo.create_model(name).eval()
    size = tuple(_input(model, batch=1).shape[1:])
    report = export_onnx(model, tmp_path / f'{name}.onnx', input_size=size, simplify=False, optimize=False)
    # export_onnx raises OnnxParityError past RTOL / MIN_COSINE; check the report says so on the outputs' scale
    assert [p.name for p in report.parity] == ['logits', 'pre_logits']
    assert all(p.max_rel_diff <= RTOL and p.min_cosine >= MIN_COSINE for p in report.parity), report.parity


@pytest.mark.parametrize('name', MODELS)
def test_grad_checkpointing_same_output(name):
    model = zoo.create_model(name).eval()
    x = _input(model, batch=1)
    with torch.no_grad():
        ref = model(x)
    model.set_grad_checkpointing(True)
    assert model.grad_checkpointing
    model.train()
    for m in model.modules():  # keep BN in eval so that outputs are comparable
        if isinstance(m, nn.modules.batchnorm._BatchNorm) or m.__class__.__name__.startswith('Drop'):
            m.eval()
    out = model(x.requires_grad_())
    torch.testing.assert_close(out, ref)
    out.sum().backward()


@pytest.mark.parametrize('name', MODELS)
def test_pretrained_cfg(name):
    cfg = zoo.create_model(name).pretrained_cfg
    for key in ('input_size', 'crop_pct', 'interpolation', 'mean', 'std', 'license', 'first_conv', 'classifier'):
        assert cfg.get(key) is not None, key
    if name in zoo.CATALOG:  # every catalog model names its weights' Hub repo under our one organisation
        assert cfg['hf_hub_id'] == hub_id(name, cfg['tag']), cfg.get('hf_hub_id')
        assert cfg['notes'], 'notes must say where the weights come from'
    else:  # family entry points build arbitrary specs: no weights
        assert cfg.get('hf_hub_id') is None
    if name in zoo.CATALOG:
        assert cfg['input_size'][-1] == zoo.CATALOG[name].input_size
        assert cfg['paper_ids'] == zoo.CATALOG[name].paper_id
