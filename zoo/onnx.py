"""ONNX export that checks its own result: export, simplify, ``onnx.checker``, then onnxruntime vs torch.

The exporter is torch's dynamo-based one (``torch.onnx.export(..., dynamo=True)``, the default of torch 2.14):
it traces with ``torch.export`` and handles the adaptive pooling and SDPA that the legacy TorchScript exporter
fails on. Weights are embedded (``external_data=False``) so one file is the whole model.

Parity is judged on the outputs' own scale: a randomly initialised MBConv model gives logits around 1e-5, so an
absolute tolerance would accept a file with entirely different weights. Each compared output (the logits, the
pre-logits feeding the classifier, or every feature level) must match torch within ``rtol`` of its largest
magnitude, ``max|ort - torch| / max|torch|``, and every sample must keep a cosine similarity of at least
``min_cosine``.
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

#: Opsets the export writes as asked. 18 is the lowest opset of torch's dynamo exporter (a lower request is
#: silently written as 18); 23 is the highest that torch 2.14 supports (``torch.onnx._constants.ONNX_MAX_OPSET``).
SUPPORTED_OPSETS = tuple(range(18, 24))
#: Default parity tolerances: relative to each output's largest magnitude, and per-sample cosine similarity.
RTOL = 1e-4
MIN_COSINE = 0.9999
PRE_LOGITS = 'pre_logits'


class OnnxParityError(RuntimeError):
    """onnxruntime's outputs do not reproduce torch's; the message names the file and the output."""


@dataclass
class OutputParity:
    """How closely onnxruntime reproduced one torch output on a random batch."""

    name: str
    max_abs_diff: float
    max_rel_diff: float  # max|ort - torch| / max|torch|
    min_cosine: float  # the smallest per-sample cosine similarity between ort and torch

    def line(self) -> str:
        """One human-readable line: the relative difference first, because it is the one that means something."""
        return (
            f'{self.name}: max rel. diff {self.max_rel_diff:.1e}, min cosine {self.min_cosine:.6f} '
            f'(max abs diff {self.max_abs_diff:.1e})'
        )


@dataclass
class OnnxReport:
    """What an export produced and how closely onnxruntime reproduced torch (``parity``: one entry per output)."""

    path: Path
    input_shape: tuple[int, ...]
    output_names: list[str]
    opset: int | None = None  # the ai.onnx opset written into the file (read back from its opset_import)
    parity: list[OutputParity] = field(default_factory=list)
    rtol: float = RTOL
    min_cosine: float = MIN_COSINE
    simplified: bool = False
    exporter: str = 'dynamo'
    notes: list[str] = field(default_factory=list)

    @property
    def max_abs_diff(self) -> float | None:
        """The largest absolute difference over the compared outputs (None without a check)."""
        return max((p.max_abs_diff for p in self.parity), default=None)

    @property
    def max_rel_diff(self) -> float | None:
        """The largest relative difference over the compared outputs (None without a check)."""
        return max((p.max_rel_diff for p in self.parity), default=None)

    @property
    def worst_cosine(self) -> float | None:
        """The smallest per-sample cosine similarity over the compared outputs (None without a check)."""
        return min((p.min_cosine for p in self.parity), default=None)


def _outputs(out: Any) -> list[torch.Tensor]:
    return list(out) if isinstance(out, list | tuple) else [out]


def compare_outputs(name: str, got: np.ndarray, ref: np.ndarray) -> OutputParity:
    """Compare an onnxruntime output with torch's on the output's own scale (see the module docstring)."""
    got, ref = np.asarray(got, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    if got.shape != ref.shape:
        raise OnnxParityError(f'output {name!r}: onnxruntime gives shape {got.shape}, torch {ref.shape}')
    diff = float(np.abs(got - ref).max()) if ref.size else 0.0
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    rel = diff / scale if scale > 0 else (0.0 if diff == 0 else float('inf'))
    a, b = got.reshape(len(got), -1), ref.reshape(len(ref), -1)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    same = np.all(a == b, axis=1)  # covers two all-zero samples, whose cosine is undefined
    cos = np.where(same, 1.0, (a * b).sum(axis=1) / np.where(norms > 0, norms, 1.0))
    return OutputParity(name, diff, rel, float(cos.min()) if len(cos) else 1.0)


def written_opset(path: str | PathLike) -> int:
    """The default-domain (ai.onnx) opset recorded in an ONNX file's ``opset_import``."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    versions = [o.version for o in proto.opset_import if o.domain in ('', 'ai.onnx')]
    if not versions:
        raise ValueError(f'{path}: the ONNX file imports no ai.onnx opset')
    return int(versions[0])


def _pre_logits_tensor(graph: Any, output: str) -> str | None:
    """The name of the tensor that enters the classifier producing ``output`` (a Gemm, or MatMul + Add)."""
    producer = {o: n for n in graph.node for o in n.output}
    node = producer.get(output)
    if node is not None and node.op_type == 'Add':
        node = next((producer[i] for i in node.input if i in producer and producer[i].op_type == 'MatMul'), None)
    if node is None or node.op_type not in ('Gemm', 'MatMul'):
        return None
    return node.input[0]


