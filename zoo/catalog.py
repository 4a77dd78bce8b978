"""The catalog: every found architecture with what its paper claims about it.

Specs live next to their builders (``backbones.<family>.SPECS``, like timm's arch defs); this module adds the
provenance a user compares against: paper, source table, claimed top-1, parameters, FLOPs and the counting
rule that turns our measured multiply-accumulates into the paper's figure.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from timm.models import get_pretrained_cfg

import backbones
from backbones import hytra, mbconv, nasvit, resnest
from backbones._pretrained import KNOWN_SHA256


@dataclass(frozen=True)
class FlopsRule:
    """How a paper counted FLOPs, relative to conv/linear/matmul MACs measured by torch's flop counter.

    ``factor`` multiplies the measured MACs; ``note`` says where the factor comes from.
    """

    factor: float
    note: str


DNA_RULE = FlopsRule(
    1.034,
    'DNA counts with a ptflops-style counter that adds BN and activation cost: its Table 2 FLOPs are the '
    'conv+FC MACs times ~1.034 (EfficientNet-B0: 386M MACs -> 399M listed).',
)
PINAS_RULE = FlopsRule(
    1.009,
    "Pi-NAS counts with mmcv's flops counter, which adds BN, pooling and activations: its FLOPs are the "
    'conv+FC MACs times ~1.009 (ResNeSt-50: 5.371G MACs -> 5.42G listed).',
)


@dataclass(frozen=True)
class ModelRecord:
    """One catalog entry: a registered timm name and the paper's claims about it."""

    name: str
    family: str
    paper: str
    paper_id: str
    source_table: str
    top1: float | None
    params_m: float | None
    flops_m: float
    flops_rule: FlopsRule
    input_size: int
    license: str
    origin: str
    reconstructed: bool = False
    notes: str = ''
    weights_sha256: str | None = None  # sha256 of the Hub model.safetensors, checked on download
    spec: dict = field(default_factory=dict, repr=False, compare=False)


_DNA = dict(
    family=mbconv.FAMILY,
    paper='DNA',
    paper_id='arXiv:2403.01326',
    source_table='DNA Table 2',
    flops_rule=DNA_RULE,
    input_size=224,
    license='unknown (no license in the official repository)',
    origin='https://github.com/changlin31/DNA (retraining/model.py)',
)
_PINAS = dict(
    family=resnest.FAMILY,
    paper='Pi-NAS',
    paper_id='arXiv:2108.09671',
    flops_rule=PINAS_RULE,
    input_size=224,
    license='mit (setup.py of the official repository)',
    origin='https://github.com/Ernie1/Pi-NAS (alone_resnest50 choice vectors)',
)
BOSSNAS_RULE = FlopsRule(
    1.0,
    "BossNAS's boss_madds.py counts every conv and linear layer and both attention products, nothing "
    "element-wise: torch's counter with the SDPA formula counts the same (it omits the script's phantom SE on "
    'attention layers, 0.13% of BossNet-T0).',
)
_BOSSNAS = dict(
    family=hytra.FAMILY,
    paper='BossNAS',
    paper_id='arXiv:2103.12424',
    source_table='BossNAS Table 1',
    flops_rule=BOSSNAS_RULE,
    input_size=224,
    license='unknown (no license file in the official repository)',
    origin='https://github.com/changlin31/BossNAS (retraining_hytra/boss_models.py)',
)
NASVIT_RULE = FlopsRule(
    1.0,
    "NASViT's official counter counts convolutions, the classifier, attention projections and both attention "
    'matmuls (official misc/attentive_nas_eval.py); that is exactly what torch.utils.flop_counter counts (tested).',
)
_NASVIT = dict(
    family=nasvit.FAMILY,
    paper='NASViT',
    paper_id='https://openreview.net/forum?id=Qaw16njk6L',
    flops_rule=NASVIT_RULE,
    params_m=None,  # the paper reports no parameter counts
    license='cc-by-nc-4.0',
    origin='https://github.com/facebookresearch/NASViT',
)


def _nasvit(name: str, **kwargs) -> ModelRecord:
    flops, top1 = nasvit.TABLE6.get(name, (189.8, 78.1))
    return ModelRecord(
        name, flops_m=flops, top1=top1, input_size=nasvit.SPECS[name]['resolution'], **{**_NASVIT, **kwargs}
    )


_RECORDS = [
    ModelRecord('dna_a', top1=77.1, params_m=4.2, flops_m=348, notes='searched under 350M FLOPs', **_DNA),
    ModelRecord('dna_b', top1=77.5, params_m=4.9, flops_m=406, notes='README lists 394M FLOPs', **_DNA),
    ModelRecord('dna_c', top1=77.8, params_m=5.3, flops_m=466, notes='searched under 5.3M params', **_DNA),
    ModelRecord('dna_d', top1=78.4, params_m=6.4, flops_m=611, notes='unconstrained', **_DNA),
    ModelRecord(
        'pinas_cls',
        source_table='Pi-NAS Table 2',
        top1=81.6,
        params_m=27.1,
        flops_m=5380,
        notes='Pi-NAS-alpha; top-1 with AugMix retraining',
        **_PINAS,
    ),
    ModelRecord(
        'pinas_trans',
        source_table='Pi-NAS Table 1',
        top1=81.1,
        params_m=27.0,
        flops_m=5300,
        notes='Pi-NAS-gamma; top-1 in the fast setting (270 epochs, batch 512); no ImageNet weights released',
        **_PINAS,
    ),
    ModelRecord('bossnet_t0', top1=80.8, params_m=38.4, flops_m=3400, notes='81.6% at 288px (5.7B MAdds)', **_BOSSNAS),
    ModelRecord('bossnet_t0_nose', top1=80.5, params_m=37.3, flops_m=3400, notes='ReLU, no SE', **_BOSSNAS),
    ModelRecord(
        'bossnet_t1',
        top1=82.2,
        params_m=38.4,
        flops_m=7900,
        notes='last stride 1; 82.5% at 256px (10.5B MAdds); README: 81.9%',
        **_BOSSNAS,
    ),
    *[
        _nasvit(
            f'nasvit_a{i}',
            source_table='NASViT Table 6',
            reconstructed=True,
            notes='reconstruction: derived from Table 13 to hit the Table 6 FLOPs (docs/nasvit.md)',
        )
        for i in range(6)
    ],
    _nasvit('nasvit_min', source_table='NASViT Table 7', notes='smallest subnet of the supernet (exact)'),
    _nasvit('nasvit_max', source_table='NASViT Table 6', notes='largest subnet of the supernet (exact)'),
]


def _with_spec(record: ModelRecord) -> ModelRecord:
    spec = backbones.FAMILIES[record.family].SPECS[record.name]
    return ModelRecord(**{**record.__dict__, 'spec': backbones.validate_spec(spec)})


CATALOG: dict[str, ModelRecord] = {r.name: _with_spec(r) for r in _RECORDS}


def weights_repo(name: str) -> str | None:
    """The Hub repo of a catalog model's default weights, as its registered ``pretrained_cfg`` names it (the tag
    differs per family: ``official_in1k``, ``supernet_in1k`` for NASViT, ``in1k`` for Pi-NAS-trans)."""
    return get_pretrained_cfg(name).hf_hub_id


KNOWN_SHA256.update({weights_repo(r.name): r.weights_sha256 for r in CATALOG.values() if r.weights_sha256})
