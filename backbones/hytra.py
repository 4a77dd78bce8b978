"""BossNet-T0 / T1: hybrid CNN-transformers found by BossNAS in the HyTra search space, as timm models.

Paper: "BossNAS: Exploring Hybrid CNN-transformers with Block-wisely Self-supervised Neural Architecture Search"
(arXiv 2103.12424v3, ICCV 2021), section 4 and App. A.2. Module definitions follow the official retraining code,
github.com/changlin31/BossNAS at commit bb8b26a (``retraining_hytra/boss_models.py`` and
``boss_candidates/{resnet_op,bot_op}.py``), which is what the released checkpoints were trained with.

Structure (ResNet-50 skeleton with 16 choice layers over four scales):

* Stem: 7x7/2 conv (64, no bias), BN, act, 3x3/2 max-pool (the classic ResNet stem, 1/4 resolution).
* ``layer1..layer4`` hold the layers at 1/4, 1/8, 1/16, 1/32 (out channels 256/512/1024/2048, bottleneck
  width 64/128/256/512). The first layer of stages 2-4 halves the resolution (stage 4 keeps it if
  ``last_stride`` is 1, the BoTNet-S1 scheme of BossNet-T1).
* ``conv`` = ResConv: 1x1 -> PEG -> BN -> act -> 3x3 -> BN -> act -> 1x1 -> BN (zero-init) -> [SE] -> [DropPath]
  -> + shortcut -> act. PEG is a depthwise 3x3 conv with bias: the implicit position encoding, and it carries the
  layer's stride (not the 3x3 conv).
* ``att`` = ResAtt: 1x1 -> PEG -> BN -> act -> global multi-head self-attention (one 1x1 qkv conv, no bias,
  head dim 64; 4 heads in stage 3, 8 in stage 4) -> BN -> act -> 1x1 -> BN (zero-init) -> + shortcut -> act.
  No SE and no DropPath on ResAtt, no position bias (the PEG is the only position encoding).
* Shortcuts are ResNet-D: ``AvgPool2d(2, stride, ceil_mode, count_include_pad=False)`` (identity for stride 1),
  1x1 conv, BN, no activation; used when the stride or the width changes.
* SE (``se: true``): timm ``SEModule`` (C -> C/16, ReLU, -> C, sigmoid) on ResConv only, whatever ``act`` is.
* Stochastic depth on ResConv only, rate ``drop_path_rate * i / 15`` for the i-th of the 16 layers.
* Head: global average pool -> dropout (``drop_rate``) -> linear.

Attention is standard: ``out_i = sum_j softmax_j(q_i . k_j / 8) v_j`` over all H*W tokens, computed with
``F.scaled_dot_product_attention`` (the supernet code normalised over the wrong index; the retraining code and the
released weights use this form, see docs/hytra.md).

Spec (family ``hytra``, version 1): the ops of the 16 layers grouped by scale, plus activation, SE, last stride::

    {"family": "hytra", "version": 1,
     "stages": [["conv"], ["conv"], ["conv", "conv", "conv", "att", "conv"],
                ["att", "att", "att", "conv", "att", "att", "att", "att", "att"]],
     "act": "silu", "se": true, "last_stride": 2}

``stages[k]`` lists the layers at scale 1/2^(k+2); each op is ``"conv"`` (ResConv) or ``"att"`` (ResAtt). Rules of
the space (App. A.2): 16 layers in total; ``att`` only in stages 3 and 4 (1/16, 1/32); each layer keeps or halves
the resolution, so an empty stage may only lead (the input is pre-downsampled before the first layer) or trail (the
path never reaches the last scale). An empty stage 1 is an identity (features stay at 64 channels, 1/4); any other
empty stage is a 3x3 conv (stride of the stage) + BN + act, the official module for empty stages.
``act`` is ``"relu"`` or ``"silu"`` (stem and blocks), ``se`` a bool, ``last_stride`` 1 or 2.

Optional fields (absent = the official values; the HyTra search space, ``search/spaces/hytra.py``, emits them so
that a path of its supernet is exactly the network of its spec):

* ``stem_down``: how the stem output reaches the first layer. ``"conv"`` (default): as above, the retraining code's
  modules. ``"dw"``: the supernet's per-scale downsampler (``stem_down`` module: depthwise conv with kernel =
  stride = 2^k, 1x1 conv to the first stage's bottleneck width, BN; k = 0 at 1/4), after which the first layer
  runs at stride 1 on that width; leading empty stages are then identities.
* ``empty_tail``: trailing empty stages. ``"conv"`` (default): the 3x3 conv + BN + act above. ``"identity"``: the
  network ends at its last layer's scale, as a supernet path does.
* ``stem_width`` (64), ``widths`` (bottleneck widths of the four stages, [64, 128, 256, 512]) and ``dim_head`` (64):
  reduced-width variants (tests, CPU demos). Attention has ``widths[k] / dim_head`` heads in stages 3 and 4.

MAdds (``paper_madds``) follow the official ``boss_madds.py`` rule: multiply-accumulates of convolutions (PEG
included), linear layers and both attention products (q.k logits and attention x v); no BN, activation,
pooling, softmax or bias terms. That is ``torch.utils.flop_counter.FlopCounterMode`` flops / 2, once the counter
is taught the CPU SDPA kernel, which it does not count by itself.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, SEModule, create_act_layer, create_classifier
from timm.models import generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint_seq
from timm.models.resnet import downsample_avg

from ._builder import FamilyBuilder
from ._flops import count_macs
from ._pretrained import hub_id
from ._spec import SpecError, check_choice, check_header, check_int, check_list

__all__ = [
    'FAMILY',
    'NUM_FEATURE_LEVELS',
    'PEG',
    'SPECS',
    'SPEC_VERSION',
    'Attention',
    'HyTraNet',
    'InputBranch',
    'ResAtt',
    'ResConv',
    'build',
    'option',
    'paper_madds',
    'validate_spec',
]

FAMILY = 'hytra'
SPEC_VERSION = 1
NUM_FEATURE_LEVELS = 4  # the four stage outputs (strides 4, 8, 16, 32; 4, 8, 16, 16 with last_stride 1)

NUM_LAYERS = 16  # choice layers of the space (App. A.2, "the same as ResNet50")
OPS = ('conv', 'att')
ATT_STAGES = (2, 3)  # ResAtt only at 1/16 and 1/32
ACTS = ('relu', 'silu')
LAST_STRIDES = (2, 1)
STEM_WIDTH = 64
STAGE_WIDTHS = (64, 128, 256, 512)  # bottleneck widths; stage outputs are 4x
STEM_DOWNS = ('conv', 'dw')  # retraining modules (default) / the supernet's per-scale downsampler
EMPTY_TAILS = ('conv', 'identity')  # trailing empty stages: official 3x3 conv (default) / nothing
MAX_STEM_WIDTH = 256
MAX_WIDTH = 1024  # 2x the official widest stage: about 150M weights at the bound
#: optional spec fields and their values when absent
DEFAULTS: dict[str, Any] = {
    'stem_down': 'conv',
    'empty_tail': 'conv',
    'stem_width': STEM_WIDTH,
    'widths': list(STAGE_WIDTHS),
    'dim_head': 64,
}
EXPANSION = 4
DIM_HEAD = 64  # heads = bottleneck width / 64: 4 at 1/16, 8 at 1/32 (official)


def _spec(stages: str, act: str = 'silu', se: bool = True, last_stride: int = 2) -> dict:
    """A spec from a compact string: stages separated by '|', layers by spaces, 'c' = conv, 'a' = att."""
    ops = {'c': 'conv', 'a': 'att'}
    return {
        'family': FAMILY,
        'version': SPEC_VERSION,
        'stages': [[ops[o] for o in s.split()] for s in stages.split('|')],
        'act': act,
        'se': se,
        'last_stride': last_stride,
    }


_T0 = 'c | c | c c c a c | a a a c a a a a a'  # official encoding [[1], [1], [1, 1, 1, 0, 1], [0, 0, 0, 1, 0 x 5]]

SPECS: dict[str, dict] = {
    'bossnet_t0': _spec(_T0),
    'bossnet_t0_nose': _spec(_T0, act='relu', se=False),
    'bossnet_t1': _spec(_T0, last_stride=1),
    'hytra': _spec(_T0),
}


def validate_spec(spec: Any) -> dict:
    """Validate a ``hytra`` spec against the HyTra space's rules; returns a normalised deep copy.

    Raises one :class:`SpecError` naming the offending field and the values it may take.
    """
    optional = tuple(f for f in DEFAULTS if isinstance(spec, Mapping) and f in spec)
    spec = check_header(spec, FAMILY, SPEC_VERSION, ('stages', 'act', 'se', 'last_stride', *optional))
    stages = check_list(spec['stages'], 'stages', length=len(STAGE_WIDTHS))
    out = []
    for i, stage in enumerate(stages):
        ops = check_list(stage, f'stages[{i}]', max_length=NUM_LAYERS)
        for j, op in enumerate(ops):
            allowed = OPS if i in ATT_STAGES else ('conv',)
            if op not in allowed or not isinstance(op, str):
                why = '' if op in OPS else ' (conv = ResConv, att = ResAtt)'
                if op == 'att':
                    why = f' (ResAtt is only allowed at 1/16 and 1/32, stages[{ATT_STAGES[0]}] and stages[3])'
                raise SpecError(
                    f'spec field {f"stages[{i}][{j}]"!r}: {op!r} is not one of the allowed values {allowed}{why}'
                )
        out.append(list(ops))
    num_layers = sum(len(s) for s in out)
    if num_layers != NUM_LAYERS:
        raise SpecError(f"spec field 'stages': the HyTra space has {NUM_LAYERS} choice layers, got {num_layers}")
    used = [i for i, s in enumerate(out) if s]
    for i in range(used[0], used[-1] + 1):
        if not out[i]:
            raise SpecError(
                f"spec field 'stages[{i}]': an empty stage between non-empty stages is a 4x resolution jump; "
                'each layer keeps or halves the resolution, so only leading or trailing stages may be empty'
            )
    spec['stages'] = out
    check_choice(spec['act'], ACTS, 'act')
    if not isinstance(spec['se'], bool):
        raise SpecError(f"spec field 'se': {spec['se']!r} is not one of the allowed values (False, True)")
    check_choice(spec['last_stride'], LAST_STRIDES, 'last_stride')
    _check_optional(spec)
    return spec


def _check_optional(spec: dict) -> None:
    """Validate the optional fields (see the module docstring) in place."""
    if 'stem_down' in spec:
        check_choice(spec['stem_down'], STEM_DOWNS, 'stem_down')
    if 'empty_tail' in spec:
        check_choice(spec['empty_tail'], EMPTY_TAILS, 'empty_tail')
    if 'stem_width' in spec:
        check_int(spec['stem_width'], 'stem_width', minimum=1, maximum=MAX_STEM_WIDTH)
    if 'widths' in spec:
        widths = check_list(spec['widths'], 'widths', length=len(STAGE_WIDTHS))
        spec['widths'] = [check_int(w, f'widths[{i}]', minimum=1, maximum=MAX_WIDTH) for i, w in enumerate(widths)]
    if 'dim_head' in spec:
        check_int(spec['dim_head'], 'dim_head', minimum=1, maximum=MAX_WIDTH)
    widths, dim_head = option(spec, 'widths'), option(spec, 'dim_head')
    for i in ATT_STAGES:
        if widths[i] % dim_head:
            raise SpecError(
                f"spec field 'dim_head': {dim_head} does not divide widths[{i}] = {widths[i]} (attention in stage "
                f'{i + 1} has widths[{i}] / dim_head heads)'
            )


def option(spec: dict, field: str) -> Any:
    """An optional field of a validated spec, or its default."""
    return spec.get(field, DEFAULTS[field])


class PEG(nn.Module):
    """Depthwise 3x3 conv with bias: the implicit position encoding of both blocks, and where they downsample."""

    def __init__(self, dim: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, kernel_size=3, stride=stride, padding=1, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _shortcut(in_chs: int, out_chs: int, stride: int) -> nn.Module:
    """ResNet-D shortcut (avg-pool, 1x1 conv, BN, no act) where stride or width change, else identity."""
    if stride == 1 and in_chs == out_chs:
        return nn.Identity()
    return downsample_avg(in_chs, out_chs, kernel_size=1, stride=stride)


def _input_side(in_chs: int, dim: int, out_chs: int, stride: int) -> tuple[nn.Module, ...]:
    """(shortcut, 1x1 conv, PEG, BN): the part of a layer that depends on its input's width and stride."""
    shortcut = _shortcut(in_chs, out_chs, stride)
    conv1 = nn.Conv2d(in_chs, dim, kernel_size=1, bias=False)
    return shortcut, conv1, PEG(dim, stride), nn.BatchNorm2d(dim)


