"""The weights of a NASViT supernet and the rule that takes a subnet's weights out of them (``path_state_dict``).

One implementation, used by the search supernet (``search/spaces/nasvit.py`` adds the dynamic forward) and by the
converter of the authors' checkpoint (``zoo/convert.py`` maps its keys onto this module, then calls
:meth:`NASViTSupernet.path_state_dict`). It lives in ``backbones`` because ``zoo`` may not import ``search``
(tests/test_layering.py) and the released weights are a supernet: the family needs it to have weights at all.

The module is the ``nasvit`` backbone of the space's largest spec (every module name of :class:`backbones.nasvit.
NASViT`, every tensor at its largest shape), plus what only a supernet has (the official ``AttentiveNasDynamicModel``
has both, ``models/attentive_nas_dynamic_model.py``):

* a 1x1 shortcut conv in the first layer of every stage where some input/output widths of the space differ (MBConv-1
  takes 16 or 24 channels from the 16- or 24-channel stem: the largest network has an identity there);
* switchable layer scales (paper section 3; specs section 2.4): ``gamma_attn`` / ``gamma_mlp`` of each transformer
  layer are tables instead of vectors, with one row per switch key, all initialised to 1e-4:

  - ``layer_scale='code'`` (default): shape (10, 8, C_max), row ``[d, N % 8]`` with d the active depth of the stage
    (its MBConv included) and N the stage's token count at the spec's resolution, as ``transformer.py`` indexes
    ``rescale_attn[rescale_idx, x.shape[1] % 8, :C]``; the released checkpoint has these tables;
  - ``layer_scale='paper'``: shape (number of width choices of the stage, C_max), row = the index of the stage's
    width C: one independent scale per [c, d] (c = channels, d = the layer's index in its stage, i.e. the layer).

  Both keep the code's extra factor 8 / C (the static model applies it, ``TransformerLayer.layer_scales``), so
  that both emit the same static network. The default is the code's: it produced the released weights and the
  paper's accuracies, the family follows the code wherever paper and code disagree, and only with it does the
  released checkpoint load; its key (N mod 8) is a coarse resolution switch that looks like a bug (specs §2.4,
  docs/nasvit.md), which is why the paper's key is offered.

Slicing rule (``path_state_dict``; the official ``set_active_subnet`` + dynamic ops): first channels of every
tensor, the centre k x k window of a larger depthwise kernel (``sub_filter_start_end``, no kernel transform), the
first ``depth[i]`` layers of stage i, all 35 x 35 rows of the relative-position table with its first C / 8 head
columns, and the layer-scale row of the spec's switch key. Keys and shapes are those of ``nasvit`` built from the
spec, so ``nasvit`` built from the spec loads the result with ``strict=True``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn
from timm.layers import create_conv2d

from . import nasvit as nv

__all__ = ['FIELDS', 'LAYER_SCALES', 'NASViTSupernet', 'family_choices', 'take']

#: Spec fields of the AttentiveNAS subnet form, with the family's choices per position.
FIELDS = ('resolution', 'width', 'depth', 'kernel_size', 'expand_ratio')
#: The two switchable layer-scale keys (see the module docstring).
LAYER_SCALES = ('code', 'paper')
_CODE_SLOTS = (10, 8)  # official rescale_attn / rescale_mlp: (active stage depth, token count mod 8)


def family_choices() -> dict[str, Any]:
    """The official search space (misc/config.py) as ``{field: choices}``; ``resolution`` is one tuple, the other
    fields one tuple per position."""
    return {
        'resolution': nv.RESOLUTIONS,
        'width': nv.WIDTHS,
        'depth': nv.DEPTHS,
        'kernel_size': nv.KERNELS,
        'expand_ratio': nv.EXPANSIONS,
    }


def check_choices(choices: Mapping[str, Any]) -> dict[str, Any]:
    """``choices`` as tuples, each a non-empty subset of the family's choices (errors name the position)."""
    family = family_choices()
    if set(choices) != set(FIELDS):
        raise ValueError(f'NASViT choices need exactly the fields {list(FIELDS)}, got {sorted(choices)}')
    out: dict[str, Any] = {}
    for field in FIELDS:
        allowed = family[field]
        given = choices[field]
        if field == 'resolution':
            given, allowed = [given], [allowed]
        elif len(given) != len(allowed):
            raise ValueError(f'NASViT choices {field!r}: {len(allowed)} positions expected, got {len(given)}')
        checked = []
        for i, (values, ok) in enumerate(zip(given, allowed, strict=True)):
            values = tuple(sorted(set(values)))
            where = field if field == 'resolution' else f'{field}[{i}]'
            if not values or not set(values) <= set(ok):
                raise ValueError(f'NASViT choices {where}: {values} must be a non-empty subset of {ok}')
            checked.append(values)
        out[field] = checked[0] if field == 'resolution' else tuple(checked)
    return out


