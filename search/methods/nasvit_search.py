"""NASViT's rating and search: BN-recalibrated held-out top-1, evolution per cost bin, Alg. 2's predictor, Pareto front.

Paper App. C.1 and Alg. 2; specs ../shared/specs/nasvit.md sections 2.6 and 3. The authors published no search
script; the loop is the engine's evolutionary searcher (:mod:`search.strategies.evolution`) run once per cost bin
(``min_budget <= cost <= budget``), with NASViT's sizes (1024 initial subnets, the top 128 as parents, 128 mutations
and 128 crossovers a generation, 40 generations, mutation probability 0.1).

* :class:`NASViTRater`: a subnet's score is ``-top1`` on the engine's held-out split (never trained on) after its BN
  statistics are reset and re-estimated as the plain average over ``calib_batches`` training batches (the code's
  ``post_bn_calibration_batch_num`` 64, training augmentation, seeded so every subnet sees the same images), on
  the EMA weights when ``rate_ema``. Cached per architecture in ``ratings/paths.jsonl``.
* :class:`BinnedSearch`: per bin, evolution on the rater (``searcher: evolution``) or on a random forest (sklearn's
  ``RandomForestRegressor``) fitted on ``predictor_samples / 2`` rated random subnets and checked on the other half
  (``searcher: predictor``, Alg. 2; ``search/predictor.json`` has its held-out Kendall tau and RMSE); the bins'
  winners are then rated for real. The best of every bin and every parent of the bins' last generation form the
  candidates of the Pareto front over the cost (``metric``: FLOPs, or CPU latency in onnxruntime at batch 1), written
  as specs ``OUTPUT/arch/pareto/<i>.json`` with ``pareto.json`` and ``pareto.png``; the engine writes the front's
  ``top_k`` most accurate as ``arch/top<i>.json``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from backbones._runtime import atomic_write_json

from .. import data as data_lib
from .. import engine
from ..emit import write_spec
from ..protocols import Arch, Found
from ..spaces.base import measured_latency
from ..strategies.evolution import evolution_search
from .spos import PathRater

__all__ = ['BinnedSearch', 'NASViTRater', 'pareto_front']


class NASViTRater(PathRater):
    """SPOS's whole-path rater with NASViT's calibration (see the module docstring); ``rate()`` gives ``score``."""

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            from ..pipeline import checkpoint_path

            step = int(engine.load_checkpoint(checkpoint_path(self.cfg))['step'])
            keys = ('space', 'space_options', 'img_size', 'seed', 'holdout_per_class', 'rate_ema')
            keys += ('calib_batches', 'calib_batch', 'calib_transform', 'recalibration', 'rating_images')
            values = {k: getattr(self.cfg, k) for k in keys}
            if self.cfg.calib_transform == 'train':
                values['train_aug'] = self.cfg.train_aug
            self._fingerprint = json.dumps({'step': step, **values}, sort_keys=True)
        return self._fingerprint

    def _load(self) -> None:
        from ..pipeline import checkpoint_path

        cfg, method = self.cfg, self.method
        split = data_lib.holdout_split(
            Path(cfg.data_dir) / 'train', cfg.holdout_per_class, cfg.seed, cfg.out / 'holdout_split.json'
        )
        method.build(self.ctx, split)
        state = engine.load_checkpoint(checkpoint_path(cfg), self.ctx.device)
        method.runner.load_state_dict(state['model'])
        if cfg.rate_ema:
            method.supernet.load_state_dict(method.runner.ema.module.state_dict())
        method.supernet.eval()
        g = engine.generator(cfg.seed, 'rating-images')
        holdout = [split['holdout'][i] for i in torch.randperm(len(split['holdout']), generator=g).tolist()]
        self.eval_batches = self._batches(holdout[: cfg.rating_images])
        need = cfg.calib_batches * cfg.calib_batch
        if len(split['train']) < need:
            raise ValueError(
                f'BN calibration needs calib_batches x calib_batch = {need} training images; '
                f'the training split has {len(split["train"])}'
            )
        g = engine.generator(cfg.seed, 'rating-calibration')
        calib = [split['train'][i] for i in torch.randperm(len(split['train']), generator=g)[:need].tolist()]
        folder = method._folder(training=cfg.calib_transform == 'train')
        samples = data_lib.SeededSamples(folder, calib, engine.derive_seed(cfg.seed, 'calibration-augmentation'))
        loader = DataLoader(samples, batch_size=cfg.calib_batch, shuffle=False)
        self.calib_batches = [x.to(self.ctx.device) for x, _ in loader]
        self._loaded = True


def pareto_front(points: list[tuple[float, float, Any]]) -> list[tuple[float, float, Any]]:
    """The points ``(cost, accuracy, item)`` no other point beats (lower or equal cost and higher accuracy, or lower
    cost and equal accuracy), by increasing cost."""
    front: list[tuple[float, float, Any]] = []
    best = float('-inf')
    for cost, acc, item in sorted(points, key=lambda p: (p[0], -p[1])):
        if acc > best:
            front.append((cost, acc, item))
            best = acc
    return front


class _Costs:
    """The space as evolution sees it, with ``cost(arch, 'latency')`` timed in the configured runtime."""

    def __init__(self, space: Any, runtime: str, img_size: int) -> None:
        self.space, self.runtime, self.img_size = space, runtime, img_size

    def __getattr__(self, name: str) -> Any:
        return getattr(self.space, name)

    def cost(self, arch: Arch, metric: str) -> float:
        if metric != 'latency':
            return float(self.space.cost(arch, metric))
        import backbones

        spec = self.space.to_spec(arch)
        size = int(spec.get('resolution', self.img_size))
        return measured_latency(
            self.space, tuple(arch), lambda: backbones.create_model(spec), size, runtime=self.runtime
        )


class BinnedSearch:
    """Evolution per cost bin, optionally on Alg. 2's random-forest predictor; the Pareto front (module docstring)."""

    def __init__(self, method: Any) -> None:
        self.method, self.cfg = method, method.cfg
        self.root = self.cfg.out / 'search'

    # -- bins ------------------------------------------------------------------------------------------------------
    def bins(self, space: Any, metric: str, budget: float | None) -> list[tuple[float, float]]:
        """``cfg.bins`` as given, else ``num_bins`` equal bins from the smallest subnet's cost to the largest's (or
        the budget); bins above the budget are dropped, a bin across it is cut at it."""
        if self.cfg.bins:
            bins = [(float(lo), float(hi)) for lo, hi in self.cfg.bins]
        else:
            low, high = (space.cost(a, metric) for a in space.extremes())
            high = min(high, budget) if budget is not None else high
            if high <= low:
                raise ValueError(f"budget {budget} is below the smallest subnet's {metric} ({low:g})")
            step = (high - low) / self.cfg.num_bins
            bins = [(low + i * step, low + (i + 1) * step) for i in range(self.cfg.num_bins)]
        if budget is not None:
            bins = [(lo, min(hi, budget)) for lo, hi in bins if lo <= budget]
        if not bins:
            raise ValueError(f'no cost bin lies under the budget {budget} ({metric})')
        return bins

    def _folder(self, rated: Any, tag: str) -> Path:
        owner = getattr(rated, '__self__', None)
        fingerprint = owner.fingerprint() if hasattr(owner, 'fingerprint') else 'unrated'
        return self.root / f'{tag}-{hashlib.sha1(fingerprint.encode()).hexdigest()[:12]}'

    # -- Alg. 2's predictor -----------------------------------------------------------------------------------------
    def _predictor(self, space: Any, rated: Any, metric: str, bins: list[tuple[float, float]]) -> Any:
        try:
            import numpy as np
            from sklearn.ensemble import RandomForestRegressor
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError('searcher: predictor needs scikit-learn: pip install scikit-learn') from err
        from ..rating import kendall_tau

        cfg = self.cfg
        low, high = min(b[0] for b in bins), max(b[1] for b in bins)
        g = engine.generator(cfg.seed, 'predictor-samples')
        archs: dict[str, Arch] = {}
        for _ in range(cfg.predictor_samples * 50):
            if len(archs) == min(cfg.predictor_samples, space.size):
                break
            arch = space.sample(g)
            if low <= space.cost(arch, metric) <= high:
                archs.setdefault(space.key(arch), arch)
        items = list(archs.values())
        if len(items) < 4:
            raise ValueError(f'the predictor found {len(items)} subnets in {metric} [{low:g}, {high:g}]; it needs 4')
        top1 = np.array([-rated(a) for a in items])
        features = np.array(items, dtype=float)
        half = len(items) // 2
        forest = RandomForestRegressor(n_estimators=cfg.predictor_trees, random_state=cfg.seed % 2**32)
        forest.fit(features[:half], top1[:half])
        pred = forest.predict(features[half:])
        try:
            tau: float | None = float(kendall_tau(pred, top1[half:]))
        except ValueError:  # constant predictions or accuracies (a tiny run): no rank correlation
            tau = None
        report = {
            'samples': len(items),
            'fit': half,
            'check': len(items) - half,
            'check_kendall_tau': tau,
            'check_rmse': float(np.sqrt(np.mean((pred - top1[half:]) ** 2))),
        }
        atomic_write_json(self.root / 'predictor.json', report)
        print(f'predictor: Kendall tau {tau} on {report["check"]} held-back subnets')
        return lambda batch: forest.predict(np.array(batch, dtype=float)).tolist()

    # -- the search --------------------------------------------------------------------------------------------------
    def search(self, space: Any, rated: Any, metric: str, budget: float | None, top_k: int) -> list[Found]:
        cfg = self.cfg
        evo_space = _Costs(space, cfg.latency_runtime, cfg.img_size)
        bins = self.bins(evo_space, metric, budget)
        self.root.mkdir(parents=True, exist_ok=True)
        predict = self._predictor(evo_space, rated, metric, bins) if cfg.searcher == 'predictor' else None
        candidates: dict[str, dict] = {}
        for k, (lo, hi) in enumerate(bins):
            evo = cfg.evolution_config(metric=metric, budget=hi, min_budget=lo, seed=engine.derive_seed(cfg.seed, k))
            folder = self._folder(rated, f'{cfg.searcher}-bin{k}')
            if predict is None:
                result = evolution_search(evo_space, lambda a: -rated(a), evo, folder)
            else:
                result = evolution_search(evo_space, config=evo, output=folder, score_batch=predict)
            print(f'bin {k} [{lo:.4g}, {hi:.4g}]: {result.evaluations} subnets scored, {result.rejected} rejected')
            for rank, ind in enumerate(result.top):
                top1 = -rated(ind.arch) if predict is None or rank == 0 else None
                if top1 is None:
                    continue  # predictor runs rate only each bin's winner for real
                row = candidates.setdefault(ind.key, {'arch': ind.arch, 'cost': ind.cost, 'top1': top1, 'bins': []})
                row['bins'].append(k)
                if predict is not None:
                    row['predicted_top1'] = ind.score
        front = pareto_front([(r['cost'], r['top1'], r) for r in candidates.values()])
        self._write_front(space, front, list(candidates.values()), metric, bins)
        best = sorted(front, key=lambda p: (-p[1], p[0]))[:top_k]
        extra = {'searcher': cfg.searcher}
        return [
            Found(r['arch'], -r['top1'], r['cost'], {'top1': r['top1'], 'bins': r['bins'], **extra}) for _, _, r in best
        ]

    def _write_front(self, space: Any, front: list, rows: list[dict], metric: str, bins: list) -> None:
        folder = self.cfg.out / 'arch' / 'pareto'
        folder.mkdir(parents=True, exist_ok=True)
        for f in folder.glob('*.json'):
            f.unlink()
        summary = []
        for i, (cost, top1, row) in enumerate(front, 1):
            provenance = {
                'method': self.method.name,
                'space': space.name,
                'pareto_rank': i,
                'metric': metric,
                'cost': cost,
                'top1': top1,
                'flops': float(space.cost(row['arch'], 'flops')),
                'arch': list(row['arch']),
                'bins': row['bins'],
                'seed': self.cfg.seed,
            }
            if 'predicted_top1' in row:
                provenance['predicted_top1'] = row['predicted_top1']
            write_spec(space.to_spec(row['arch']), folder / f'{i}.json', **provenance)
            summary.append({'file': f'{i}.json', **provenance})
        atomic_write_json(folder / 'pareto.json', {'metric': metric, 'bins': bins, 'front': summary})
        _plot(rows, front, metric, folder / 'pareto.png', f'NASViT {space.name}: held-out top-1 over {metric}')


def _plot(rows: list[dict], front: list, metric: str, path: Path, title: str) -> None:
    """Every candidate (grey) and the front (line), with matplotlib's Agg backend; skipped without matplotlib."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:  # pragma: no cover - depends on the environment
        print('matplotlib is not installed: no pareto.png (pip install matplotlib)')
        return
    fig = Figure(figsize=(5, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.scatter([r['cost'] for r in rows], [r['top1'] for r in rows], s=10, c='0.6', label='candidates')
    ax.plot([p[0] for p in front], [p[1] for p in front], 'o-', c='C0', label='Pareto front')
    ax.set_xlabel(metric)
    ax.set_ylabel('held-out top-1 (%)')
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
