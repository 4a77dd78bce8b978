"""Write tiny ADE20K-, Cityscapes- and COCO-format datasets, to smoke-test training configs offline in seconds.

``--imagenet`` writes instead a small ImageNet-style folder ``OUT_DIR/imagenet/train/<class>/<image>`` for a
search on a CPU (``python -m search dna --config configs/search/dna_tiny.yaml --data-dir OUT_DIR/imagenet``).

The layouts are exactly those mmseg's ``ADE20KDataset`` / ``CityscapesDataset`` and mmdet's ``CocoDataset``
read, so a real config runs on them with only ``data_root`` (and the crop) changed. Images hold a few coloured
rectangles whose class is also in the labels, so a loss can go down.

Usage: python tools/make_tiny_datasets.py OUT_DIR [--num-train 4] [--num-val 2] [--size 64]
       python tools/make_tiny_datasets.py OUT_DIR --imagenet [--num-classes 4] [--num-train 12] [--size 40]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

#: Categories the tiny COCO objects use (ids and names of the real COCO categories).
COCO_CATEGORIES = [(1, 'person'), (2, 'bicycle'), (3, 'car')]


def _coco_category_list() -> list[dict]:
    """All 80 COCO category names when mmdet is installed (so an 80-class config evaluates), else the three used."""
    try:
        from mmdet.datasets import CocoDataset

        names = list(CocoDataset.METAINFO['classes'])
    except ImportError:
        names = [name for _, name in COCO_CATEGORIES]
    used = {name: cid for cid, name in COCO_CATEGORIES}
    ids = iter(i for i in range(1, 1000) if i not in used.values())
    return [dict(id=used.get(name) or next(ids), name=name, supercategory='tiny') for name in names]


def _scene(rng: np.random.Generator, size: int, num_classes: int, boxes: int = 3) -> tuple[np.ndarray, list]:
    """An RGB image with ``boxes`` filled rectangles; returns the image and ``[(class, x0, y0, x1, y1)]``."""
    image = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
    objects = []
    for _ in range(boxes):
        cls = int(rng.integers(0, num_classes))
        w, h = (int(v) for v in rng.integers(size // 6, size // 2, 2))
        x0, y0 = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
        colour = np.array([(cls * 53) % 256, (cls * 97 + 80) % 256, (cls * 151 + 160) % 256], dtype=np.uint8)
        image[y0 : y0 + h, x0 : x0 + w] = colour
        objects.append((cls, x0, y0, x0 + w, y0 + h))
    return image, objects


def _label_map(objects: list, size: int, offset: int, background: int) -> np.ndarray:
    label = np.full((size, size), background, dtype=np.uint8)
    for cls, x0, y0, x1, y1 in objects:
        label[y0:y1, x0:x1] = cls + offset
    return label


def make_ade20k(root: Path, num_train: int, num_val: int, size: int, seed: int = 0) -> Path:
    """ADE20K layout: ``images/{training,validation}/*.jpg`` and ``annotations/.../*.png`` (0 = ignore)."""
    rng = np.random.default_rng(seed)
    for split, count in (('training', num_train), ('validation', num_val)):
        (root / 'images' / split).mkdir(parents=True, exist_ok=True)
        (root / 'annotations' / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image, objects = _scene(rng, size, num_classes=150)
            name = f'ADE_{split[:5]}_{i:08d}'
            Image.fromarray(image).save(root / 'images' / split / f'{name}.jpg', quality=95)
            # reduce_zero_label: stored labels are 1..150, background 0 is ignored; here background is class 1
            Image.fromarray(_label_map(objects, size, offset=1, background=1)).save(
                root / 'annotations' / split / f'{name}.png'
            )
    return root


def make_cityscapes(root: Path, num_train: int, num_val: int, size: int, seed: int = 1) -> Path:
    """Cityscapes layout: ``leftImg8bit/{train,val}/<city>/*_leftImg8bit.png`` + ``gtFine/..._labelTrainIds.png``."""
    rng = np.random.default_rng(seed)
    for split, count in (('train', num_train), ('val', num_val)):
        img_dir, ann_dir = root / 'leftImg8bit' / split / 'tiny', root / 'gtFine' / split / 'tiny'
        img_dir.mkdir(parents=True, exist_ok=True)
        ann_dir.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image, objects = _scene(rng, size, num_classes=19)
            stem = f'tiny_{i:06d}_000019'
            Image.fromarray(image).save(img_dir / f'{stem}_leftImg8bit.png')
            label = _label_map(objects, size, offset=0, background=0)  # train ids 0..18 (0 = road)
            Image.fromarray(label).save(ann_dir / f'{stem}_gtFine_labelTrainIds.png')
    return root


def _polygon(x0: int, y0: int, x1: int, y1: int) -> list[float]:
    return [float(v) for v in (x0, y0, x1, y0, x1, y1, x0, y1)]


def make_coco(root: Path, num_train: int, num_val: int, size: int, seed: int = 2) -> Path:
    """COCO layout: ``{train,val}2017/*.jpg`` and ``annotations/instances_{train,val}2017.json`` (boxes + masks)."""
    rng = np.random.default_rng(seed)
    (root / 'annotations').mkdir(parents=True, exist_ok=True)
    categories = _coco_category_list()
    ann_id = 1
    for split, count in (('train2017', num_train), ('val2017', num_val)):
        (root / split).mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for i in range(count):
            image, objects = _scene(rng, size, num_classes=len(COCO_CATEGORIES))
            image_id = i + 1
            file_name = f'{image_id:012d}.jpg'
            Image.fromarray(image).save(root / split / file_name, quality=95)
            images.append(dict(id=image_id, file_name=file_name, width=size, height=size))
            for cls, x0, y0, x1, y1 in objects:
                w, h = x1 - x0, y1 - y0
                annotations.append(
                    dict(
                        id=ann_id,
                        image_id=image_id,
                        category_id=COCO_CATEGORIES[cls][0],
                        bbox=[float(x0), float(y0), float(w), float(h)],
                        area=float(w * h),
                        segmentation=[_polygon(x0, y0, x1, y1)],
                        iscrowd=0,
                    )
                )
                ann_id += 1
        doc = dict(images=images, annotations=annotations, categories=categories)
        (root / 'annotations' / f'instances_{split}.json').write_text(json.dumps(doc))
    return root


def make_all(out: str | Path, num_train: int = 4, num_val: int = 2, size: int = 64) -> dict[str, Path]:
    """Write the three tiny sets under ``out`` (``ade20k/``, ``cityscapes/``, ``coco/``); returns their roots."""
    out = Path(out)
    return {
        'ade20k': make_ade20k(out / 'ade20k', num_train, num_val, size),
        'cityscapes': make_cityscapes(out / 'cityscapes', num_train, num_val, size),
        'coco': make_coco(out / 'coco', num_train, num_val, size),
    }


def make_imagenet(root: str | Path, num_classes: int = 4, per_class: int = 12, size: int = 40) -> Path:
    """ImageNet layout for the search and retraining CLIs: ``root/train/<class>/<image>``; returns ``root``."""
    from search.data import write_synthetic_image_folder

    write_synthetic_image_folder(Path(root) / 'train', num_classes=num_classes, per_class=per_class, size=size)
    return Path(root)


def main(argv: list[str] | None = None) -> int:
    """Parse the options and write the sets; a bad number prints one line and returns 2."""
    from zoo._cli_errors import positive_int, run_cli

    parser = argparse.ArgumentParser(prog='make_tiny_datasets.py', description=__doc__.splitlines()[0])
    parser.add_argument('out', help='output folder')
    parser.add_argument(
        '--imagenet', action='store_true', help='write OUT/imagenet/train/<class>/<image> (for a search) instead'
    )
    parser.add_argument('--num-classes', type=positive_int, default=4, help='classes of --imagenet (default: 4)')
    parser.add_argument(
        '--num-train', type=positive_int, default=None, help='training images (per class: 12 with --imagenet)'
    )
    parser.add_argument('--num-val', type=positive_int, default=2, help='validation images (default: 2)')
    parser.add_argument('--size', type=positive_int, default=None, help='image side in pixels (default 64; 40)')
    args = parser.parse_args(argv)

    def write() -> None:
        if args.imagenet:
            root = make_imagenet(Path(args.out) / 'imagenet', args.num_classes, args.num_train or 12, args.size or 40)
            print(f'imagenet: {root}')
            return
        for name, root in make_all(args.out, args.num_train or 4, args.num_val, args.size or 64).items():
            print(f'{name}: {root}')

    return run_cli(write, prog=parser.prog)


if __name__ == '__main__':
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout: find zoo/ and search/
    sys.exit(main())
