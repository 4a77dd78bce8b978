"""DNA+: progressive search, where each generation's found network, scaled up and retrained, teaches the next.

Paper: DNA Family (arXiv 2403.01326) section 3.4, Fig. 3, Table 5: generation 1 searches with an existing teacher
(EfficientNet-B7 for DNA-c); generation m > 1 takes the previous generation's best architecture, scales it with
EfficientNet's compound scaling, retrains it from scratch on ImageNet and uses it as the teacher of a new search.
The paper's Table 5 plateaus after two generations (Kendall tau 0.64 -> 0.66 -> 0.66).

Defaults: EfficientNet-B1's coefficients (width 1.0, depth 1.1, 240 px), since Table 5's generation-2 teacher is
"DNA-c1" (Table 4 lists c1 at 240 px next to B1). Compound scaling of a searched stage whose layers differ: widths
are multiplied and rounded to multiples of 8 as timm does; a stage of n layers gets ceil(n x depth) layers, the
added ones repeating the stage's last layer (EfficientNet repeats one block per stage, so it has no rule for this;
the paper gives none either). The retraining is ``zoo.training.train`` with the ``dna`` preset unless overridden.

Every generation is recorded in ``<output>/generations.json`` (teacher, its spec and weights, the found spec);
re-running the driver skips finished work (each search and retraining resumes itself).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from timm.models._efficientnet_builder import round_channels

from backbones import mbconv as mbconv_family
from backbones._runtime import atomic_write_json

from .. import engine
from ..emit import write_spec
from . import dna

__all__ = ['DNAPlus', 'DNAPlusConfig', 'compound_scale', 'run']


@dataclass
class DNAPlusConfig:
    """The DNA+ driver: ``search`` holds the DNA options of every generation (see ``DNAConfig``)."""

    data_dir: str = ''
    output: str = 'runs/dna_plus'
    search: dict = field(default_factory=dict)
    generations: int = 2
    width_mult: float = 1.0
    depth_mult: float = 1.1
    teacher_img_size: int = 240
    retrain_preset: str = 'dna'
    retrain: dict = field(default_factory=dict)
    seed: int = 42
    device: str = 'auto'

    def __post_init__(self) -> None:
        if self.generations < 1:
            raise ValueError(f'generations must be >= 1, got {self.generations}')
        if self.width_mult <= 0 or self.depth_mult <= 0:
            raise ValueError(f'scaling multipliers must be positive (width {self.width_mult}, depth {self.depth_mult})')


def compound_scale(spec: dict, width_mult: float, depth_mult: float) -> dict:
    """Scale an ``mbconv`` spec's widths and depths (see the module docstring for the rule)."""
    spec = mbconv_family.validate_spec(spec)
    out = copy.deepcopy(spec)
    out['stem_size'] = round_channels(spec['stem_size'], width_mult)
    out['num_features'] = round_channels(spec['num_features'], width_mult)
    stages = []
    for stage in spec['stages']:
        new = []
        for block in stage:
            parts = block.split('_')
            parts = [
                f'c{round_channels(int(p[1:]), width_mult)}' if p.startswith('c') and p[1:].isdigit() else p
                for p in parts
            ]
            new.append('_'.join(parts))
        extra = math.ceil(len(stage) * depth_mult) - len(stage)
        last = '_'.join('s1' if p.startswith('s') and p[1:].isdigit() else p for p in new[-1].split('_'))
        stages.append(new + [last] * extra)
    out['stages'] = stages
    return mbconv_family.validate_spec(out)


def _record(path: Path, generations: list[dict]) -> None:
    atomic_write_json(path, generations)


def run(
    cfg: DNAPlusConfig, ctx: engine.DistContext, resume: bool = True, stages: Sequence[str] | None = None
) -> list[dict]:
    """Run all generations; returns the last generation's found architectures."""
    from zoo.training import make_config, train  # lazy: retraining is zoo.training (docs/train.md)

    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    history: list[dict] = []
    teacher: dict[str, Any] = {}
    found: list[dict] = []
    for gen in range(1, cfg.generations + 1):
        gen_dir = out / f'gen{gen}'
        values = {**cfg.search, 'data_dir': cfg.data_dir, 'output': str(gen_dir / 'search'), 'seed': cfg.seed}
        values.setdefault('device', cfg.device)
        values.update(teacher)
        search_cfg = dna.DNAConfig(**values)
        found = ctx.broadcast_object(dna.run(search_cfg, ctx, resume=resume))
        best = found[0]
        entry = {
            'generation': gen,
            'teacher': search_cfg.teacher,
            'teacher_checkpoint': search_cfg.teacher_checkpoint,
            'teacher_spec': search_cfg.teacher_kwargs.get('spec'),
            'found_spec': best['spec'],
            'found_score': best['score'],
            'found_cost': best['cost'],
            'metric': best['metric'],
        }
        if gen < cfg.generations:
            scaled = compound_scale(best['spec'], cfg.width_mult, cfg.depth_mult)
            spec_path = write_spec(scaled, gen_dir / 'teacher' / 'spec.json', method='dna_plus', generation=gen)
            retrain_cfg = make_config(
                cfg.retrain_preset,
                **{
                    'model': str(spec_path),
                    'data_dir': cfg.data_dir,
                    'output': str(gen_dir / 'teacher'),
                    'img_size': cfg.teacher_img_size,
                    'seed': cfg.seed,
                    'device': cfg.device,
                    'resume': resume and (gen_dir / 'teacher' / 'last_state.pt').is_file(),
                    **cfg.retrain,
                },
            )
            summary = train(retrain_cfg)
            weights = summary.get('best_ema') or summary.get('best') or summary.get('last')
            entry.update(scaled_spec=scaled, retrain=summary, next_teacher_weights=weights)
            teacher = {
                'teacher': 'mbconv',
                'teacher_kwargs': {'spec': scaled},
                'teacher_checkpoint': str(weights),
                'teacher_pretrained': False,
                'teacher_split': 'stages',
            }
        history.append(entry)
        if ctx.is_main:
            _record(out / 'generations.json', history)
    if ctx.is_main:
        write_spec(found[0]['spec'], out / 'final.json', method='dna_plus', generations=cfg.generations)
    return found


class DNAPlus:
    """The DNA+ driver in the method registry: it chains whole DNA searches, so ``--stage`` and ``--block`` do not
    apply to it (the command line refuses them)."""

    name = 'dna_plus'
    config_class: type = DNAPlusConfig
    staged = False

    def __init__(self, cfg: DNAPlusConfig) -> None:
        self.cfg = cfg

    def drive(self, ctx: engine.DistContext, resume: bool) -> list[dict]:
        return run(self.cfg, ctx, resume=resume)
