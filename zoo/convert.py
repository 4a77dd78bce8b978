"""Official checkpoints -> our models' state dicts (safetensors), one function per family.

The authors' releases are training checkpoints of their own code; each function below picks the weights entry
(``--ema`` picks the EMA copy), maps the official names to ours, and refuses a file whose keys or shapes are not
the official ones, naming every missing, unexpected and mis-shaped key (:class:`CheckpointMismatch`). The maps are
written from the official module definitions (commits in ``docs/convert.md``):

* **BossNAS** (``BossNet-T0-80_8.pth``, ``BossNet-T0-nose-80_5.pth``, ``BossNet-T1-81_9.pth``; DeiT-style dict with
  ``'model'`` / ``'model_ema'``): the ResAtt renames of :mod:`zoo.convert_bossnet`, reused as is.
* **DNA** (Google-Drive ``.pth.tar`` of DNA-a..d; timm 0.1.14 ``train.py`` dict with ``'state_dict'`` /
  ``'state_dict_ema'``, ``'arch'``, ``'args'``): the official models are timm 0.1.14 ``GenEfficientNet``
  (``retraining/model.py``); timm 1.0 ``EfficientNet`` kept every module name of it (``conv_stem``, ``bn1``,
  ``blocks.{stage}.{block}.{conv_dw, bn1, se.conv_reduce, se.conv_expand, conv_pw, bn2}`` for ``ds`` blocks,
  ``{conv_pw, bn1, conv_dw, bn2, se.*, conv_pwl, bn3}`` for ``ir`` blocks, ``conv_head``, ``bn2``, ``classifier``)
  and every shape (mid width ``int(in * e)`` and SE width ``int(in * 0.25)`` are multiples of 8 / whole numbers in
  DNA-a..d), and has no checkpoint filter for it. The map is the identity after dropping a DDP ``module.`` prefix.
* **Pi-NAS** (``PiNAS_cls.pth.tar``; ``'state_dict'`` entry, as the official ``verify.py --resume`` reads it, or a
  bare state dict): the official ``alone_resnest50`` (PyTorch-Encoding ``ResNet`` + ``Bottleneck`` +
  ``SplAtConv2d``) and timm's ``ResNet`` + ``ResNestBottleneck`` + ``SplitAttn`` use the same names: deep stem
  ``conv1.{0,1,3,4,6}`` + ``bn1``, ``layer{s}.{b}.{conv1, bn1, conv2.{conv, bn0, fc1, bn1, fc2}, conv3, bn3}``,
  shortcut ``downsample.{1: conv, 2: bn}`` after the avg-pool at index 0, ``fc``; the split-attention channel
  layout (radix-major) is the same too. The map is the identity after dropping ``module.``. PyTorch-Encoding keeps
  no EMA, so ``use_ema`` is refused.
* **NASViT** (the one released supernet checkpoint; ``'model'`` / ``'model_ema'``, ``'config'`` a yacs node): each
  subnet is *sliced* from the dynamic supernet (:func:`slice_nasvit_supernet`, rule in its docstring). The official
  evaluation always loads ``'model_ema'`` (``misc/utils.py``), so pass ``use_ema=True`` to get the weights behind
  the README accuracies, and recalibrate BatchNorm on training images before measuring accuracy, as the official
  evaluation does for every subnet (``post_bn_calibration_batch_num=64``): the supernet's running statistics are
  shared by all subnets.

Files are read with ``torch.load(..., weights_only=True)`` only (:func:`load_checkpoint`).

Not confirmed: none of the released files was available offline. Their entry names come from the saving code
(DeiT / timm 0.1.14 ``CheckpointSaver`` / NASViT ``save_checkpoint``; for Pi-NAS the README's ``verify.py --resume``
command) and the keys inside from the model code; the DNA and Pi-NAS maps and the NASViT layout and slicing were
checked against state dicts and outputs of the official model code. Whether the DNA files carry
``state_dict_ema`` is unknown. A file that differs is refused with the list of differences.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import timm
import torch
from timm.layers import make_divisible

import backbones.nasvit as nv

from .checkpoint_io import CheckpointRefused, check_destination, load_checkpoint, save_safetensors
from .convert_bossnet import convert_bossnet_checkpoint

__all__ = [
    'FAMILIES',
    'MODELS',
    'NASVIT_BLOCK_OFFSETS',
    'CheckpointMismatch',
    'CheckpointRefused',
    'convert_bossnas',
    'convert_checkpoint',
    'convert_dna',
    'convert_file',
    'convert_nasvit',
    'convert_pinas',
    'infer_model_name',
    'load_checkpoint',
    'nasvit_supernet_shapes',
    'slice_nasvit_supernet',
]

FAMILIES = ('bossnas', 'dna', 'pinas', 'nasvit')
#: Our models each family's official weights can be converted to.
MODELS: dict[str, tuple[str, ...]] = {
    'bossnas': ('bossnet_t0', 'bossnet_t0_nose', 'bossnet_t1'),
    'dna': ('dna_a', 'dna_b', 'dna_c', 'dna_d'),
    'pinas': ('pinas_cls', 'pinas_trans'),
    'nasvit': tuple(nv.SPECS),
}
#: (plain entry, EMA entry) of each family's training checkpoint dict; None: the official code keeps no EMA.
_ENTRIES: dict[str, tuple[str, str | None]] = {
    'dna': ('state_dict', 'state_dict_ema'),  # timm 0.1.14 CheckpointSaver
    'pinas': ('state_dict', None),  # PyTorch-Encoding train script / verify.py --resume
    'nasvit': ('model', 'model_ema'),  # NASViT misc/utils.py save_checkpoint
}


class CheckpointMismatch(ValueError):
    """The checkpoint's keys or shapes are not those the conversion expects; lists every offending key."""

    def __init__(self, what: str, missing: list[str], unexpected: list[str], shapes: list[str]) -> None:
        self.missing, self.unexpected, self.shapes = missing, unexpected, shapes
        super().__init__(f'{what}: missing keys {missing}; unexpected keys {unexpected}; shape mismatches {shapes}')


