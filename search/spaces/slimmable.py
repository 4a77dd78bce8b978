"""Slimmable layers: one set of widest weights, run at a narrower width by taking the first channels.

Yu et al., "Slimmable Neural Networks" (ICLR 2019): a width-``k`` network uses the first ``k`` filters of every conv
(first-k channel slicing) and its own BN per width (switchable BN), because the statistics of a narrow path differ
from those of a wide one. BossNAS shares the NATS-Bench size-space supernet this way (``operations/nats_ops.py``
``SlimmableConv2d``, ``SwitchableBatchNorm2d``).

Here a layer reads its *input* width from the tensor it gets (``x.shape[1]``), so only the output width of each
conv has to be set before a forward (:attr:`SlimConv2d.out_active`); a BN picks the BN of its input's width and a
linear layer the first input features. :func:`slimmify` turns a network built at the widest widths into its
slimmable twin in place, keeping every module name (BNs gain ``.bns.<j>``) and the initial weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import get_padding

__all__ = [
    'SlicedBatchNorm2d',
    'SlimConv2d',
    'SlimDepthwiseConv2d',
    'SlimLinear',
    'SwitchableBatchNorm2d',
    'slice_to',
    'slimmify',
]


class SlimConv2d(nn.Conv2d):
    """A conv with the widest weights; runs filters ``[:out_active]`` on the input's channels ``[:x.shape[1]]``."""

    out_active: int | None = None  # None: every filter

    @classmethod
    def of(cls, conv: nn.Conv2d) -> SlimConv2d:
        """The slimmable twin of ``conv``, sharing its parameters (groups must be 1: channels slice freely)."""
        if conv.groups != 1:
            raise ValueError(f'a slimmable conv needs groups=1, got {conv.groups}')
        slim = cls.__new__(cls)
        slim.__dict__ = conv.__dict__  # same parameters, hooks and settings; only the forward differs
        return slim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.out_channels if self.out_active is None else self.out_active
        weight = self.weight[:out, : x.shape[1]]
        bias = None if self.bias is None else self.bias[:out]
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation)


class SlimLinear(nn.Linear):
    """A linear layer with the widest weights; reads the first ``x.shape[-1]`` input features and writes the first
    ``out_active`` outputs (None: all of them)."""

    out_active: int | None = None

    @classmethod
    def of(cls, linear: nn.Linear) -> SlimLinear:
        slim = cls.__new__(cls)
        slim.__dict__ = linear.__dict__
        return slim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.out_active is None:
            return F.linear(x, self.weight[:, : x.shape[-1]], self.bias)
        out = self.out_active
        return F.linear(x, self.weight[:out, : x.shape[-1]], None if self.bias is None else self.bias[:out])


class SlimDepthwiseConv2d(nn.Conv2d):
    """A depthwise conv with the widest weights: runs on the input's ``x.shape[1]`` channels (its first filters)
    with the centre ``kernel_active`` x ``kernel_active`` window of the largest kernel (None: the whole kernel) and
    the padding a conv of that kernel has (timm's symmetric ``get_padding``): OFA's elastic kernel without the
    kernel-transform matrices (the choice of AttentiveNAS / NASViT, ``KERNEL_TRANSFORM_MODE=None``)."""

    kernel_active: int | None = None

    @classmethod
    def of(cls, conv: nn.Conv2d) -> SlimDepthwiseConv2d:
        if not (conv.groups == conv.in_channels == conv.out_channels):
            raise ValueError(f'a slimmable depthwise conv needs groups = channels, got {conv}')
        slim = cls.__new__(cls)
        slim.__dict__ = conv.__dict__
        return slim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        chs, full = x.shape[1], self.kernel_size[0]
        k = full if self.kernel_active is None else self.kernel_active
        start = (full - k) // 2
        weight = self.weight[:chs, :, start : start + k, start : start + k]
        bias = None if self.bias is None else self.bias[:chs]
        padding = get_padding(k, self.stride[0], self.dilation[0])
        return F.conv2d(x, weight, bias, self.stride, padding, self.dilation, chs)


class SlicedBatchNorm2d(nn.BatchNorm2d):
    """One BN whose first channels serve every width (OFA's / AttentiveNAS's ``DynamicBatchNorm2d``): a width-``c``
    input is normalised with, and in training updates, the first ``c`` entries of the shared statistics. The
    alternative to :class:`SwitchableBatchNorm2d` when the official supernet shares its BN. Made from a BN with
    :meth:`of` (timm's ``BatchNormAct2d`` keeps its activation: ``drop`` and ``act`` run after the norm)."""

    @classmethod
    def of(cls, bn: nn.BatchNorm2d) -> SlicedBatchNorm2d:
        slim = cls.__new__(cls)
        slim.__dict__ = bn.__dict__
        return slim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        chs = x.shape[1]
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative average (BN recalibration)
                factor = 1.0 / float(self.num_batches_tracked)
        track = not self.training or self.track_running_stats
        mean = self.running_mean[:chs] if track and self.running_mean is not None else None
        var = self.running_var[:chs] if track and self.running_var is not None else None
        weight = None if self.weight is None else self.weight[:chs]
        bias = None if self.bias is None else self.bias[:chs]
        use_batch = self.training or (self.running_mean is None and self.running_var is None)
        x = F.batch_norm(x, mean, var, weight, bias, use_batch, factor, self.eps)
        for name in ('drop', 'act'):  # timm BatchNormAct2d
            if name in self._modules:
                x = self._modules[name](x)
        return x


class SwitchableBatchNorm2d(nn.Module):
    """One ``BatchNorm2d`` per candidate width (``bns[j]`` has ``widths[j]`` channels), picked by the input's width."""

    def __init__(self, widths: Sequence[int], like: nn.BatchNorm2d) -> None:
        super().__init__()
        self.widths = tuple(widths)
        kw = dict(eps=like.eps, momentum=like.momentum, affine=like.affine)
        kw['track_running_stats'] = like.track_running_stats
        self.bns = nn.ModuleList(nn.BatchNorm2d(w, **kw) for w in self.widths)

    def index(self, width: int) -> int:
        if width not in self.widths:
            raise ValueError(f'switchable BN has no BN for {width} channels (widths {self.widths})')
        return self.widths.index(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bns[self.index(x.shape[1])](x)

    def extra_repr(self) -> str:
        return f'widths={self.widths}'


def slimmify(module: nn.Module, widths: Sequence[int]) -> nn.Module:
    """Replace, in place, every Conv2d / Linear / BatchNorm2d below ``module`` by its slimmable twin; returns it.

    ``widths`` are the channel counts each BN may see (every BN gets one BN per width).
    """
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Conv2d) and not isinstance(child, SlimConv2d):
            setattr(module, name, SlimConv2d.of(child))
        elif isinstance(child, nn.Linear) and not isinstance(child, SlimLinear):
            setattr(module, name, SlimLinear.of(child))
        elif isinstance(child, nn.BatchNorm2d):
            setattr(module, name, SwitchableBatchNorm2d(widths, child))
        else:
            slimmify(child, widths)
    return module


def slice_to(tensor: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """The first ``shape[d]`` entries of ``tensor`` along every dimension d (first-k channel slicing), a copy."""
    if tensor.dim() != len(shape) or any(n > m for n, m in zip(shape, tensor.shape, strict=True)):
        raise ValueError(f'cannot slice a tensor of shape {tuple(tensor.shape)} to {tuple(shape)}')
    return tensor[tuple(slice(0, n) for n in shape)].clone()
