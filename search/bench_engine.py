"""Two CPU measurements of the engine (not timed tests): its overhead per step, and DNA's prefix-shared rating.

* :func:`engine_overhead` trains the tiny DNA config through the engine (:func:`search.pipeline.train`: loader,
  accumulation, autocast, logging, checkpoints) and through a bare PyTorch loop doing the same work (same method,
  loader, paths, forward, backward and Adam), and compares the median seconds per step (goal: under 10 %).
* :func:`dfs_speedup` rates every path of one cell of a block of the ``dna`` space twice: depth first with shared
  prefixes (DNA Alg. 1, ``search.strategies.traversal.dfs_paths``) and each path on its own, as the official code
  does; the outputs must agree, and the layer-evaluation count says 3.34x for 6 ops and 4 layers.

``python tools/bench_search.py --mode overhead`` / ``--mode dfs``.
"""

from __future__ import annotations

import itertools
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from . import data as data_lib
from . import engine, pipeline
from .methods import dna
from .strategies.traversal import count_dfs_evaluations, dfs_paths, recalibrate_bn

__all__ = ['dfs_speedup', 'engine_overhead']

_TINY = Path(__file__).resolve().parents[1] / 'configs' / 'search' / 'dna_tiny.yaml'


def engine_overhead(epochs: int = 3, per_class: int = 40) -> dict[str, Any]:
    """Median seconds per step: the engine's loop against a bare loop on the same work (tiny DNA, CPU)."""
    import yaml

    torch.set_num_threads(1)
    values = yaml.safe_load(_TINY.read_text())
    values.pop('method')
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data_lib.write_synthetic_image_folder(root / 'data' / 'train', num_classes=4, per_class=per_class, size=40)
        common = {**values, 'data_dir': str(root / 'data'), 'epochs': epochs, 'ckpt_every': 10**6}
        ctx = engine.DistContext()
        cfg = dna.DNAConfig(**common, output=str(root / 'engine'))
        pipeline.train(dna.DNA(cfg), ctx)
        log = [json.loads(x) for x in (cfg.out / 'train_log.jsonl').read_text().splitlines()]
        engine_s = [x['step_s'] for x in log[1:]]

        cfg = dna.DNAConfig(**common, output=str(root / 'bare'))
        method = dna.DNA(cfg)
        split = pipeline.holdout_split(cfg, ctx)
        runner = method.build(ctx, split)
        steps_per_epoch = len(split['train']) // cfg.batch_size
        optimizer, scheduler, _ = method.optimizer(steps_per_epoch)
        method.train_mode()
        bare_s = []
        step = 0
        for epoch in range(cfg.epochs):
            scheduler.step(epoch + 1)
            it = iter(pipeline._train_loader(cfg, split, ctx, epoch, 0, method.transform()))
            for _ in range(steps_per_epoch):
                t0 = time.perf_counter()
                paths = method.sample_paths(step)
                images, _ = next(it)
                loss = torch.stack(runner(images, paths)).sum()
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=False)
                bare_s.append(time.perf_counter() - t0)
                step += 1
        bare_s = bare_s[1:]
    a, b = statistics.median(engine_s), statistics.median(bare_s)
    return {
        'config': 'configs/search/dna_tiny.yaml',
        'steps': len(engine_s) + 1,
        'engine_step_s': a,
        'bare_step_s': b,
        'overhead': a / b - 1,
        'threads': 1,
    }


@torch.no_grad()
def dfs_speedup(block: int = 1, cell: int = 2, batch: int = 8, res: int = 16, seed: int = 0) -> dict[str, Any]:
    """Prefix-shared DFS rating against rating every path alone, on one cell of the ``dna`` space (CPU).

    Timed in CPU seconds of this process on one thread (``time.process_time``), so that other work on a shared
    machine does not enter the ratio; wall seconds are reported next to them.
    """
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    space = dna.get_space('dna')
    net = dna.MBConvSupernet(space).eval()
    width = space.in_widths(block)[0]
    cell_def = space.blocks[block].cells[cell]
    layers = net.blocks[block][cell].layers

    def layer(j: int, op: str) -> nn.Module:
        return layers[j].choice(width if j == 0 else cell_def.width, op)

    calib = [torch.randn(batch, width, res, res)]
    evals = [torch.randn(batch, width, res, res)]
    ops = space.blocks[block].ops
    start, wall = time.process_time(), time.perf_counter()
    shared = {p: ev[0].clone() for p, _, ev in dfs_paths(layer, cell_def.layers, ops, calib, evals)}
    dfs_s, dfs_wall = time.process_time() - start, time.perf_counter() - wall
    start, wall = time.process_time(), time.perf_counter()
    worst = 0.0
    for path in itertools.product(ops, repeat=cell_def.layers):
        cal, ev = list(calib), list(evals)
        for j, op in enumerate(path):
            mod = layer(j, op)
            recalibrate_bn(mod, cal)
            cal, ev = [mod(x) for x in cal], [mod(x) for x in ev]
        worst = max(worst, float((ev[0] - shared[path]).abs().max()))
    alone_s, alone_wall = time.process_time() - start, time.perf_counter() - wall
    with_sharing, without = count_dfs_evaluations(len(ops), cell_def.layers)
    return {
        'space': 'dna',
        'block': block,
        'cell': cell,
        'layers': cell_def.layers,
        'ops': len(ops),
        'paths': len(shared),
        'dfs_cpu_s': dfs_s,
        'each_path_cpu_s': alone_s,
        'speedup': alone_s / dfs_s,
        'dfs_wall_s': dfs_wall,
        'each_path_wall_s': alone_wall,
        'threads': 1,
        'layer_evaluations': [with_sharing, without],
        'evaluation_ratio': without / with_sharing,
        'max_abs_output_diff': worst,
    }
