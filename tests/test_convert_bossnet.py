"""Official BossNet-T checkpoints -> backbones.hytra: key map, strict load, numerics on a synthetic checkpoint.

The synthetic checkpoint has the key names and shapes of the official modules, with random values:

* retraining_hytra/boss_models.py: stem ``conv1``/``bn1``, stages ``layer1..4``, head ``fc``;
* boss_candidates/resnet_op.py ``ResConv``: ``downsample.{1,2}`` (avg-pool at index 0), ``conv1``, ``peg.conv``,
  ``bn1``, ``conv2``, ``bn2``, ``conv3``, ``bn3``, ``se.fc1``/``se.fc2``;
* boss_candidates/bot_op.py ``ResAtt``: ``shortcut.{1,2}``, ``proj.{0, 1.conv, 2}``, ``net.{1.to_qkv, 2, 4, 5}``.

``_official_forward`` is an independent functional forward of that layout.
"""

from __future__ import annotations

import argparse

import pytest
import timm
import torch
import torch.nn.functional as F

import backbones.hytra as hytra
from zoo.convert_bossnet import convert_bossnet_checkpoint, load_official_checkpoint, map_key

# number of state-dict entries of the official models (parameters and BN buffers)
OFFICIAL_LEN = {'bossnet_t0': 380, 'bossnet_t0_nose': 352, 'bossnet_t1': 380}


