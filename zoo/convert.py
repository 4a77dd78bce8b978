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
  subnet is *sliced* from the supernet: the official keys are mapped onto our supernet
  (:class:`backbones.nasvit_supernet.NASViTSupernet`, :func:`nasvit_official_key`), whose ``path_state_dict`` is the
  one implementation of the slicing rule (also the search supernet's; :func:`slice_nasvit_supernet`). The official
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
from backbones.nasvit_supernet import NASViTSupernet

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
    'nasvit_official_key',
    'nasvit_supernet_from_official',
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


_NASVIT_RENAMES: tuple[tuple[str, str], ...] = (
    # (official suffix, ours) inside a layer; MBConv names depend on the timm block (see _nasvit_layer_key)
    ('mobile_inverted_conv.inverted_bottleneck.conv.conv.weight', 'conv.conv_pw.weight'),
    ('mobile_inverted_conv.inverted_bottleneck.bn.bn.', 'conv.bn1.'),
    ('mobile_inverted_conv.depth_conv.conv.conv.weight', 'conv.conv_dw.weight'),
    ('mobile_inverted_conv.depth_conv.se.fc.reduce.', 'conv.se.conv_reduce.'),
    ('mobile_inverted_conv.depth_conv.se.fc.expand.', 'conv.se.conv_expand.'),
    ('shortcut.conv.conv.weight', 'shortcut.conv.weight'),
    ('rescale_attn', 'gamma_attn'),
    ('rescale_mlp', 'gamma_mlp'),
    ('attn.vconv.weight', 'attn.v_conv.weight'),
)
_NASVIT_DROPPED = re.compile(r'\.bn_tracking\.|mobile_inverted_conv\.rescale$|relative_position_index$')


def _nasvit_layer_key(stage: int, layer: int, rest: str) -> str | None:
    """Our name of the official ``blocks.<b>.<rest>`` (stage ``stage``, layer ``layer``); None: not kept."""
    ds = nv.EXPANSIONS[stage] == (1,)  # MBConv-1: timm DepthwiseSeparableConv (bn1, conv_pw, bn2), else IR
    if rest.startswith('shortcut.') and layer > 0:
        return None  # a layer inside a stage keeps its width and stride: its shortcut is the identity
    pairs = (
        ('mobile_inverted_conv.depth_conv.bn.bn.', 'conv.bn1.' if ds else 'conv.bn2.'),
        ('mobile_inverted_conv.point_linear.conv.conv.weight', 'conv.conv_pw.weight' if ds else 'conv.conv_pwl.weight'),
        ('mobile_inverted_conv.point_linear.bn.bn.', 'conv.bn2.' if ds else 'conv.bn3.'),
        *_NASVIT_RENAMES,
    )
    for theirs, ours in pairs:
        if rest.startswith(theirs):
            return f'stages.{stage}.{layer}.{ours}{rest[len(theirs) :]}'
    m = re.fullmatch(r'(attn\.(?:q|k|v|proj|proj_l|proj_w))\.linear\.(weight|bias)', rest)
    if m:
        return f'stages.{stage}.{layer}.{m.group(1)}.{m.group(2)}'
    m = re.fullmatch(r'(mlp[12])\.linear([12])\.linear\.(weight|bias)', rest)
    if m:
        return f'stages.{stage}.{layer}.{m.group(1)}.fc{m.group(2)}.{m.group(3)}'
    return f'stages.{stage}.{layer}.{rest}'  # norm1..3, attn.relative_position_bias_table: same names


def nasvit_official_key(key: str) -> str | None:
    """Our supernet's name (:class:`backbones.nasvit_supernet.NASViTSupernet`) of an official supernet key; None
    for what the subnets never use: ``bn_tracking`` statistics, MBConv ``rescale`` (fixed ones), the
    ``relative_position_index`` buffer (rebuilt by the model) and shortcut convs inside a stage."""
    if _NASVIT_DROPPED.search(key):
        return None
    for theirs, ours in (
        ('first_conv.conv.conv.weight', 'stem.conv.weight'),
        ('first_conv.bn.bn.', 'stem.bn.'),
        ('last_conv.final_expand_layer.conv.conv.weight', 'final_conv.conv.weight'),
        ('last_conv.final_expand_layer.bn.bn.', 'final_conv.bn.'),
        ('last_conv.feature_mix_layer.conv.conv.weight', 'conv_head.weight'),
        ('classifier.linear.linear.', 'classifier.'),
    ):
        if key.startswith(theirs):
            return ours + key[len(theirs) :]
    m = re.fullmatch(r'blocks\.(\d+)\.(.+)', key)
    if not m:
        raise KeyError(f'no NASViT supernet key maps {key!r}')
    block = int(m.group(1))
    stage = max(i for i, offset in enumerate(NASVIT_BLOCK_OFFSETS) if offset <= block)
    return _nasvit_layer_key(stage, block - NASVIT_BLOCK_OFFSETS[stage], m.group(2))


def nasvit_supernet_from_official(supernet: Mapping[str, torch.Tensor]) -> NASViTSupernet:
    """The official supernet state dict (official keys and shapes) loaded into our supernet (``layer_scale='code'``,
    the tables the checkpoint has), on the tensors of ``supernet`` (no copy)."""
    num_classes = supernet['classifier.linear.linear.bias'].shape[0]
    ours = {}
    for key, value in supernet.items():
        name = nasvit_official_key(key)
        if name is not None:
            ours[name] = value
    with torch.device('meta'):
        model = NASViTSupernet(num_classes=num_classes, layer_scale='code')
    model.load_state_dict(ours, strict=True, assign=True)
    return model


def slice_nasvit_supernet(supernet: Mapping[str, torch.Tensor], spec: dict) -> dict[str, torch.Tensor]:
    """Our static ``nasvit`` model's state dict for ``spec``, from the official supernet state dict: the keys are
    mapped onto :class:`~backbones.nasvit_supernet.NASViTSupernet` (:func:`nasvit_official_key`) and its
    ``path_state_dict`` slices them (the one implementation of the rule, also the search supernet's: first channels,
    centre kernel, first ``depth[i]`` layers, bias-table head columns, layer-scale row ``[d, N % 8]``; see
    ``backbones/nasvit_supernet.py``)."""
    return nasvit_supernet_from_official(supernet).path_state_dict(spec)


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