class InputBranch(nn.Module):
    """The input side of a ResConv / ResAtt (shortcut, 1x1 conv, PEG, first BN) for another input width or stride.

    The HyTra supernet gives each candidate a same-scale input (the block's own modules) and a halving input (one
    of these, stride 2) and shares everything after the first BN; ``forward`` returns what the block's
    ``forward_body`` takes, so either input runs the block's own code.
    """

    def __init__(self, in_chs: int, dim: int, out_chs: int, stride: int = 1) -> None:
        super().__init__()
        self.downsample, self.conv1, self.peg, self.bn1 = _input_side(in_chs, dim, out_chs, stride)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.bn1(self.peg(self.conv1(x))), self.downsample(x)


class ResConv(nn.Module):
    """ResNet bottleneck whose stride and position encoding sit in a PEG after the first 1x1 conv."""

    def __init__(
        self,
        in_chs: int,
        width: int,
        stride: int = 1,
        act_layer: str = 'relu',
        se: bool = False,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        out_chs = width * EXPANSION
        self.downsample, self.conv1, self.peg, self.bn1 = _input_side(in_chs, width, out_chs, stride)
        self.act1 = create_act_layer(act_layer, inplace=True)
        self.conv2 = nn.Conv2d(width, width, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.act2 = create_act_layer(act_layer, inplace=True)
        self.conv3 = nn.Conv2d(width, out_chs, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_chs)
        self.se = SEModule(out_chs) if se else nn.Identity()
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.act3 = create_act_layer(act_layer, inplace=True)

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_body(self.bn1(self.peg(self.conv1(x))), self.downsample(x))

    def forward_body(self, x: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
        """Everything after the first BN (``x``), with the shortcut's output."""
        x = self.act1(x)
        x = self.act2(self.bn2(self.conv2(x)))
        x = self.se(self.bn3(self.conv3(x)))
        return self.act3(self.drop_path(x) + shortcut)


class Attention(nn.Module):
    """Global multi-head self-attention on a feature map, one 1x1 qkv conv, no position bias.

    Channels of the qkv conv are laid out [q | k | v], each ``heads x dim_head`` (head-major), as in the official
    ``to_qkv``; the output is ``softmax(q k^T / sqrt(dim_head)) v`` per head, reshaped back to the map.
    """

    def __init__(self, dim: int, heads: int, dim_head: int = DIM_HEAD) -> None:
        super().__init__()
        self.heads = heads
        self.dim_head = dim_head
        self.qkv = nn.Conv2d(dim, 3 * heads * dim_head, kernel_size=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, H, W = x.shape
        # Token-major view (B, N, 3, heads, dim_head): free for channels_last maps, one copy for NCHW. q, k, v
        # then have a unit stride on the head dim, which the fused SDPA kernels need (else the math path runs).
        qkv = self.qkv(x).permute(0, 2, 3, 1).reshape(B, H * W, 3, self.heads, self.dim_head)
        q, k, v = qkv.transpose(1, 3).unbind(2)  # each (B, heads, N, dim_head)
        x = F.scaled_dot_product_attention(q, k, v)
        # back to a (B, C, H, W) map stored channels-last, the layout the following BN/1x1 conv prefer on GPUs
        return x.transpose(1, 2).reshape(B, H, W, self.heads * self.dim_head).permute(0, 3, 1, 2)


class ResAtt(nn.Module):
    """Bottleneck transformer block: 1x1 -> PEG -> BN -> act -> MHSA -> BN -> act -> 1x1 -> BN, + shortcut, act."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        heads: int,
        stride: int = 1,
        act_layer: str = 'relu',
        dim_head: int = DIM_HEAD,
    ) -> None:
        super().__init__()
        dim = heads * dim_head
        self.downsample, self.conv1, self.peg, self.bn1 = _input_side(in_chs, dim, out_chs, stride)
        self.act1 = create_act_layer(act_layer, inplace=True)
        self.attn = Attention(dim, heads, dim_head)
        self.bn2 = nn.BatchNorm2d(dim)
        self.act2 = create_act_layer(act_layer, inplace=True)
        self.conv3 = nn.Conv2d(dim, out_chs, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_chs)
        self.act3 = create_act_layer(act_layer, inplace=True)

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_body(self.bn1(self.peg(self.conv1(x))), self.downsample(x))

    def forward_body(self, x: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
        """Everything after the first BN (``x``), with the shortcut's output."""
        x = self.act2(self.bn2(self.attn(self.act1(x))))
        x = self.bn3(self.conv3(x))
        return self.act3(x + shortcut)


class HyTraNet(nn.Module):
    """A network of the HyTra space (BossNet-T0/T1 and any valid ``hytra`` spec) with timm's model contract."""

    __jit_unused_properties__ = ['stages']  # a list of modules TorchScript cannot type; forward does not use it

    def __init__(
        self,
        spec: dict,
        num_classes: int = 1000,
        in_chans: int = 3,
        global_pool: str = 'avg',
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        zero_init_last: bool = True,
    ) -> None:
        super().__init__()
        spec = validate_spec(spec)
        self.spec = spec
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.drop_path_rate = drop_path_rate
        self.grad_checkpointing = False
        act = spec['act']

        stem_width, widths, dim_head = option(spec, 'stem_width'), option(spec, 'widths'), option(spec, 'dim_head')
        self.conv1 = nn.Conv2d(in_chans, stem_width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.act1 = create_act_layer(act, inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

        used = [i for i, ops in enumerate(spec['stages']) if ops]
        first, last = used[0], used[-1]
        strides = (1, 2, 2, spec['last_stride'])
        in_chs, reduction, layer_idx = stem_width, 4, 0
        dw_down = option(spec, 'stem_down') == 'dw'
        self.stem_down: nn.Module = nn.Identity()
        if dw_down:  # the supernet's downsampler from the stem straight to the first layer's scale and width
            down = math.prod(strides[: first + 1])
            self.stem_down = nn.Sequential(
                nn.Conv2d(stem_width, stem_width, kernel_size=down, stride=down, groups=stem_width, bias=False),
                nn.Conv2d(stem_width, widths[first], kernel_size=1, bias=False),
                nn.BatchNorm2d(widths[first]),
            )
            in_chs, reduction = widths[first], 4 * down
        tail_identity = option(spec, 'empty_tail') == 'identity'
        self.feature_info: list[dict] = []
        for i, (ops, width) in enumerate(zip(spec['stages'], widths, strict=True)):
            stride = 1 if dw_down and i <= first else strides[i]
            out_chs = width * EXPANSION
            blocks: list[nn.Module] = []
            if ops:
                for j, op in enumerate(ops):
                    s = stride if j == 0 else 1
                    if op == 'att':
                        heads = width // dim_head
                        blocks.append(ResAtt(in_chs, out_chs, heads, stride=s, act_layer=act, dim_head=dim_head))
                    else:
                        dpr = drop_path_rate * layer_idx / (NUM_LAYERS - 1)
                        blocks.append(ResConv(in_chs, width, stride=s, act_layer=act, se=spec['se'], drop_path=dpr))
                    in_chs = out_chs
                    layer_idx += 1
            elif i > 0 and not (dw_down and i < first) and not (tail_identity and i > last):
                # an empty stage after the first: one 3x3 conv + BN + act (official module)
                blocks.append(
                    nn.Sequential(
                        nn.Conv2d(in_chs, out_chs, kernel_size=3, stride=stride, padding=1, bias=False),
                        nn.BatchNorm2d(out_chs),
                        create_act_layer(act, inplace=True),
                    )
                )
                in_chs = out_chs
            else:  # an identity: an empty first stage, one before the downsampler's scale, or a trailing one
                stride = 1
            reduction *= stride
            self.add_module(f'layer{i + 1}', nn.Sequential(*blocks))
            self.feature_info.append(dict(num_chs=in_chs, reduction=reduction, module=f'layer{i + 1}'))

        self.num_features = self.head_hidden_size = in_chs
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=global_pool)
        self.init_weights(zero_init_last=zero_init_last)

    def init_weights(self, zero_init_last: bool = True) -> None:
        """Official init: kaiming-normal (fan_out) convs, unit BN, zero gamma on each block's last BN."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_last:
            for m in self.modules():
                if hasattr(m, 'zero_init_last'):
                    m.zero_init_last()

    @property
    def stages(self) -> list[nn.Module]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, str]:
        return dict(stem=r'^(conv1|bn1|maxpool|stem_down)', blocks=r'^layer(\d+)' if coarse else r'^layer(\d+)\.(\d+)')

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self, name_only: bool = False) -> str | nn.Module:
        return 'fc' if name_only else self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        if global_pool is None:
            global_pool = self.global_pool.pool_type
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=global_pool)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = 'NCHW',
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Stage outputs at ``indices`` (0..3 = layer1..layer4); there is no final norm, so ``norm`` is a no-op."""
        assert output_fmt == 'NCHW', 'Output shape must be NCHW.'
        take_indices, max_index = feature_take_indices(NUM_FEATURE_LEVELS, indices)
        x = self.stem_down(self.maxpool(self.act1(self.bn1(self.conv1(x)))))
        stages = self.stages[: max_index + 1] if stop_early else self.stages
        intermediates = []
        checkpointing = self.grad_checkpointing and not torch.jit.is_scripting()
        for i, stage in enumerate(stages):
            x = checkpoint_seq(stage, x) if checkpointing else stage(x)
            if i in take_indices:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
        self,
        indices: int | Sequence[int] = 1,
        prune_norm: bool = False,
        prune_head: bool = True,
    ) -> list[int]:
        """Drop the stages after the last wanted feature level (and the head); returns the kept indices."""
        take_indices, max_index = feature_take_indices(NUM_FEATURE_LEVELS, indices)
        for i in range(max_index + 1, NUM_FEATURE_LEVELS):
            setattr(self, f'layer{i + 1}', nn.Sequential())
        prune_end = max_index < NUM_FEATURE_LEVELS - 1
        if prune_end:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]['num_chs']
        if prune_head or prune_end:
            self.reset_classifier(0, '')
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_down(self.maxpool(self.act1(self.bn1(self.conv1(x)))))
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq([self.layer1, self.layer2, self.layer3, self.layer4], x, flatten=True)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        if self.drop_rate:
            x = F.dropout(x, p=float(self.drop_rate), training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def paper_madds(model: nn.Module, input_size: Sequence[int] = (3, 224, 224)) -> int:
    """Multiply-adds of one image under the official ``boss_madds.py`` rule (the rule of paper Table 1).

    The rule counts the MACs of every conv (stem, 1x1s, PEG depthwise, 3x3, qkv, shortcut, SE) and linear layer
    and both attention products (q.k logits, attention x v); nothing for BN, activations, pooling, softmax or
    biases. That is exactly what the package's counter (``backbones._flops.count_macs``: torch's
    ``FlopCounterMode`` with the SDPA formula registered for the CPU kernel too) counts. The official script
    also charges an SE to every ResAtt layer (which has none); that phantom term is not counted here (it is
    0.13% of BossNet-T0's MAdds).
    """
    return count_macs(model, input_size)


# features_only: timm's FeatureListNet over the top-level children (stem, layer1..4), same parameter names
_create = FamilyBuilder(HyTraNet, SPECS, validate_spec, NUM_FEATURE_LEVELS)


def build(spec: dict, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Build any ``hytra`` spec (``timm.create_model('hytra', spec=spec)``)."""
    return _create('hytra', pretrained=pretrained, spec=spec, **kwargs)


_NOTES = (
    'Architecture from the official retraining_hytra/boss_models.py (commit bb8b26a); weights converted from the '
    'official GitHub release v0.1 with zoo/convert_bossnet.py. The BossNAS repository ships no LICENSE file; its '
    'DeiT-derived retraining files carry a "CC-by-NC" header.'
)


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
        'first_conv': 'conv1',
        'classifier': 'fc',
        'license': 'unknown',
        'paper_ids': 'arXiv:2103.12424',
        'paper_name': (
            'BossNAS: Exploring Hybrid CNN-transformers with Block-wisely Self-supervised Neural Architecture Search'
        ),
        'origin_url': 'https://github.com/changlin31/BossNAS',
        'notes': (_NOTES,),
        **kwargs,
    }


default_cfgs = generate_default_cfgs(
    {
        'bossnet_t0.official_in1k': _cfg(
            'bossnet_t0',
            test_input_size=(3, 288, 288),
            test_crop_pct=0.875,
            notes=(_NOTES, 'Checkpoint BossNet-T0-80_8.pth; T0-up in Table 1 is these weights evaluated at 288.'),
        ),
        'bossnet_t0_nose.official_in1k': _cfg(
            'bossnet_t0_nose', notes=(_NOTES, 'Checkpoint BossNet-T0-nose-80_5.pth (BossNet-T0 w/o SE, ReLU).')
        ),
        'bossnet_t1.official_in1k': _cfg(
            'bossnet_t1',
            pool_size=(14, 14),
            test_input_size=(3, 256, 256),
            test_crop_pct=0.875,
            notes=(
                _NOTES,
                'Checkpoint BossNet-T1-81_9.pth (README: 81.9 top-1; paper v3 Table 1: 82.2); T1-up = 256 input.',
            ),
        ),
        'hytra': _cfg('hytra', hf_hub_id=None, notes=('Generic HyTra space; pass spec=... (default: BossNet-T0).',)),
    }
)


@register_model
def bossnet_t0(pretrained: bool = False, **kwargs: Any) -> HyTraNet:
    """BossNet-T0 (SiLU + SE): 38.42M params, 3.4B MAdds, 80.8% top-1 (paper Table 1; 81.6% at 288)."""
    return _create('bossnet_t0', pretrained, **kwargs)


@register_model
def bossnet_t0_nose(pretrained: bool = False, **kwargs: Any) -> HyTraNet:
    """BossNet-T0 w/o SE (ReLU): 37.32M params, 3.4B MAdds, 80.5% top-1 (paper Table 1)."""
    return _create('bossnet_t0_nose', pretrained, **kwargs)


@register_model
def bossnet_t1(pretrained: bool = False, **kwargs: Any) -> HyTraNet:
    """BossNet-T1 (T0 with last stride 1): 38.42M params, 7.9B MAdds, 82.2% top-1 (paper Table 1; README 81.9)."""
    return _create('bossnet_t1', pretrained, **kwargs)


@register_model
def hytra(pretrained: bool = False, spec: dict | None = None, **kwargs: Any) -> HyTraNet:
    """Any network of the HyTra space, from ``spec``; without one, BossNet-T0."""
    return _create('hytra', pretrained, spec=spec, **kwargs)
