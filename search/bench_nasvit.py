"""NASViT's training step on the CPU: the engine's step against the sum of its parts (a benchmark, not a test).

Issue 15 asks for the step overhead against its parts on the CPU (goal: under 10 %). ``configs/search/
nasvit_tiny.yaml`` (the 64-subnet NASViT space at 64 px) trains through the engine (:func:`search.pipeline.train`:
loader, gradient slots, projection with its conflict statistics, logging, checkpoints), which logs each step's
compute and combine time; then the same model, paths and images run the step's parts one at a time, each timed on
its own: the max subnet's forward, loss and backward, the three subnets' (gradients kept apart by hand: g_sup is set
aside before the subnets' backward passes), clipping and projection alone (:func:`project_gradients`), the AdamW step
and the EMA update. Wall time on one thread, medians over the steps after the first.

``python tools/bench_search.py --mode nasvit --json benchmarks/nasvit_step_cpu.json``
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from . import data as data_lib
from . import engine, pipeline
from .config import load_config
from .methods.nasvit import NASViT, NASViTConfig, adaptive_alpha_divergence, clip_grads_, project_gradients

__all__ = ['nasvit_step_overhead']

_TINY = Path(__file__).resolve().parents[1] / 'configs' / 'search' / 'nasvit_tiny.yaml'


def _timed(fn: Any, *args: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def nasvit_step_overhead(config: str | Path = _TINY, epochs: int = 3, per_class: int = 16) -> dict[str, Any]:
    """Median seconds of the engine's NASViT step and of the sum of its parts (one thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            data_lib.write_synthetic_image_folder(root / 'data' / 'train', num_classes=4, per_class=per_class, size=72)
            values = {'data_dir': str(root / 'data'), 'epochs': epochs, 'ckpt_every': 10**6, 'device': 'cpu'}
            cfg = load_config(NASViTConfig, config, {**values, 'output': str(root / 'run')})
            ctx = engine.DistContext()
            pipeline.train(NASViT(cfg), ctx)
            log = [json.loads(x) for x in (cfg.out / 'train_log.jsonl').read_text().splitlines()]
            engine_s = [x['step_s'] - x['data_s'] for x in log[1:]]  # forward to EMA update, without data loading

            part_cfg = load_config(NASViTConfig, config, {**values, 'output': str(root / 'parts')})
            method = NASViT(part_cfg)
            split = pipeline.holdout_split(part_cfg, ctx)
            runner = method.build(ctx, split)
            params = [p for p in runner.parameters() if p.requires_grad]
            steps_per_epoch = len(split['train']) // part_cfg.batch_size
            optimizer, scheduler, _ = method.optimizer(steps_per_epoch)
            method.train_mode()
            names = ('max_subnet', 'subnets', 'clip_and_projection', 'adamw', 'ema')
            parts: dict[str, list[float]] = {n: [] for n in names}
            step = 0
            for epoch in range(part_cfg.epochs):
                loader = pipeline._train_loader(part_cfg, split, ctx, epoch, 0, method.transform())
                for images, labels in loader:
                    scheduler.step_update(step)
                    largest, *subnets = method.sample_paths(step)

                    def sup(images: torch.Tensor = images, labels: torch.Tensor = labels, arch: Any = largest) -> Any:
                        logits = runner(images, arch)
                        F.cross_entropy(logits.float(), labels, label_smoothing=part_cfg.label_smoothing).backward()
                        return logits.detach().float()

                    def sub(images: torch.Tensor = images, soft: Any = None, subnets: list = subnets) -> None:
                        for arch in subnets:
                            adaptive_alpha_divergence(runner(images, arch).float(), soft)[0].backward()

                    soft, t_sup = _timed(sup)
                    g_sup = [p.grad for p in params]
                    for p in params:
                        p.grad = None
                    _, t_sub = _timed(sub, images, soft)
                    g_sub = [p.grad for p in params]

                    def combine(g_sup: list = g_sup, g_sub: list = g_sub) -> None:
                        clip_grads_(g_sub, part_cfg.clip_grad)
                        for p, g in zip(params, project_gradients(g_sup, g_sub).grads, strict=True):
                            p.grad = g

                    _, t_combine = _timed(combine)
                    _, t_step = _timed(optimizer.step)
                    optimizer.zero_grad(set_to_none=True)
                    _, t_ema = _timed(method.after_step, step)
                    for name, t in zip(names, (t_sup, t_sub, t_combine, t_step, t_ema), strict=True):
                        parts[name].append(t)
                    step += 1
            parts = {k: v[1:] for k, v in parts.items()}
        sums = [sum(vals) for vals in zip(*parts.values(), strict=True)]
        a, b = statistics.median(engine_s), statistics.median(sums)
        return {
            'config': str(Path(config).relative_to(Path(__file__).resolve().parents[1])),
            'steps': len(engine_s) + 1,
            'engine_step_s': round(a, 5),
            'engine_combine_s': round(statistics.median(x['combine_s'] for x in log[1:]), 5),
            'sum_of_parts_s': round(b, 5),
            'parts_s': {k: round(statistics.median(v), 5) for k, v in parts.items()},
            'overhead': round(a / b - 1, 4),
            'threads': 1,
            'torch': torch.__version__,
            'note': 'wall time on one thread: the engine step is step_s - data_s of its log (4 subnets forward to EMA '
            'update, with gradient slots, projection and conflict statistics); parts timed one by one on the same '
            'model, paths and images; medians over the steps after the first',
        }
    finally:
        torch.set_num_threads(threads)
