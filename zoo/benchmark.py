"""Throughput, latency and memory of zoo models next to timm peers, measured in one run so ratios mean something.

Backends: torch eager, ``torch.compile``, and onnxruntime (CPU). On CUDA, bf16 autocast and channels_last are
the documented fast path, and the peak memory of each run is recorded. Numbers go to docs/benchmarks.md, never
into timed tests.
"""

from __future__ import annotations

import json
import platform
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from .flops import count_macs, count_params

PEERS = ('resnet50', 'resnest50d', 'efficientnet_b0', 'efficientnet_b1', 'levit_256', 'deit_small_patch16_224')


@dataclass
class BenchResult:
    """One measurement: a model, a backend and a batch size in one mode."""

    model: str
    backend: str
    mode: str
    device: str
    dtype: str
    batch: int
    img_size: int
    img_per_s: float
    latency_ms: float
    peak_mem_mb: float | None
    params_m: float
    macs_g: float


def device_name(device: str) -> str:
    """A human name for the device the numbers were taken on."""
    if device.startswith('cuda'):
        return torch.cuda.get_device_name(torch.device(device))
    return f'{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)'


def _sync(device: str) -> None:
    if device.startswith('cuda'):
        torch.cuda.synchronize()


def _timed(step, device: str, warmup: int, iters: int) -> float:
    """Seconds per call of ``step`` after ``warmup`` calls."""
    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        step()
    _sync(device)
    return (time.perf_counter() - start) / iters


