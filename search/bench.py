"""Throughput of DNA supernet training on synthetic data: images/s and the fraction of the device's bf16 peak.

Runs the very step of :func:`search.methods.dna.train_supernet` (teacher forward, one sampled path per cell and
block, MSE, backward, Adam) on random images already on the device, so that data loading is not measured. FLOPs of
a step are counted once with ``torch.utils.flop_counter`` (teacher forward + supernet forward and backward; the
paths change per step, so the count of one step is averaged over ``flop_steps`` sampled steps).

``python tools/bench_search.py --space dna --teacher tf_efficientnet_b7 --batch 256 --steps 300 --device cuda``
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from . import engine
from .methods import dna

__all__ = ['BF16_PEAK_TFLOPS', 'benchmark_dna', 'main']

#: Dense bf16 tensor-core peaks (vendor data sheets), TFLOP/s; matched against torch.cuda.get_device_name().
BF16_PEAK_TFLOPS = {'H100 SXM': 989.4, 'H100 PCIe': 756.0, 'H100 NVL': 835.0, 'H200': 989.4, 'A100': 312.0}


def device_peak(device: torch.device) -> float | None:
    if device.type != 'cuda':
        return None
    name = torch.cuda.get_device_name(device)
    if 'H100' in name:
        return BF16_PEAK_TFLOPS['H100 PCIe' if 'PCIe' in name else 'H100 NVL' if 'NVL' in name else 'H100 SXM']
    for key, peak in BF16_PEAK_TFLOPS.items():
        if key in name:
            return peak
    return None


def benchmark_dna(
    space: str = 'dna',
    teacher: str = 'tf_efficientnet_b7',
    img_size: int = 224,
    batch: int = 256,
    steps: int = 300,
    warmup: int = 20,
    device: str = 'auto',
    amp: bool = True,
    channels_last: bool = True,
    flop_steps: int = 3,
    seed: int = 0,
) -> dict[str, Any]:
    """Train the supernet for ``steps`` steps on synthetic images; returns throughput and FLOP utilisation."""
    ctx = engine.init_distributed(device)
    cfg = dna.DNAConfig(
        space=space, teacher=teacher, teacher_pretrained=False, img_size=img_size, batch_size=batch, amp=amp, seed=seed
    )
    space_obj, teach, supernet, adapters = dna.build_supernet(cfg, ctx.device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    runner = dna.DistillRunner(teach, supernet, adapters).to(ctx.device, memory_format=fmt)
    teach.eval()
    supernet.train()
    blocks = list(range(len(space_obj.blocks)))
    optimizer = dna._optimizer(cfg, supernet, adapters, blocks)
    images = torch.randn(batch, 3, img_size, img_size, device=ctx.device).to(memory_format=fmt)

    def step(i: int) -> None:
        paths = dna.sample_paths(space_obj, blocks, seed, i, cfg.all_cells)
        with engine.autocast(ctx.device, amp):
            loss = torch.stack(runner(images, paths)).sum()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    from torch.utils.flop_counter import FlopCounterMode

    flops = []
    for i in range(flop_steps):
        with FlopCounterMode(display=False) as counter:
            step(10_000 + i)
        flops.append(counter.get_total_flops())
    for i in range(warmup):
        step(i)
    if ctx.device.type == 'cuda':
        torch.cuda.synchronize(ctx.device)
        torch.cuda.reset_peak_memory_stats(ctx.device)
    start = time.perf_counter()
    for i in range(steps):
        step(warmup + i)
    if ctx.device.type == 'cuda':
        torch.cuda.synchronize(ctx.device)
    elapsed = time.perf_counter() - start
    per_step = sum(flops) / len(flops)
    achieved = per_step * steps / elapsed / 1e12
    peak = device_peak(ctx.device)
    return {
        'space': space,
        'teacher': teacher,
        'img_size': img_size,
        'batch': batch,
        'steps': steps,
        'amp_bf16': amp and ctx.device.type == 'cuda',
        'channels_last': channels_last,
        'device': torch.cuda.get_device_name(ctx.device) if ctx.device.type == 'cuda' else 'cpu',
        'torch': torch.__version__,
        'images_per_s': batch * steps / elapsed,
        'step_ms': 1000 * elapsed / steps,
        'tflop_per_step': per_step / 1e12,
        'achieved_tflops': achieved,
        'bf16_peak_tflops': peak,
        'fraction_of_peak': achieved / peak if peak else None,
        'peak_memory_gib': torch.cuda.max_memory_allocated(ctx.device) / 2**30 if ctx.device.type == 'cuda' else None,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description='DNA supernet training throughput on synthetic data')
    parser.add_argument('--space', default='dna')
    parser.add_argument('--teacher', default='tf_efficientnet_b7')
    parser.add_argument('--img-size', type=int, default=224)
    parser.add_argument('--batch', type=int, default=256)
    parser.add_argument('--steps', type=int, default=300)
    parser.add_argument('--warmup', type=int, default=20)
    parser.add_argument('--device', default='auto')
    parser.add_argument('--no-amp', action='store_true')
    parser.add_argument('--no-channels-last', action='store_true')
    parser.add_argument('--json', help='also write the result here')
    parser.add_argument(
        '--mode',
        choices=['throughput', 'overhead', 'dfs', 'interchoice', 'bossnas', 'pinas', 'nasvit'],
        default='throughput',
        help='throughput (default), the engine overhead per step on the CPU, DFS rating vs each path, or the CPU '
        'overhead of inter-choice dependent weights per SPOS step (NB201, next to the paper Table 1), or the BossNAS '
        'HyTra step through the engine against the sum of its parts (CPU), or the Pi-NAS or NASViT step likewise (CPU)',
    )
    args = parser.parse_args(argv)
    if args.mode == 'pinas':
        from .bench_pinas import pinas_step_overhead

        result = pinas_step_overhead()
    elif args.mode == 'nasvit':
        from .bench_nasvit import nasvit_step_overhead

        result = nasvit_step_overhead()
    elif args.mode == 'bossnas':
        from .bench_bossnas import bossnas_step_overhead

        result = bossnas_step_overhead()
    elif args.mode == 'interchoice':
        from .bench_interchoice import interchoice_overhead

        result = interchoice_overhead()
    elif args.mode != 'throughput':
        from .bench_engine import dfs_speedup, engine_overhead

        result = engine_overhead() if args.mode == 'overhead' else dfs_speedup()
    else:
        result = benchmark_dna(
            args.space,
            args.teacher,
            args.img_size,
            args.batch,
            args.steps,
            args.warmup,
            args.device,
            not args.no_amp,
            not args.no_channels_last,
        )
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + '\n')
    return 0
