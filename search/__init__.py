"""Weight-sharing supernet methods that find the zoo's architectures and emit them as specs.

A search ends in a spec: ``search.emit.write_spec`` validates it with the very schema the backbones build
from and writes the JSON that ``zoo.create_model(path)`` and ``tools/`` consume. Submodules: ``protocols`` (the
SearchSpace / Supernet / Method / Rater / Searcher seams), ``engine`` (torchrun, checkpoints, logs, the staged
``run``), ``data``, ``spaces`` (registry: :func:`get_space`, :func:`build_supernet`), ``methods`` (registry of
DNA, DNA+, DNA++ ...), ``strategies`` (rating traversal, exact budgeted search), ``rating`` (rank correlations),
``interchoice`` (inter-choice dependent weights, a plug-in of single-path supernets), ``bench``.
"""

from typing import Any

__all__ = ['build_supernet', 'get_space', 'read_spec', 'write_spec']

_LAZY = {'read_spec': 'emit', 'write_spec': 'emit', 'get_space': 'spaces', 'build_supernet': 'spaces'}


def __getattr__(name: str) -> Any:
    # lazy: `python -m search.rating` should not pay for importing torch and the backbones
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f'{__name__}.{_LAZY[name]}'), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
