"""BN recalibration of a network: re-estimate every BatchNorm's statistics from training images.

Weights taken out of a supernet (NASViT's sliced checkpoints, any path of a weight-sharing supernet) carry BN
statistics of the whole supernet, not of the subnet. The official NASViT evaluation therefore resets them and
forwards 64 training batches with training augmentation, averaging the statistics (momentum None) before every
evaluation (NASViT's misc/attentive_nas_eval.py). :func:`recalibrate_model` does that for any model;
``tools/recalibrate_bn.py`` writes the recalibrated weights as safetensors.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
import torch.nn as nn

from .engine import progress
from .strategies.traversal import recalibrate_bn

__all__ = ['main', 'recalibrate_model']


def recalibrate_model(model: nn.Module, batches: Iterable[torch.Tensor], num_batches: int = 64) -> nn.Module:
    """Reset all BN statistics of ``model`` and re-estimate them as the plain average over ``num_batches`` batches.

    Returns the model in eval mode. Raises ``ValueError`` when ``batches`` runs out before ``num_batches`` (the
    statistics of a short calibration would silently differ from what was asked).
    """
    param = next(model.parameters())
    taken = []
    for i, x in enumerate(batches):
        if i == num_batches:
            break
        taken.append(x[0] if isinstance(x, (list, tuple)) else x)
    if len(taken) < num_batches:
        raise ValueError(f'the data gave {len(taken)} batches, {num_batches} were asked for calibration')
    with torch.no_grad():
        recalibrate_bn(model, [t.to(param.device, param.dtype) for t in progress(taken, desc='BN calibration')])
    return model.eval()


def _metadata(path: str) -> dict[str, str]:
    """The safetensors metadata of ``path`` (``family: nasvit`` marks weights converted from the authors'
    NASViT supernet by zoo.convert, which the official protocol evaluates on resized 224 crops)."""
    from safetensors import safe_open

    with safe_open(path, framework='pt') as f:
        return dict(f.metadata() or {})


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description='Re-estimate the BN statistics of a model from training images')
    parser.add_argument('model', help='zoo/timm model name or spec .json')
    parser.add_argument('--weights', help='safetensors weights to start from (default: the model as built)')
    parser.add_argument('--data-dir', required=True, help='ImageNet-style folder: <data-dir>/<class>/<image>')
    parser.add_argument('--out', required=True, help='where to write the recalibrated safetensors')
    parser.add_argument('--batches', type=int, default=64, help='calibration batches (official NASViT: 64)')
    parser.add_argument('--batch-size', type=int, default=64)
    parser.add_argument('--img-size', type=int, help="default: the model's input size")
    parser.add_argument('--eval-transform', action='store_true', help='resize + center crop instead of training aug')
    parser.add_argument(
        '--resize-input',
        choices=('auto', 'on', 'off'),
        default='auto',
        help="NASViT: resize inputs inside the model to the subnet's resolution, on 224 crops (the official "
        "protocol); auto: on for weights converted from the authors' supernet (tools/convert_checkpoint.py)",
    )
    parser.add_argument('--device', default='auto')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--workers', type=int, default=4)
    args = parser.parse_args(argv)

    from safetensors.torch import load_file, save_file
    from torch.utils.data import DataLoader

    import backbones

    from .data import build_transform, image_folder

    device = 'cuda' if args.device == 'auto' and torch.cuda.is_available() else args.device
    device = 'cpu' if device == 'auto' else device
    if args.weights and not Path(args.weights).is_file():
        parser.error(f'weights file {args.weights} does not exist')
    source = _metadata(args.weights) if args.weights else {}
    resize = args.resize_input == 'on' or (args.resize_input == 'auto' and source.get('family') == 'nasvit')
    model = backbones.create_model(args.model, **({'resize_input': True} if resize else {}))
    if args.weights:
        missing, unexpected = model.load_state_dict(load_file(args.weights), strict=False)
        if missing or unexpected:
            parser.error(
                f'{args.weights} does not fit {args.model}: missing {missing[:5]}, unexpected {unexpected[:5]}'
            )
    size = args.img_size or model.pretrained_cfg['input_size'][-1]
    dataset = image_folder(args.data_dir, build_transform(size, training=not args.eval_transform))
    generator = torch.Generator().manual_seed(args.seed)
    loader = DataLoader(
        dataset, batch_size=args.batch_size, shuffle=True, generator=generator, num_workers=args.workers, drop_last=True
    )
    recalibrate_model(model.to(device), loader, args.batches)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    metadata = {**source, 'recalibrated_batches': str(args.batches), 'model': args.model}
    save_file(state, args.out, metadata={**metadata, 'resize_input': str(resize).lower()})
    inside = f', resized in the model to {model.spec["resolution"]}px' if resize else ''
    print(f'wrote {args.out} ({args.batches} batches of {args.batch_size} at {size}px{inside})')
    return 0
