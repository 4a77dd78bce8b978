"""The end-to-end tour behind ``make demo`` / ``zoo demo``: build every model, run it, compare with the papers."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from .api import create_model, list_models, model_info

#: the models the demo exports to ONNX: one CNN, one hybrid with attention
ONNX_MODELS = ('dna_c', 'bossnet_t0')

COLUMNS = (
    ('model', 'Model'),
    ('paper', 'Paper'),
    ('params', 'Params (M) ours / paper'),
    ('flops', 'FLOPs (M) ours* / paper'),
    ('delta', 'FLOPs diff'),
    ('top1', 'Paper top-1'),
    ('source', 'Source'),
)


def measure_row(name: str) -> dict[str, Any]:
    """Measure one model: params, FLOPs under its paper's rule, and a forward pass with a finite output."""
    info = model_info(name, measure=True)
    model = create_model(name).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, info['input_size'], info['input_size']))
    if out.shape != (2, 1000) or not torch.isfinite(out).all():
        raise RuntimeError(f'{name}: forward gave shape {tuple(out.shape)} or non-finite logits')
    flops = info['measured_flops_rule_m']
    label = f'{name} (reconstruction)' if info['reconstructed'] else name
    return {
        'model': label,
        'paper': info['paper'],
        'params': f'{info["measured_params_m"]:.3f} / {"-" if info["params_m"] is None else info["params_m"]}',
        'flops': f'{flops:.0f} / {info["flops_m"]:g}',
        'delta': f'{100 * (flops / info["flops_m"] - 1):+.1f}%',
        'top1': '-' if info['top1'] is None else f'{info["top1"]}',
        'source': info['source_table'],
    }


def to_markdown(rows: list[dict[str, Any]]) -> str:
    """Render demo rows as a Markdown table with a footnote on the counting rule."""
    lines = ['| ' + ' | '.join(title for _, title in COLUMNS) + ' |', '|' + '---|' * len(COLUMNS)]
    lines += ['| ' + ' | '.join(str(row[key]) for key, _ in COLUMNS) + ' |' for row in rows]
    lines.append('')
    lines.append(
        "*ours: conv/linear/matmul MACs from torch.utils.flop_counter at the paper's input size, converted with "
        "the paper's counting rule (see `zoo.model_info(name)['flops_rule']`)."
    )
    return '\n'.join(lines) + '\n'


def onnx_chapter(names: tuple[str, ...] = ONNX_MODELS, out_dir: str | Path | None = None) -> str:
    """Export models to ONNX, check them in onnxruntime, and compare CPU latency of torch and onnxruntime."""
    from .benchmark import bench_onnx_file, bench_torch
    from .onnx import RTOL, export_onnx

    lines = [
        '| Model | ONNX file | opset | max rel. diff vs torch | min cosine | torch eager (ms) | onnxruntime (ms) |',
        '|---|---|---|---|---|---|---|',
    ]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(out_dir or tmp)
        for name in tqdm(names, desc='exporting to ONNX', unit='model'):
            model = create_model(name).eval()
            size = model.pretrained_cfg['input_size'][-1]
            report = export_onnx(model, folder / f'{name}.onnx')
            torch_s, _ = bench_torch(model, 1, size, warmup=2, iters=5)
            ort_s = bench_onnx_file(report.path, 1, size, warmup=2, iters=5)
            shown = report.path if out_dir else report.path.name
            lines.append(
                f'| {name} | {shown} | {report.opset} | {report.max_rel_diff:.1e} | {report.worst_cosine:.6f} '
                f'| {1000 * torch_s:.1f} | {1000 * ort_s:.1f} |'
            )
    lines += [
        '',
        'max rel. diff: max|onnxruntime - torch| / max|torch|, the worst of logits and pre-logits on a random batch '
        f'(export fails above {RTOL:g}); min cosine: the smallest per-sample cosine similarity.',
    ]
    return '\n'.join([*lines, '', f'CPU, batch 1, {torch.get_num_threads()} threads, fp32.', ''])


#: The demo's search: DNA on the tiny MBConv space (configs/search/dna_tiny.yaml), small enough for a CPU.
TINY_DNA = dict(
    space='tiny',
    teacher='test_efficientnet',
    teacher_pretrained=False,
    img_size=32,
    epochs=2,
    batch_size=8,
    lr=(0.002, 0.005),
    holdout_per_class=3,
    rating_images=12,
    rating_batch=8,
    calib_batches=2,
    metric='params',
    top_k=3,
    amp=False,
    workers=0,
    ckpt_every=4,
    device='cpu',
)


def search_chapter(out_dir: str | Path | None = None) -> str:
    """A tiny DNA search on generated images (CPU, about a minute): train the supernet, rate every candidate,
    search exactly, then build the best spec with timm and export it to ONNX."""
    import time

    import timm

    from search import data, engine
    from search.methods import dna

    from .onnx import export_onnx

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny networks run faster on one thread than on two that fight
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(out_dir or tmp)
            data.write_synthetic_image_folder(folder / 'data' / 'train', num_classes=4, per_class=12, size=40)
            cfg = dna.DNAConfig(data_dir=str(folder / 'data'), output=str(folder / 'dna_run'), **TINY_DNA)
            start = time.perf_counter()
            found = dna.run(cfg, engine.init_distributed('cpu'))
            seconds = time.perf_counter() - start
            best = found[0]
            model = timm.create_model('mbconv', spec=best['spec'], num_classes=4).eval()
            report = export_onnx(model, folder / 'dna_tiny_top1.onnx', input_size=(3, 32, 32))
    finally:
        torch.set_num_threads(threads)
    lines = [
        f'DNA on the tiny MBConv space ({cfg.epochs} epochs of supernet training, every candidate rated, exact '
        f'search), {seconds:.0f} s on the CPU. Best architectures (score: summed relative L1 of Eq. 7):',
        '',
        '| rank | score | params | blocks (cell, ops) |',
        '|---|---|---|---|',
    ]
    for item in found:
        arch = '; '.join(f'{c}:{"-".join(ops)}' for c, ops in item['choices'])
        lines.append(f'| {item["rank"]} | {item["score"]:.4f} | {item["cost"]:,.0f} | {arch} |')
    lines += [
        '',
        f'`timm.create_model("mbconv", spec=...)` builds the best one ({sum(p.numel() for p in model.parameters()):,} '
        f'parameters with a 4-class head); its ONNX export matches torch within a relative difference of '
        f'{report.max_rel_diff:.1e} (logits and pre-logits).',
        '',
    ]
    return '\n'.join(lines)


def run_demo(out: str | Path | None = None, pattern: str = '*', onnx: bool = True, search: bool = True) -> str:
    """Measure every catalog model matching ``pattern`` and print the table; then, with ``onnx``, export two
    models, check them in onnxruntime and print the latency table; with ``search``, run a tiny DNA search.
    Writes everything to ``out`` if given."""
    torch.manual_seed(0)
    names = list_models(pattern)
    rows = [measure_row(name) for name in tqdm(names, desc='building and measuring models', unit='model')]
    report = to_markdown(rows)
    print(report)
    if onnx:
        chapter = onnx_chapter()
        print(chapter)
        report += '\n## ONNX export and CPU latency\n\n' + chapter
    if search:
        chapter = search_chapter()
        print(chapter)
        report += '\n## Search: a tiny DNA run\n\n' + chapter
    if out is not None:
        Path(out).write_text(report)
        print(f'report written to {out}')
    return report