def check_onnx(
    path: str | PathLike,
    model: nn.Module,
    input_size: tuple[int, int, int] | None = None,
    batch_size: int = 1,
    rtol: float = RTOL,
    min_cosine: float = MIN_COSINE,
) -> list[OutputParity]:
    """Check that the ONNX file at ``path`` computes what ``model`` computes; returns one entry per output.

    Runs ``onnx.checker``, then onnxruntime and torch on the same random batch. A classifier's pre-logits (the
    input of its final Gemm) are compared as well as its logits, through an extra graph output added to an
    in-memory copy of the file. Raises :class:`OnnxParityError` naming the file and the first output off by more
    than ``rtol`` (relative to its largest magnitude) or below ``min_cosine``.
    """
    import onnx
    import onnxruntime as ort

    path = Path(path)
    model = model.eval().float().cpu()
    input_size = tuple(input_size or model.pretrained_cfg.get('input_size', (3, 224, 224)))
    onnx.checker.check_model(str(path), full_check=True)
    proto = onnx.load(str(path))
    x = torch.randn(batch_size, *input_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(x)
        ref = {n.name: t.numpy() for n, t in zip(proto.graph.output, _outputs(out), strict=False)}
        if len(proto.graph.output) != len(_outputs(out)):
            raise OnnxParityError(f'{path}: the file has {len(proto.graph.output)} outputs, torch {len(_outputs(out))}')
        classifier = model.get_classifier() if hasattr(model, 'get_classifier') else None
        tensor = None
        if isinstance(classifier, nn.Linear) and not isinstance(out, list | tuple):
            tensor = _pre_logits_tensor(proto.graph, proto.graph.output[0].name)
            if tensor is not None:
                ref[PRE_LOGITS] = model.forward_head(model.forward_features(x), pre_logits=True).numpy()
                proto.graph.output.append(onnx.helper.make_empty_tensor_value_info(tensor))
    session = ort.InferenceSession(proto.SerializeToString(), providers=['CPUExecutionProvider'])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    names = [o.name for o in session.get_outputs()]
    if tensor is not None:
        names[-1] = PRE_LOGITS
    parity = [compare_outputs(n, g, ref[n]) for n, g in zip(names, got, strict=True)]
    for p in parity:
        if not (p.max_rel_diff <= rtol and p.min_cosine >= min_cosine):
            raise OnnxParityError(
                f'{path}: onnxruntime does not reproduce torch on output {p.name!r}: max rel. diff '
                f'{p.max_rel_diff:.2e} (tolerance {rtol:g}), min cosine {p.min_cosine:.6f} (needs >= {min_cosine:g})'
            )
    return parity


def _check_input_size(model: nn.Module, input_size: tuple[int, ...]) -> None:
    if len(input_size) != 3 or not all(isinstance(v, int) and v > 0 for v in input_size):
        raise ValueError(f'input_size must be three positive ints (channels, height, width), got {input_size}')
    least = model.pretrained_cfg.get('min_input_size')
    if least and (input_size[1] < least[1] or input_size[2] < least[2]):
        name = model.pretrained_cfg.get('architecture') or type(model).__name__
        raise ValueError(
            f'{name}: input size {input_size[1]}x{input_size[2]} is below its min_input_size '
            f'{least[1]}x{least[2]} (pretrained_cfg)'
        )


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
    rtol: float = RTOL,
    min_cosine: float = MIN_COSINE,
    **create_kwargs: Any,
) -> OnnxReport:
    """Export a model (or a zoo name / spec, built with ``create_kwargs``) to ONNX and check it.

    ``input_size`` defaults to the model's ``pretrained_cfg['input_size']``; a size below its ``min_input_size``,
    or an ``opset`` outside :data:`SUPPORTED_OPSETS`, raises ``ValueError`` before anything is exported. With
    ``check``, :func:`check_onnx` compares onnxruntime with torch (logits and pre-logits, or every feature level)
    and raises :class:`OnnxParityError` past ``rtol`` / ``min_cosine``. features_only models export with one output
    per level. ``optimize`` runs the exporter's graph optimisations (off only to save time, e.g. in tests).
    """
    if opset not in SUPPORTED_OPSETS:
        raise ValueError(
            f'opset {opset} is not supported; supported: {", ".join(map(str, SUPPORTED_OPSETS))} '
            "(torch's dynamo exporter writes 18 and newer)"
        )
    if batch_size < 1:
        raise ValueError(f'batch_size must be >= 1, got {batch_size}')
    model = model_or_name if isinstance(model_or_name, nn.Module) else create_model(model_or_name, **create_kwargs)
    model = model.eval().float().cpu()
    input_size = tuple(input_size or model.pretrained_cfg.get('input_size', (3, 224, 224)))
    _check_input_size(model, input_size)
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
        import onnx
        import onnxslim

        onnx.save(onnxslim.slim(onnx.load(str(path))), str(path))
        report.simplified = True
    report.opset = written_opset(path)
    if report.opset != opset:
        raise RuntimeError(f'{path}: asked for opset {opset}, but the file declares opset {report.opset}')
    if check:
        report.rtol, report.min_cosine = rtol, min_cosine
        report.parity = check_onnx(path, model, input_size, batch_size, rtol=rtol, min_cosine=min_cosine)
    return report
