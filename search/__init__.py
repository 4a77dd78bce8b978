"""Weight-sharing supernet methods that find the zoo's architectures and emit them as specs.

A search ends in a spec: ``search.emit.write_spec`` validates it with the very schema the backbones build
from and writes the JSON that ``zoo.create_model(path)`` and ``tools/`` consume. Submodules: ``engine`` (torchrun,
checkpoints, logs), ``data``, ``spaces``, ``methods`` (DNA, DNA+, DNA++), ``strategies`` (rating traversal, exact
budgeted search), ``rating`` (rank correlations), ``retrain`` (retraining found networks), ``bench``.
"""

from typing import Any

__all__ = ['read_spec', 'write_spec']


def __getattr__(name: str) -> Any:
    # lazy: `python -m search.rating` should not pay for importing torch and the backbones
    if name in __all__:
        from . import emit

        return getattr(emit, name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
