"""Pi-NAS-cls and Pi-NAS-trans: per-layer split-attention choices on a ResNeSt-50-D skeleton, as timm models.

Paper: "Pi-NAS: Improving Neural Architecture Search by Reducing Supernet Training Consistency Shift"
(arXiv 2108.09671). Official code: github.com/Ernie1/Pi-NAS (commit 203b832), ``alone_resnest50`` and
``super_resnest.py``.

The skeleton is timm's ResNeSt-50-D (``resnest50d``): deep stem of width 32, avg-pool downsample shortcuts,
"avd" (3x3 avg-pool after the split-attention conv in stride-2 blocks, ``avd_first=False``), stages [3, 4, 6, 3].
Each of the 16 bottlenecks picks one of four candidate blocks (paper section 4.1), written
``{radix}s{cardinality}x{width}d``:

====  ==========  =====  ===========  ==========
idx   name        radix  cardinality  base width
====  ==========  =====  ===========  ==========
0     1s1x64d     1      1            64
1     2s1x64d     2      1            64   (the ResNeSt-50 block)
2     1s2x42d     1      2            42
3     2s2x40d     2      2            40
====  ==========  =====  ===========  ==========

The blocks are timm's ``ResNestBottleneck`` with timm's ``SplitAttn``. One decision follows the official code:
the attention bottleneck width is ``max(group_width * radix // 4, 32)`` (the original ResNeSt rule), whereas
timm rounds it to a multiple of 8. The two differ only for block 2 in stages 2 and 3 (42 vs 40, 84 vs 88);
there the split-attention module is built with the official width, so parameter counts and state-dict shapes
are those of the released weights (Pi-NAS-cls 27.05M, Pi-NAS-trans 27.04M). With all-block-1 choices the
network is exactly timm's ``resnest50d``.

Spec (family ``resnest``, version 1)::

    {"family": "resnest", "version": 1, "choices": [3, 0, 1, 3, 2, 3, 1, 2, 0, 3, 2, 1, 3, 0, 3, 2]}

Optional fields (absent = the paper's values; used by the reduced ``pinas_tiny`` search space, tests and CPU demos):
``stem_width`` (32: deep stem 3 -> w -> w -> 2w), ``channels`` (bottleneck widths of the four stages, [64, 128, 256,
512]; outputs are 4x) and ``layers`` (blocks per stage, [3, 4, 6, 3]); ``choices`` then has ``sum(layers)``
entries. The catalog specs have none of them, so their models, parameter counts and state-dict keys are unchanged.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import SplitAttn
from timm.models import generate_default_cfgs, register_model
from timm.models.resnest import ResNestBottleneck
from timm.models.resnet import ResNet

from ._builder import FamilyBuilder
from ._pretrained import hub_id
from ._spec import SpecError, check_choice, check_header, check_int, check_list

__all__ = [
    'CANDIDATES',
    'DEFAULTS',
    'FAMILY',
    'SPECS',
    'SPEC_VERSION',
    'ResNestNAS',
    'build',
    'option',
    'validate_spec',
]

FAMILY = 'resnest'
SPEC_VERSION = 1
LAYERS = (3, 4, 6, 3)
NUM_CHOICES = sum(LAYERS)
NUM_FEATURE_LEVELS = 5  # stem (stride 2) and the four stages (strides 4, 8, 16, 32)

# (radix, cardinality, base_width) of the four candidate blocks (paper section 4.1, official candidate_args).
CANDIDATES: tuple[tuple[int, int, int], ...] = ((1, 1, 64), (2, 1, 64), (1, 2, 42), (2, 2, 40))
#: optional spec fields and their values when absent (the paper's ResNeSt-50-D skeleton)
DEFAULTS: dict[str, Any] = {'stem_width': 32, 'channels': [64, 128, 256, 512], 'layers': list(LAYERS)}
MAX_STEM_WIDTH = 128  # 4x the official stem
MAX_CHANNELS = 1024  # 2x the official widest stage
MAX_LAYERS = 8  # blocks per stage


def _spec(choices: str) -> dict:
    return {'family': FAMILY, 'version': SPEC_VERSION, 'choices': [int(c) for c in choices.split()]}


SPECS: dict[str, dict] = {
    'pinas_cls': _spec('3 0 1 3 2 3 1 2 0 3 2 1 3 0 3 2'),  # Pi-NAS-alpha, README verify.py command
    'pinas_trans': _spec('3 3 3 3 1 1 3 3 3 0 0 1 1 0 2 1'),  # Pi-NAS-gamma, README det/seg commands
    'resnest_nas': _spec(' '.join(['1'] * NUM_CHOICES)),  # all block 1 == ResNeSt-50-D
}


def validate_spec(spec: Any) -> dict:
    """Validate a ``resnest`` spec and return a normalised deep copy (raises :class:`SpecError`)."""
    optional = tuple(f for f in DEFAULTS if isinstance(spec, Mapping) and f in spec)
    spec = check_header(spec, FAMILY, SPEC_VERSION, ('choices', *optional))
    if 'stem_width' in spec:
        check_int(spec['stem_width'], 'stem_width', minimum=1, maximum=MAX_STEM_WIDTH)
    for name, high in (('channels', MAX_CHANNELS), ('layers', MAX_LAYERS)):
        if name in spec:
            values = check_list(spec[name], name, length=len(LAYERS))
            spec[name] = [check_int(v, f'{name}[{i}]', minimum=1, maximum=high) for i, v in enumerate(values)]
    for i, planes in enumerate(spec.get('channels', ())):
        _check_group_widths(planes, f'channels[{i}]')
    num_choices = sum(option(spec, 'layers'))
    choices = check_list(spec['choices'], 'choices')
    if len(choices) != num_choices:
        why = '' if 'layers' not in spec else f' (the sum of layers {spec["layers"]})'
        raise SpecError(f"spec field 'choices': expected {num_choices} entries{why}, got {len(choices)}")
    spec['choices'] = [check_choice(c, range(len(CANDIDATES)), f'choices[{i}]') for i, c in enumerate(choices)]
    return spec


def _check_group_widths(planes: int, field: str) -> None:
    """Every candidate's group width ``int(planes * width / 64) * cardinality`` must be positive and split into its
    ``cardinality * radix`` conv groups (the 3x3 split-attention conv), or the block cannot be built."""
    for idx, (radix, cardinality, base_width) in enumerate(CANDIDATES):
        group_width = int(planes * base_width / 64) * cardinality
        if group_width < 1 or group_width % (cardinality * radix):
            raise SpecError(
                f'spec field {field!r}: {planes} gives candidate {idx} ({radix}s{cardinality}x{base_width}d) the group '
                f'width {group_width}, which is not a positive multiple of its {cardinality * radix} conv groups'
            )


def option(spec: dict, field: str) -> Any:
    """An optional field of a validated spec, or its default."""
    return spec.get(field, DEFAULTS[field])


class _ChosenBlock:
    """Block factory for one stage: the i-th call builds the bottleneck of the i-th layer's choice.

    timm's ``make_blocks`` builds a stage by calling its block class once per layer, in order, with the right
    stride, shortcut, dilation and drop-path; this factory stands in for the class so that all of that stays
    timm's while each layer gets its own radix / cardinality / width.
    """

    expansion = ResNestBottleneck.expansion

    def __init__(self, choices: list[int]) -> None:
        self.choices = choices
        self.calls = 0

    def __call__(self, inplanes: int, planes: int, *args: Any, **kwargs: Any) -> ResNestBottleneck:
        radix, cardinality, base_width = CANDIDATES[self.choices[self.calls]]
        self.calls += 1
        kwargs.update(radix=radix, cardinality=cardinality, base_width=base_width)
        block = ResNestBottleneck(inplanes, planes, *args, **kwargs)
        split = block.conv2
        group_width = split.conv.in_channels
        official_rd = max(group_width * radix // 4, 32)
        if split.fc1.out_channels != official_rd:
            dd = {'device': split.conv.weight.device, 'dtype': split.conv.weight.dtype}
            block.conv2 = SplitAttn(
                group_width,
                group_width,
                kernel_size=3,
                stride=split.conv.stride[0],
                padding=split.conv.padding[0],
                dilation=split.conv.dilation[0],
                groups=cardinality,
                radix=radix,
                rd_channels=official_rd,
                norm_layer=kwargs['norm_layer'],
                drop_layer=kwargs.get('drop_block'),
                **dd,
            )
        return block


class ResNestNAS(ResNet):
    """timm ``ResNet`` (ResNeSt-50-D skeleton) with per-layer candidate blocks from a ``resnest`` spec."""

    def __init__(self, spec: dict, **kwargs: Any) -> None:
        spec = validate_spec(spec)
        layers = tuple(option(spec, 'layers'))
        bounds = [sum(layers[:i]) for i in range(len(layers) + 1)]
        blocks = tuple(_ChosenBlock(spec['choices'][a:b]) for a, b in itertools.pairwise(bounds))
        super().__init__(
            block=blocks,
            layers=layers,
            stem_type='deep',
            stem_width=option(spec, 'stem_width'),
            channels=tuple(option(spec, 'channels')),
            avg_down=True,
            block_args=dict(avd=True, avd_first=False),
            **kwargs,
        )
        self.spec = spec


_create = FamilyBuilder(ResNestNAS, SPECS, validate_spec, NUM_FEATURE_LEVELS)


def build(spec: dict, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Build any ``resnest`` spec (``timm.create_model('resnest_nas', spec=spec)``)."""
    return _create('resnest_nas', pretrained=pretrained, spec=spec, **kwargs)


