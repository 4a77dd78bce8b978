"""Weight-sharing supernet methods that find the zoo's architectures and emit them as specs.

A search ends in a spec: ``search.emit.write_spec`` validates it with the very schema the backbones build
from and writes the JSON that ``zoo.create_model(path)`` and ``tools/`` consume.
"""

from .emit import read_spec, write_spec

__all__ = ['read_spec', 'write_spec']
