"""Stand-alone ground truth for rating accuracy: every architecture of a small space trained on a real dataset.

The inter-choice paper (Laube & Zell, arXiv 2104.11522, section 3.1.1 and App. A) rates supernets against
NAS-Bench-201's CIFAR-10 accuracies and against 50 SubImageNet architectures trained twice. Neither file can be
downloaded here, so this module makes a ground truth of the same kind at CPU scale:

* data: scikit-learn's ``load_digits`` (1,797 real 8x8 grey handwritten digits, UCI "Optical Recognition of
  Handwritten Digits", shipped inside the scikit-learn wheel), upsampled to ``img_size`` and split once per class,
  with a fixed seed, into train / held-out / test (:func:`make_split`). Supernets train on *train* and rate on
  *held-out*; the ground truth is the stand-alone *test* top-1, as in the paper (supernet on a held-out slice of
  the training set, ground truth on the test set).
* architectures: the ``nb201`` sub-spaces of :mod:`search.spaces.nb201` at reduced width, each trained with
  several seeds under one :class:`Recipe`; one line per (architecture, seed) is appended to ``results.jsonl``, so an
  interrupted run resumes where it stopped and a rerun skips what is done.
* :func:`summarize` writes ``groundtruth.json`` / ``.csv`` (per architecture: spec, key, test top-1 per seed and
  mean, held-out top-1, params, MACs, training time), ``truth.json`` (key -> mean test top-1, the file
  ``python -m search.rating`` takes) and the seed-to-seed Kendall tau, the noise ceiling of any rating method.

Command line: ``python -m search.groundtruth train|summarize|export|method`` (see ``--help``; ``method`` is the
end-to-end rating harness of :mod:`search.gt_harness`).
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import os
import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from backbones._flops import count_params
from backbones._runtime import atomic_write_json

from . import rating
from .engine import derive_seed, progress
from .spaces import get_space

__all__ = [
    'DEFAULT_SPLIT',
    'Recipe',
    'archs_for',
    'digits_images',
    'export_image_folder',
    'fit_architecture',
    'load_results',
    'make_split',
    'summarize',
    'to_tensor',
    'train_all',
    'train_architecture',
]

#: The split of the committed ground truth: per class, ``holdout`` and ``test`` images drawn with ``seed``; the
#: rest (about 95 a class) is the training set.
DEFAULT_SPLIT = {'holdout_per_class': 25, 'test_per_class': 60, 'seed': 0}
#: timm's ImageNet normalisation: what the search engine's image-folder pipeline applies to the same PNGs.
_MEAN, _STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
RESULTS = 'results.jsonl'
#: The families a ground truth can be made of (search spaces whose paths are these zoo networks).
FAMILIES = ('nb201', 'nats_size')


@dataclass(frozen=True)
class Recipe:
    """One stand-alone training recipe for every architecture (NAS-Bench-201's optimiser, shortened).

    NAS-Bench-201 (Dong & Yang, ICLR 2020, section 2.3) trains with SGD, Nesterov momentum 0.9, weight decay
    5e-4, learning rate 0.1 decayed by cosine to 0, batch 256; here the batch is 64 (about 950 training images)
    and the run a few epochs, with width and depth reduced to what a CPU trains in seconds.
    """

    subspace: str = 'only_conv'  # nb201 only
    channels: int = 8
    cells_per_stage: int = 1
    img_size: int = 16
    epochs: int = 3
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    family: str = 'nb201'  # or 'nats_size' (BossNAS's NATS-Bench size space; issue 13)
    widths: tuple[int, ...] | None = None  # nats_size: the width choices (default the space's 8..64)

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f'recipe family {self.family!r}: expected one of {sorted(FAMILIES)}')
        if self.widths is not None:
            if self.family != 'nats_size':
                raise ValueError('recipe widths: only the nats_size family has width choices')
            object.__setattr__(self, 'widths', tuple(int(w) for w in self.widths))

    @property
    def name(self) -> str:
        """What names the trained sub-space in logs and reports: the nb201 sub-space, else the family."""
        return self.subspace if self.family == 'nb201' else self.family

    def space(self) -> Any:
        """The space this recipe trains (its specs are the stand-alone networks)."""
        if self.family == 'nats_size':
            options = {} if self.widths is None else {'widths': self.widths}
            return get_space('nats_size', img_size=self.img_size, **options)
        return get_space(
            'nb201',
            subspace=self.subspace,
            channels=self.channels,
            cells_per_stage=self.cells_per_stage,
            img_size=self.img_size,
        )

    def space_config(self) -> dict[str, Any]:
        """``space`` and ``space_options`` of a search config whose paths are this recipe's networks."""
        if self.family == 'nats_size':
            return {'space': 'nats_size', 'space_options': {} if self.widths is None else {'widths': list(self.widths)}}
        options = {'subspace': self.subspace, 'channels': self.channels, 'cells_per_stage': self.cells_per_stage}
        return {'space': 'nb201', 'space_options': options}


def digits_images(img_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as uint8 ``(N, img_size, img_size)`` grey images (bilinear upsampling) and labels.

    The 8x8 images hold values 0..16; they are scaled to 0..255, then resized with PIL, the same bytes that
    :func:`export_image_folder` writes as PNG.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError('the ground truth needs scikit-learn: pip install scikit-learn (or the dev extra)') from err
    from PIL import Image

    digits = load_digits()
    raw = np.clip(np.rint(digits.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    if img_size == raw.shape[1]:
        return raw, digits.target.astype(np.int64)
    resized = [np.asarray(Image.fromarray(im, mode='L').resize((img_size, img_size), Image.BILINEAR)) for im in raw]
    return np.stack(resized), digits.target.astype(np.int64)


def make_split(labels: Sequence[int], holdout_per_class: int, test_per_class: int, seed: int) -> dict[str, list[int]]:
    """Stratified ``train`` / ``holdout`` / ``test`` indices: per class a seeded shuffle, test first, then held-out."""
    labels = np.asarray(labels)
    split: dict[str, list[int]] = {'train': [], 'holdout': [], 'test': []}
    for c in sorted(set(labels.tolist())):
        idx = np.flatnonzero(labels == c).tolist()
        if len(idx) <= holdout_per_class + test_per_class:
            raise ValueError(
                f'class {c} has {len(idx)} images: cannot take {test_per_class} test and {holdout_per_class} held-out '
                'images and still train'
            )
        random.Random(derive_seed(seed, 'groundtruth-split', c)).shuffle(idx)
        split['test'] += sorted(idx[:test_per_class])
        split['holdout'] += sorted(idx[test_per_class : test_per_class + holdout_per_class])
        split['train'] += sorted(idx[test_per_class + holdout_per_class :])
    return {k: sorted(v) for k, v in split.items()}


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 grey images -> normalised float ``(N, 3, H, W)``: the grey channel repeated, as timm reads a PNG."""
    x = torch.from_numpy(images).float().div_(255.0)[:, None].expand(-1, 3, -1, -1)
    mean = torch.tensor(_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(_STD).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous()


def archs_for(space: Any, count: int | None = None, seed: int = 0) -> list[tuple[int, ...]]:
    """Every architecture of ``space`` in enumeration order, or a seeded sample of ``count`` distinct ones."""
    allowed = [space.allowed(i) for i in range(len(space.num_choices))]
    every = list(itertools.product(*allowed))
    if count is None or count >= len(every):
        return every
    if count < 1:
        raise ValueError(f'count must be positive, got {count}')
    rng = random.Random(derive_seed(seed, 'groundtruth-sample', getattr(space, 'subspace', space.name)))
    return [every[i] for i in sorted(rng.sample(range(len(every)), count))]


@torch.no_grad()
def _top1(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 256) -> float:
    model.eval()
    correct = sum(int((model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum()) for i in range(0, len(x), batch))
    return 100.0 * correct / len(x)


def train_architecture(
    spec: dict, data: dict[str, tuple[torch.Tensor, torch.Tensor]], recipe: Recipe, seed: int
) -> dict:
    """Train ``spec`` from scratch on ``data['train']``; held-out and test top-1 (%) after the last epoch.

    ``seed`` fixes the initialisation and the batch order (the same for every architecture: common random numbers).
    """
    return fit_architecture(spec, data, recipe, seed)[1]


def fit_architecture(
    spec: dict, data: dict[str, tuple[torch.Tensor, torch.Tensor]], recipe: Recipe, seed: int
) -> tuple[torch.nn.Module, dict]:
    """:func:`train_architecture` that also returns the trained network (e.g. a teacher for DNA)."""
    import timm

    import backbones  # noqa: F401  (registers the families with timm)

    torch.manual_seed(derive_seed(seed, 'groundtruth-init'))
    model = timm.create_model(spec['family'], spec=spec, num_classes=10)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    opt = torch.optim.SGD(
        [{'params': decay, 'weight_decay': recipe.weight_decay}, {'params': no_decay, 'weight_decay': 0.0}],
        lr=recipe.lr,
        momentum=recipe.momentum,
        nesterov=True,
    )
    x, y = data['train']
    steps = len(x) // recipe.batch_size  # full batches only (BN with a batch of one would fail)
    if steps == 0:
        raise ValueError(f'{len(x)} training images cannot fill one batch of {recipe.batch_size}')
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps * recipe.epochs)
    g = torch.Generator().manual_seed(derive_seed(seed, 'groundtruth-order'))
    start = time.perf_counter()
    for _ in range(recipe.epochs):
        model.train()
        perm = torch.randperm(len(x), generator=g)
        for s in range(steps):
            idx = perm[s * recipe.batch_size : (s + 1) * recipe.batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    train_time = time.perf_counter() - start
    if not torch.isfinite(loss.detach()):
        raise RuntimeError(f'training diverged (loss {float(loss)}) for edges {spec["edges"]} seed {seed}')
    return model, {
        'test_top1': _top1(model, *data['test']),
        'holdout_top1': _top1(model, *data['holdout']),
        'final_loss': float(loss.detach()),
        'train_time_s': train_time,
        'params': count_params(model),
    }


def recipe_fields(recipe: Recipe) -> dict:
    """The recipe as recorded in ``recipe.json``: an nb201 recipe without the fields of other families (so the
    folders written before they existed still match), a nats_size one without nb201's."""
    doc = dataclasses.asdict(recipe)
    if recipe.family == 'nb201':
        doc.pop('family'), doc.pop('widths')
    else:
        for name in ('subspace', 'channels', 'cells_per_stage'):
            doc.pop(name)
        doc['widths'] = list(recipe.space().widths)
    return doc


def recipe_from(doc: dict) -> Recipe:
    """The :class:`Recipe` of a ``recipe.json``'s ``recipe`` mapping."""
    return Recipe(**doc)


def _recipe_doc(recipe: Recipe, split: dict) -> dict:
    return {'recipe': recipe_fields(recipe), 'split': split}


def load_results(out: str | Path) -> list[dict]:
    """The lines of ``out/results.jsonl`` (a line torn by a kill is skipped)."""
    path = Path(out) / RESULTS
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def _data(recipe: Recipe, split: dict) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    images, labels = digits_images(recipe.img_size)
    parts = make_split(labels, split['holdout_per_class'], split['test_per_class'], split['seed'])
    x, y = to_tensor(images), torch.from_numpy(labels)
    return {k: (x[idx], y[idx]) for k, idx in parts.items()}


def train_all(
    out: str | Path,
    recipe: Recipe,
    archs: Sequence[Sequence[int]],
    seeds: Sequence[int],
    split: dict | None = None,
    threads: int | None = None,
    show_progress: bool = True,
) -> list[dict]:
    """Train every (architecture, seed) not yet in ``out/results.jsonl``; returns all rows of this recipe.

    ``out/recipe.json`` records the recipe and split; a folder made with another recipe is refused (one clear
    error naming both) instead of mixing numbers from two recipes.
    """
    out = Path(out)
    split = dict(split or DEFAULT_SPLIT)
    doc = _recipe_doc(recipe, split)
    out.mkdir(parents=True, exist_ok=True)
    recipe_path = out / 'recipe.json'
    if recipe_path.is_file():
        written = json.loads(recipe_path.read_text())
        if written != doc:
            raise ValueError(
                f'{recipe_path} holds another recipe or split ({written}); this run asks for {doc}: use another '
                'output folder'
            )
    else:
        atomic_write_json(recipe_path, doc)
    space = recipe.space()
    parts = make_split(digits_images(8)[1], split['holdout_per_class'], split['test_per_class'], split['seed'])
    split_path = out / 'split.json'
    if not split_path.is_file():
        atomic_write_json(split_path, {**split, 'dataset': 'sklearn.datasets.load_digits', **parts})
    atomic_write_json(out / 'archs.json', {'subspace': recipe.name, 'archs': [list(a) for a in archs]})
    done = {(r['key'], r['seed']) for r in load_results(out)}
    todo = [(tuple(a), s) for a in archs for s in seeds if (space.key(a), s) not in done]
    if todo:
        old_threads = torch.get_num_threads()
        if threads:
            torch.set_num_threads(threads)
        data = _data(recipe, split)
        try:
            with open(out / RESULTS, 'a') as f:
                for arch, seed in progress(todo, enabled=show_progress, desc=f'ground truth {recipe.name}'):
                    spec = space.to_spec(arch)
                    row = {'key': space.key(arch), 'arch': list(arch), 'seed': seed, 'spec': spec}
                    row.update(train_architecture(spec, data, recipe, seed))
                    row['macs'] = space.cost(arch, 'flops')
                    f.write(json.dumps(row) + '\n')
                    f.flush()
                    os.fsync(f.fileno())
        finally:
            torch.set_num_threads(old_threads)
    return load_results(out)


def _choices(spec: dict) -> dict[str, list]:
    """What a table row shows of a spec: an nb201 cell's six edge ops, a nats_size network's five widths."""
    return {'edges': spec['edges']} if 'edges' in spec else {'channels': spec['channels']}


def _corr(fn: Any, a: Sequence[float], b: Sequence[float]) -> float | None:
    """A correlation, or ``None`` where it is undefined (a constant column: every network at the same accuracy)."""
    try:
        return fn(a, b)
    except ValueError:
        return None


def _mean_or_none(values: Sequence[float | None]) -> float | None:
    return None if any(v is None for v in values) else float(np.mean(values))


def summarize(out: str | Path, seeds: Sequence[int] | None = None) -> dict:
    """Per-architecture table, ``truth.json`` and the noise ceiling from ``out/results.jsonl``; returns the summary.

    Only architectures trained with every seed (of ``seeds``, default: every seed seen) enter the tables.
    """
    out = Path(out)
    rows = load_results(out)
    if not rows:
        raise FileNotFoundError(f'{out / RESULTS} holds no results: run `python -m search.groundtruth train` first')
    seeds = sorted({r['seed'] for r in rows}) if seeds is None else list(seeds)
    by_key: dict[str, dict[int, dict]] = {}
    for r in rows:
        by_key.setdefault(r['key'], {})[r['seed']] = r
    table = []
    for key, per_seed in by_key.items():
        if not all(s in per_seed for s in seeds):
            continue
        first = per_seed[seeds[0]]
        test = [per_seed[s]['test_top1'] for s in seeds]
        hold = [per_seed[s]['holdout_top1'] for s in seeds]
        table.append(
            {
                'key': key,
                'arch': first['arch'],
                **_choices(first['spec']),
                'spec': first['spec'],
                'test_top1': dict(zip(map(str, seeds), test, strict=True)),
                'test_top1_mean': float(np.mean(test)),
                'holdout_top1': dict(zip(map(str, seeds), hold, strict=True)),
                'holdout_top1_mean': float(np.mean(hold)),
                'params': first['params'],
                'macs': first['macs'],
                'train_time_s': dict(zip(map(str, seeds), [per_seed[s]['train_time_s'] for s in seeds], strict=True)),
            }
        )
    if len(table) < 2:
        raise ValueError(f'{out}: fewer than 2 architectures are trained with every seed {seeds}')
    table.sort(key=lambda r: r['key'])
    summary: dict[str, Any] = {
        'architectures': len(table),
        'seeds': seeds,
        'test_top1_mean': float(np.mean([r['test_top1_mean'] for r in table])),
        'test_top1_min': float(min(r['test_top1_mean'] for r in table)),
        'test_top1_max': float(max(r['test_top1_mean'] for r in table)),
        'train_time_s_total': float(sum(sum(r['train_time_s'].values()) for r in table)),
        'train_time_s_mean': float(np.mean([t for r in table for t in r['train_time_s'].values()])),
    }
    for s in seeds:
        summary[f'test_top1_mean_seed{s}'] = float(np.mean([r['test_top1'][str(s)] for r in table]))
    # The noise ceiling: how well one seed's stand-alone accuracy ranks another's (averaged over seed pairs); and,
    # as the inter-choice paper's App. A, how well a single run ranks the mean of the runs.
    test = {s: [r['test_top1'][str(s)] for r in table] for s in seeds}
    mean = [r['test_top1_mean'] for r in table]
    pairs = list(itertools.combinations(seeds, 2))
    for name, fn in (('kendall_tau', rating.kendall_tau), ('spearman_rho', rating.spearman_rho)):
        if pairs:
            summary[f'noise_ceiling_{name}'] = _mean_or_none([_corr(fn, test[a], test[b]) for a, b in pairs])
        summary[f'single_run_vs_mean_{name}'] = _mean_or_none([_corr(fn, test[s], mean) for s in seeds])
    summary['holdout_vs_test_kendall_tau'] = _corr(rating.kendall_tau, [r['holdout_top1_mean'] for r in table], mean)
    atomic_write_json(out / 'groundtruth.json', {'summary': summary, 'architectures': table})
    atomic_write_json(out / 'truth.json', {r['key']: r['test_top1_mean'] for r in table})
    column = next(iter(_choices(table[0]['spec'])))
    with open(out / 'groundtruth.csv', 'w', newline='') as f:
        w = csv.writer(f)
        w.writerow(
            [
                'key',
                column,
                *[f'test_top1_seed{s}' for s in seeds],
                'test_top1_mean',
                'holdout_top1_mean',
                'params',
                'macs',
                'train_time_s',
            ]
        )
        for r in table:
            w.writerow(
                [
                    r['key'],
                    ' '.join(map(str, r[column])),
                    *[f'{r["test_top1"][str(s)]:.3f}' for s in seeds],
                    f'{r["test_top1_mean"]:.3f}',
                    f'{r["holdout_top1_mean"]:.3f}',
                    r['params'],
                    int(r['macs']),
                    f'{sum(r["train_time_s"].values()):.2f}',
                ]
            )
    return summary


def export_image_folder(root: str | Path, img_size: int = 16, split: dict | None = None) -> dict[str, Any]:
    """Write the digits as ``root/train/<class>/<index>.png`` (train + held-out) and ``root/test/...``, plus
    ``root/holdout_split.json`` in the search engine's format, so ``python -m search`` trains on exactly the
    ground truth's training images and rates on its held-out ones. Idempotent (existing PNGs are kept)."""
    from PIL import Image

    root = Path(root)
    split = dict(split or DEFAULT_SPLIT)
    images, labels = digits_images(img_size)
    parts = make_split(labels, split['holdout_per_class'], split['test_per_class'], split['seed'])
    files: dict[str, list[str]] = {}
    for part, folder in (('train', 'train'), ('holdout', 'train'), ('test', 'test')):
        files[part] = []
        for i in parts[part]:
            rel = f'{labels[i]}/{i:04d}.png'
            path = root / folder / rel
            if not path.is_file():
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(images[i], mode='L').save(path)
            files[part].append(rel)
    doc = {
        'train': files['train'],
        'holdout': files['holdout'],
        'per_class': split['holdout_per_class'],
        'seed': split['seed'],
    }
    atomic_write_json(root / 'holdout_split.json', doc)
    return doc


def main(argv: Iterable[str] | None = None) -> int:
    """``python -m search.groundtruth``: see :mod:`search.gt_cli`."""
    from .gt_cli import main as cli_main

    return cli_main(argv)


if __name__ == '__main__':
    import sys

    sys.exit(main())
