"""DNA-a..d: the MBConv-space networks found by DNA (block-wise distillation NAS), as timm models.

Paper: "DNA Family: Boosting Weight-Sharing NAS with Block-Wise Supervisions" (arXiv 2403.01326; CVPR'20
version arXiv 1911.13053). Layer tables follow the official ``retraining/model.py`` of
github.com/changlin31/DNA (commit 156c16c), which builds timm ``GenEfficientNet`` nets from block strings.

The networks are built by timm's own EfficientNet builder from arch-def strings (no MBConv re-implementation):

* Stem conv3x3 s2 (32) -> ``ds_r1_k3_s1_c16_se0.25`` -> five searched stages -> fixed
  ``ir_r1_k3_s1_e6_c320_se0.25`` -> conv1x1 1280 -> avg-pool -> dropout -> linear.
* swish (SiLU) everywhere, BN with PyTorch defaults (momentum 0.1, eps 1e-5), as the official code.
* SE reduction width is ``int(in_chs * 0.25)`` of the block *input* channels (official ``se_reduce_mid=False``);
  timm's builder does the same with ``se_from_exp=False`` (it divides the SE ratio by the expansion), so the
  parameter counts are exact: DNA-a/b/c/d = 4,243k / 4,918k / 5,274k / 6,409k (official retraining/model.py).
* ``drop_rate=0.2`` and ``drop_path_rate=0.2`` by default (the official code hard-codes drop-connect 0.2,
  linearly scaled by block index, exactly timm's rule).

The DNA_c definition is the one the authors swapped in on 2019-12-13 (issue #4), the one their weights match.

Scaled DNA-c1..c5 (paper Table 4) are not registered: the paper says only "EfficientNet compound scaling" and
gives no rule for depth-scaling stages whose layers differ from each other (EfficientNet repeats one block per
stage); no definition or weights were released, and the natural rules do not reproduce Table 4's parameter
counts (see docs/models.md).

Spec (family ``mbconv``, version 1)::

    {"family": "mbconv", "version": 1, "stem_size": 32, "num_features": 1280,
     "stages": [["ds_r1_k3_s1_c16_se0.25"], ["ir_r1_k5_s2_e6_c24_se0.25", ...], ...]}

``stages`` are timm arch-def strings inside the DNA MBConv space: block type ``ds`` or ``ir``, kernel 3/5/7,
expansion 3/6 (``ir`` only), stride 1/2, SE ratio 0.25 or no ``se`` option (no squeeze-excite, timm's convention).
The optional field ``act_layer`` is ``"swish"`` (the default, DNA/EfficientNet) or ``"relu6"`` (MobileNetV2 and the
FairNAS-style single-path space of "Inter-choice dependent super-network weights", arXiv 2104.11522, Table 4); it
sets every activation (stem, blocks, head), as timm's ``act_layer``. Specs without it build as before.

The optional field ``shortcut`` is ``"identity"`` (the default: timm's rule, an identity skip only where an ``ir``
layer keeps stride 1 and width) or ``"avg_down"`` (the MBConv space of BossNAS, arXiv 2103.12424, official
``mbconv_ops.InvertedResidual`` with ``downsample``): then *every* ``ir`` layer is residual, and one that changes
stride or width adds ``AvgPool2d(2, ceil_mode=True, count_include_pad=False)`` (stride 2) then a 1x1 conv + BN (width
change) of its input, no activation after the sum (:class:`AvgDownInvertedResidual`). ``ds`` layers keep timm's rule.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._builder import pretrained_cfg_for_features
from timm.models._efficientnet_blocks import InvertedResidual
from timm.models._efficientnet_builder import decode_arch_def, efficientnet_init_weights
from timm.models.efficientnet import EfficientNet, EfficientNetFeatures
from timm.models.resnet import downsample_avg

from ._builder import FamilyBuilder
from ._pretrained import hub_id
from ._spec import SpecError, check_choice, check_header, check_int, check_list

__all__ = [
    'ACTIVATIONS',
    'FAMILY',
    'SHORTCUTS',
    'SPECS',
    'SPEC_VERSION',
    'AvgDownInvertedResidual',
    'MBConvNet',
    'MBConvNetFeatures',
    'add_avg_down_shortcuts',
    'build',
    'validate_spec',
]

FAMILY = 'mbconv'
SPEC_VERSION = 1
NUM_FEATURE_LEVELS = 5  # strides 2, 4, 8, 16, 32 (timm EfficientNet feature levels)

BLOCK_TYPES = ('ds', 'ir')
KERNELS = (3, 5, 7)
EXPANSIONS = (3, 6)
STRIDES = (1, 2)
SE_RATIOS = (0.25,)
ACTIVATIONS = ('swish', 'relu6')
DEFAULT_ACT = 'swish'
SHORTCUTS = ('identity', 'avg_down')
DEFAULT_SHORTCUT = 'identity'
_FIELDS = ('stem_size', 'num_features', 'stages')
_OPTIONAL_FIELDS = ('act_layer', 'shortcut')

_TOKEN = re.compile(r'^(r|k|s|e|c|se)(\d+(?:\.\d+)?)$')
_NAMES = {'r': 'repeats', 'k': 'kernel', 's': 'stride', 'e': 'expansion', 'c': 'channels', 'se': 'SE ratio'}
_MAX_DIGITS = 9

# Upper bounds of the numeric fields (docs/models.md, "Spec bounds"), checked before anything is built. They are
# far above the DNA catalog (stem 32, block widths <= 320, head 1280, <= 6 layers a stage, 22 layers in all) and
# hold every timm EfficientNet the space can express, EfficientNet-L2 included (stem 136, widths <= 1376, head
# 5504, <= 22 layers a stage, 88 in all, 480M parameters): a spec beyond them is a typo, not a trainable network.
MAX_WIDTH = 4096  # stem_size and the channels c of every block
MAX_NUM_FEATURES = 8192  # the head's 1x1 conv
MAX_STAGE_DEPTH = 32  # layers of one stage: the sum of its blocks' repeats r
MAX_STAGES = 16
MAX_DEPTH = 128  # layers of all stages together
MAX_PARAMS = 1_000_000_000  # weights of the whole network (_approx_params), twice EfficientNet-L2
_BOUNDS = {
    'r': f'at most {MAX_STAGE_DEPTH}',
    'c': f'at most {MAX_WIDTH}',
    'k': f'one of {KERNELS}',
    's': f'one of {STRIDES}',
    'e': f'one of {EXPANSIONS}',
}


def _stage(chs: int, stride: int, ops: str) -> list[str]:
    """One stage of single-layer arch-def strings from a compact op list such as ``'k5e3 k3e3 k3e6'``."""
    out = []
    for i, op in enumerate(ops.split()):
        k, e = op[1:].split('e')
        out.append(f'ir_r1_k{k}_s{stride if i == 0 else 1}_e{e}_c{chs}_se0.25')
    return out


def _dna(b1, b2, b3, b4, b5) -> dict:
    """A DNA spec: fixed stem/DS/last layers around the five searched stages (block, channels, ops)."""
    return {
        'family': FAMILY,
        'version': SPEC_VERSION,
        'stem_size': 32,
        'num_features': 1280,
        'stages': [
            ['ds_r1_k3_s1_c16_se0.25'],
            _stage(b1[0], 2, b1[1]),
            _stage(b2[0], 2, b2[1]),
            _stage(b3[0], 2, b3[1]),
            _stage(b4[0], 1, b4[1]),
            _stage(b5[0], 2, b5[1]),
            ['ir_r1_k3_s1_e6_c320_se0.25'],
        ],
    }


# Layer tables of the official retraining/model.py (github.com/changlin31/DNA at commit 156c16c).
SPECS: dict[str, dict] = {
    'dna_a': _dna(
        (24, 'k5e3 k3e3 k3e6'),
        (40, 'k3e3 k3e3 k5e3 k3e6'),
        (80, 'k7e6 k3e3 k5e3 k3e6'),
        (96, 'k5e6 k5e3 k5e3 k5e6'),
        (160, 'k5e6 k5e3 k5e3 k5e3 k5e6'),
    ),
    'dna_b': _dna(
        (24, 'k3e3 k5e3 k7e6'),
        (40, 'k7e6 k5e3 k7e6'),
        (80, 'k5e6 k5e3 k5e3 k3e6'),
        (96, 'k5e6 k5e3 k5e3 k5e6'),
        (192, 'k7e6 k5e3 k5e3 k5e3 k7e6'),
    ),
    'dna_c': _dna(
        (24, 'k5e6 k3e6'),
        (40, 'k5e6 k5e6 k3e6 k5e6'),
        (80, 'k5e6 k3e6 k5e6 k5e6'),
        (112, 'k3e6 k5e6 k5e6 k5e3'),
        (192, 'k5e6 k5e3 k5e6 k5e6'),
    ),
    'dna_d': _dna(
        (24, 'k7e6 k5e6 k7e6'),
        (40, 'k7e6 k7e6 k7e6 k7e6'),
        (80, 'k7e6 k5e6 k5e6 k7e6'),
        (112, 'k7e6 k5e6 k7e6 k5e6'),
        (192, 'k7e6 k5e6 k5e6 k5e6 k7e6'),
    ),
    # EfficientNet-B0 lies inside the space: the default of the generic `mbconv` entry point, and a check
    # that the skeleton is timm's (its parameter count equals timm's efficientnet_b0 exactly).
    'mbconv': {
        'family': FAMILY,
        'version': SPEC_VERSION,
        'stem_size': 32,
        'num_features': 1280,
        'stages': [
            ['ds_r1_k3_s1_c16_se0.25'],
            ['ir_r2_k3_s2_e6_c24_se0.25'],
            ['ir_r2_k5_s2_e6_c40_se0.25'],
            ['ir_r3_k3_s2_e6_c80_se0.25'],
            ['ir_r3_k5_s1_e6_c112_se0.25'],
            ['ir_r4_k5_s2_e6_c192_se0.25'],
            ['ir_r1_k3_s1_e6_c320_se0.25'],
        ],
    },
}


def _parse_block(block: Any, field: str) -> tuple[str, dict[str, float]]:
    """Parse and check one arch-def string: ``(block type, {option: value})``, every option within its bounds."""
    if not isinstance(block, str):
        raise SpecError(f'spec field {field!r}: expected an arch-def string like "ir_r1_k3_s2_e6_c24_se0.25"')
    parts = block.split('_')
    kind, opts = parts[0], {}
    if kind not in BLOCK_TYPES:
        raise SpecError(f'spec field {field!r}: block type {kind!r} is not one of the allowed values {BLOCK_TYPES}')
    for tok in parts[1:]:
        m = _TOKEN.match(tok)
        if m is None or m.group(1) in opts:
            raise SpecError(f'spec field {field!r}: cannot parse option {tok!r} (allowed: r, k, s, e, c, se)')
        key, number = m.groups()
        if key == 'se':
            opts[key] = float(number)
        elif '.' in number:
            raise SpecError(f'spec field {field!r}: option {tok!r} must be a whole number in {block!r}')
        elif len(number) > _MAX_DIGITS:  # int() of a huge digit string is slow, and no bound has this many digits
            raise SpecError(
                f'spec field {field!r}: {_NAMES[key]} {tok[:12]}... ({len(number)} digits) is far above its bound '
                f'({_BOUNDS[key]})'
            )
        else:
            opts[key] = int(number)
    need = ('r', 'k', 's', 'c') + (('e',) if kind == 'ir' else ())  # no 'se': no squeeze-excite
    missing = [n for n in need if n not in opts]
    if missing:
        raise SpecError(f'spec field {field!r}: missing option(s) {missing} in {block!r}')
    allowed = {'k': KERNELS, 's': STRIDES, 'se': SE_RATIOS, 'e': EXPANSIONS if kind == 'ir' else (1,)}
    for key, values in allowed.items():
        if key in opts and opts[key] not in values:
            raise SpecError(
                f'spec field {field!r}: {_NAMES[key]} {opts[key]:g} is not one of the allowed values {values} '
                f'of the MBConv space'
            )
    for key, bound in (('r', MAX_STAGE_DEPTH), ('c', MAX_WIDTH)):
        if not 1 <= opts[key] <= bound:
            raise SpecError(
                f'spec field {field!r}: {_NAMES[key]} {key}{opts[key]} must be between 1 and {bound} in {block!r}'
            )
    return kind, opts


def _approx_params(spec: dict) -> int:
    """Weights of the stem, the blocks and the head conv of a validated spec, from the spec alone (no model built).

    Counts conv and SE weights as timm builds them (mid width ``in * e``, SE width ``int(in * se)``); BN, biases
    and the classifier are left out, so it is a slight under-estimate, used to refuse absurd specs before building.
    """
    c_in = spec['stem_size']
    total = 3 * 3 * 3 * c_in
    avg_down = spec.get('shortcut', DEFAULT_SHORTCUT) == 'avg_down'
    for stage in spec['stages']:
        for block in stage:
            kind, o = _parse_block(block, 'stages')
            for _ in range(int(o['r'])):
                mid = c_in * int(o.get('e', 1))
                se = int(c_in * o.get('se', 0))
                total += (c_in * mid if kind == 'ir' else 0) + mid * int(o['k']) ** 2 + 2 * mid * se + mid * int(o['c'])
                if avg_down and kind == 'ir' and c_in != o['c']:
                    total += c_in * int(o['c'])  # the 1x1 conv of the shortcut
                c_in = int(o['c'])
    return total + c_in * spec['num_features']


def validate_spec(spec: Any) -> dict:
    """Validate an ``mbconv`` spec and return a normalised deep copy (raises :class:`SpecError`).

    Every numeric field is bounded (see :data:`MAX_WIDTH` and the constants next to it), and the network's size is
    bounded too (:data:`MAX_PARAMS`), all before anything is allocated.
    """
    optional = tuple(f for f in _OPTIONAL_FIELDS if isinstance(spec, Mapping) and f in spec)
    spec = check_header(spec, FAMILY, SPEC_VERSION, _FIELDS + optional)
    if 'act_layer' in spec:
        check_choice(spec['act_layer'], ACTIVATIONS, 'act_layer')
    if 'shortcut' in spec:
        check_choice(spec['shortcut'], SHORTCUTS, 'shortcut')
    check_int(spec['stem_size'], 'stem_size', minimum=1, maximum=MAX_WIDTH)
    check_int(spec['num_features'], 'num_features', minimum=1, maximum=MAX_NUM_FEATURES)
    stages = check_list(spec['stages'], 'stages', max_length=MAX_STAGES)
    if not stages:
        raise SpecError("spec field 'stages': needs at least one stage")
    spec['stages'] = []
    depth = 0
    for i, stage in enumerate(stages):
        blocks = check_list(stage, f'stages[{i}]', max_length=MAX_STAGE_DEPTH)
        if not blocks:
            raise SpecError(f"spec field 'stages[{i}]': a stage needs at least one block")
        layers = sum(int(_parse_block(b, f'stages[{i}][{j}]')[1]['r']) for j, b in enumerate(blocks))
        if layers > MAX_STAGE_DEPTH:
            raise SpecError(
                f"spec field 'stages[{i}]': {layers} layers (the sum of its blocks' repeats r) must be <= "
                f'{MAX_STAGE_DEPTH}'
            )
        depth += layers
        spec['stages'].append(list(blocks))
    if depth > MAX_DEPTH:
        raise SpecError(f"spec field 'stages': {depth} layers in all must be <= {MAX_DEPTH}")
    params = _approx_params(spec)
    if params > MAX_PARAMS:
        raise SpecError(
            f"spec fields 'stem_size', 'num_features', 'stages': the network would have about {params / 1e6:,.0f}M "
            f'weights, above the bound of {MAX_PARAMS / 1e6:,.0f}M'
        )
    return spec


def _net_kwargs(spec: dict) -> dict:
    return dict(
        block_args=decode_arch_def(spec['stages']),
        stem_size=spec['stem_size'],
        act_layer=spec.get('act_layer', DEFAULT_ACT),
    )


class AvgDownInvertedResidual(InvertedResidual):
    """timm's ``InvertedResidual`` that is residual although it changes stride or width (spec ``shortcut: avg_down``).

    ``shortcut`` is BossNAS's downsample: ``AvgPool2d(2, ceil_mode=True, count_include_pad=False)`` for stride 2,
    then 1x1 conv + BN for a width change (timm's ``downsample_avg``, as ``backbones/hytra.py``); the sum has no
    activation after it and the layer's drop path applies to the residual branch, as in the official code.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # timm's InvertedResidual.forward without its skip (TorchScript allows no super() call; a test compares the
        # two), then the shortcut
        shortcut = self.shortcut(x)
        if self.conv_s2d is not None:
            x = self.bn_s2d(self.conv_s2d(x))
        x = self.bn2(self.conv_dw(self.bn1(self.conv_pw(x))))
        x = self.bn3(self.conv_pwl(self.se(self.aa(x))))
        return self.drop_path(x) + shortcut


def _avg_down(block: InvertedResidual) -> nn.Module:
    in_chs, out_chs = block.conv_pw.in_channels, block.conv_pwl.out_channels
    stride = block.conv_dw.stride[0] * (1 if isinstance(block.aa, nn.Identity) else 2)  # anti-aliasing strides
    if in_chs == out_chs:  # stride 2 at the same width: the pool alone (official MixOps); identity for noskip
        return nn.AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False) if stride > 1 else nn.Identity()
    shortcut = downsample_avg(in_chs, out_chs, kernel_size=1, stride=stride)
    efficientnet_init_weights(shortcut)  # timm's EfficientNet init, as every other conv/BN of the network
    return shortcut


def add_avg_down_shortcuts(blocks: nn.Module) -> nn.Module:
    """Make every non-residual timm ``InvertedResidual`` under ``blocks`` an :class:`AvgDownInvertedResidual`.

    timm's ``EfficientNet`` builds its blocks inside ``__init__`` with a hard-coded ``InvertedResidual``, so the
    layers are converted in place after building (by class assignment, as ``torch.nn.utils.parametrize`` does):
    nothing is rebuilt, every timm weight keeps its name and a ``shortcut`` module is added. Returns ``blocks``.
    """
    for module in list(blocks.modules()):
        if type(module) is InvertedResidual and not module.has_skip:
            module.shortcut = _avg_down(module)
            module.__class__ = AvgDownInvertedResidual
    return blocks


class MBConvNet(EfficientNet):
    """timm ``EfficientNet`` built from a validated ``mbconv`` spec; keeps the spec as ``self.spec``."""

    def __init__(self, spec: dict, **kwargs: Any) -> None:
        spec = validate_spec(spec)
        super().__init__(num_features=spec['num_features'], **_net_kwargs(spec), **kwargs)
        if spec.get('shortcut', DEFAULT_SHORTCUT) == 'avg_down':
            add_avg_down_shortcuts(self.blocks)
        self.spec = spec


class MBConvNetFeatures(EfficientNetFeatures):
    """timm ``EfficientNetFeatures`` (``features_only=True``) built from an ``mbconv`` spec."""

    def __init__(self, spec: dict, **kwargs: Any) -> None:
        spec = validate_spec(spec)
        super().__init__(**_net_kwargs(spec), **kwargs)
        if spec.get('shortcut', DEFAULT_SHORTCUT) == 'avg_down':
            add_avg_down_shortcuts(self.blocks)
        self.spec = spec


def _features_model(variant: str, pretrained: bool, spec: dict, kwargs: dict) -> nn.Module:
    """timm's ``EfficientNetFeatures`` (no head, no dropout) for ``features_only`` without a timm wrapper."""
    kwargs.pop('drop_rate')
    model = build_model_with_cfg(
        MBConvNetFeatures,
        variant,
        pretrained,
        pretrained_strict=False,
        kwargs_filter=('num_classes', 'num_features', 'head_conv', 'global_pool'),
        spec=spec,
        **kwargs,
    )
    model.pretrained_cfg = model.default_cfg = pretrained_cfg_for_features(model.pretrained_cfg)
    return model


# features_only: timm's EfficientNetFeatures, unless timm's generic wrappers are asked for (e.g. 'fx'), as timm does
_create = FamilyBuilder(
    MBConvNet,
    SPECS,
    validate_spec,
    NUM_FEATURE_LEVELS,
    defaults={'drop_rate': 0.2, 'drop_path_rate': 0.2},
    features_builder=_features_model,
)


def build(spec: dict, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Build any ``mbconv`` spec (``timm.create_model('mbconv', spec=spec)``)."""
    return _create('mbconv', pretrained=pretrained, spec=spec, **kwargs)


def _cfg(name: str, **kwargs: Any) -> dict:
    return {
        'hf_hub_id': hub_id(name),
        'num_classes': 1000,
        'input_size': (3, 224, 224),
        'pool_size': (7, 7),
        'crop_pct': 0.875,
        'interpolation': 'bicubic',
        'mean': IMAGENET_DEFAULT_MEAN,
        'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'conv_stem',
        'classifier': 'classifier',
        'license': 'unknown',
        'paper_ids': 'arXiv:2403.01326',
        'paper_name': 'DNA Family: Boosting Weight-Sharing NAS with Block-Wise Supervisions',
        'origin_url': 'https://github.com/changlin31/DNA',
        'notes': (
            'Architecture from the official retraining/model.py; weights converted from the official release '
            '(the DNA repository ships no license file).',
        ),
        **kwargs,
    }


default_cfgs = generate_default_cfgs(
    {
        'dna_a.official_in1k': _cfg('dna_a'),
        'dna_b.official_in1k': _cfg('dna_b'),
        'dna_c.official_in1k': _cfg('dna_c'),
        'dna_d.official_in1k': _cfg('dna_d'),
        'mbconv': _cfg('mbconv', hf_hub_id=None, notes=('Generic DNA MBConv space; pass spec=...',)),
    }
)


@register_model
def dna_a(pretrained: bool = False, **kwargs: Any) -> MBConvNet:
    """DNA-a (4.2M params, 348M FLOPs, 77.1% top-1; paper Table 2). Constraint: 350M FLOPs."""
    return _create('dna_a', pretrained, **kwargs)


@register_model
def dna_b(pretrained: bool = False, **kwargs: Any) -> MBConvNet:
    """DNA-b (4.9M params, 406M FLOPs, 77.5% top-1; paper Table 2)."""
    return _create('dna_b', pretrained, **kwargs)


@register_model
def dna_c(pretrained: bool = False, **kwargs: Any) -> MBConvNet:
    """DNA-c (5.3M params, 466M FLOPs, 77.8% top-1; paper Table 2). Constraint: 5.3M params."""
    return _create('dna_c', pretrained, **kwargs)


@register_model
def dna_d(pretrained: bool = False, **kwargs: Any) -> MBConvNet:
    """DNA-d (6.4M params, 611M FLOPs, 78.4% top-1; paper Table 2). Unconstrained."""
    return _create('dna_d', pretrained, **kwargs)


@register_model
def mbconv(pretrained: bool = False, spec: dict | None = None, **kwargs: Any) -> MBConvNet:
    """Any network of the DNA MBConv space, from ``spec``; without one, EfficientNet-B0's layout."""
    return _create('mbconv', pretrained, spec=spec, **kwargs)
