"""ONNX export that checks its own result: export, simplify, ``onnx.checker``, then onnxruntime vs torch.

The exporter is torch's dynamo-based one (``torch.onnx.export(..., dynamo=True)``, the default of torch 2.14):
it traces with ``torch.export`` and handles the adaptive pooling and SDPA that the legacy TorchScript exporter
fails on. Weights are embedded (``external_data=False``) so one file is the whole model.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from .api import create_model


@dataclass
class OnnxReport:
    """What an export produced and how closely onnxruntime reproduced torch."""

    path: Path
    input_shape: tuple[int, ...]
    output_names: list[str]
    max_abs_diff: float | None = None
    simplified: bool = False
    exporter: str = 'dynamo'
    notes: list[str] = field(default_factory=list)


def _outputs(out: Any) -> list[torch.Tensor]:
    return list(out) if isinstance(out, list | tuple) else [out]


def export_onnx(
    model_or_name: nn.Module | str | dict,
    path: str | PathLike,
    input_size: tuple[int, int, int] | None = None,
    batch_size: int = 1,
    dynamic_batch: bool = True,
    opset: int = 18,
    check: bool = True,
    simplify: bool = True,
    optimize: bool = True,
    atol: float = 1e-4,
    **create_kwargs: Any,
) -> OnnxReport:
    """Export a model (or a zoo name / spec, built with ``create_kwargs``) to ONNX and check it.

    ``input_size`` defaults to the model's ``pretrained_cfg['input_size']``. With ``check``, the file passes
    ``onnx.checker`` and onnxruntime's outputs on a random batch match torch's within ``atol`` (fp32), else a
    ``RuntimeError`` reports the difference. features_only models export with one output per level. ``optimize``
    runs the exporter's graph optimisations (off only to save time, e.g. in tests that check parity).
    """
    import onnx
    import onnxruntime as ort

    model = model_or_name if isinstance(model_or_name, nn.Module) else create_model(model_or_name, **create_kwargs)
    model = model.eval().float().cpu()
    input_size = tuple(input_size or model.pretrained_cfg.get('input_size', (3, 224, 224)))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # torch.export specialises a dimension of size 1, so a dynamic batch is traced with 2 samples.
    trace_batch = max(batch_size, 2) if dynamic_batch else batch_size
    example = torch.randn(trace_batch, *input_size)
    with torch.no_grad():
        out = model(example)
    names = [f'features_{i}' for i in range(len(out))] if isinstance(out, list | tuple) else ['logits']
    dynamic_shapes = ({0: torch.export.Dim('batch', min=1, max=4096)},) if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=True,
            opset_version=opset,
            optimize=optimize,
            input_names=['input'],
            output_names=names,
            dynamic_shapes=dynamic_shapes,
            external_data=False,
            verbose=False,
        )
    report = OnnxReport(path=path, input_shape=(batch_size, *input_size), output_names=names)
    if simplify:
        import onnxslim

        onnx.save(onnxslim.slim(onnx.load(str(path))), str(path))
        report.simplified = True
    if check:
        onnx.checker.check_model(str(path), full_check=True)
        x = torch.randn(batch_size, *input_size)
        with torch.no_grad():
            ref = [t.numpy() for t in _outputs(model(x))]
        session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        if len(got) != len(ref):
            raise RuntimeError(f'{path}: onnxruntime returned {len(got)} outputs, torch {len(ref)}')
        report.max_abs_diff = max(float(np.abs(a - b).max()) for a, b in zip(got, ref, strict=True))
        if report.max_abs_diff > atol:
            raise RuntimeError(f'{path}: onnxruntime differs from torch by {report.max_abs_diff:.2e} (> {atol:g})')
    return report