def take(tensor: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """The part of a supernet tensor that a ``shape``-d subnet tensor is: first entries along every dimension, but
    the centre window along the kernel dimensions of a conv weight (4-D) whose kernel is larger. A view."""
    if tensor.dim() != len(shape) or any(n > m for n, m in zip(shape, tensor.shape, strict=True)):
        raise ValueError(f'cannot take a tensor of shape {tuple(shape)} out of one of shape {tuple(tensor.shape)}')
    index = []
    for d, (n, m) in enumerate(zip(shape, tensor.shape, strict=True)):
        start = (m - n) // 2 if tensor.dim() == 4 and d >= 2 else 0
        index.append(slice(start, start + n))
    return tensor[tuple(index)]


class NASViTSupernet(nn.Module):
    """The supernet's weights (the largest ``nasvit`` network of ``choices`` + shortcut convs + layer-scale tables).

    ``choices``: the space (default: the official one, :func:`family_choices`); ``layer_scale``: ``'code'`` or
    ``'paper'``; ``resize_input`` is kept for the forward (search/spaces/nasvit.py), which resizes inputs to the
    path's resolution as the official supernet does. The module's names are the backbone's, so a state dict key of
    ``nasvit`` built from any spec of the space is a key here too.
    """

    def __init__(
        self,
        choices: Mapping[str, Any] | None = None,
        num_classes: int = 1000,
        in_chans: int = 3,
        layer_scale: str = 'code',
        resize_input: bool = True,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if layer_scale not in LAYER_SCALES:
            raise ValueError(f'layer_scale must be one of {LAYER_SCALES}, got {layer_scale!r}')
        self.choices = check_choices(family_choices() if choices is None else choices)
        self.layer_scale = layer_scale
        self.resize_input = bool(resize_input)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.max_spec = self._extreme(max)
        self.min_spec = self._extreme(min)
        base = nv.NASViT(self.max_spec, num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate)
        for name, child in base.named_children():
            self.add_module(name, child)
        self.num_features, self.head_hidden_size = base.num_features, base.head_hidden_size
        widths = self.choices['width']
        for i, stage in enumerate(self.stages):
            first = stage[0]
            differ = any(a != b for a in widths[i] for b in widths[i + 1])
            if differ and not isinstance(getattr(first.shortcut, 'conv', None), nn.Conv2d):
                shortcut = nv.Shortcut(max(widths[i]), max(widths[i + 1]), nv.STRIDES[i])
                shortcut.conv = create_conv2d(max(widths[i]), max(widths[i + 1]), 1, bias=False)
                first.shortcut = shortcut
            for layer in stage:
                if isinstance(layer, nv.TransformerLayer):
                    rows = _CODE_SLOTS if layer_scale == 'code' else (len(widths[i + 1]),)
                    for name in ('gamma_attn', 'gamma_mlp'):
                        vector = getattr(layer, name)
                        delattr(layer, name)
                        table = torch.full((*rows, vector.shape[0]), nv.LAYER_SCALE_INIT, device=vector.device)
                        layer.register_parameter(name, nn.Parameter(table))

    def _extreme(self, pick: Any) -> dict:
        c = self.choices
        return nv.validate_spec(
            {
                'family': nv.FAMILY,
                'version': nv.SPEC_VERSION,
                'resolution': pick(c['resolution']),
                **{f: [pick(v) for v in c[f]] for f in FIELDS[1:]},
            }
        )

    def check_spec(self, spec: Any) -> dict:
        """``spec`` validated by the family and inside this supernet's choices (an error names the field)."""
        spec = nv.validate_spec(spec)
        bad = (
            []
            if spec['resolution'] in self.choices['resolution']
            else [f'resolution={spec["resolution"]} (choices {self.choices["resolution"]})']
        )
        for field in FIELDS[1:]:
            for i, (value, allowed) in enumerate(zip(spec[field], self.choices[field], strict=True)):
                if value not in allowed:
                    bad.append(f'{field}[{i}]={value} (choices {allowed})')
        if bad:
            raise ValueError(f'spec is not a subnet of this supernet: {", ".join(bad)}')
        return spec

    def scale_slot(self, spec: dict, stage: int) -> tuple[int, ...]:
        """The layer-scale table row of the transformer layers of ``stage`` (3..6) on the path ``spec``."""
        if self.layer_scale == 'code':
            tokens = nv._token_sides(spec['resolution'])[stage + 1] ** 2
            return (spec['depth'][stage], tokens % _CODE_SLOTS[1])
        return (self.choices['width'][stage + 1].index(spec['width'][stage + 1]),)

    def layer_scales(self, spec: dict) -> dict[str, torch.Tensor]:
        """``{key: gamma}`` of every transformer layer on the path: the row of the switch key, first C channels
        (views, so gradients reach the tables)."""
        out = {}
        for i in range(nv.NUM_CONV_STAGES, len(nv.STAGE_NAMES)):
            slot, width = self.scale_slot(spec, i), spec['width'][i + 1]
            for j in range(1, spec['depth'][i]):
                layer = self.stages[i][j]
                for name in ('gamma_attn', 'gamma_mlp'):
                    out[f'stages.{i}.{j}.{name}'] = getattr(layer, name)[slot][:width]
        return out

    def path_state_dict(self, spec: Any) -> dict[str, torch.Tensor]:
        """The weights and BN buffers of the subnet ``spec``, keyed and shaped as ``nasvit`` built from it (copies,
        detached); the rule is in the module docstring."""
        spec = self.check_spec(spec)
        with torch.device('meta'):
            target = nv.NASViT(spec, num_classes=self.num_classes, in_chans=self.in_chans)
        own = self.state_dict(keep_vars=True)
        own.update(self.layer_scales(spec))
        out = {}
        for key, ref in target.state_dict().items():
            if key not in own:
                raise KeyError(f'the supernet has no tensor {key!r} for the subnet {spec}')
            out[key] = take(own[key].detach(), ref.shape).clone(memory_format=torch.contiguous_format)
        return out
