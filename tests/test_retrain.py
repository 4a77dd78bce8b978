"""Retraining (zoo/training/, tools/train.py): outputs, exact resume, presets that match the papers, the CLI."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

import zoo
from search import write_spec
from zoo import training as retrain
from zoo.training.cli import config_from_args

REPO = Path(__file__).resolve().parents[1]
TINY_SPEC = {
    'family': 'mbconv',
    'version': 1,
    'stem_size': 8,
    'num_features': 32,
    'stages': [['ds_r1_k3_s1_c8_se0.25'], ['ir_r1_k3_s2_e3_c16_se0.25']],
}
LOG_KEYS = {'epoch', 'train_loss', 'lr', 'val_top1', 'val_top5', 'ema_top1', 'img_per_s', 'time'}


@pytest.fixture(scope='module')
def data(tmp_path_factory) -> dict:
    """3 classes x 6 train / 2 val PNGs of 32x32 (class = brightness band), and a tiny mbconv spec file."""
    root = tmp_path_factory.mktemp('retrain')
    rng = np.random.default_rng(0)
    for split, n in (('train', 6), ('val', 2)):
        for c in range(3):
            folder = root / 'data' / split / f'class{c}'
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = (rng.random((32, 32, 3)) * 80 + c * 80).astype('uint8')
                Image.fromarray(pixels).save(folder / f'{i}.png')
    spec = write_spec(TINY_SPEC, root / 'tiny.json', method='test')
    return {'data_dir': str(root / 'data'), 'spec': str(spec)}


def _cfg(data: dict, output: Path, **overrides) -> retrain.TrainConfig:
    return retrain.make_config('smoke', model=data['spec'], data_dir=data['data_dir'], output=str(output), **overrides)


def _log(output: Path) -> list[dict]:
    return [json.loads(line) for line in (output / 'log.jsonl').read_text().splitlines()]


def test_two_epochs_write_weights_state_and_log(data, tmp_path):
    out = tmp_path / 'run'
    summary = retrain.train(_cfg(data, out))
    for name in ('best', 'last', 'best_ema', 'last_ema'):
        assert summary[name] == str(out / f'{name}.safetensors') and Path(summary[name]).is_file()
    assert (out / 'last_state.pt').is_file() and (out / 'config.json').is_file()
    assert summary['epochs'] == 2 and summary['epochs_run'] == 2 and summary['best_top1'] is not None
    log = _log(out)
    assert [r['epoch'] for r in log] == [1, 2] and all(set(r) >= LOG_KEYS for r in log)

    # weights load back (strict) into a freshly built model and give the same outputs
    trained = zoo.create_model(data['spec'], num_classes=3).eval()
    trained.load_state_dict(load_file(out / 'last.safetensors'))
    fresh = zoo.create_model(data['spec'], num_classes=3).eval()
    fresh.load_state_dict(load_file(out / 'last.safetensors'))
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(trained(x), fresh(x), rtol=0, atol=0)
    ema = zoo.create_model(data['spec'], num_classes=3)
    ema.load_state_dict(load_file(out / 'last_ema.safetensors'))

    # the resumable state is plain data: weights_only loading works
    state = torch.load(out / 'last_state.pt', weights_only=True)
    assert state['epoch'] == 2 and state['config']['model'] == data['spec']


def test_resume_reproduces_an_uninterrupted_run(data, tmp_path):
    straight = retrain.train(_cfg(data, tmp_path / 'straight', epochs=3))
    interrupted = retrain.train(_cfg(data, tmp_path / 'resumed', epochs=3, stop_epoch=2))
    assert interrupted['epochs'] == 2 and interrupted['epochs_run'] == 2
    resumed = retrain.train(_cfg(data, tmp_path / 'resumed', epochs=3, resume=True))
    assert resumed['epochs'] == 3 and resumed['epochs_run'] == 1
    for name in ('last', 'last_ema'):
        a, b = load_file(straight[name]), load_file(resumed[name])
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=f'{name}:{k}')
    log_a, log_b = _log(tmp_path / 'straight'), _log(tmp_path / 'resumed')
    assert [r['epoch'] for r in log_b] == [1, 2, 3]
    assert [r['train_loss'] for r in log_a] == pytest.approx([r['train_loss'] for r in log_b], abs=1e-6)


def test_mixup_cutmix_and_grad_accum_run(data, tmp_path):
    summary = retrain.train(
        _cfg(data, tmp_path / 'mix', epochs=1, mixup=0.8, cutmix=1.0, grad_accum=2, limit_train_batches=3)
    )
    (record,) = _log(tmp_path / 'mix')
    assert summary['epochs'] == 1 and record['updates'] == 2 and np.isfinite(record['train_loss'])


def test_corrupt_or_missing_resume_state_names_the_file(data, tmp_path):
    out = tmp_path / 'bad'
    out.mkdir()
    with pytest.raises(FileNotFoundError, match=r'last_state\.pt'):
        retrain.train(_cfg(data, out, resume=True))
    (out / 'last_state.pt').write_bytes(b'not a checkpoint')
    with pytest.raises(RuntimeError, match=r'bad[/\\]last_state\.pt.*corrupt'):
        retrain.train(_cfg(data, out, resume=True))


def test_presets_match_the_papers():
    assert set(retrain.list_presets()) >= {'dna', 'bossnet', 'pinas', 'nasvit', 'smoke'}
    for name in retrain.list_presets():
        retrain.make_config(name)  # every key is a TrainConfig field
    dna = retrain.make_config('dna')
    assert (dna.lr, dna.lr_batch, dna.batch_size, dna.epochs) == (0.064, 1024, 128, 500)
    assert (dna.opt, dna.opt_eps, dna.momentum, dna.weight_decay) == ('rmsproptf', 1e-3, 0.9, 1e-4)
    assert (dna.sched, dna.decay_epochs, dna.decay_rate, dna.warmup_epochs, dna.warmup_lr) == (
        'step',
        3,
        0.963,
        5,
        1e-4,
    )
    assert (dna.color_jitter, dna.drop, dna.drop_path, dna.smoothing) == (0.06, 0.2, 0.2, 0.1)
    assert dna.ema and dna.ema_decay == 0.9998 and dna.re_prob == 0 and dna.mixup == 0 == dna.cutmix
    assert retrain.resolve_lr(dna, world_size=8) == pytest.approx(0.064)
    assert retrain.resolve_lr(dna, world_size=32) == pytest.approx(0.256)  # the paper's batch 4096

    boss = retrain.make_config('bossnet')
    assert (boss.opt, boss.lr, boss.lr_batch, boss.weight_decay, boss.epochs) == ('adamw', 1e-3, 1024, 0.05, 300)
    assert (boss.sched, boss.warmup_epochs, boss.warmup_lr, boss.min_lr) == ('cosine', 5, 1e-6, 1e-5)
    assert (boss.aa, boss.mixup, boss.cutmix, boss.smoothing, boss.re_prob) == (
        'rand-m9-mstd0.5-inc1',
        0.8,
        1.0,
        0.1,
        0.25,
    )
    assert boss.ema_decay == 0.99996 and boss.aug_repeats == 3 and boss.drop_path == 0.1
    assert retrain.resolve_lr(boss, world_size=4) == pytest.approx(5e-4)  # DeiT: 5e-4 x global batch / 512

    pinas = retrain.make_config('pinas')
    assert (pinas.epochs, pinas.opt, pinas.sched, pinas.smoothing, pinas.mixup) == (270, 'momentum', 'cosine', 0.1, 0.2)
    assert retrain.resolve_lr(pinas, world_size=8) == pytest.approx(0.2)  # batch 512, 0.1 per 256
    assert pinas.batch_size * 8 == pinas.lr_batch == 512

    nasvit = retrain.make_config('nasvit')
    assert (nasvit.opt, nasvit.lr, nasvit.lr_batch, nasvit.weight_decay, nasvit.epochs) == ('adamw', 3e-4, 512, 0, 360)
    assert (nasvit.aa, nasvit.ema_decay, nasvit.clip_grad, nasvit.warmup_lr, nasvit.min_lr) == (
        'rand-n1-m1-mstd0.5-inc1',
        0.99985,
        1.0,
        5e-7,
        5e-6,
    )


def test_cli_flags_override_the_preset():
    cfg, printing = config_from_args(
        ['dna_c', '--preset', 'dna', '--epochs', '7', '--lr', '0.01', '--no-ema', '--model-kwargs', 'drop_rate=0.3']
    )
    assert not printing and cfg.model == 'dna_c' and cfg.epochs == 7 and not cfg.ema
    assert cfg.opt == 'rmsproptf' and cfg.decay_rate == 0.963  # untouched preset values stay
    assert cfg.lr == 0.01 and cfg.lr_batch is None and retrain.resolve_lr(cfg, 8) == 0.01  # explicit lr is absolute
    assert cfg.model_kwargs == {'drop_rate': 0.3}
    cfg, _ = config_from_args(['dna_c', '--preset', 'dna', '--resume'])
    assert cfg.resume is True


def test_preset_typos_and_unknown_names_fail(tmp_path):
    path = tmp_path / 'typo.yaml'
    path.write_text('lr: 0.1\nlearning_rate: 0.2\n')
    with pytest.raises(ValueError, match=r"typo\.yaml: unknown keys \['learning_rate'\]"):
        retrain.load_preset(path)
    with pytest.raises(FileNotFoundError, match=r'no preset .*known'):
        retrain.load_preset('dnaa')


def test_print_config_in_a_subprocess():
    out = subprocess.run(
        [
            sys.executable,
            str(REPO / 'tools' / 'train.py'),
            'dna_a',
            '--preset',
            'dna',
            '--epochs',
            '3',
            '--print-config',
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        cwd=REPO,
    ).stdout
    cfg = yaml.safe_load(out)
    assert cfg['model'] == 'dna_a' and cfg['epochs'] == 3 and cfg['decay_rate'] == 0.963 and cfg['ema_decay'] == 0.9998
