"""BossNAS's training step on the CPU: the engine's step against the sum of its parts (a benchmark, not a test).

Issue 13 asks for the BossNAS HyTra step time next to the sum of its forward/backward parts (goal: under 10 %
overhead). Block 0 of ``configs/search/bossnas_hytra_tiny.yaml`` trains through the engine (:func:`search.pipeline
.train`: loader, autocast, accumulation, logging, checkpoints), which logs each step's compute time (without data
loading); then the same model, paths and images run the step's parts one at a time, each timed on its own: the
target branch (prefix + block + projector for every path, no gradients), the online branch with the predictors and
the loss, the backward pass, the LARS step and the EMA update. Process CPU time on one thread (robust to other jobs on
the machine is not, so run it on a quiet machine); wall time on one thread, as the engine logs it; medians over
the steps after the first.

``python tools/bench_search.py --mode bossnas --json benchmarks/bossnas_step_cpu.json``
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
from .methods.bossnas import BossNASBlock, BossNASConfig, byol_loss, ema_momentum

__all__ = ['bossnas_step_overhead']

_TINY = Path(__file__).resolve().parents[1] / 'configs' / 'search' / 'bossnas_hytra_tiny.yaml'


def _timed(fn: Any, *args: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


@torch.no_grad()
def _target_part(runner: Any, views: list[torch.Tensor], paths: list) -> list[torch.Tensor]:
    """The target branch of every path: the mean of the normalised projections, per view (as ``BossRunner``)."""
    pairs = len(views) // 2
    z: list[list[torch.Tensor]] = [[], []]
    for i, path in enumerate(paths):
        for v in (0, 1):
            h = runner.prefix(runner.target, views[2 * (i % pairs) + v])
            z[v].append(F.normalize(runner.project(runner.target, h, path).float(), dim=1))
    return [torch.stack(z[v]).mean(0) for v in (0, 1)]


def _online_part(runner: Any, views: list[torch.Tensor], paths: list, targets: list[torch.Tensor]) -> torch.Tensor:
    """The online branch, predictors and the summed BYOL loss of every path (as ``BossRunner``)."""
    pairs = len(views) // 2
    losses = []
    for i, path in enumerate(paths):
        pred = []
        for v in (0, 1):
            h = runner.prefix(runner.online, views[2 * (i % pairs) + v])
            pred.append(runner.predictors[runner.k](runner.project(runner.online, h, path)))
        losses.append(byol_loss(pred[0], targets[1]) + byol_loss(pred[1], targets[0]))
    return torch.stack(losses).sum()


def bossnas_step_overhead(config: str | Path = _TINY, epochs: int = 3, per_class: int = 16) -> dict[str, Any]:
    """Median seconds of the engine's BossNAS step and of the sum of its parts (block 0, one thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            data_lib.write_synthetic_image_folder(root / 'data' / 'train', num_classes=4, per_class=per_class, size=40)
            values = {'data_dir': str(root / 'data'), 'output': str(root / 'run'), 'epochs': epochs}
            cfg = load_config(BossNASConfig, config, {**values, 'ckpt_every': 10**6, 'device': 'cpu'})
            ctx = engine.DistContext()
            method = BossNASBlock(cfg, 0)
            pipeline.train(method, ctx)
            log = [json.loads(x) for x in (cfg.out / 'train_log.jsonl').read_text().splitlines()]
            engine_s = [x['step_s'] - x['data_s'] for x in log[1:]]  # forward to EMA update, without data loading

            # the same step in parts, on a fresh model with the same seed, paths and loader
            part_cfg = load_config(BossNASConfig, config, {**values, 'output': str(root / 'parts'), 'device': 'cpu'})
            method = BossNASBlock(part_cfg, 0)
            split = pipeline.holdout_split(part_cfg, ctx)
            runner = method.build(ctx, split)
            steps_per_epoch = len(split['train']) // part_cfg.batch_size
            optimizer, scheduler, _ = method.optimizer(steps_per_epoch)
            method.train_mode()
            parts: dict[str, list[float]] = {'target': [], 'online_and_loss': [], 'backward': [], 'step': [], 'ema': []}
            step = 0
            for epoch in range(part_cfg.epochs):
                loader = pipeline._train_loader(part_cfg, split, ctx, epoch, 0, method.transform())
                for views, _ in loader:
                    scheduler.step_update(step)
                    views = list(views)
                    paths = method.sample_paths(step)

                    targets, t_target = _timed(_target_part, runner, views, paths)
                    loss, t_online = _timed(_online_part, runner, views, paths, targets)
                    _, t_backward = _timed(loss.backward)
                    _, t_step = _timed(optimizer.step)
                    optimizer.zero_grad(set_to_none=True)
                    _, t_ema = _timed(runner.update_target, ema_momentum(step, method.total, cfg.ema_base))
                    for name, t in zip(parts, (t_target, t_online, t_backward, t_step, t_ema), strict=True):
                        parts[name].append(t)
                    step += 1
            parts = {k: v[1:] for k, v in parts.items()}
        sums = [sum(vals) for vals in zip(*parts.values(), strict=True)]
        a, b = statistics.median(engine_s), statistics.median(sums)
        return {
            'config': str(Path(config).relative_to(Path(__file__).resolve().parents[1])),
            'block': 0,
            'steps': len(engine_s) + 1,
            'engine_step_s': round(a, 5),
            'sum_of_parts_s': round(b, 5),
            'parts_s': {k: round(statistics.median(v), 5) for k, v in parts.items()},
            'overhead': round(a / b - 1, 4),
            'threads': 1,
            'torch': torch.__version__,
            'note': 'wall time on one thread: the engine step is step_s - data_s of its log (forward to EMA update); '
            'parts timed one by one on the same model, paths and images; medians over the steps after the first',
        }
    finally:
        torch.set_num_threads(threads)
