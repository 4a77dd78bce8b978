"""Shared test settings: small, deterministic, CPU-only, one thread; the tiny image folder of the search tests.

One thread, for this process and (through ``OMP_NUM_THREADS``, set before torch is imported) every subprocess a
test starts: the suite's networks are tiny or run at 64 px with batch 2, where a second thread only adds
synchronisation, and on a shared 2-core machine OpenMP threads that wait for each other cost far more CPU time
than they save (measured: a forward + backward of bossnet_t1 at 64 px took 25 s of CPU time with 2 threads on a
loaded machine, 0.9 s with 1).
"""

import os

os.environ['OMP_NUM_THREADS'] = '1'

from pathlib import Path

import pytest
import torch

from search import data

torch.set_num_threads(1)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line('markers', 'threads(n): run this test with n torch threads (recorded numerics need them)')


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _threads(request: pytest.FixtureRequest):
    """One thread unless the test is marked ``threads(n)``; set back after it."""
    marker = request.node.get_closest_marker('threads')
    torch.set_num_threads(marker.args[0] if marker else 1)
    yield
    torch.set_num_threads(1)


@pytest.fixture(scope='session')
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 classes of generated 40x40 images: 12 a class to train on (``train``), 2 in ``val`` (which searches ignore)."""
    root = tmp_path_factory.mktemp('tiny_data')
    data.write_synthetic_image_folder(root / 'train', num_classes=4, per_class=12, size=40)
    data.write_synthetic_image_folder(root / 'val', num_classes=4, per_class=2, size=40, seed=1)
    return root
