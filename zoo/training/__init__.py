"""Retrain any zoo model or found spec from scratch on an ImageNet-style folder, with the papers' recipes.

``tools/train.py`` is the command line (:mod:`zoo.training.cli`); from Python::

    from zoo.training import make_config, train
    summary = train(make_config('dna', model='dna_c', data_dir='/imagenet', output='runs/dna_c'))

Modules: ``config`` (options and presets), ``data`` (model, folders, transforms), ``state`` (seeding, resume
state, weights), ``loop`` (build / resume / epoch / validate / save), ``cli``. See docs/train.md.
"""

from .config import PRESET_DIR, TrainConfig, list_presets, load_preset, make_config, resolve_lr
from .loop import train

__all__ = ['PRESET_DIR', 'TrainConfig', 'list_presets', 'load_preset', 'main', 'make_config', 'resolve_lr', 'train']


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (``tools/train.py``); returns the exit code."""
    from .cli import main as cli_main

    return cli_main(argv)
