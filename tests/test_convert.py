"""Official checkpoints -> our models (zoo.convert, tools/convert_checkpoint.py) on synthetic checkpoints.

Each synthetic checkpoint has the official key names and shapes, generated here from the official module
definitions (not from our models), with literal official key names and shapes as anchors:

* BossNAS: ``tests/test_convert_bossnet.py`` (retraining_hytra/boss_models.py and the ResConv / ResAtt ops);
* DNA: timm 0.1.14 ``GenEfficientNet`` (``DepthwiseSeparableConv`` / ``InvertedResidual`` / ``SqueezeExcite``;
  mid width ``int(in * e)``, SE width ``int(in * 0.25)``), built by the official retraining/model.py;
* Pi-NAS: PyTorch-Encoding ``ResNet`` / ``Bottleneck`` / ``SplAtConv2d`` as ``alone_resnest50`` builds them;
* NASViT: the dynamic supernet ``AttentiveNasDynamicModel`` with the misc/config.py search space.

The anchors and entry counts were checked against state dicts of the official code during development.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import os
import pickle
import re
import sys
import traceback
import types
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file
from timm.layers import make_divisible

import backbones.hytra as hytra
import backbones.mbconv as mbconv
import backbones.nasvit as nv
import backbones.resnest as resnest
import zoo.checkpoint_io as checkpoint_io
import zoo.convert as zc
from tests.test_convert_bossnet import _official_forward as _bossnet_forward
from tests.test_convert_bossnet import _official_state_dict as _bossnet_state_dict
from zoo.convert import CheckpointMismatch, CheckpointRefused, convert_checkpoint, convert_file, load_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def _load_tool():
    spec = importlib.util.spec_from_file_location('convert_checkpoint_tool', ROOT / 'tools' / 'convert_checkpoint.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fill(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    """Random tensors (BN variances positive, counters integer) for an official layout."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in shapes.items():
        if key.endswith('num_batches_tracked'):
            sd[key] = torch.tensor(1000)
        elif key.endswith('running_var'):
            sd[key] = 0.5 + torch.rand(shape, generator=g)
        elif key.endswith('relative_position_index'):
            sd[key] = torch.randint(0, 1225, shape, generator=g)
        else:
            fan_in = max(1, int(torch.tensor(shape[1:]).prod())) if len(shape) > 1 else 100
            sd[key] = torch.randn(shape, generator=g) / fan_in**0.5
    return sd


