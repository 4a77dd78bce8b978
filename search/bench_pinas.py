"""Pi-NAS's training step on the CPU: the engine's step against the sum of its parts (a benchmark, not a test).

Issue 14 asks, without a device, for the Pi-NAS step time next to the sum of its forward/backward parts (goal:
under 10 % overhead). ``configs/search/pinas_tiny.yaml`` (the ``pinas_tiny`` ResNeSt space) trains through the
engine (:func:`search.pipeline.train`: loader, autocast, logging, checkpoints), which logs each step's compute time
(without data loading); then the same model, paths, views and shuffle permutations run the step's parts one at a
time, each timed on its own: the path-restricted teacher EMA, the student on both paths, the teacher keys (shuffle
BN), the loss, the backward pass, the SGD step and the enqueue. Wall time on one thread, as the engine logs it;
medians over the steps after the first (run it on a quiet machine).

``python tools/bench_search.py --mode pinas --json benchmarks/pinas_step_cpu.json``
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from . import data as data_lib
from . import engine, pipeline
from .config import load_config
from .methods.pinas import PiNAS, PiNASConfig, cross_path_loss

__all__ = ['pinas_step_overhead']

_TINY = Path(__file__).resolve().parents[1] / 'configs' / 'search' / 'pinas_tiny.yaml'
PARTS = ('ema', 'student', 'teacher', 'loss', 'backward', 'step', 'enqueue')


def _timed(fn: Any, *args: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def _student(runner: Any, v1: torch.Tensor, v3: torch.Tensor, p_i: tuple, p_j: tuple) -> tuple:
    return runner.student(v1, p_i), runner.student(v3, p_j)


def _teacher(runner: Any, v2: torch.Tensor, v4: torch.Tensor, p_i: tuple, p_j: tuple, perms: list) -> tuple:
    return runner.keys(v2, p_i, perms[0]), runner.keys(v4, p_j, perms[1])


def pinas_step_overhead(config: str | Path = _TINY, epochs: int = 3, per_class: int = 16) -> dict[str, Any]:
    """Median seconds of the engine's Pi-NAS step and of the sum of its parts (one thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            data_lib.write_synthetic_image_folder(root / 'data' / 'train', num_classes=4, per_class=per_class, size=40)
            values = {'data_dir': str(root / 'data'), 'epochs': epochs, 'ckpt_every': 10**6, 'device': 'cpu'}
            cfg = load_config(PiNASConfig, config, {**values, 'output': str(root / 'run')})
            ctx = engine.DistContext()
            pipeline.train(PiNAS(cfg), ctx)
            log = [json.loads(x) for x in (cfg.out / 'train_log.jsonl').read_text().splitlines()]
            engine_s = [x['step_s'] - x['data_s'] for x in log[1:]]  # teacher EMA to enqueue, without data loading

            part_cfg = load_config(PiNASConfig, config, {**values, 'output': str(root / 'parts')})
            method = PiNAS(part_cfg)
            split = pipeline.holdout_split(part_cfg, ctx)
            runner = method.build(ctx, split)
            steps_per_epoch = len(split['train']) // part_cfg.batch_size
            optimizer, scheduler, _ = method.optimizer(steps_per_epoch)
            method.train_mode()
            parts: dict[str, list[float]] = {name: [] for name in PARTS}
            step = 0
            for epoch in range(part_cfg.epochs):
                scheduler.step(epoch)
                loader = pipeline._train_loader(part_cfg, split, ctx, epoch, 0, method.transform())
                for views, _ in loader:
                    v1, v2, v3, v4 = views
                    p_i, p_j = method.sample_paths(step)
                    g = engine.generator(part_cfg.seed, 'pinas-shuffle', step, 0)
                    perms = [torch.randperm(len(v2), generator=g), torch.randperm(len(v4), generator=g)]
                    times = {}
                    _, times['ema'] = _timed(method.update_teacher, [p_i, p_j])
                    (q_i, q_j), times['student'] = _timed(_student, runner, v1, v3, p_i, p_j)
                    (k_i, k_j), times['teacher'] = _timed(_teacher, runner, v2, v4, p_i, p_j, perms)
                    loss, times['loss'] = _timed(
                        cross_path_loss, q_i, k_j, q_j, k_i, runner.queue, part_cfg.temperature
                    )
                    _, times['backward'] = _timed(loss.backward)
                    _, times['step'] = _timed(optimizer.step)
                    optimizer.zero_grad(set_to_none=True)
                    _, times['enqueue'] = _timed(runner.enqueue, ((k_i + k_j) / 2).detach())
                    for name in PARTS:
                        parts[name].append(times[name])
                    step += 1
            parts = {k: v[1:] for k, v in parts.items()}
        sums = [sum(vals) for vals in zip(*parts.values(), strict=True)]
        a, b = statistics.median(engine_s), statistics.median(sums)
        return {
            'config': str(Path(config).relative_to(Path(__file__).resolve().parents[1])),
            'space': part_cfg.space,
            'batch': part_cfg.batch_size,
            'steps': len(engine_s) + 1,
            'engine_step_s': round(a, 5),
            'sum_of_parts_s': round(b, 5),
            'parts_s': {k: round(statistics.median(v), 5) for k, v in parts.items()},
            'overhead': round(a / b - 1, 4),
            'threads': 1,
            'torch': torch.__version__,
            'note': 'wall time on one thread: the engine step is step_s - data_s of its log (teacher EMA to enqueue); '
            'parts timed one by one on the same model, paths, views and permutations; medians over the steps after '
            'the first',
        }
    finally:
        torch.set_num_threads(threads)
