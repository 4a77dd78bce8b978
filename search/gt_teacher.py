"""A stand-alone trained network of the ground-truth space, saved as a teacher for block-wise distillation (DNA).

DNA needs a teacher; on the ground-truth space the one that "fits" (issue 12) is a network of the space itself,
trained stand-alone like the ground truth, on the same training images only (never the held-out or test images).
By default the space's largest architecture (every edge its dearest op: Conv3x3 in the only-Conv and no-Zero
sub-spaces) is chosen, a choice made without looking at the ground truth; ``--arch KEY`` picks any ground-truth
architecture. The file is safetensors with the spec in its metadata, which ``dna_cell`` reads.

``python -m search.groundtruth teacher --truth benchmarks/groundtruth/only_conv --epochs 10 --out teacher.safetensors``
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from backbones._runtime import atomic_write, atomic_write_json

from . import groundtruth as gt
from .gt_harness import load_truth

__all__ = ['train_teacher']


def _pick_arch(space: Any, truth: dict, arch: str) -> tuple[int, ...]:
    if arch == 'largest':
        return space.extremes()[1]
    for row in truth['architectures']:
        if row['key'] == arch:
            return tuple(row['arch'])
    keys = [row['key'] for row in truth['architectures']][:5]
    raise KeyError(f'--arch {arch!r} is neither "largest" nor a ground-truth architecture key (e.g. {keys})')


def train_teacher(
    truth_dir: str | Path,
    out: str | Path,
    arch: str = 'largest',
    seed: int = 1,
    epochs: int | None = None,
    overwrite: bool = False,
    threads: int | None = None,
) -> dict[str, Any]:
    """Train the teacher with the ground truth's recipe (``epochs`` replaces its epochs); write ``out``
    (safetensors, metadata ``spec`` / ``recipe`` / ``test_top1``) and ``out`` + ``.json``; returns the metrics."""
    out = Path(out)
    if out.suffix != '.safetensors':
        raise ValueError(f'{out}: the teacher file must end in .safetensors')
    if out.exists() and not overwrite:
        raise FileExistsError(f'{out} exists: pass --overwrite to replace it')
    truth = load_truth(truth_dir)
    recipe = gt.recipe_from(truth['recipe'])
    if epochs is not None:
        if epochs < 1:
            raise ValueError(f'--epochs must be >= 1, got {epochs}')
        recipe = dataclasses.replace(recipe, epochs=epochs)
    space = recipe.space()
    spec = space.to_spec(_pick_arch(space, truth, arch))
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        model, metrics = gt.fit_architecture(spec, gt._data(recipe, truth['split']), recipe, seed)
    finally:
        torch.set_num_threads(old_threads)
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    meta = {
        'family': 'nb201',
        'spec': json.dumps(spec),
        'recipe': json.dumps(dataclasses.asdict(recipe)),
        'seed': str(seed),
        'test_top1': f'{metrics["test_top1"]:.4f}',
    }
    atomic_write(out, lambda tmp: save_file(state, tmp, metadata=meta))
    doc = {'spec': spec, 'recipe': dataclasses.asdict(recipe), 'seed': seed, 'truth': str(truth_dir), **metrics}
    atomic_write_json(out.with_suffix('.json'), doc)
    return doc