def _cfg(name: str, tag: str = 'official_in1k', **kwargs: Any) -> dict:
    return {
        'hf_hub_id': hub_id(name, tag),
        'num_classes': 1000,
        'input_size': (3, 224, 224),
        'pool_size': (7, 7),
        'crop_pct': 0.875,
        'interpolation': 'bicubic',
        'mean': IMAGENET_DEFAULT_MEAN,
        'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'conv1.0',
        'classifier': 'fc',
        'license': 'mit',
        'paper_ids': 'arXiv:2108.09671',
        'paper_name': 'Pi-NAS: Improving Neural Architecture Search by Reducing Supernet Training Consistency Shift',
        'origin_url': 'https://github.com/Ernie1/Pi-NAS',
        **kwargs,
    }


default_cfgs = generate_default_cfgs(
    {
        'pinas_cls.official_in1k': _cfg(
            'pinas_cls', notes=('Pi-NAS-alpha; weights from the official PiNAS_cls release',)
        ),
        # The official release has no ImageNet checkpoint for Pi-NAS-trans (only COCO/ADE20K/Cityscapes fine-tunes).
        'pinas_trans.in1k': _cfg(
            'pinas_trans',
            'in1k',
            notes=('Pi-NAS-gamma; the authors released no ImageNet checkpoint, so these weights are trained by us',),
        ),
        'resnest_nas': _cfg('resnest_nas', hf_hub_id=None, notes=('Generic Pi-NAS space; pass spec=...',)),
    }
)


@register_model
def pinas_cls(pretrained: bool = False, **kwargs: Any) -> ResNestNAS:
    """Pi-NAS-cls (= alpha): 27.1M params, 5.38G FLOPs, 81.6% top-1 (paper Table 2)."""
    return _create('pinas_cls', pretrained, **kwargs)


@register_model
def pinas_trans(pretrained: bool = False, **kwargs: Any) -> ResNestNAS:
    """Pi-NAS-trans (= gamma): 27.0M params, 5.30G FLOPs, 81.1% top-1 (paper Table 1)."""
    return _create('pinas_trans', pretrained, **kwargs)


@register_model
def resnest_nas(pretrained: bool = False, spec: dict | None = None, **kwargs: Any) -> ResNestNAS:
    """Any network of the Pi-NAS ResNeSt space, from ``spec``; without one, ResNeSt-50-D (all block 1)."""
    return _create('resnest_nas', pretrained, spec=spec, **kwargs)
