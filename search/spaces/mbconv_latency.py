"""Measured latency of the MBConv space's layers on a device: a lookup table for latency-budgeted search.

Each distinct layer (arch string, input width, resolution) is timed once with ``torch.utils.benchmark`` in eval
mode and cached in memory and, with ``cache``, in a JSON file keyed by device name, batch and torch version. The
fixed part (stem, DS layer, head) is the whole network of one path minus its searched layers, as for FLOPs. Summed
layer latencies ignore kernel-launch overlap between layers; on a GPU at batch 1 they overestimate by a roughly
constant amount, which the fixed part absorbs.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch.utils import benchmark

from backbones import mbconv as mbconv_family

from .mbconv import BlockChoice, MBConvSpace, build_layer, layer_arch

__all__ = ['LatencyTable']


class LatencyTable:
    """Seconds per forward of single layers and of the fixed part, measured on ``device`` at ``batch``."""

    def __init__(
        self,
        space: MBConvSpace,
        device: torch.device,
        batch: int = 1,
        min_run_time: float = 0.05,
        cache: str | None = None,
    ) -> None:
        self.space, self.device, self.batch, self.min_run_time = space, torch.device(device), batch, min_run_time
        self.cache = Path(cache) if cache else None
        name = torch.cuda.get_device_name(self.device) if self.device.type == 'cuda' else 'cpu'
        self.key = f'{name}|batch{batch}|torch{torch.__version__}'
        self.table: dict[str, float] = {}
        if self.cache and self.cache.is_file():
            self.table = json.loads(self.cache.read_text()).get(self.key, {})

    @torch.no_grad()
    def _time(self, module: torch.nn.Module, shape: tuple[int, ...]) -> float:
        module = module.to(self.device).eval()
        x = torch.randn(self.batch, *shape, device=self.device)
        for _ in range(3):
            module(x)
        timer = benchmark.Timer('m(x)', globals={'m': module, 'x': x})
        return timer.blocked_autorange(min_run_time=self.min_run_time).median

    def layer(self, arch: str, in_chs: int, res: int) -> float:
        shortcut = self.space.shortcut
        key = f'{arch}|{in_chs}|{res}' + ('' if shortcut == mbconv_family.DEFAULT_SHORTCUT else f'|{shortcut}')
        if key not in self.table:
            self.table[key] = self._time(build_layer(arch, in_chs, shortcut), (in_chs, res, res))
            self._save()
        return self.table[key]

    def choice_latency(self, k: int, in_width: int, choice: BlockChoice) -> float:
        res = self.space.img_size // 2
        for block in self.space.blocks[:k]:
            res = -(-res // block.stride)
        block = self.space.blocks[k]
        width, total, chs = block.cells[choice.cell].width, 0.0, in_width
        for j, op in enumerate(choice.ops):
            stride = block.stride if j == 0 else 1
            total += self.layer(layer_arch(op, width, stride), chs, res)
            res, chs = -(-res // stride), width
        return total

    def fixed_latency(self) -> float:
        key = f'fixed|{self.space.name}|{self.space.img_size}'
        if key not in self.table:
            arch = [BlockChoice(0, (b.ops[0],) * b.cells[0].layers) for b in self.space.blocks]
            net = mbconv_family.build(self.space.to_spec(arch))
            whole = self._time(net, (3, self.space.img_size, self.space.img_size))
            width, layers = self.space.ds_width, 0.0
            for k, choice in enumerate(arch):
                layers += self.choice_latency(k, width, choice)
                width = self.space.blocks[k].cells[choice.cell].width
            self.table[key] = max(whole - layers, 0.0)
            self._save()
        return self.table[key]

    def _save(self) -> None:
        if self.cache is None:
            return
        doc = json.loads(self.cache.read_text()) if self.cache.is_file() else {}
        doc[self.key] = self.table
        self.cache.parent.mkdir(parents=True, exist_ok=True)
        self.cache.write_text(json.dumps(doc, indent=1) + '\n')
