"""Data for supernet training and rating: ImageNet-style folders through timm, a held-out split, seeded batches.

* :func:`holdout_split` takes ``per_class`` images of every class out of the training folder (the DNA papers rate
  candidates on 50 images per class from train) deterministically, and writes the lists to a JSON file that later
  runs reuse.
* :class:`SeededSamples` seeds each sample's augmentation (Python's, numpy's and torch's generators) from (seed,
  epoch, index), so the images a step sees do not depend on worker processes, ranks or resumption.
* :class:`GlobalBatchSampler` cuts a per-epoch permutation into global batches and each global batch into
  ``world_size x grad_accum`` contiguous micro-batches; micro-batch ``a * world_size + rank`` goes to ``rank`` at
  accumulation step ``a``. Two ranks and one rank with two accumulation steps therefore see the same chunks.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler

from backbones._runtime import atomic_write_json

from .engine import derive_seed, generator

__all__ = [
    'GlobalBatchSampler',
    'SeededSamples',
    'build_transform',
    'holdout_split',
    'image_folder',
    'write_synthetic_image_folder',
]

_IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.webp')


def image_folder(root: str | Path, transform: Any = None) -> Any:
    """timm's ``ImageDataset`` over a ``root/<class>/<image>`` folder (class indices in sorted order)."""
    from timm.data import create_dataset

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f'image folder {root} does not exist')
    dataset = create_dataset('', root=str(root), transform=transform)
    if len(dataset) == 0:
        raise ValueError(f'image folder {root} holds no images (expected {root}/<class>/<image>)')
    return dataset


def _relative_samples(dataset: Any, root: Path) -> list[str]:
    return [str(Path(path).resolve().relative_to(root.resolve())) for path, _ in dataset.reader.samples]


def holdout_split(
    train_root: str | Path, per_class: int = 50, seed: int = 0, path: str | Path | None = None
) -> dict[str, list[int]]:
    """Indices of the training folder split into ``train`` and ``holdout`` (``per_class`` images per class).

    The choice depends only on the sorted file list and ``seed``. With ``path``, the split is read from that
    JSON file when it exists (after checking it still matches the folder) and written there otherwise.
    """
    root = Path(train_root)
    dataset = image_folder(root)
    files = _relative_samples(dataset, root)
    if path is not None and Path(path).is_file():
        doc = json.loads(Path(path).read_text())
        index = {f: i for i, f in enumerate(files)}
        missing = [f for f in doc['holdout'] + doc['train'] if f not in index]
        if missing:
            raise ValueError(f'split file {path} names {len(missing)} images absent from {root}, e.g. {missing[0]}')
        return {part: [index[f] for f in doc[part]] for part in ('train', 'holdout')}
    by_class: dict[int, list[int]] = {}
    for i, (_, target) in enumerate(dataset.reader.samples):
        by_class.setdefault(int(target), []).append(i)
    holdout: list[int] = []
    for target, indices in sorted(by_class.items()):
        rng = random.Random(derive_seed(seed, 'holdout', target))
        if len(indices) <= per_class:
            raise ValueError(
                f'class {target} of {root} has {len(indices)} images: cannot hold out {per_class} and still train'
            )
        holdout.extend(sorted(rng.sample(indices, per_class)))
    held = set(holdout)
    split = {'train': [i for i in range(len(files)) if i not in held], 'holdout': holdout}
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        doc = {part: [files[i] for i in idx] for part, idx in split.items()}
        doc['per_class'], doc['seed'] = per_class, seed
        atomic_write_json(path, doc)  # block jobs sharing an output folder may write it at the same time
    return split


def build_transform(img_size: int, training: bool, **kwargs: Any) -> Any:
    """timm's ImageNet transform (RandomResizedCrop + flip + color jitter for training; resize + center crop)."""
    from timm.data import create_transform

    return create_transform(img_size, is_training=training, **kwargs)


class SeededSamples(Dataset):
    """Wraps a dataset so that ``dataset[(epoch, index)]`` draws its augmentation from its own seeded stream."""

    def __init__(self, dataset: Any, indices: Sequence[int] | None, seed: int) -> None:
        self.dataset = dataset
        self.indices = list(range(len(dataset))) if indices is None else list(indices)
        self.seed = seed

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key: tuple[int, int] | int) -> Any:
        import numpy as np

        epoch, index = key if isinstance(key, tuple) else (0, key)
        seed = derive_seed(self.seed, 'sample', epoch, index)
        py_state, np_state = random.getstate(), np.random.get_state()
        random.seed(seed)
        np.random.seed(seed % 2**32)  # timm's RandAugment picks its ops with numpy's global generator
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                return self.dataset[self.indices[index]]
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


class GlobalBatchSampler(Sampler):
    """Micro-batches of ``(epoch, index)`` keys for one rank; see the module docstring for the layout.

    ``start_step`` skips the optimizer steps already done in ``epoch`` (resume in the middle of an epoch).
    """

    def __init__(
        self,
        num_samples: int,
        global_batch: int,
        seed: int,
        epoch: int = 0,
        rank: int = 0,
        world_size: int = 1,
        grad_accum: int = 1,
        start_step: int = 0,
        shuffle: bool = True,
    ) -> None:
        chunks = world_size * grad_accum
        if global_batch % chunks:
            raise ValueError(
                f'global batch {global_batch} is not divisible by world_size x grad_accum = {world_size} x {grad_accum}'
            )
        if num_samples < global_batch:
            raise ValueError(f'{num_samples} samples cannot fill one global batch of {global_batch}')
        self.num_samples, self.global_batch, self.seed, self.epoch = num_samples, global_batch, seed, epoch
        self.rank, self.world_size, self.grad_accum = rank, world_size, grad_accum
        self.start_step, self.shuffle = start_step, shuffle
        self.micro = global_batch // chunks

    @property
    def steps_per_epoch(self) -> int:
        return self.num_samples // self.global_batch

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.start_step) * self.grad_accum

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        if self.shuffle:
            order = torch.randperm(self.num_samples, generator=generator(self.seed, 'order', self.epoch)).tolist()
        else:
            order = list(range(self.num_samples))
        for step in range(self.start_step, self.steps_per_epoch):
            batch = order[step * self.global_batch : (step + 1) * self.global_batch]
            for a in range(self.grad_accum):
                chunk = a * self.world_size + self.rank
                yield [(self.epoch, i) for i in batch[chunk * self.micro : (chunk + 1) * self.micro]]


def write_synthetic_image_folder(
    root: str | Path, num_classes: int = 4, per_class: int = 12, size: int = 40, seed: int = 0
) -> Path:
    """A small ImageNet-style folder of PNGs (class-dependent colour blobs) for tests, demos and smoke runs."""
    import numpy as np
    from PIL import Image

    root = Path(root)
    rng = np.random.default_rng(seed)
    for c in range(num_classes):
        folder = root / f'class_{c:03d}'
        folder.mkdir(parents=True, exist_ok=True)
        base = rng.uniform(40, 215, size=3)
        for i in range(per_class):
            img = rng.normal(base, 40, size=(size, size, 3))
            y, x = rng.integers(0, size // 2, size=2)
            img[y : y + size // 2, x : x + size // 2] += 60 * (c % 2 * 2 - 1)
            Image.fromarray(img.clip(0, 255).astype('uint8')).save(folder / f'img_{i:04d}.png')
    return root
