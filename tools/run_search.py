"""Run a supernet search: ``python tools/run_search.py dna --config configs/search/dna_mbconv.yaml --data-dir DIR``.

A thin wrapper over ``search.cli`` (also ``python -m search``); under torchrun for many GPUs:
``torchrun --nproc-per-node 8 tools/run_search.py dna --config configs/search/dna_mbconv.yaml --data-dir /imagenet``.
"""

import sys

from search.cli import main

if __name__ == '__main__':
    sys.exit(main())
