"""The training-time overhead of inter-choice dependent weights, next to the paper's Table 1 (a CPU benchmark).

The paper (Laube and Zell, arXiv 2104.11522, Table 1) reports the supernet training time of each variant on one GTX
1080 Ti: bias +18 to +38 %, split +1 to +21 % on NB201. Here one SPOS training step (a uniformly drawn path, forward,
cross-entropy, backward, SGD step) of the NB201 supernet is timed for SPOS and each variant on the same batch, with
the process CPU time on one thread (robust to other jobs on the machine, unlike wall time; the data pipeline is
left out, as its cost is the same for every variant). Variants are interleaved round by round so that a drift of
the machine hits all of them alike; the median over rounds is reported. After ``split`` the step runs on the split
copies (the split is forced before timing). The network is the paper's (16 channels, ``cells`` cells a stage,
32x32 CIFAR images) unless told otherwise.

``python tools/bench_search.py --mode interchoice --json benchmarks/interchoice_overhead_cpu.json``
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F

from . import engine
from . import interchoice as interchoice_lib
from .spaces import get_space

__all__ = ['VARIANTS', 'interchoice_overhead']

#: The variants of Table 1 that differ in cost (split epochs differ only in when the copies start to be used).
VARIANTS: dict[str, dict | None] = {
    'SPOS': None,
    'bias D=1': {'variant': 'bias', 'depth': 1},
    'bias D=2': {'variant': 'bias', 'depth': 2},
    'bias D=3': {'variant': 'bias', 'depth': 3},
    'split': {'variant': 'split', 'split_epoch': 1},
}

#: Table 1 of the paper: time increase over the baseline on NB201 (full / no-Zero / only-Conv).
PAPER_TABLE1 = {
    'bias D=1': {'full': 0.24, 'no_zero': 0.18, 'only_conv': 0.18},
    'bias D=2': {'full': 0.25, 'no_zero': 0.26, 'only_conv': 0.27},
    'bias D=3': {'full': 0.32, 'no_zero': 0.38, 'only_conv': 0.34},
    'split': {'full': 0.21, 'no_zero': 0.10, 'only_conv': 0.03},  # split at epoch 125 of 250
}


def _stepper(subspace: str, options: dict | None, batch: int, channels: int, cells: int, seed: int) -> Any:
    space = get_space('nb201', subspace=subspace, channels=channels, cells_per_stage=cells)
    torch.manual_seed(seed)
    net = space.build_supernet(num_classes=10, **({'interchoice': options} if options else {}))
    if options and options['variant'] == 'split':
        interchoice_lib.start_epoch(net, options['split_epoch'])  # time the steps after the split
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=3e-4)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, space.img_size, space.img_size, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
    counter = [0]

    def step() -> None:
        arch = space.sample(engine.generator(seed, 'path', counter[0]))
        counter[0] += 1
        loss = F.cross_entropy(net(x, arch), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def interchoice_overhead(
    subspaces: tuple[str, ...] = ('full', 'no_zero', 'only_conv'),
    batch: int = 64,
    channels: int = 16,
    cells: int = 5,
    rounds: int = 7,
    steps: int = 4,
    seed: int = 0,
) -> dict[str, Any]:
    """Median CPU seconds per step of each variant and sub-space, and its increase over SPOS (one thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result: dict[str, Any] = {}
        for sub in subspaces:
            steppers = {name: _stepper(sub, opt, batch, channels, cells, seed) for name, opt in VARIANTS.items()}
            for step in steppers.values():
                step()  # warm-up: allocations, lazy split copies
            times: dict[str, list[float]] = {name: [] for name in steppers}
            for _ in range(rounds):
                for name, step in steppers.items():
                    start = time.process_time()
                    for _ in range(steps):
                        step()
                    times[name].append((time.process_time() - start) / steps)
            base = statistics.median(times['SPOS'])
            rows = {}
            for name, values in times.items():
                med = statistics.median(values)
                rows[name] = {
                    'cpu_s_per_step': round(med, 5),
                    'spread_s': [round(min(values), 5), round(max(values), 5)],
                    'increase': None if name == 'SPOS' else round(med / base - 1, 4),
                    'paper_increase': PAPER_TABLE1.get(name, {}).get(sub),
                }
            result[sub] = rows
        return {
            'what': 'CPU seconds per SPOS training step of the NB201 supernet (process time, one thread), median over '
            'interleaved rounds; increase over SPOS next to the paper Table 1 (GTX 1080 Ti wall time of whole runs)',
            'setup': {
                'batch': batch,
                'channels': channels,
                'cells_per_stage': cells,
                'img_size': 32,
                'rounds': rounds,
                'steps_per_round': steps,
                'torch': torch.__version__,
            },
            'results': result,
        }
    finally:
        torch.set_num_threads(threads)