def _compare(found: Mapping[str, Any], expected: Mapping[str, tuple[int, ...]], what: str) -> None:
    """Raise :class:`CheckpointMismatch` unless ``found`` has exactly the keys and shapes of ``expected``."""
    missing = sorted(expected.keys() - found.keys())
    unexpected = sorted(found.keys() - expected.keys())
    shapes = sorted(
        f'{k}: checkpoint {tuple(found[k].shape)} vs expected {tuple(expected[k])}'
        for k in expected.keys() & found.keys()
        if tuple(found[k].shape) != tuple(expected[k])
    )
    if missing or unexpected or shapes:
        raise CheckpointMismatch(what, missing, unexpected, shapes)


def _meta_model(model_name: str, **kwargs: Any) -> torch.nn.Module:
    """Our model on the meta device (its state-dict names and shapes, no weights allocated); on the CPU for
    builders that need real values while they build (NASViT reads its drop-path schedule with ``.item()``)."""
    try:
        with torch.device('meta'):
            return timm.create_model(model_name, **kwargs)
    except (RuntimeError, NotImplementedError):
        return timm.create_model(model_name, **kwargs)


def _model_shapes(model_name: str) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in _meta_model(model_name).state_dict().items()}


def _check_model_name(family: str, model_name: str) -> None:
    if model_name not in MODELS[family]:
        raise ValueError(f'{family} weights convert to one of {list(MODELS[family])}, not {model_name!r}')


def _is_state_dict(ckpt: Mapping[str, Any]) -> bool:
    return bool(ckpt) and all(isinstance(v, torch.Tensor) for v in ckpt.values())