def _official_state_dict(spec: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}

    def rand(*shape: int) -> torch.Tensor:
        fan_in = shape[1] * shape[2] * shape[3] if len(shape) == 4 else 100  # keep activations O(1)
        return torch.randn(*shape, generator=g) / fan_in**0.5

    def bn(prefix: str, c: int) -> None:
        sd[f'{prefix}.weight'] = 0.5 + torch.rand(c, generator=g)
        sd[f'{prefix}.bias'] = 0.1 * torch.randn(c, generator=g)
        sd[f'{prefix}.running_mean'] = 0.1 * torch.randn(c, generator=g)
        sd[f'{prefix}.running_var'] = 0.5 + torch.rand(c, generator=g)
        sd[f'{prefix}.num_batches_tracked'] = torch.tensor(1000)

    sd['conv1.weight'] = rand(64, 3, 7, 7)
    bn('bn1', 64)
    in_chs = 64
    for s, ops in enumerate(spec['stages']):
        width, stride = 64 * 2**s, 1 if s == 0 else spec['last_stride'] if s == 3 else 2
        out = 4 * width
        for i, op in enumerate(ops):
            p = f'layer{s + 1}.{i}.'
            has_shortcut = (stride if i == 0 else 1) != 1 or in_chs != out
            sc = 'downsample' if op == 'conv' else 'shortcut'
            if has_shortcut:
                sd[f'{p}{sc}.1.weight'] = rand(out, in_chs, 1, 1)
                bn(f'{p}{sc}.2', out)
            if op == 'conv':
                sd[p + 'conv1.weight'] = rand(width, in_chs, 1, 1)
                sd[p + 'peg.conv.weight'] = rand(width, 1, 3, 3)
                sd[p + 'peg.conv.bias'] = rand(width)
                bn(p + 'bn1', width)
                sd[p + 'conv2.weight'] = rand(width, width, 3, 3)
                bn(p + 'bn2', width)
                sd[p + 'conv3.weight'] = rand(out, width, 1, 1)
                bn(p + 'bn3', out)
                if spec['se']:
                    sd[p + 'se.fc1.weight'] = rand(out // 16, out, 1, 1)
                    sd[p + 'se.fc1.bias'] = rand(out // 16)
                    sd[p + 'se.fc2.weight'] = rand(out, out // 16, 1, 1)
                    sd[p + 'se.fc2.bias'] = rand(out)
            else:
                attn_dim = (width // 64) * 64  # heads = width / 64 (4 at 1/16, 8 at 1/32), head dim 64
                sd[p + 'proj.0.weight'] = rand(attn_dim, in_chs, 1, 1)
                sd[p + 'proj.1.conv.weight'] = rand(attn_dim, 1, 3, 3)
                sd[p + 'proj.1.conv.bias'] = rand(attn_dim)
                bn(p + 'proj.2', attn_dim)
                sd[p + 'net.1.to_qkv.weight'] = rand(3 * attn_dim, attn_dim, 1, 1)
                bn(p + 'net.2', attn_dim)
                sd[p + 'net.4.weight'] = rand(out, attn_dim, 1, 1)
                bn(p + 'net.5', out)
            in_chs = out
    sd['fc.weight'] = rand(1000, 2048)
    sd['fc.bias'] = rand(1000)
    return sd


def _official_forward(sd: dict[str, torch.Tensor], spec: dict, x: torch.Tensor) -> torch.Tensor:
    """Eval-mode forward of the official layout, written from the module definitions' data flow."""
    act = F.silu if spec['act'] == 'silu' else F.relu

    def bn(prefix: str, t: torch.Tensor) -> torch.Tensor:
        w, b, m, v = (sd[f'{prefix}.{n}'] for n in ('weight', 'bias', 'running_mean', 'running_var'))
        return F.batch_norm(t, m, v, w, b, training=False, eps=1e-5)

    def peg(prefix: str, t: torch.Tensor, stride: int) -> torch.Tensor:
        w = sd[f'{prefix}.weight']
        return F.conv2d(t, w, sd[f'{prefix}.bias'], stride=stride, padding=1, groups=w.shape[0])

    x = F.max_pool2d(act(bn('bn1', F.conv2d(x, sd['conv1.weight'], stride=2, padding=3))), 3, 2, 1)
    for s, ops in enumerate(spec['stages']):
        for i, op in enumerate(ops):
            p = f'layer{s + 1}.{i}.'
            stride = (1 if s == 0 else spec['last_stride'] if s == 3 else 2) if i == 0 else 1
            sc = p + ('downsample' if op == 'conv' else 'shortcut')
            shortcut = x
            if f'{sc}.1.weight' in sd:
                pooled = F.avg_pool2d(x, 2, stride, ceil_mode=True, count_include_pad=False) if stride > 1 else x
                shortcut = bn(f'{sc}.2', F.conv2d(pooled, sd[f'{sc}.1.weight']))
            if op == 'conv':
                y = act(bn(p + 'bn1', peg(p + 'peg.conv', F.conv2d(x, sd[p + 'conv1.weight']), stride)))
                y = act(bn(p + 'bn2', F.conv2d(y, sd[p + 'conv2.weight'], padding=1)))
                y = bn(p + 'bn3', F.conv2d(y, sd[p + 'conv3.weight']))
                if spec['se']:
                    z = F.relu(F.conv2d(y.mean((2, 3), keepdim=True), sd[p + 'se.fc1.weight'], sd[p + 'se.fc1.bias']))
                    y = y * torch.sigmoid(F.conv2d(z, sd[p + 'se.fc2.weight'], sd[p + 'se.fc2.bias']))
            else:
                y = act(bn(p + 'proj.2', peg(p + 'proj.1.conv', F.conv2d(x, sd[p + 'proj.0.weight']), stride)))
                b, c, h, w = y.shape
                heads = c // 64
                q, k, v = F.conv2d(y, sd[p + 'net.1.to_qkv.weight']).view(b, 3 * heads, 64, h * w).chunk(3, dim=1)
                attn = (q.transpose(-2, -1) @ k * 64**-0.5).softmax(dim=-1)
                y = act(bn(p + 'net.2', (v @ attn.transpose(-2, -1)).reshape(b, c, h, w)))
                y = bn(p + 'net.5', F.conv2d(y, sd[p + 'net.4.weight']))
            x = act(y + shortcut)
    return F.linear(x.mean((2, 3)), sd['fc.weight'], sd['fc.bias'])


@pytest.mark.parametrize('name', sorted(OFFICIAL_LEN))
def test_synthetic_official_checkpoint_loads_strictly_and_matches(name):
    spec = hytra.SPECS[name]
    official = _official_state_dict(spec)
    assert len(official) == OFFICIAL_LEN[name]
    model = timm.create_model(name).eval()
    ckpt = {'model': official, 'epoch': 299, 'args': argparse.Namespace(model=name)}
    state = convert_bossnet_checkpoint(ckpt, model=model)
    assert model.load_state_dict(state, strict=True)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(model(x), _official_forward(official, spec, x), rtol=1e-4, atol=1e-4)


def test_key_map():
    assert map_key('layer4.0.shortcut.2.running_var') == 'layer4.0.downsample.2.running_var'
    assert map_key('layer3.3.proj.1.conv.bias') == 'layer3.3.peg.conv.bias'
    assert map_key('layer3.3.net.1.to_qkv.weight') == 'layer3.3.attn.qkv.weight'
    assert map_key('layer4.8.net.5.weight') == 'layer4.8.bn3.weight'
    assert map_key('module.layer1.0.peg.conv.weight') == 'layer1.0.peg.conv.weight'
    assert map_key('layer2.0.downsample.1.weight') == 'layer2.0.downsample.1.weight'
    assert map_key('fc.bias') == 'fc.bias'


def test_ema_entry_bare_state_dict_and_ddp_prefix():
    spec = hytra.SPECS['bossnet_t0']
    raw, ema = _official_state_dict(spec, seed=0), _official_state_dict(spec, seed=1)
    ckpt = {'model': {f'module.{k}': v for k, v in raw.items()}, 'model_ema': ema}
    model = timm.create_model('bossnet_t0')
    assert torch.equal(convert_bossnet_checkpoint(ckpt, use_ema=True, model=model)['fc.bias'], ema['fc.bias'])
    assert torch.equal(convert_bossnet_checkpoint(ckpt, model=model)['fc.bias'], raw['fc.bias'])
    assert torch.equal(
        convert_bossnet_checkpoint(raw, model=model)['layer3.3.attn.qkv.weight'], raw['layer3.3.net.1.to_qkv.weight']
    )
    with pytest.raises(KeyError, match='model_ema'):
        convert_bossnet_checkpoint({'model': raw}, use_ema=True)


def test_wrong_variant_names_keys():
    official = _official_state_dict(hytra.SPECS['bossnet_t0'])
    with torch.device('meta'):
        nose = timm.create_model('bossnet_t0_nose')
        other = hytra.build(
            dict(hytra.SPECS['bossnet_t0'], stages=[['conv'] * 3, ['conv'] * 4, ['conv'] * 6, ['att'] * 3])
        )
    with pytest.raises(ValueError, match=r'unexpected keys \[.*layer1\.0\.se\.fc1\.bias'):
        convert_bossnet_checkpoint({'model': official}, model=nose)
    with pytest.raises(ValueError, match=r'missing keys \[.*layer1\.1\.conv1\.weight'):
        convert_bossnet_checkpoint({'model': official}, model=other)


def test_load_official_checkpoint_weights_only(tmp_path):
    official = _official_state_dict(hytra.SPECS['bossnet_t1'])
    path = tmp_path / 'BossNet-T1-81_9.pth'
    torch.save({'model': official, 'epoch': 299, 'args': argparse.Namespace(model='bossnet_T1', lr=5e-4)}, path)
    ckpt = load_official_checkpoint(path)
    model = timm.create_model('bossnet_t1')
    model.load_state_dict(convert_bossnet_checkpoint(ckpt, model=model), strict=True)
    assert torch.equal(model.layer4[0].attn.qkv.weight, official['layer4.0.net.1.to_qkv.weight'])