def _by_hand(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> torch.nn.Module:
    """Copy tensors into the model one by one (the reference the converted state dict is compared with)."""
    with torch.no_grad():
        for name, value in model.state_dict().items():
            value.copy_(tensors[name])
    return model


# --------------------------------------------------------------------------------------------------------------
# official layouts
# --------------------------------------------------------------------------------------------------------------


def _dna_official_shapes(name: str) -> dict[str, tuple[int, ...]]:
    """timm 0.1.14 GenEfficientNet names and shapes for the arch strings of retraining/model.py."""
    shapes: dict[str, tuple[int, ...]] = {}

    def bn(prefix: str, c: int) -> None:
        for n in ('weight', 'bias', 'running_mean', 'running_var'):
            shapes[f'{prefix}.{n}'] = (c,)
        shapes[f'{prefix}.num_batches_tracked'] = ()

    def se(prefix: str, c: int, base: int) -> None:
        rd = int(base * 0.25)
        shapes.update({f'{prefix}.conv_reduce.weight': (rd, c, 1, 1), f'{prefix}.conv_reduce.bias': (rd,)})
        shapes.update({f'{prefix}.conv_expand.weight': (c, rd, 1, 1), f'{prefix}.conv_expand.bias': (c,)})

    shapes['conv_stem.weight'] = (32, 3, 3, 3)
    bn('bn1', 32)
    c_in = 32
    for s, stage in enumerate(mbconv.SPECS[name]['stages']):
        for b, block in enumerate(stage):
            opts = dict(re.match(r'([a-z]+)(\d+(?:\.\d+)?)', t).groups() for t in block.split('_')[1:])
            k, out = int(opts['k']), int(opts['c'])
            p = f'blocks.{s}.{b}.'
            if block.startswith('ds'):
                shapes[p + 'conv_dw.weight'] = (c_in, 1, k, k)
                bn(p + 'bn1', c_in)
                se(p + 'se', c_in, c_in)
                shapes[p + 'conv_pw.weight'] = (out, c_in, 1, 1)
                bn(p + 'bn2', out)
            else:
                mid = int(c_in * float(opts['e']))
                shapes[p + 'conv_pw.weight'] = (mid, c_in, 1, 1)
                bn(p + 'bn1', mid)
                shapes[p + 'conv_dw.weight'] = (mid, 1, k, k)
                bn(p + 'bn2', mid)
                se(p + 'se', mid, c_in)
                shapes[p + 'conv_pwl.weight'] = (out, mid, 1, 1)
                bn(p + 'bn3', out)
            c_in = out
    shapes['conv_head.weight'] = (1280, c_in, 1, 1)
    bn('bn2', 1280)
    shapes['classifier.weight'] = (1000, 1280)
    shapes['classifier.bias'] = (1000,)
    return shapes


# official DNA_c (timm 0.1.14 GenEfficientNet) entries
DNA_C_ANCHORS = {
    'conv_stem.weight': (32, 3, 3, 3),
    'blocks.0.0.conv_dw.weight': (32, 1, 3, 3),
    'blocks.0.0.se.conv_reduce.weight': (8, 32, 1, 1),
    'blocks.0.0.conv_pw.weight': (16, 32, 1, 1),
    'blocks.1.0.conv_pw.weight': (96, 16, 1, 1),
    'blocks.1.0.conv_dw.weight': (96, 1, 5, 5),
    'blocks.1.0.se.conv_reduce.weight': (4, 96, 1, 1),
    'blocks.1.0.se.conv_expand.bias': (96,),
    'blocks.1.0.conv_pwl.weight': (24, 96, 1, 1),
    'blocks.4.3.bn3.running_var': (112,),
    'blocks.6.0.conv_pwl.weight': (320, 1152, 1, 1),
    'conv_head.weight': (1280, 320, 1, 1),
    'bn2.running_var': (1280,),
    'classifier.weight': (1000, 1280),
}
DNA_OFFICIAL_LEN = {'dna_a': 492, 'dna_b': 470, 'dna_c': 448, 'dna_d': 492}


def _pinas_official_shapes(name: str) -> dict[str, tuple[int, ...]]:
    """PyTorch-Encoding alone_resnest50 names and shapes (deep stem 32, avg-down, SplAtConv2d)."""
    shapes: dict[str, tuple[int, ...]] = {}

    def bn(prefix: str, c: int) -> None:
        for n in ('weight', 'bias', 'running_mean', 'running_var'):
            shapes[f'{prefix}.{n}'] = (c,)
        shapes[f'{prefix}.num_batches_tracked'] = ()

    shapes['conv1.0.weight'] = (32, 3, 3, 3)
    bn('conv1.1', 32)
    shapes['conv1.3.weight'] = (32, 32, 3, 3)
    bn('conv1.4', 32)
    shapes['conv1.6.weight'] = (64, 32, 3, 3)
    bn('bn1', 64)
    choices, inplanes, idx = resnest.SPECS[name]['choices'], 64, 0
    for s, blocks in enumerate((3, 4, 6, 3)):
        planes = 64 * 2**s
        for b in range(blocks):
            radix, card, base = resnest.CANDIDATES[choices[idx]]
            idx += 1
            gw = int(planes * base / 64) * card
            inter = max(gw * radix // 4, 32)
            p = f'layer{s + 1}.{b}.'
            shapes[p + 'conv1.weight'] = (gw, inplanes, 1, 1)
            bn(p + 'bn1', gw)
            shapes[p + 'conv2.conv.weight'] = (gw * radix, gw // (card * radix), 3, 3)
            bn(p + 'conv2.bn0', gw * radix)
            shapes[p + 'conv2.fc1.weight'] = (inter, gw // card, 1, 1)
            shapes[p + 'conv2.fc1.bias'] = (inter,)
            bn(p + 'conv2.bn1', inter)
            shapes[p + 'conv2.fc2.weight'] = (gw * radix, inter // card, 1, 1)
            shapes[p + 'conv2.fc2.bias'] = (gw * radix,)
            shapes[p + 'conv3.weight'] = (planes * 4, gw, 1, 1)
            bn(p + 'bn3', planes * 4)
            if b == 0:
                shapes[p + 'downsample.1.weight'] = (planes * 4, inplanes, 1, 1)
                bn(p + 'downsample.2', planes * 4)
            inplanes = planes * 4
    shapes['fc.weight'] = (1000, 2048)
    shapes['fc.bias'] = (1000,)
    return shapes


# official alone_resnest50 with the Pi-NAS-cls choices
PINAS_CLS_ANCHORS = {
    'conv1.0.weight': (32, 3, 3, 3),
    'conv1.1.running_var': (32,),
    'conv1.3.weight': (32, 32, 3, 3),
    'conv1.4.weight': (32,),
    'conv1.6.weight': (64, 32, 3, 3),
    'bn1.weight': (64,),
    'layer1.0.conv2.conv.weight': (160, 20, 3, 3),
    'layer1.0.conv2.bn0.weight': (160,),
    'layer1.0.conv2.fc1.weight': (40, 40, 1, 1),
    'layer1.0.conv2.bn1.running_mean': (40,),
    'layer1.0.conv2.fc2.weight': (160, 20, 1, 1),
    'layer1.0.downsample.1.weight': (256, 64, 1, 1),
    'layer1.0.downsample.2.running_var': (256,),
    'layer2.1.conv2.fc1.weight': (42, 84, 1, 1),
    'layer2.1.conv2.fc2.bias': (168,),
    'layer4.0.downsample.1.weight': (2048, 1024, 1, 1),
    'layer4.2.conv3.weight': (2048, 672, 1, 1),
    'fc.weight': (1000, 2048),
}
PINAS_OFFICIAL_LEN = 476

# official NASViT supernet (AttentiveNasDynamicModel with the misc/config.py space)
NASVIT_ANCHORS = {
    'first_conv.conv.conv.weight': (24, 3, 3, 3),
    'first_conv.bn.bn_tracking.1.running_var': (24,),
    'blocks.0.mobile_inverted_conv.depth_conv.conv.conv.weight': (24, 1, 5, 5),
    'blocks.2.mobile_inverted_conv.inverted_bottleneck.conv.conv.weight': (144, 24, 1, 1),
    'blocks.3.mobile_inverted_conv.inverted_bottleneck.conv.conv.weight': (192, 32, 1, 1),
    'blocks.7.mobile_inverted_conv.depth_conv.se.fc.reduce.weight': (48, 192, 1, 1),
    'blocks.13.shortcut.conv.conv.weight': (72, 40, 1, 1),
    'blocks.14.rescale_attn': (10, 8, 72),
    'blocks.14.attn.relative_position_bias_table': (1225, 9),
    'blocks.14.attn.relative_position_index': (324, 324),
    'blocks.14.attn.v.linear.weight': (288, 72),
    'blocks.14.attn.vconv.weight': (288, 1, 3, 3),
    'blocks.14.attn.proj_l.linear.weight': (9, 9),
    'blocks.14.mlp2.linear2.linear.bias': (72,),
    'blocks.19.mobile_inverted_conv.depth_conv.se.fc.expand.weight': (432, 112, 1, 1),
    'blocks.27.norm3.weight': (128,),
    'blocks.41.rescale_mlp': (10, 8, 224),
    'last_conv.final_expand_layer.conv.conv.weight': (1344, 224, 1, 1),
    'last_conv.feature_mix_layer.conv.conv.weight': (1984, 1344, 1, 1),
    'classifier.linear.linear.weight': (1000, 1984),
}
NASVIT_OFFICIAL_LEN = 1460


def _nasvit_supernet(seed: int = 0) -> dict[str, torch.Tensor]:
    """A random supernet state dict (distinct values, so every slice is recognisable)."""
    return _fill(zc.nasvit_supernet_shapes(), seed)


def _official(family: str, seed: int = 0) -> tuple[str, dict[str, torch.Tensor]]:
    """(our model name, a synthetic official state dict) per family; a fresh dict over cached tensors."""
    name, sd = _official_cached(family, seed)
    return name, dict(sd)


@functools.cache
def _official_cached(family: str, seed: int) -> tuple[str, dict[str, torch.Tensor]]:
    if family == 'bossnas':
        return 'bossnet_t0', _bossnet_state_dict(hytra.SPECS['bossnet_t0'], seed=seed)
    if family == 'dna':
        return 'dna_c', _fill(_dna_official_shapes('dna_c'), seed)
    if family == 'pinas':
        return 'pinas_cls', _fill(_pinas_official_shapes('pinas_cls'), seed)
    return 'nasvit_min', _nasvit_supernet(seed)


# --------------------------------------------------------------------------------------------------------------
# layouts and anchors
# --------------------------------------------------------------------------------------------------------------


def test_official_layouts_have_the_anchors():
    dna = _dna_official_shapes('dna_c')
    assert {k: dna[k] for k in DNA_C_ANCHORS} == DNA_C_ANCHORS
    assert {n: len(_dna_official_shapes(n)) for n in DNA_OFFICIAL_LEN} == DNA_OFFICIAL_LEN
    pinas = _pinas_official_shapes('pinas_cls')
    assert {k: pinas[k] for k in PINAS_CLS_ANCHORS} == PINAS_CLS_ANCHORS
    assert len(pinas) == PINAS_OFFICIAL_LEN
    nasvit = zc.nasvit_supernet_shapes()
    assert {k: nasvit[k] for k in NASVIT_ANCHORS} == NASVIT_ANCHORS
    assert len(nasvit) == NASVIT_OFFICIAL_LEN
    assert zc.NASVIT_BLOCK_OFFSETS == (0, 2, 7, 13, 19, 28, 36)


# --------------------------------------------------------------------------------------------------------------
# per family: convert, strict load, forward
# --------------------------------------------------------------------------------------------------------------


def test_bossnas_via_dispatcher_matches_official_forward():
    spec = hytra.SPECS['bossnet_t0']
    official = _bossnet_state_dict(spec)
    ckpt = {'model': official, 'epoch': 299, 'args': argparse.Namespace(model='bossnet_T0')}
    state = convert_checkpoint('bossnas', ckpt, 'bossnet_t0')
    assert torch.equal(state['layer3.3.attn.qkv.weight'], official['layer3.3.net.1.to_qkv.weight'])
    assert 'layer3.3.net.1.to_qkv.weight' not in state
    model = timm.create_model('bossnet_t0').eval()
    model.load_state_dict(state, strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), _bossnet_forward(official, spec, x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('family', ['dna', 'pinas'])
def test_key_map_families_load_strictly_and_match_by_hand(family):
    name, official = _official(family)
    anchors = DNA_C_ANCHORS if family == 'dna' else PINAS_CLS_ANCHORS
    entry = 'state_dict'
    ckpt = {'epoch': 10, entry: {f'module.{k}': v for k, v in official.items()}, 'optimizer': {'state': {}}}
    state = convert_checkpoint(family, ckpt, name)
    assert set(anchors) <= set(state)
    assert all(torch.equal(state[k], official[k]) for k in anchors)
    model = timm.create_model(name).eval()
    model.load_state_dict(state, strict=True)
    reference = _by_hand(timm.create_model(name).eval(), official)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)


@pytest.mark.parametrize('name', ['nasvit_a1', 'nasvit_min'])
def test_nasvit_slices_load_strictly(name):
    _, supernet = _official('nasvit')
    state = convert_checkpoint('nasvit', {'model': supernet, 'epoch': 399}, name)
    model = timm.create_model(name).eval()
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).isfinite().all()


def _slice_by_hand(supernet: Mapping[str, torch.Tensor], spec: dict) -> dict[str, torch.Tensor]:
    """The slicing rule written out key by key from the official dynamic ops (what zoo.convert did before it used
    the supernet's path_state_dict): the reference the converter is compared with."""
    spec = nv.validate_spec(spec)
    width, depth, kernel, expand = spec['width'], spec['depth'], spec['kernel_size'], spec['expand_ratio']
    sides = nv._token_sides(spec['resolution'])
    sd = supernet
    out: dict[str, torch.Tensor] = {}

    def bn(ours: str, theirs: str, c: int) -> None:
        for name in ('weight', 'bias', 'running_mean', 'running_var'):
            out[f'{ours}.{name}'] = sd[f'{theirs}.bn.{name}'][:c]
        out[f'{ours}.num_batches_tracked'] = sd[f'{theirs}.bn.num_batches_tracked']

    def linear(ours: str, theirs: str, c_out: int, c_in: int) -> None:
        out[f'{ours}.weight'] = sd[f'{theirs}.linear.weight'][:c_out, :c_in]
        out[f'{ours}.bias'] = sd[f'{theirs}.linear.bias'][:c_out]

    out['stem.conv.weight'] = sd['first_conv.conv.conv.weight'][: width[0]]
    bn('stem.bn', 'first_conv.bn', width[0])
    c_in = width[0]
    for i in range(len(nv.STAGE_NAMES)):
        c, d = width[i + 1], depth[i]
        k_max = max(nv.KERNELS[i])
        lo = (k_max - kernel[i]) // 2
        hi = lo + kernel[i]
        for j in range(d):
            ours, theirs = f'stages.{i}.{j}.', f'blocks.{zc.NASVIT_BLOCK_OFFSETS[i] + j}.'
            if i < nv.NUM_CONV_STAGES or j == 0:
                m = theirs + 'mobile_inverted_conv.'
                mid = make_divisible(round(c_in * expand[i]), 8)
                names = ('bn1', 'bn2') if expand[i] == 1 else ('bn2', 'bn3')  # timm DS conv vs inverted residual
                if expand[i] != 1:
                    out[ours + 'conv.conv_pw.weight'] = sd[m + 'inverted_bottleneck.conv.conv.weight'][:mid, :c_in]
                    bn(ours + 'conv.bn1', m + 'inverted_bottleneck.bn', mid)
                out[ours + 'conv.conv_dw.weight'] = sd[m + 'depth_conv.conv.conv.weight'][:mid, :, lo:hi, lo:hi]
                bn(f'{ours}conv.{names[0]}', m + 'depth_conv.bn', mid)
                if nv.USE_SE[i]:
                    se_mid = make_divisible(mid // 4, 8)
                    out[ours + 'conv.se.conv_reduce.weight'] = sd[m + 'depth_conv.se.fc.reduce.weight'][:se_mid, :mid]
                    out[ours + 'conv.se.conv_reduce.bias'] = sd[m + 'depth_conv.se.fc.reduce.bias'][:se_mid]
                    out[ours + 'conv.se.conv_expand.weight'] = sd[m + 'depth_conv.se.fc.expand.weight'][:mid, :se_mid]
                    out[ours + 'conv.se.conv_expand.bias'] = sd[m + 'depth_conv.se.fc.expand.bias'][:mid]
                pw = 'conv_pw' if expand[i] == 1 else 'conv_pwl'
                out[f'{ours}conv.{pw}.weight'] = sd[m + 'point_linear.conv.conv.weight'][:c, :mid]
                bn(f'{ours}conv.{names[1]}', m + 'point_linear.bn', c)
                if c_in != c:
                    out[ours + 'shortcut.conv.weight'] = sd[theirs + 'shortcut.conv.conv.weight'][:c, :c_in]
            else:
                heads, v = c // nv.HEAD_DIM, c * nv.V_EXPANSION
                slot = (d, sides[i + 1] ** 2 % zc._NASVIT_RESCALE_SLOTS[1])
                out[ours + 'gamma_attn'] = sd[theirs + 'rescale_attn'][slot][:c]
                out[ours + 'gamma_mlp'] = sd[theirs + 'rescale_mlp'][slot][:c]
                for norm in ('norm1', 'norm2', 'norm3'):
                    out[f'{ours}{norm}.weight'] = sd[f'{theirs}{norm}.weight'][:c]
                    out[f'{ours}{norm}.bias'] = sd[f'{theirs}{norm}.bias'][:c]
                table = sd[theirs + 'attn.relative_position_bias_table']
                out[ours + 'attn.relative_position_bias_table'] = table[:, :heads]
                linear(ours + 'attn.q', theirs + 'attn.q', c, c)
                linear(ours + 'attn.k', theirs + 'attn.k', c, c)
                linear(ours + 'attn.v', theirs + 'attn.v', v, c)
                out[ours + 'attn.v_conv.weight'] = sd[theirs + 'attn.vconv.weight'][:v]
                linear(ours + 'attn.proj', theirs + 'attn.proj', c, v)
                linear(ours + 'attn.proj_l', theirs + 'attn.proj_l', heads, heads)
                linear(ours + 'attn.proj_w', theirs + 'attn.proj_w', heads, heads)
                for mlp in ('mlp1', 'mlp2'):
                    linear(f'{ours}{mlp}.fc1', f'{theirs}{mlp}.linear1', c, c)
                    linear(f'{ours}{mlp}.fc2', f'{theirs}{mlp}.linear2', c, c)
            c_in = c
    c_exp = nv.HEAD_EXPANSION * c_in
    out['final_conv.conv.weight'] = sd['last_conv.final_expand_layer.conv.conv.weight'][:c_exp, :c_in]
    bn('final_conv.bn', 'last_conv.final_expand_layer.bn', c_exp)
    out['conv_head.weight'] = sd['last_conv.feature_mix_layer.conv.conv.weight'][: width[8], :c_exp]
    out['classifier.weight'] = sd['classifier.linear.linear.weight'][:, : width[8]]
    out['classifier.bias'] = sd['classifier.linear.linear.bias']
    return out


def _random_nasvit_specs(n: int, seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    pick = lambda opts: opts[int(torch.randint(len(opts), (1,), generator=g))]  # noqa: E731
    return [
        nv.validate_spec(
            {
                'family': 'nasvit',
                'version': 1,
                'resolution': pick(nv.RESOLUTIONS),
                'width': [pick(c) for c in nv.WIDTHS],
                'depth': [pick(c) for c in nv.DEPTHS],
                'kernel_size': [pick(c) for c in nv.KERNELS],
                'expand_ratio': [pick(c) for c in nv.EXPANSIONS],
            }
        )
        for _ in range(n)
    ]


def test_nasvit_converter_is_the_supernet_path_and_agrees_with_the_rule_by_hand():
    """One implementation: the converter loads the authors' supernet into our supernet and calls path_state_dict;
    it gives exactly the key-by-key slices of the official rule, for every catalog spec and random subnets."""
    _, sup = _official('nasvit')
    supernet = zc.nasvit_supernet_from_official(sup)
    for spec in [*(nv.SPECS[n] for n in ('nasvit_a2', 'nasvit_min', 'nasvit_max')), *_random_nasvit_specs(4, seed=1)]:
        by_hand, path = _slice_by_hand(sup, spec), supernet.path_state_dict(spec)
        assert by_hand.keys() == path.keys()
        assert all(torch.equal(by_hand[k], path[k]) for k in by_hand), spec
    state = convert_checkpoint('nasvit', {'model': sup}, 'nasvit_a2')  # the other catalog specs: tests above
    by_hand = _slice_by_hand(sup, nv.SPECS['nasvit_a2'])
    assert state.keys() == by_hand.keys() and all(torch.equal(v, by_hand[k]) for k, v in state.items())
    # the converter fails loudly when the map misses a key: our supernet loads strictly
    with pytest.raises(RuntimeError, match='Missing key'):
        zc.nasvit_supernet_from_official({k: v for k, v in sup.items() if k != 'blocks.14.attn.q.linear.weight'})


def test_nasvit_official_checkpoint_runs_in_the_search_supernet():
    """The authors' weights in the dynamic search supernet: a path's logits equal the converted static model's."""
    from search.spaces.nasvit import get_space

    _, sup = _official('nasvit')
    net = get_space('nasvit').build_supernet()
    net.load_state_dict(zc.nasvit_supernet_from_official(sup).state_dict(), strict=True)
    net.eval()
    model = timm.create_model('nasvit_a1').eval()
    model.load_state_dict(convert_checkpoint('nasvit', {'model': sup}, 'nasvit_a1'), strict=True)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(net(x, nv.SPECS['nasvit_a1']), model(x), rtol=0, atol=1e-6)


def test_nasvit_slicing_rule_on_known_tensors():
    _, sup = _official('nasvit')
    state = convert_checkpoint('nasvit', {'model': sup}, 'nasvit_a1')
    # a1: 224 px, widths 16 16 24 32 64 112 160 216 1792, depths 1 3 3 4 3 3 3, kernels 3, expansions 1 4 4 5 4 6 6
    mb2 = 'blocks.2.mobile_inverted_conv.'  # first layer of MBConv-2 (offset 2): 16 -> 24, e 4, kernel 3 of 5
    # kernel: centre 3x3 of the 5x5 supernet kernel; channels: the first make_divisible(16 * 4, 8) = 64
    assert torch.equal(
        state['stages.1.0.conv.conv_dw.weight'], sup[mb2 + 'depth_conv.conv.conv.weight'][:64, :, 1:4, 1:4]
    )
    assert torch.equal(
        state['stages.1.0.conv.conv_pw.weight'], sup[mb2 + 'inverted_bottleneck.conv.conv.weight'][:64, :16]
    )
    assert torch.equal(state['stages.1.0.conv.conv_pwl.weight'], sup[mb2 + 'point_linear.conv.conv.weight'][:24, :64])
    assert torch.equal(state['stages.1.0.conv.bn3.running_mean'], sup[mb2 + 'point_linear.bn.bn.running_mean'][:24])
    assert torch.equal(state['stages.1.0.shortcut.conv.weight'], sup['blocks.2.shortcut.conv.conv.weight'][:24, :16])
    assert 'stages.1.1.shortcut.conv.weight' not in state  # identity shortcut: the supernet's conv is unused
    # MBConv-1 (e 1): timm DepthwiseSeparableConv, 5x5 -> 3x3 centre, 16 of 24 channels
    dw = sup['blocks.0.mobile_inverted_conv.depth_conv.conv.conv.weight']
    assert torch.equal(state['stages.0.0.conv.conv_dw.weight'], dw[:16, :, 1:4, 1:4])
    assert torch.equal(
        state['stages.0.0.conv.conv_pw.weight'],
        sup['blocks.0.mobile_inverted_conv.point_linear.conv.conv.weight'][:16, :16],
    )
    # SE of MBConv-3 (mid 24 * 4 = 96 -> SE 24)
    se = sup['blocks.7.mobile_inverted_conv.depth_conv.se.fc.reduce.weight']
    assert torch.equal(state['stages.2.0.conv.se.conv_reduce.weight'], se[:24, :96])
    # layers: the first depth[i] layers of each stage (MBConv-3 offset 7, depth 3; Transformer-4 offset 13, depth 4)
    assert torch.equal(
        state['stages.2.2.conv.conv_pwl.weight'],
        sup['blocks.9.mobile_inverted_conv.point_linear.conv.conv.weight'][:32, :128],
    )
    assert 'stages.2.3.conv.conv_pwl.weight' not in state
    assert torch.equal(state['stages.3.3.attn.q.weight'], sup['blocks.16.attn.q.linear.weight'][:64, :64])
    assert not any(k.startswith('stages.3.4.') for k in state)
    # relative-position bias: all 35 x 35 offsets, the first 64 / 8 = 8 of 9 heads
    table = sup['blocks.14.attn.relative_position_bias_table']
    assert torch.equal(state['stages.3.1.attn.relative_position_bias_table'], table[:, :8])
    assert torch.equal(state['stages.3.1.attn.proj_l.weight'], sup['blocks.14.attn.proj_l.linear.weight'][:8, :8])
    assert torch.equal(state['stages.3.1.attn.v.weight'], sup['blocks.14.attn.v.linear.weight'][:256, :64])
    assert torch.equal(state['stages.3.1.attn.v_conv.weight'], sup['blocks.14.attn.vconv.weight'][:256])
    assert torch.equal(state['stages.3.1.mlp2.fc2.bias'], sup['blocks.14.mlp2.linear2.linear.bias'][:64])
    # layer scale: [active stage depth, token count % 8, :C]; 224 px -> 14x14 (4), 7x7 (1), 7x7 (1), 4x4 (0)
    assert torch.equal(state['stages.3.1.gamma_attn'], sup['blocks.14.rescale_attn'][4, 196 % 8, :64])
    assert torch.equal(state['stages.4.1.gamma_mlp'], sup['blocks.20.rescale_mlp'][3, 49 % 8, :112])
    assert torch.equal(state['stages.6.2.gamma_attn'], sup['blocks.38.rescale_attn'][3, 16 % 8, :216])
    # head: 6 * 216 expanded channels, 1792 of 1984 mixed features
    assert torch.equal(
        state['final_conv.conv.weight'], sup['last_conv.final_expand_layer.conv.conv.weight'][:1296, :216]
    )
    assert torch.equal(state['conv_head.weight'], sup['last_conv.feature_mix_layer.conv.conv.weight'][:1792, :1296])
    assert torch.equal(state['classifier.weight'], sup['classifier.linear.linear.weight'][:, :1792])


# --------------------------------------------------------------------------------------------------------------
# EMA, refusals, loading
# --------------------------------------------------------------------------------------------------------------

_EMA_ENTRIES = {
    'bossnas': ('model', 'model_ema'),
    'dna': ('state_dict', 'state_dict_ema'),
    'nasvit': ('model', 'model_ema'),
}
_PROBE = {'bossnas': 'fc.bias', 'dna': 'classifier.bias', 'pinas': 'fc.bias', 'nasvit': 'classifier.bias'}


@pytest.mark.parametrize('family', sorted(_EMA_ENTRIES))
def test_ema_picks_the_ema_entry(family):
    name, raw = _official(family, seed=0)
    _, ema = _official(family, seed=1)
    plain_key, ema_key = _EMA_ENTRIES[family]
    ckpt = {plain_key: raw, ema_key: ema, 'epoch': 1}
    probe = _PROBE[family]
    src = 'classifier.linear.linear.bias' if family == 'nasvit' else probe
    assert torch.equal(convert_checkpoint(family, ckpt, name, use_ema=True)[probe], ema[src])
    assert torch.equal(convert_checkpoint(family, ckpt, name)[probe], raw[src])
    with pytest.raises(KeyError, match=ema_key):
        convert_checkpoint(family, {plain_key: raw}, name, use_ema=True)


def test_pinas_has_no_ema_and_bare_state_dicts_work():
    name, raw = _official('pinas')
    assert torch.equal(convert_checkpoint('pinas', raw, name)['fc.bias'], raw['fc.bias'])
    with pytest.raises(KeyError, match='no EMA'):
        convert_checkpoint('pinas', {'state_dict': raw}, name, use_ema=True)
    with pytest.raises(KeyError, match='bare'):
        convert_checkpoint('pinas', raw, name, use_ema=True)


# (official key to break, the name the message must carry) per family
_BREAK = {
    'bossnas': ('layer3.3.net.1.to_qkv.weight', 'layer3.3.attn.qkv.weight'),
    'dna': ('blocks.1.0.se.conv_reduce.weight', 'blocks.1.0.se.conv_reduce.weight'),
    'pinas': ('layer1.0.conv2.fc1.weight', 'layer1.0.conv2.fc1.weight'),
    'nasvit': ('blocks.14.attn.relative_position_bias_table', 'blocks.14.attn.relative_position_bias_table'),
}


@pytest.mark.parametrize('family', sorted(_BREAK))
@pytest.mark.parametrize('fault', ['missing', 'unexpected', 'shape'])
def test_mismatched_checkpoint_is_refused_naming_the_key(family, fault):
    name, sd = _official(family)
    official_key, reported = _BREAK[family]
    if fault == 'missing':
        del sd[official_key]
        pattern = rf'missing keys \[[^\]]*{re.escape(reported)}'
    elif fault == 'unexpected':
        sd['layer9.extra.weight'] = torch.zeros(3)
        pattern = r'unexpected keys \[[^\]]*layer9\.extra\.weight'
    else:
        sd[official_key] = torch.zeros(*sd[official_key].shape[:-1], sd[official_key].shape[-1] + 1)
        pattern = rf'shape mismatches \[[^\]]*{re.escape(reported)}: checkpoint'
    entry = {'bossnas': 'model', 'dna': 'state_dict', 'pinas': 'state_dict', 'nasvit': 'model'}[family]
    with pytest.raises(ValueError, match=pattern):
        convert_checkpoint(family, {entry: sd}, name)


def test_wrong_model_or_family_is_refused():
    _, sd = _official('dna')
    with pytest.raises(CheckpointMismatch) as err:
        convert_checkpoint('dna', {'state_dict': sd}, 'dna_a')
    assert err.value.missing and err.value.shapes  # DNA-c has fewer, differently shaped layers than DNA-a
    with pytest.raises(ValueError, match='dna_a'):
        convert_checkpoint('dna', {'state_dict': sd}, 'nasvit_a1')
    with pytest.raises(ValueError, match='unknown family'):
        convert_checkpoint('ofa', {'state_dict': sd}, 'dna_c')


def _fake_yacs(monkeypatch):
    """A stand-in for yacs.config.CfgNode (a dict subclass with attributes) so the NASViT 'config' pickles alike."""
    module = types.ModuleType('yacs.config')

    class CfgNode(dict):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.__dict__['__immutable__'] = True
            self.__dict__['__deprecated_keys__'] = set()

    CfgNode.__module__, CfgNode.__qualname__ = 'yacs.config', 'CfgNode'
    module.CfgNode = CfgNode
    monkeypatch.setitem(sys.modules, 'yacs', types.ModuleType('yacs'))
    monkeypatch.setitem(sys.modules, 'yacs.config', module)
    return CfgNode


def test_load_checkpoint_is_weights_only(tmp_path, monkeypatch):
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get('weights_only'))
        return real_load(*args, **kwargs)

    cfg = _fake_yacs(monkeypatch)
    path = tmp_path / 'ckpt.pth'
    torch.save({'model_ema': {'a': torch.ones(1)}, 'config': cfg(MODEL=cfg(RESUME='x')), 'epoch': 1}, path)
    monkeypatch.delitem(sys.modules, 'yacs.config')
    monkeypatch.setattr(torch, 'load', spy)
    ckpt = load_checkpoint(path)
    assert calls == [True]
    assert ckpt['config'] == OrderedDict(MODEL=OrderedDict(RESUME='x'))
    torch.save({'state_dict': {'a': torch.ones(1)}, 'args': argparse.Namespace(model='DNA_c')}, path)
    assert load_checkpoint(path)['args'].model == 'DNA_c'
    torch.save({'state_dict': {}, 'hook': Path('x')}, path)  # any other object is refused
    with pytest.raises(ValueError, match=r"refused: the file holds a pickled 'pathlib\.PosixPath'"):
        load_checkpoint(path)
    path.write_bytes(b'not a checkpoint')
    with pytest.raises(ValueError, match='not a readable PyTorch checkpoint'):
        load_checkpoint(path)


def test_convert_file_writes_safetensors(tmp_path):
    _, sd = _official('pinas')
    src = tmp_path / 'PiNAS_cls.pth.tar'
    torch.save({'epoch': 269, 'state_dict': sd, 'best_pred': 81.6}, src)
    state = convert_file('pinas', src, tmp_path / 'out' / 'pinas_cls.safetensors')
    loaded = load_file(tmp_path / 'out' / 'pinas_cls.safetensors')
    assert loaded.keys() == state.keys() and torch.equal(loaded['conv1.6.weight'], sd['conv1.6.weight'])
    with pytest.raises(ValueError, match='safetensors'):
        convert_file('pinas', src, tmp_path / 'pinas_cls.pth')


# --------------------------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------------------------


def test_cli_end_to_end(tmp_path, capsys):
    tool = _load_tool()
    _, sd = _official('dna')
    _, ema = _official('dna', seed=1)
    src = tmp_path / 'DNA_c.pth.tar'
    args = argparse.Namespace(model='DNA_c', lr=0.256)
    torch.save({'epoch': 499, 'arch': 'DNA_c', 'state_dict': sd, 'state_dict_ema': ema, 'args': args}, src)
    dst = tmp_path / 'dna_c.safetensors'
    assert tool.main(['--family', 'dna', '--ema', str(src), str(dst)]) == 0  # model from the 'arch' entry
    model = timm.create_model('dna_c')
    model.load_state_dict(load_file(dst), strict=True)
    assert torch.equal(model.classifier.bias, ema['classifier.bias'])
    assert 'dna_c.safetensors' in capsys.readouterr().out


def test_cli_nasvit_and_refusals(tmp_path, capsys, monkeypatch):
    tool = _load_tool()
    cfg = _fake_yacs(monkeypatch)
    _, sup = _official('nasvit')
    src = tmp_path / 'supernet.pth'
    torch.save({'model': sup, 'model_ema': sup, 'config': cfg(AMP_OPT_LEVEL='O0'), 'epoch': 359}, src)
    monkeypatch.delitem(sys.modules, 'yacs.config')
    dst = tmp_path / 'nasvit_min.safetensors'
    assert tool.main(['--family', 'nasvit', '--model', 'nasvit_min', '--ema', str(src), str(dst)]) == 0
    timm.create_model('nasvit_min').load_state_dict(load_file(dst), strict=True)
    capsys.readouterr()
    assert tool.main(['--family', 'nasvit', '--overwrite', str(src), str(dst)]) == 2  # which subnet? must be named
    assert 'nasvit_a0' in capsys.readouterr().err
    del sup['blocks.14.attn.q.linear.bias']
    torch.save({'model': sup}, src)
    assert tool.main(['--family', 'nasvit', '--model', 'nasvit_a1', '--overwrite', str(src), str(dst)]) == 2
    assert 'missing keys' in (err := capsys.readouterr().err) and 'blocks.14.attn.q.linear.bias' in err


# --------------------------------------------------------------------------------------------------------------
# refused, truncated and existing files; names that tell the model
# --------------------------------------------------------------------------------------------------------------


class _RunsCode:
    """A pickled object that would run a shell command when unpickled by the full (unsafe) loader."""

    def __reduce__(self):
        return (os.system, ('echo this must never run',))


def _cli(tool, capsys, *args) -> tuple[int, str]:
    code = tool.main([str(a) for a in args])
    out = capsys.readouterr()
    assert out.err.count('\n') <= 1 and 'Traceback' not in out.err
    return code, out.err.strip()


def test_refused_pickle_is_reported_without_the_unsafe_advice(tmp_path, capsys):
    tool = _load_tool()
    _, sd = _official('dna')
    zipped, legacy = tmp_path / 'DNA_c.pth.tar', tmp_path / 'legacy.pth'
    torch.save({'state_dict': sd, 'hook': _RunsCode()}, zipped)
    legacy.write_bytes(pickle.dumps({'state_dict': {}, 'hook': _RunsCode()}, protocol=2))
    for path in (zipped, legacy):
        with pytest.raises(CheckpointRefused) as err:
            load_checkpoint(path)
        text = ''.join(traceback.format_exception(err.value))  # the whole report a user would see, chain included
        assert 'weights_only=False' not in text and '`weights_only` set to `False`' not in text
        assert str(path) in str(err.value) and "refused: the file holds a pickled 'posix.system'" in str(err.value)
        code, msg = _cli(tool, capsys, '--family', 'dna', path, tmp_path / 'out.safetensors')
        assert code == 2 and msg.startswith(f'error: {path}: refused') and 'weights_only=False' not in msg
        assert msg.count(str(path)) == 1
    assert not (tmp_path / 'out.safetensors').exists()


def test_truncated_or_missing_checkpoint_names_the_file(tmp_path, capsys):
    tool = _load_tool()
    _, sd = _official('dna')
    whole = tmp_path / 'whole.pth'
    torch.save({'state_dict': sd}, whole)
    data = whole.read_bytes()
    for cut in (len(data) - 10, len(data) // 2, 0):  # the first fails inside torch as OSError [Errno 22]
        src = tmp_path / f'DNA_c_{cut}.pth.tar'
        src.write_bytes(data[:cut])
        with pytest.raises(ValueError, match=rf'{re.escape(str(src))}: .*truncated or corrupt') as err:
            load_checkpoint(src)
        assert 'Errno' not in str(err.value)
        code, msg = _cli(tool, capsys, '--family', 'dna', src, tmp_path / 'out.safetensors')
        assert code == 2 and 'truncated or corrupt' in msg and msg.count(str(src)) == 1 and 'Errno' not in msg
    code, msg = _cli(tool, capsys, '--family', 'dna', tmp_path / 'missing.pth', tmp_path / 'out.safetensors')
    assert code == 2 and msg == f'error: {tmp_path / "missing.pth"} does not exist'


def test_cli_names_the_source_once_on_a_mismatch(tmp_path, capsys):
    tool = _load_tool()
    _, sd = _official('dna')
    src = tmp_path / 'DNA_c.pth.tar'
    torch.save({'state_dict': sd}, src)
    code, msg = _cli(tool, capsys, '--family', 'dna', '--model', 'dna_a', src, tmp_path / 'dna_a.safetensors')
    assert code == 2 and msg.startswith(f'error: {src}: official DNA checkpoint does not match dna_a')
    assert msg.count(str(src)) == 1


def test_output_is_atomic_and_never_overwritten_unasked(tmp_path, capsys, monkeypatch):
    tool = _load_tool()
    _, sd = _official('pinas')
    src, dst = tmp_path / 'PiNAS_cls.pth.tar', tmp_path / 'pinas_cls.safetensors'
    torch.save({'state_dict': sd}, src)
    assert tool.main(['--family', 'pinas', str(src), str(dst)]) == 0
    capsys.readouterr()
    before = dst.read_bytes()
    code, msg = _cli(tool, capsys, '--family', 'pinas', src, dst)
    assert code == 2 and msg == f'error: {dst}: already exists; pass --overwrite (overwrite=True) to replace it'
    with pytest.raises(FileExistsError):
        convert_file('pinas', src, dst)

    def crash(state, filename, metadata=None):  # a disk that fills up half way through the write
        Path(filename).write_bytes(b'partial')
        raise OSError(28, 'No space left on device')

    monkeypatch.setattr(checkpoint_io, 'save_file', crash)
    code, msg = _cli(tool, capsys, '--family', 'pinas', '--overwrite', src, dst)
    assert code == 2 and msg == f'error: {dst}: cannot write (No space left on device)'
    assert dst.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == sorted([src.name, dst.name])
    code, msg = _cli(tool, capsys, '--family', 'pinas', src, tmp_path / 'new.safetensors')
    assert code == 2 and not (tmp_path / 'new.safetensors').exists()
    monkeypatch.undo()
    assert tool.main(['--family', 'pinas', '--overwrite', str(src), str(dst)]) == 0


@pytest.mark.parametrize(
    ('file_name', 'model'),
    [
        ('BossNet-T0-80_8.pth', 'bossnet_t0'),
        ('BossNet-T0-nose-80_5.pth', 'bossnet_t0_nose'),
        ('BossNet-T1-81_9.pth', 'bossnet_t1'),
        ('bossnet_T0.pth', 'bossnet_t0'),  # the authors' model entry points
        ('bossnet_T0_nose.pth', 'bossnet_t0_nose'),
        ('bossnet_T1.pth', 'bossnet_t1'),
    ],
)
def test_bossnet_file_names_tell_the_model(file_name, model):
    assert zc.infer_model_name('bossnas', {}, file_name) == model
    assert zc.infer_model_name('bossnas', {'args': argparse.Namespace(model=file_name[:-4])}, 'ckpt.pth') == model


def test_bossnet_entry_point_file_converts(tmp_path):
    official = _bossnet_state_dict(hytra.SPECS['bossnet_t0_nose'])
    src = tmp_path / 'bossnet_T0_nose.pth'
    torch.save({'model': official, 'epoch': 299}, src)
    convert_file('bossnas', src, tmp_path / 'out.safetensors')
    timm.create_model('bossnet_t0_nose').load_state_dict(load_file(tmp_path / 'out.safetensors'), strict=True)
    with pytest.raises(ValueError, match='cannot tell which bossnas model'):
        zc.infer_model_name('bossnas', {}, 'bossnet_t2.pth')


def test_pinas_trans_is_recognised_by_its_shapes(tmp_path, capsys):
    tool = _load_tool()
    trans = _fill(_pinas_official_shapes('pinas_trans'), 3)
    assert zc.infer_model_name('pinas', {'state_dict': trans}, 'PiNAS_trans.pth') == 'pinas_trans'
    src, dst = tmp_path / 'checkpoint.pth.tar', tmp_path / 'out.safetensors'
    torch.save({'state_dict': trans}, src)
    assert tool.main(['--family', 'pinas', str(src), str(dst)]) == 0
    timm.create_model('pinas_trans').load_state_dict(load_file(dst), strict=True)
    code, msg = _cli(tool, capsys, '--family', 'pinas', '--model', 'pinas_cls', '--overwrite', src, dst)
    assert code == 2 and 'its per-layer shapes are those of pinas_trans: pass --model pinas_trans' in msg