def _weights_entry(ckpt: Mapping[str, Any], family: str, use_ema: bool) -> dict[str, torch.Tensor]:
    """The state dict inside a training checkpoint (or the checkpoint itself if it is one), ``module.`` dropped."""
    plain, ema = _ENTRIES[family]
    if _is_state_dict(ckpt):
        if use_ema:
            raise KeyError(
                f'use_ema=True needs a training checkpoint with an EMA entry; got a bare {family} state dict'
            )
        sd = ckpt
    else:
        if use_ema and ema is None:
            raise KeyError(f'the official {family} training code keeps no EMA weights; convert without use_ema')
        key = ema if use_ema else plain
        if key not in ckpt:
            raise KeyError(f'{family} checkpoint has no {key!r} entry (entries: {sorted(map(str, ckpt))})')
        sd = ckpt[key]
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f'{family} state dict entry {key!r} is a {type(value).__name__}, not a tensor')
        name = key.removeprefix('module.')
        if name in out:
            raise ValueError(f'keys collide after dropping the DDP prefix: {key!r} -> {name!r}')
        out[name] = value
    return out


def _own(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous copies: slices and views must not share storage in a safetensors file."""
    return {k: v.detach().clone(memory_format=torch.contiguous_format) for k, v in sd.items()}


# --------------------------------------------------------------------------------------------------------------
# BossNAS, DNA, Pi-NAS: key maps
# --------------------------------------------------------------------------------------------------------------


def convert_bossnas(ckpt: Mapping[str, Any], model_name: str, use_ema: bool = False) -> dict[str, torch.Tensor]:
    """Official BossNet-T checkpoint -> ``bossnet_t0`` / ``bossnet_t0_nose`` / ``bossnet_t1`` (ResAtt renames)."""
    _check_model_name('bossnas', model_name)
    return _own(convert_bossnet_checkpoint(ckpt, use_ema=use_ema, model=_meta_model(model_name)))


def convert_dna(ckpt: Mapping[str, Any], model_name: str, use_ema: bool = False) -> dict[str, torch.Tensor]:
    """Official DNA-a..d checkpoint (timm 0.1.14 ``GenEfficientNet``) -> ``dna_a..d``: names unchanged."""
    _check_model_name('dna', model_name)
    sd = _weights_entry(ckpt, 'dna', use_ema)
    _compare(sd, _model_shapes(model_name), f'official DNA checkpoint does not match {model_name}')
    return _own(sd)


def convert_pinas(ckpt: Mapping[str, Any], model_name: str, use_ema: bool = False) -> dict[str, torch.Tensor]:
    """Official Pi-NAS checkpoint (PyTorch-Encoding ``alone_resnest50``) -> ``pinas_cls``: names unchanged."""
    _check_model_name('pinas', model_name)
    sd = _weights_entry(ckpt, 'pinas', use_ema)
    other = _pinas_by_shapes(sd)
    what = f'official Pi-NAS checkpoint does not match {model_name}'
    if other not in (None, model_name):
        what = f'{what} (its per-layer shapes are those of {other}: pass --model {other}, model_name={other!r})'
    _compare(sd, _model_shapes(model_name), what)
    return _own(sd)


# --------------------------------------------------------------------------------------------------------------
# NASViT: supernet layout and slicing
# --------------------------------------------------------------------------------------------------------------

#: Index of each stage's first layer in the supernet's flat ``blocks`` list (each stage holds its maximum depth).
NASVIT_BLOCK_OFFSETS: tuple[int, ...] = tuple(sum(max(d) for d in nv.DEPTHS[:i]) for i in range(len(nv.DEPTHS)))
_NASVIT_RPE_ROWS = (2 * nv.RPE_GRID - 1) ** 2
_NASVIT_RESCALE_SLOTS = (10, 8)  # rescale_attn / rescale_mlp: (active stage depth, token count mod 8, C)


def nasvit_supernet_shapes(num_classes: int = 1000) -> dict[str, tuple[int, ...]]:
    """State-dict names and shapes of the official NASViT supernet (``AttentiveNasDynamicModel``, misc/config.py).

    Written from ``models/attentive_nas_dynamic_model.py`` and ``models/modules/{dynamic_layers, dynamic_ops,
    transformer}.py``: every dynamic op holds its largest tensor (max channels, max kernel, max expansion, max depth
    per stage); ``DynamicBatchNorm2d`` wraps ``bn`` plus two affine-free ``bn_tracking`` copies; every MBConv layer
    owns a 1x1 shortcut conv and a fixed ``rescale`` vector; transformer layers own a (10, 8, C) ``rescale_attn`` /
    ``rescale_mlp`` and a persistent ``relative_position_index`` buffer.
    """
    shapes: dict[str, tuple[int, ...]] = {}

    def bn(prefix: str, c: int) -> None:
        for name in ('weight', 'bias', 'running_mean', 'running_var'):
            shapes[f'{prefix}.bn.{name}'] = (c,)
        shapes[f'{prefix}.bn.num_batches_tracked'] = ()
        for i in range(2):
            shapes[f'{prefix}.bn_tracking.{i}.running_mean'] = (c,)
            shapes[f'{prefix}.bn_tracking.{i}.running_var'] = (c,)
            shapes[f'{prefix}.bn_tracking.{i}.num_batches_tracked'] = ()

    def linear(prefix: str, c_out: int, c_in: int) -> None:
        shapes[f'{prefix}.linear.weight'] = (c_out, c_in)
        shapes[f'{prefix}.linear.bias'] = (c_out,)

    c_in = max(nv.WIDTHS[0])
    shapes['first_conv.conv.conv.weight'] = (c_in, 3, 3, 3)
    bn('first_conv.bn', c_in)
    for i in range(len(nv.STAGE_NAMES)):
        c, e, k = max(nv.WIDTHS[i + 1]), max(nv.EXPANSIONS[i]), max(nv.KERNELS[i])
        for j in range(max(nv.DEPTHS[i])):
            p = f'blocks.{NASVIT_BLOCK_OFFSETS[i] + j}.'
            if i < nv.NUM_CONV_STAGES or j == 0:
                m = p + 'mobile_inverted_conv.'
                mid = round(c_in * e)
                shapes[m + 'rescale'] = (c,)
                if e != 1:
                    shapes[m + 'inverted_bottleneck.conv.conv.weight'] = (mid, c_in, 1, 1)
                    bn(m + 'inverted_bottleneck.bn', mid)
                shapes[m + 'depth_conv.conv.conv.weight'] = (mid, 1, k, k)
                bn(m + 'depth_conv.bn', mid)
                if nv.USE_SE[i]:
                    se_mid = make_divisible(mid // 4, 8)
                    shapes[m + 'depth_conv.se.fc.reduce.weight'] = (se_mid, mid, 1, 1)
                    shapes[m + 'depth_conv.se.fc.reduce.bias'] = (se_mid,)
                    shapes[m + 'depth_conv.se.fc.expand.weight'] = (mid, se_mid, 1, 1)
                    shapes[m + 'depth_conv.se.fc.expand.bias'] = (mid,)
                shapes[m + 'point_linear.conv.conv.weight'] = (c, mid, 1, 1)
                bn(m + 'point_linear.bn', c)
                shapes[p + 'shortcut.conv.conv.weight'] = (c, c_in, 1, 1)
            else:
                heads = c // nv.HEAD_DIM
                v = c * nv.V_EXPANSION
                shapes[p + 'rescale_mlp'] = (*_NASVIT_RESCALE_SLOTS, c)
                shapes[p + 'rescale_attn'] = (*_NASVIT_RESCALE_SLOTS, c)
                for norm in ('norm1', 'norm2', 'norm3'):
                    shapes[f'{p}{norm}.weight'] = (c,)
                    shapes[f'{p}{norm}.bias'] = (c,)
                shapes[p + 'attn.relative_position_bias_table'] = (_NASVIT_RPE_ROWS, heads)
                shapes[p + 'attn.relative_position_index'] = (nv.RPE_GRID**2, nv.RPE_GRID**2)
                linear(p + 'attn.q', c, c)
                linear(p + 'attn.k', c, c)
                linear(p + 'attn.v', v, c)
                shapes[p + 'attn.vconv.weight'] = (v, 1, 3, 3)
                linear(p + 'attn.proj', c, v)
                linear(p + 'attn.proj_l', heads, heads)
                linear(p + 'attn.proj_w', heads, heads)
                for mlp in ('mlp1', 'mlp2'):
                    linear(f'{p}{mlp}.linear1', c, c)
                    linear(f'{p}{mlp}.linear2', c, c)
            c_in = c
    c_exp = nv.HEAD_EXPANSION * c_in
    shapes['last_conv.final_expand_layer.conv.conv.weight'] = (c_exp, c_in, 1, 1)
    bn('last_conv.final_expand_layer.bn', c_exp)
    shapes['last_conv.feature_mix_layer.conv.conv.weight'] = (max(nv.WIDTHS[8]), c_exp, 1, 1)
    linear('classifier.linear', num_classes, max(nv.WIDTHS[8]))
    return shapes


def slice_nasvit_supernet(supernet: Mapping[str, torch.Tensor], spec: dict) -> dict[str, torch.Tensor]:
    """Our static ``nasvit`` model's state dict for ``spec``, sliced from the supernet state dict.

    The rule is the one the official supernet applies when it runs (``set_active_subnet`` + the dynamic ops'
    forward; ``get_active_subnet`` copies the same slices):

    * channels: the first ones. Every weight is cut to ``[:out, :in]`` of the active widths; the MBConv hidden
      width is ``make_divisible(round(c_in * e), 8)`` of the *active* input width; SE width
      ``make_divisible(mid // 4, 8)``; heads ``C / 8`` (first columns of the bias table, first rows/columns of the
      talking-heads linears); v width ``4 C``; the head conv ``6 * width[7]``.
    * kernel: the centre ``k x k`` window of the largest depthwise kernel, ``[(K - k) // 2 : (K + k) // 2]``
      (``sub_filter_start_end``; no kernel-transform matrices).
    * layers: the first ``depth[i]`` layers of stage ``i`` (the supernet's ``blocks`` list holds every stage at its
      maximum depth, see :data:`NASVIT_BLOCK_OFFSETS`).
    * relative-position bias: the table keeps all ``35 * 35`` offsets (the crop to the token grid happens at run
      time, in both implementations) and its first ``C / 8`` head columns.
    * layer scale: ``rescale_attn[d, N % 8, :C]`` and ``rescale_mlp[d, N % 8, :C]``, with ``d`` the stage's active
      depth (the MBConv included) and ``N`` the token count of that stage at the spec's resolution (the official
      forward indexes by ``x.shape[1] % 8``); the ``8 / C`` factor stays in the model.
    * dropped: ``bn_tracking`` statistics, MBConv ``rescale`` (fixed ones, unused), ``relative_position_index``
      (rebuilt by the model), shortcut convs of layers whose input and output widths agree (unused).
    """
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
            ours, theirs = f'stages.{i}.{j}.', f'blocks.{NASVIT_BLOCK_OFFSETS[i] + j}.'
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
                slot = (d, sides[i + 1] ** 2 % _NASVIT_RESCALE_SLOTS[1])
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


def convert_nasvit(ckpt: Mapping[str, Any], model_name: str, use_ema: bool = False) -> dict[str, torch.Tensor]:
    """Official NASViT supernet checkpoint -> the static subnet ``model_name`` (``nasvit_a0..a5``, min, max).

    The supernet state dict must have exactly the official keys and shapes (:func:`nasvit_supernet_shapes`,
    written from the model code; the released file's own key list could not be confirmed offline).
    ``use_ema=True`` takes ``'model_ema'``, the entry the official evaluation loads.
    """
    _check_model_name('nasvit', model_name)
    sd = _weights_entry(ckpt, 'nasvit', use_ema)
    num_classes = sd['classifier.linear.linear.bias'].shape[0] if 'classifier.linear.linear.bias' in sd else 1000
    _compare(sd, nasvit_supernet_shapes(num_classes), 'official NASViT supernet checkpoint does not match')
    out = slice_nasvit_supernet(sd, nv.SPECS[model_name])
    ours = {k: tuple(v.shape) for k, v in _meta_model(model_name, num_classes=num_classes).state_dict().items()}
    _compare(out, ours, f'NASViT slice does not match {model_name}')  # guards the slicing rule itself
    return _own(out)


# --------------------------------------------------------------------------------------------------------------
# Dispatch, files
# --------------------------------------------------------------------------------------------------------------

_CONVERTERS: dict[str, Callable[[Mapping[str, Any], str, bool], dict[str, torch.Tensor]]] = {
    'bossnas': convert_bossnas,
    'dna': convert_dna,
    'pinas': convert_pinas,
    'nasvit': convert_nasvit,
}


def convert_checkpoint(
    family: str, checkpoint_dict: Mapping[str, Any], model_name: str, use_ema: bool = False
) -> dict[str, torch.Tensor]:
    """Our ``model_name``'s state dict from an official checkpoint of ``family`` (loads with ``strict=True``)."""
    if family not in _CONVERTERS:
        raise ValueError(f'unknown family {family!r}; one of {list(FAMILIES)}')
    if not isinstance(checkpoint_dict, Mapping):
        raise ValueError(f'an official {family} checkpoint is a dict, got {type(checkpoint_dict).__name__}')
    return _CONVERTERS[family](checkpoint_dict, model_name, use_ema)


def infer_model_name(family: str, ckpt: Mapping[str, Any], src: str | os.PathLike | None = None) -> str:
    """Our model name for an official file when it is unambiguous; NASViT's one supernet needs the subnet named.

    BossNet: the release names (``BossNet-T0-80_8.pth``) or the authors' model entry points (``bossnet_T0.pth``,
    also the DeiT ``args.model`` inside the file); DNA: the ``'arch'`` entry or the file name; Pi-NAS: the
    per-layer weight shapes, which differ between Pi-NAS-cls and Pi-NAS-trans (their block choices differ).
    """
    name = Path(src).name.lower() if src is not None else ''
    if family == 'bossnas':
        arch = str(getattr(ckpt.get('args'), 'model', '') or '').lower()
        for text in (name, arch):
            m = re.match(r'bossnet[-_](t[01])([-_]nose)?(?![a-z0-9])', text)
            if m:
                return f'bossnet_{m.group(1)}' + ('_nose' if m.group(2) else '')
    elif family == 'dna':
        arch = str(ckpt.get('arch', '') or name)
        m = re.search(r'dna_([abcd])\b', arch.lower())
        if m:
            return f'dna_{m.group(1)}'
    elif family == 'pinas':
        return _pinas_by_shapes(ckpt) or 'pinas_cls'  # unknown shapes: refused by the conversion, key by key
    raise ValueError(f'cannot tell which {family} model this checkpoint is; name one of {list(MODELS[family])}')


def _pinas_by_shapes(ckpt: Mapping[str, Any]) -> str | None:
    """The Pi-NAS model whose state-dict shapes the checkpoint has exactly, if any."""
    try:
        sd = _weights_entry(ckpt, 'pinas', use_ema=False)
    except (KeyError, ValueError):
        return None
    found = {k: tuple(v.shape) for k, v in sd.items()}
    return next((m for m in MODELS['pinas'] if found == _model_shapes(m)), None)


def convert_file(
    family: str,
    src: str | os.PathLike,
    dst: str | os.PathLike,
    model_name: str | None = None,
    use_ema: bool = False,
    overwrite: bool = False,
) -> dict[str, torch.Tensor]:
    """Read an official checkpoint, convert it and write our state dict to ``dst`` (a ``.safetensors`` file).

    ``model_name=None`` asks :func:`infer_model_name`. The output is written atomically, and an existing ``dst`` is
    refused (before any work) unless ``overwrite``. Every error names the file it is about. Returns the state dict.
    """
    if not str(dst).endswith('.safetensors'):
        raise ValueError(f'{dst}: the destination must be a .safetensors file')
    check_destination(dst, overwrite)
    ckpt = load_checkpoint(src)
    try:
        model_name = model_name or infer_model_name(family, ckpt, src)
        state = convert_checkpoint(family, ckpt, model_name, use_ema=use_ema)
    except (KeyError, ValueError) as err:  # name the file once, keep the type (CheckpointMismatch...)
        err.args = (f'{src}: {err.args[0] if err.args else err}', *err.args[1:])
        raise
    metadata = {
        'format': 'pt',
        'family': family,
        'model': model_name,
        'source': Path(src).name,
        'ema': str(bool(use_ema)).lower(),
    }
    save_safetensors(state, dst, metadata=metadata, overwrite=overwrite)
    return state
