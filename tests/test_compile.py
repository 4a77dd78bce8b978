"""torch.compile works on every family (CPU, tiny input; about a minute per family with inductor on 2 cores)."""

from __future__ import annotations

import pytest
import torch

import zoo

ONE_PER_FAMILY = ['dna_a', 'pinas_trans', 'bossnet_t0_nose', 'nasvit_min']


def test_one_model_per_family_is_listed():
    families = {zoo.CATALOG[name].family for name in ONE_PER_FAMILY}
    assert families == {record.family for record in zoo.CATALOG.values()}


@pytest.mark.slow
@pytest.mark.parametrize('name', ONE_PER_FAMILY)
def test_compile_matches_eager(name):
    model = zoo.create_model(name).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        out = torch.compile(model, fullgraph=True)(x)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
