"""A base class for search spaces: generic sampling, mutation, crossover and size over per-decision choices.

A space subclasses :class:`ChoiceSpace`, says how many options each decision has (``num_choices``) and implements
what only it knows (``to_spec`` / ``from_spec``, ``cost``, ``extremes``, ``build_supernet``). Spaces whose later
decisions are unused for some earlier ones (a cell of 2 layers in a block whose deepest cell has 4) override
``canonical`` to zero the unused decisions, so that one network has one :data:`~search.protocols.Arch`.
Mutation and crossover follow SPOS (Guo et al., ECCV 2020, section 3.4 and its official ``search.py``): each
decision is redrawn uniformly with probability ``prob``; a child takes each decision from either parent with
probability 1/2.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Hashable, Sequence

import torch
import torch.nn as nn

from ..protocols import Arch

__all__ = ['LATENCY_RUNTIMES', 'ChoiceSpace', 'measured_latency', 'onnx_latency']

_LATENCIES: dict[tuple[Hashable, Arch], float] = {}


#: Runtimes :func:`measured_latency` times a network in.
LATENCY_RUNTIMES = ('torch', 'onnxruntime')


@torch.no_grad()
def measured_latency(
    space: Hashable,
    arch: Arch,
    build: Callable[[], nn.Module],
    img_size: int,
    runs: int = 10,
    runtime: str = 'torch',
) -> float:
    """Seconds per forward of ``build()`` (eval, CPU, batch 1, ``img_size`` pixels): the median of ``runs`` after one
    warm-up pass, measured once per (space, arch, runtime) and then read from a cache, so that a search sees stable
    costs. ``runtime='onnxruntime'`` times the ONNX export of the network in onnxruntime's CPU provider (NASViT's
    B0-B2 were searched for CPU latency at batch 1, paper Tab. 12); see :func:`onnx_latency`."""
    if runtime not in LATENCY_RUNTIMES:
        raise ValueError(f'latency runtime {runtime!r}: expected one of {LATENCY_RUNTIMES}')
    key = (space, arch) if runtime == 'torch' else (space, arch, runtime)
    if key not in _LATENCIES:
        net = build().eval()
        if runtime == 'onnxruntime':
            _LATENCIES[key] = onnx_latency(net, img_size, runs)
            return _LATENCIES[key]
        x = torch.zeros(1, 3, img_size, img_size)
        net(x)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            net(x)
            times.append(time.perf_counter() - start)
        _LATENCIES[key] = statistics.median(times)
    return _LATENCIES[key]


def onnx_latency(net: nn.Module, img_size: int, runs: int = 10) -> float:
    """Seconds per batch-1 inference of ``net`` exported to ONNX (torch's dynamo exporter, weights embedded) and run
    by onnxruntime on the CPU with torch's thread count: the median of ``runs`` after one warm-up run."""
    import tempfile
    import warnings
    from pathlib import Path

    try:
        import numpy as np
        import onnxruntime as ort
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError('latency in onnxruntime needs the onnx extra: pip install supernet-zoo[onnx]') from err
    x = torch.zeros(1, 3, img_size, img_size)
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        warnings.simplefilter('ignore')
        path = str(Path(folder) / 'net.onnx')
        torch.onnx.export(
            net.float().cpu(), (x,), path, dynamo=True, external_data=False, input_names=['input'], verbose=False
        )
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        session = ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])
    feed = {session.get_inputs()[0].name: np.zeros((1, 3, img_size, img_size), dtype=np.float32)}
    session.run(None, feed)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class ChoiceSpace:
    """Generic parts of a :class:`~search.protocols.SearchSpace`; subclasses provide ``name`` and ``num_choices``."""

    name: str

    @property
    def num_choices(self) -> tuple[int, ...]:
        raise NotImplementedError(f'{type(self).__name__} must define num_choices')

    def allowed(self, i: int) -> tuple[int, ...]:
        """Options decision ``i`` allows (all of them here; a masked sub-space returns fewer)."""
        return tuple(range(self.num_choices[i]))

    def canonical(self, arch: Sequence[int]) -> Arch:
        """The one representative of ``arch`` (identity here; see the module docstring)."""
        return tuple(int(x) for x in arch)

    def check(self, arch: Sequence[int]) -> Arch:
        """``arch`` as a canonical tuple; a wrong length or a disallowed option raises naming the decision."""
        arch = tuple(arch)
        if len(arch) != len(self.num_choices):
            raise ValueError(f'space {self.name!r} has {len(self.num_choices)} decisions, the architecture {len(arch)}')
        for i, x in enumerate(arch):
            if isinstance(x, bool) or not isinstance(x, int) or x not in self.allowed(i):
                raise ValueError(f'space {self.name!r} decision {i}: option {x!r} is not allowed {self.allowed(i)}')
        return self.canonical(arch)

    @property
    def size(self) -> int:
        """Number of architectures (the product of the allowed options; override when decisions are unused)."""
        return math.prod(len(self.allowed(i)) for i in range(len(self.num_choices)))

    def _draw(self, i: int, generator: torch.Generator) -> int:
        options = self.allowed(i)
        return options[int(torch.randint(len(options), (1,), generator=generator))]

    def sample(self, generator: torch.Generator) -> Arch:
        """Every decision uniform over its allowed options."""
        return self.canonical([self._draw(i, generator) for i in range(len(self.num_choices))])

    def mutate(self, arch: Arch, generator: torch.Generator, prob: float) -> Arch:
        """Each decision redrawn uniformly with probability ``prob`` (the draw may repeat the old option)."""
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f'mutation probability {prob} is not in [0, 1]')
        arch = self.check(arch)
        out = []
        for i, x in enumerate(arch):
            redraw = float(torch.rand((), generator=generator)) < prob
            out.append(self._draw(i, generator) if redraw else x)
        return self.canonical(out)

    def crossover(self, a: Arch, b: Arch, generator: torch.Generator) -> Arch:
        """Each decision taken from ``a`` or ``b`` with probability 1/2."""
        a, b = self.check(a), self.check(b)
        pick = torch.randint(2, (len(a),), generator=generator).tolist()
        return self.canonical([x if p == 0 else y for x, y, p in zip(a, b, pick, strict=True)])

    def check_path_spec(self, spec: dict, expected: dict) -> None:
        """Refuse a spec that is not ``expected`` (the spec of the path it decodes to), naming the fields that
        differ: what ``from_spec`` checks after decoding."""
        fields = sorted(k for k in set(spec) | set(expected) if spec.get(k) != expected.get(k))
        if fields:
            raise ValueError(
                f'spec is not a path of space {self.name!r}: field(s) {fields} differ (expected {expected})'
            )

    def key(self, arch: Arch) -> str:
        """Decisions joined by '-' (canonical, so equal networks have equal keys)."""
        return '-'.join(str(x) for x in self.check(arch))

    def __contains__(self, arch: object) -> bool:
        try:
            self.check(arch)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return False
        return True


@torch.no_grad()
def cpu_latency(model: nn.Module, img_size: int, runs: int = 10) -> float:
    """Seconds per forward of ``model`` (eval) on one ``img_size`` image: the median of ``runs`` after a warm-up."""
    model.eval()
    x = torch.zeros(1, 3, img_size, img_size)
    model(x)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - start)
    return statistics.median(times)
