"""SPOS and FairNAS baselines on the Pi-NAS ResNeSt space (issue 14 item 5): fair path sampling, both tiny configs
end to end through ``python -m search spos``, and the full-size configs (official values, one step at batch 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import search
import zoo
from search.config import ConfigError, load_config
from search.methods.spos import SPOS, SPOSConfig
from search.protocols import StepContext
from tests._helpers import ROOT, assert_same_params, check_spos_found, run_spos, torchrun, weights

TINY = {s: ROOT / f'configs/search/{s}_pinas_tiny.yaml' for s in ('spos', 'spos_fairnas')}
FULL = {s: ROOT / f'configs/search/{s}_pinas.yaml' for s in ('spos', 'spos_fairnas')}


def test_fair_sampling_trains_every_candidate_once_per_cycle() -> None:
    method = SPOS(load_config(SPOSConfig, TINY['spos_fairnas'], {}))
    assert method.cfg.sampling == 'fair'
    cycles = []
    for start in (0, 4, 8):
        paths = [p for step in range(start, start + 4) for p in method.sample_paths(step)]
        assert len(paths) == 4 and all(p in method.space for p in paths)
        for i in range(len(method.space.num_choices)):  # strict fairness: each candidate once per layer per cycle
            assert sorted(p[i] for p in paths) == [0, 1, 2, 3]
        assert paths == [method.sample_paths(step)[0] for step in range(start, start + 4)]  # pure function of step
        cycles.append(paths)
    assert cycles[0] != cycles[1] != cycles[2]  # a fresh permutation every cycle
    assert SPOS(load_config(SPOSConfig, TINY['spos'], {})).cfg.sampling == 'uniform'


def test_fair_sampling_is_refused_where_decisions_differ() -> None:
    with pytest.raises(ConfigError, match=r"sampling 'fair' needs the same number of options .* space 'tiny' has"):
        SPOSConfig(space='tiny', sampling='fair')
    with pytest.raises(ConfigError, match="sampling 'fairest': expected one of uniform, fair"):
        SPOSConfig(space='pinas_tiny', sampling='fairest')


@pytest.mark.parametrize('name', ['spos', 'spos_fairnas'])
def test_tiny_config_searches_end_to_end(name: str, tiny_data: Path, tmp_path: Path) -> None:
    """``python -m search spos`` writes arch/top1.json: a resnest spec of the tiny space that the zoo builds, and with
    the trained supernet's path weights it is that supernet's path (bit for bit)."""
    out = tmp_path / name
    run_spos(TINY[name], out, tiny_data)
    check_spos_found(out, 'pinas_tiny')
    spec, provenance = search.read_spec(out / 'arch' / 'top1.json')
    assert spec['family'] == 'resnest' and spec['layers'] == [2, 2, 2, 1]
    assert provenance['sampling'] == ('fair' if name == 'spos_fairnas' else 'uniform')
    assert zoo.spec_of(zoo.create_model(spec)) == spec


@pytest.mark.parametrize('name', ['spos', 'spos_fairnas'])
def test_full_size_configs_have_the_stated_values(name: str) -> None:
    cfg = load_config(SPOSConfig, FULL[name], {})
    assert cfg.sampling == ('fair' if name == 'spos_fairnas' else 'uniform')
    assert (cfg.space, cfg.img_size, cfg.epochs, cfg.seed) == ('pinas', 224, 100, 0)
    assert (cfg.holdout_per_class, cfg.rating_images, cfg.recalibration) == (50, 50000, 'reset')
    assert cfg.metric == 'flops' and cfg.top_k == 5
    evo = cfg.evolution_config()
    assert evo.population + (evo.iterations - 1) * (evo.mutations + evo.crossovers) == 1000  # Pi-NAS: 1000 samples
    other = load_config(SPOSConfig, FULL['spos' if name == 'spos_fairnas' else 'spos_fairnas'], {})
    differ = {k for k in vars(cfg) if getattr(cfg, k) != getattr(other, k)}
    assert differ == {'sampling'}  # the two baselines differ in their sampling only


def test_full_size_supernet_takes_one_spos_step_at_batch_2_on_cpu() -> None:
    """The full-size supernet (four ResNeSt-50-D networks' blocks) builds on meta, then one SPOS step at batch 2 of
    64x64 images moves the sampled path's weights only (and the shared stem, shortcuts, classifier)."""
    torch.set_num_threads(1)
    cfg = load_config(SPOSConfig, FULL['spos_fairnas'], {'num_classes': 1000})
    method = SPOS(cfg)
    with torch.device('meta'):
        meta = method.space.build_supernet(num_classes=1000)
    assert sum(p.numel() for p in meta.parameters()) == 93_571_388
    torch.manual_seed(0)
    method.supernet = net = method.space.build_supernet(num_classes=1000)
    net.train()
    opt, scheduler, per_step = method.optimizer(steps_per_epoch=10)
    (arch,) = method.sample_paths(0)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    g = torch.Generator().manual_seed(0)
    images, labels = torch.randn(2, 3, 64, 64, generator=g), torch.tensor([3, 7])
    ctx = StepContext(0, 0, 0, 1, net, torch.device('cpu'), lambda loss: loss.backward())
    losses = method.train_step(images, labels, [arch], ctx)
    assert torch.isfinite(losses['loss_ce']) and per_step
    opt.step()
    scheduler.step_update(1)
    changed = {n for n, p in net.named_parameters() if not torch.equal(p, before[n])}
    on_path = {f'layer{s + 1}.{j}.{arch[i]}.' for i, (s, j, _) in enumerate(method.space.positions)}
    on_path |= {f'layer{s}.0.0.downsample.' for s in (1, 2, 3, 4)}  # a shared shortcut's (first) parameter name
    assert changed and all(n.startswith(('conv1.', 'bn1.', 'fc.', *on_path)) for n in changed)
    assert any(n.startswith('fc.') for n in changed) and any('.downsample.' in n for n in changed)


def test_two_gloo_processes_equal_one_process_with_two_accumulation_steps(tiny_data: Path, tmp_path: Path) -> None:
    """DDP over a supernet whose stage shortcuts are shared by four candidates: torchrun, 2 CPU processes x 4 images
    == 1 process x (2 accumulation steps x 4 images), FairNAS sampling."""
    ddp, single = tmp_path / 'ddp', tmp_path / 'single'
    torchrun('spos', TINY['spos_fairnas'], ddp, tiny_data)
    run_spos(TINY['spos_fairnas'], single, tiny_data, '--grad-accum', '2')
    keys = assert_same_params(weights(ddp / 'checkpoints' / 'last.pt'), weights(single / 'checkpoints' / 'last.pt'))
    assert any('downsample' in k for k in keys)
    ra = json.loads((ddp / 'search_result.json').read_text())['results']
    rb = json.loads((single / 'search_result.json').read_text())['results']
    assert [r['arch'] for r in ra] == [r['arch'] for r in rb]