def bench_torch(
    model: nn.Module,
    batch: int,
    img_size: int,
    device: str = 'cpu',
    mode: str = 'infer',
    compile: bool = False,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    warmup: int = 3,
    iters: int = 10,
) -> tuple[float, float | None]:
    """(seconds per step, peak memory MB or None) of inference or of a training step (fwd + bwd + SGD)."""
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    fn = torch.compile(model) if compile else model
    x = torch.randn(batch, 3, img_size, img_size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    autocast = torch.autocast(device_type=device.split(':')[0], dtype=amp_dtype, enabled=amp_dtype is not None)
    if mode == 'infer':
        model.eval()

        def step() -> None:
            with torch.inference_mode(), autocast:
                fn(x)
    else:
        model.train()
        target = torch.randint(0, 1000, (batch,), device=device)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

        def step() -> None:
            with autocast:
                loss = F.cross_entropy(fn(x), target)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

    if device.startswith('cuda'):
        torch.cuda.reset_peak_memory_stats()
    seconds = _timed(step, device, warmup, iters)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.startswith('cuda') else None
    return seconds, peak


def bench_onnx_file(path: str | Path, batch: int, img_size: int, warmup: int = 3, iters: int = 10) -> float:
    """Seconds per inference batch of an exported ONNX file with onnxruntime on the CPU."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    x = {session.get_inputs()[0].name: torch.randn(batch, 3, img_size, img_size).numpy()}
    return _timed(lambda: session.run(None, x), 'cpu', warmup, iters)


def bench_onnxruntime(model: nn.Module, batch: int, img_size: int, warmup: int = 3, iters: int = 10) -> float:
    """Seconds per inference batch with onnxruntime on the CPU (the model is exported to a temporary file)."""
    from .onnx import export_onnx

    with tempfile.TemporaryDirectory() as tmp:
        report = export_onnx(model, Path(tmp) / 'm.onnx', input_size=(3, img_size, img_size), check=False)
        return bench_onnx_file(report.path, batch, img_size, warmup, iters)


def run(
    models: list[str],
    device: str = 'cpu',
    batches: tuple[int, ...] = (1, 32),
    backends: tuple[str, ...] = ('eager', 'compile', 'onnxruntime'),
    modes: tuple[str, ...] = ('infer',),
    img_size: int | None = None,
    amp: bool = True,
    warmup: int = 3,
    iters: int = 10,
) -> list[BenchResult]:
    """Benchmark every model x backend x mode x batch; on CUDA with bf16 autocast + channels_last if ``amp``."""
    import zoo  # noqa: F401  (registers the zoo's models with timm)

    on_cuda = device.startswith('cuda')
    if on_cuda:
        torch.backends.cudnn.benchmark = True  # as timm's benchmark.py: let cuDNN pick its fastest algorithms
    amp_dtype = torch.bfloat16 if on_cuda and amp else None
    results = []
    jobs = [(m, b, mode, bs) for m in models for b in backends for mode in modes for bs in batches]
    for name, backend, mode, batch in tqdm(jobs, desc='benchmark', unit='run'):
        if backend == 'onnxruntime' and (on_cuda or mode != 'infer'):
            continue
        model = timm.create_model(name)
        size = img_size or model.pretrained_cfg['input_size'][-1]
        params, macs = count_params(model), count_macs(model, (3, size, size))
        if backend == 'onnxruntime':
            seconds, peak = bench_onnxruntime(model, batch, size, warmup, iters), None
        else:
            seconds, peak = bench_torch(
                model, batch, size, device, mode, backend == 'compile', amp_dtype, on_cuda and amp, warmup, iters
            )
        results.append(
            BenchResult(
                name,
                backend,
                mode,
                device_name(device),
                str(amp_dtype or torch.float32).replace('torch.', ''),
                batch,
                size,
                batch / seconds,
                1000 * seconds,
                peak,
                params / 1e6,
                macs / 1e9,
            )
        )
        del model
        if on_cuda:
            torch.cuda.empty_cache()
    return results


def to_markdown(results: list[BenchResult]) -> str:
    """A Markdown table of the results (one row per measurement)."""
    head = (
        '| model | backend | mode | batch | img | dtype | img/s | latency (ms) | peak mem (MB) | params (M) | GMACs |'
    )
    lines = [head, '|' + '---|' * 11]
    for r in results:
        mem = '-' if r.peak_mem_mb is None else f'{r.peak_mem_mb:.0f}'
        lines.append(
            f'| {r.model} | {r.backend} | {r.mode} | {r.batch} | {r.img_size} | {r.dtype} | {r.img_per_s:.1f} | '
            f'{r.latency_ms:.2f} | {mem} | {r.params_m:.2f} | {r.macs_g:.2f} |'
        )
    devices = sorted({r.device for r in results})
    return '\n'.join([*lines, '', f'Device: {", ".join(devices)}; torch {torch.__version__}.', ''])


def save(results: list[BenchResult], out_dir: str | Path, stem: str = 'benchmark') -> dict[str, Any]:
    """Write ``<stem>.json`` and ``<stem>.md`` to ``out_dir``; returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f'{stem}.json', out_dir / f'{stem}.md'
    json_path.write_text(json.dumps([asdict(r) for r in results], indent=2))
    md_path.write_text(to_markdown(results))
    return {'json': json_path, 'markdown': md_path}


def add_arguments(parser: Any) -> None:
    """The command-line options of ``tools/benchmark.py`` and ``zoo benchmark``."""
    from ._cli_errors import non_negative_int, positive_int

    parser.add_argument('--models', nargs='*', default=[], help='zoo or timm model names (see zoo list)')
    parser.add_argument('--all', action='store_true', help='every model of the zoo')
    parser.add_argument('--peers', action='store_true', help=f'add timm peers: {", ".join(PEERS)}')
    parser.add_argument('--device', default='cpu', help='torch device: cpu, cuda, cuda:1 ... (default: cpu)')
    parser.add_argument(
        '--batches', nargs='+', type=positive_int, default=[1, 32], help='batch sizes to measure (default: 1 32)'
    )
    parser.add_argument(
        '--backends',
        nargs='+',
        default=['eager', 'compile', 'onnxruntime'],
        choices=['eager', 'compile', 'onnxruntime'],
        help='torch eager, torch.compile, onnxruntime (CPU inference only); default: all three',
    )
    parser.add_argument(
        '--modes', nargs='+', default=['infer'], choices=['infer', 'train'], help='inference and/or a training step'
    )
    parser.add_argument(
        '--img-size', type=positive_int, default=None, help="input resolution (default: each model's own)"
    )
    parser.add_argument('--no-amp', action='store_true', help='fp32 on CUDA instead of bf16 autocast')
    parser.add_argument('--warmup', type=non_negative_int, default=3, help='untimed iterations first (default: 3)')
    parser.add_argument('--iters', type=positive_int, default=10, help='timed iterations (default: 10)')
    parser.add_argument(
        '--out-dir', default='benchmarks', help='where benchmark.json and benchmark.md go (default: benchmarks)'
    )


def check_models(models: list[str], device: str) -> None:
    """Refuse unknown model names and an unavailable CUDA device before anything is built."""
    import zoo  # noqa: F401  (registers the zoo's models with timm)

    from .api import UnknownModelError

    unknown = [m for m in models if not timm.is_model(m.split('.', 1)[0])]
    if unknown:
        raise UnknownModelError(f'unknown model(s) {", ".join(unknown)}; see zoo list or timm.list_models()')
    if device.startswith('cuda') and not torch.cuda.is_available():
        raise ValueError(f'--device {device}: CUDA is not available on this machine; use --device cpu')


def run_from_args(args: Any) -> list[BenchResult]:
    """Run, print and save a benchmark described by parsed :func:`add_arguments` options."""
    from .api import list_models

    models = list(args.models) + (list_models() if args.all else []) + (list(PEERS) if args.peers else [])
    if not models:
        raise ValueError('name models with --models, or use --all / --peers')
    check_models(models, args.device)
    results = run(
        models,
        args.device,
        tuple(args.batches),
        tuple(args.backends),
        tuple(args.modes),
        args.img_size,
        not args.no_amp,
        args.warmup,
        args.iters,
    )
    print(to_markdown(results))
    print(save(results, args.out_dir))
    return results
