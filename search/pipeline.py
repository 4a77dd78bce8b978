"""The engine's staged pipeline: ``train -> rate -> search`` for any :class:`~search.protocols.Method`.

The engine owns what every method shares: the held-out split, the data order, the loop with gradient accumulation,
DDP ``no_sync`` and bf16 autocast, checkpoints (``checkpoints/last.pt``, ``checkpoints/blocks<k>.pt`` for
``--block`` jobs) with resume, the JSON-lines log, and the found architectures (``arch/top<i>.json`` with
provenance). A method says what one step computes (``train_step``), how paths are sampled, how the trained
supernet is rated (its :class:`~search.protocols.Rater`) and searched (its :class:`~search.protocols.Searcher`).
:func:`search.engine.run` is the entry point.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from backbones._runtime import atomic_write_text

from . import data as data_lib
from . import engine
from .emit import write_spec
from .protocols import StepContext

__all__ = [
    'STAGES',
    'GradSlots',
    'RunFolderError',
    'check_run_folder',
    'checkpoint_path',
    'holdout_split',
    'load_trained',
    'run',
    'search',
    'train',
]

STAGES = ('train', 'rate', 'search')


class RunFolderError(ValueError):
    """The output folder holds an earlier run that this command would overwrite, or a checkpoint that is unusable."""


def checkpoint_path(cfg: Any) -> Path:
    """``checkpoints/last.pt`` for a run over all blocks; ``checkpoints/blocks<k>[-<j>...].pt`` for a block job."""
    if getattr(cfg, 'blocks', None) is None:
        return cfg.out / 'checkpoints' / 'last.pt'
    return cfg.out / 'checkpoints' / f'blocks{"-".join(str(k) for k in sorted(cfg.blocks))}.pt'


def check_run_folder(cfg: Any, stages: Sequence[str], resume: bool, overwrite: bool) -> None:
    """Refuse to train over an earlier run unless ``resume`` or ``overwrite``; check a checkpoint to resume from.

    Called before anything is built. ``overwrite`` removes what the earlier run of these blocks left (checkpoint,
    log, ratings, found architectures); rating and search stages alone never lose work and are always allowed.
    """
    if resume and overwrite:
        raise RunFolderError('--resume and --overwrite exclude each other')
    ckpt = checkpoint_path(cfg)
    if 'train' not in stages:
        return
    log = cfg.out / 'train_log.jsonl'
    earlier = ckpt.is_file() or (getattr(cfg, 'blocks', None) is None and log.is_file())
    if resume:
        if ckpt.is_file():
            try:
                engine.load_checkpoint(ckpt)
            except RuntimeError as err:
                raise RunFolderError(f'cannot resume: {err}'.splitlines()[0]) from None
        return
    if earlier and not overwrite:
        raise RunFolderError(
            f'{cfg.out} holds an earlier run ({ckpt.name if ckpt.is_file() else log.name}): pass --resume to '
            'continue it, or --overwrite to start again from step 0'
        )
    if earlier and overwrite:
        ckpt.unlink(missing_ok=True)
        blocks = getattr(cfg, 'blocks', None)
        if blocks is None:
            log.unlink(missing_ok=True)
            (cfg.out / 'search_result.json').unlink(missing_ok=True)
            for folder in ('ratings', 'arch'):
                for f in (cfg.out / folder).glob('*.json'):
                    f.unlink()
        else:
            for k in blocks:
                (cfg.out / 'ratings' / f'block{k}.json').unlink(missing_ok=True)


def holdout_split(cfg: Any, ctx: engine.DistContext) -> dict:
    """The held-out split (``holdout_split.json``), written by the main process and read by the others."""

    def split() -> dict:
        return data_lib.holdout_split(
            Path(cfg.data_dir) / 'train', cfg.holdout_per_class, cfg.seed, cfg.out / 'holdout_split.json'
        )

    result = split() if ctx.is_main else None
    ctx.barrier()
    return result or split()


def _train_loader(cfg: Any, split: dict, ctx: engine.DistContext, epoch: int, start: int, transform: Any) -> DataLoader:
    base = data_lib.image_folder(Path(cfg.data_dir) / 'train', transform)
    dataset = data_lib.SeededSamples(base, split['train'], cfg.seed)
    sampler = data_lib.GlobalBatchSampler(
        len(dataset), cfg.batch_size, cfg.seed, epoch, ctx.rank, ctx.world_size, cfg.grad_accum, start_step=start
    )
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=cfg.workers,
        pin_memory=ctx.device.type == 'cuda',
        persistent_workers=False,
    )


def _to_device(x: Any, device: torch.device) -> Any:
    if isinstance(x, (list, tuple)):
        return type(x)(_to_device(v, device) for v in x)
    return x.to(device, non_blocking=True)


def _truncate_log(path: Path, step: int) -> None:
    """Keep the log lines of steps up to ``step`` (a resumed run repeats the later ones)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line torn by the kill
        if int(record.get('step', 0)) <= step:
            keep.append(line)
    atomic_write_text(path, ''.join(x + '\n' for x in keep))


def _remove_stale_tmp(folder: Path) -> None:
    """Temporary files of a killed writer are never valid: remove them.

    ``backbones._runtime.atomic_write`` names them ``.<name>.<random>.tmp``; ``.<name>.tmp-<pid>`` is the older form.
    """
    for pattern in ('.*.tmp', '.*.tmp-*'):
        for f in folder.glob(pattern):
            f.unlink(missing_ok=True)


def train(method: Any, ctx: engine.DistContext, resume: bool = False) -> Path:
    """Train ``method``'s supernet; returns the final checkpoint (``resume``: continue from it)."""
    cfg = method.cfg
    ckpt_path = checkpoint_path(cfg)
    split = holdout_split(cfg, ctx)
    steps_per_epoch = len(split['train']) // cfg.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f'{len(split["train"])} training images cannot fill one batch of {cfg.batch_size}')
    runner = method.build(ctx, split)
    optimizer, scheduler, per_step = method.optimizer(steps_per_epoch)
    total = steps_per_epoch * cfg.epochs
    step = 0
    if resume and ckpt_path.is_file():
        state = engine.load_checkpoint(ckpt_path, ctx.device)
        written = json.loads(state['config'])
        if written.get('space') != cfg.space or state.get('objective') != method.name:
            raise ValueError(
                f'{ckpt_path} was written by {state.get("objective")!r} for space {written.get("space")!r}, '
                f'not by {method.name!r} for {cfg.space!r}'
            )
        missing, unexpected = runner.load_state_dict(state['model'], strict=False)
        if unexpected or [m for m in missing if m in method.trainable_state()]:
            raise RuntimeError(f'{ckpt_path} does not fit the supernet: unexpected {unexpected[:5]}')
        optimizer.load_state_dict(state['optimizer'])
        scheduler.load_state_dict(state['scheduler'])
        step = int(state['step'])
        if not getattr(method, 'zero_grad_to_none', True):
            _restore_zero_grads(optimizer)
        if ctx.is_main:
            _truncate_log(cfg.out / 'train_log.jsonl', step)
            _remove_stale_tmp(ckpt_path.parent)
    elif resume and ctx.is_main:
        print(f'no checkpoint at {ckpt_path}: starting from scratch')
    model: nn.Module = runner
    if ctx.distributed:
        ids = [ctx.device.index] if ctx.device.type == 'cuda' else None
        model = nn.parallel.DistributedDataParallel(runner, device_ids=ids, find_unused_parameters=True)
    log = engine.JsonlLogger(cfg.out / 'train_log.jsonl', ctx.is_main, cfg.tensorboard)
    bar = engine.progress(total=total, initial=step, enabled=ctx.is_main, desc=f'{method.name} supernet')
    method.train_mode()
    slots = GradSlots(runner, method.grad_slots, ctx) if getattr(method, 'grad_slots', None) else None
    while step < total:
        epoch, start = divmod(step, steps_per_epoch)
        if not per_step:
            scheduler.step(epoch + getattr(method, 'schedule_epoch_offset', 0))
        it = iter(_train_loader(cfg, split, ctx, epoch, start, method.transform()))
        for _ in range(start, steps_per_epoch):
            if per_step:
                scheduler.step_update(step)
            timing: dict[str, float] = {}
            engine.reseed_step(cfg.seed, step, ctx.rank)
            paths = method.sample_paths(step)
            losses: dict[str, float] = {}
            t0 = time.perf_counter()
            for a in range(cfg.grad_accum):
                with engine.timer(timing, 'data_s', ctx.device):
                    images, labels = next(it)
                    images, labels = _to_device(images, ctx.device), _to_device(labels, ctx.device)
                # with gradient slots DDP never reduces: GradSlots.reduce does, once per slot and step
                sync = (a == cfg.grad_accum - 1 and slots is None) or not ctx.distributed
                with engine.timer(timing, 'compute_s', ctx.device):
                    no_sync = model.no_sync() if not sync else contextlib.nullcontext()
                    backward = _backward(cfg, ctx) if slots is None else slots.backward(cfg.grad_accum)
                    step_ctx = StepContext(step, epoch, a, cfg.grad_accum, model, ctx.device, backward)
                    with no_sync, engine.autocast(ctx.device, cfg.amp):
                        parts = method.train_step(images, labels, paths, step_ctx)
                for name, value in parts.items():
                    losses[name] = losses.get(name, 0.0) + float(value) / cfg.grad_accum
            extra: dict[str, Any] = {}
            if slots is not None:
                with engine.timer(timing, 'combine_s', ctx.device):
                    slots.reduce()
                    extra = method.combine_grads(slots.grads, slots.named, step_ctx) or {}
                    slots.clear()
            optimizer.step()
            optimizer.zero_grad(set_to_none=getattr(method, 'zero_grad_to_none', True))
            method.after_step(step)
            if ctx.device.type == 'cuda':
                torch.cuda.synchronize(ctx.device)
            step += 1
            elapsed = time.perf_counter() - t0
            if ctx.is_main:
                log.log(
                    step=step,
                    epoch=epoch,
                    loss=sum(losses.values()),
                    lr=[g['lr'] for g in optimizer.param_groups[:: getattr(method, 'groups_per_lr', 1)]],
                    img_per_s=cfg.batch_size / elapsed,
                    step_s=elapsed,
                    **losses,
                    **timing,
                    **extra,
                )
                bar.set_postfix(loss=f'{sum(losses.values()):.4f}', epoch=epoch)
            bar.update(1)
            if step % cfg.ckpt_every == 0 or step % steps_per_epoch == 0 or step == total:
                if ctx.is_main:
                    state = {
                        'step': step,
                        'epoch': epoch,
                        'objective': method.name,
                        'model': method.trainable_state(),
                        'optimizer': optimizer.state_dict(),
                        'scheduler': scheduler.state_dict(),
                        'config': cfg.to_json(),
                    }
                    engine.save_checkpoint(state, ckpt_path)
                ctx.barrier()
                engine.maybe_fault(step)
    bar.close()
    log.close()
    if ctx.is_main and not ckpt_path.is_file():
        raise RuntimeError(f'{ckpt_path} is missing')
    return ckpt_path


def _restore_zero_grads(optimizer: torch.optim.Optimizer) -> None:
    """Zeroed (not ``None``) gradients for every parameter the optimizer has stepped, as the uninterrupted run has
    them: with ``zero_grad(set_to_none=False)`` those keep being updated in steps that do not sample them."""
    for group in optimizer.param_groups:
        for p in group['params']:
            if optimizer.state.get(p) and p.grad is None:
                p.grad = torch.zeros_like(p)


class GradSlots:
    """Separate gradients for one optimizer step, for methods that combine several gradients nonlinearly.

    A method that sets ``grad_slots = ('sup', 'sub')`` calls ``ctx.backward(loss, slot='sup')`` (or ``'sub'``):
    each backward accumulates, over its micro-batches, into that slot's own buffer (the buffer is swapped in as
    ``p.grad`` around the backward, so nothing is copied), scaled by ``1 / grad_accum`` as the plain backward.
    After the last micro-batch the engine calls :meth:`reduce`, then ``method.combine_grads(grads, named, ctx)``,
    which must set ``p.grad`` of every parameter from the slots (and may return scalars for the log), then steps
    the optimizer. AMP stays the engine's (bf16 autocast, the backward outside it: no loss scaling is needed).

    DDP: every micro-batch runs under ``no_sync`` (DDP's reducer would sum the slots into one gradient), and
    :meth:`reduce` averages each slot over the ranks with one all-reduce of its flattened tensors (plus one small
    all-reduce of which parameters have a gradient on any rank): one all-reduce per combined gradient. A slot then
    holds the mean over all ``world_size x grad_accum`` micro-batches, exactly what one process with
    ``world_size x grad_accum`` accumulation steps holds, so a nonlinear combination (gradient projection,
    clipping) sees the same inputs in both. Buffers (BN running statistics) are not broadcast by DDP under
    ``no_sync``: every rank keeps its own, and checkpoints hold rank 0's (a rating recalibrates them anyway).
    """

    def __init__(self, module: nn.Module, names: Sequence[str], ctx: engine.DistContext) -> None:
        if len(set(names)) != len(names) or not names:
            raise ValueError(f'grad_slots must be distinct names, got {names!r}')
        self.names, self.ctx = tuple(names), ctx
        self.named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        self.grads: dict[str, list[torch.Tensor | None]] = {}
        self.clear()

    def clear(self) -> None:
        self.grads = {name: [None] * len(self.named) for name in self.names}

    def backward(self, grad_accum: int) -> Any:
        """The ``ctx.backward(loss, slot=...)`` of one micro-batch."""

        def backward(loss: torch.Tensor, slot: str | None = None) -> None:
            if slot not in self.grads:
                raise ValueError(f'backward(loss, slot=...) needs one of the slots {self.names}, got {slot!r}')
            buf = self.grads[slot]
            params = [p for _, p in self.named]
            for p, g in zip(params, buf, strict=True):
                p.grad = g
            try:
                with torch.autocast(self.ctx.device.type, enabled=False):
                    (loss / grad_accum).backward()
            finally:
                for i, p in enumerate(params):
                    buf[i], p.grad = p.grad, None

        return backward

    def reduce(self) -> None:
        """Average every slot over the ranks (a no-op in one process); see the class docstring."""
        if not self.ctx.distributed:
            return
        import torch.distributed as dist
        from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

        device = self.ctx.device
        have = torch.tensor(
            [[g is not None for g in self.grads[s]] for s in self.names], dtype=torch.int32, device=device
        )
        dist.all_reduce(have, op=dist.ReduceOp.MAX)
        for k, slot in enumerate(self.names):
            buf = self.grads[slot]
            idx = [i for i in range(len(buf)) if have[k, i]]
            if not idx:
                continue
            dense = {i: buf[i] if buf[i] is not None else torch.zeros_like(self.named[i][1]) for i in idx}
            for dtype in sorted({t.dtype for t in dense.values()}, key=str):  # one flat buffer per dtype
                part = [i for i in idx if dense[i].dtype == dtype]
                flat = _flatten_dense_tensors([dense[i] for i in part])
                dist.all_reduce(flat)
                flat /= self.ctx.world_size
                for i, t in zip(part, _unflatten_dense_tensors(flat, [dense[i] for i in part]), strict=True):
                    buf[i] = t


def _backward(cfg: Any, ctx: engine.DistContext) -> Any:
    """The engine's backward: scaled for accumulation, outside autocast (the method's forward ran inside it)."""

    def backward(loss: torch.Tensor) -> None:
        with torch.autocast(ctx.device.type, enabled=False):
            (loss / cfg.grad_accum).backward()

    return backward


def _merged_state(method: Any, ctx: engine.DistContext) -> tuple[dict, list[Path]]:
    """One state from ``last.pt``, or from the block jobs' checkpoints (each contributes the blocks it trained)."""
    cfg = method.cfg
    folder = cfg.out / 'checkpoints'
    if (folder / 'last.pt').is_file():
        return engine.load_checkpoint(folder / 'last.pt', ctx.device), [folder / 'last.pt']
    files = sorted(folder.glob('blocks*.pt'))
    if not files:
        raise FileNotFoundError(f'no supernet checkpoint in {folder} (last.pt or blocks<k>.pt): train first')
    model: dict[str, torch.Tensor] = {}
    covered: dict[int, Path] = {}
    steps = []
    state: dict = {}
    for path in files:
        state = engine.load_checkpoint(path, ctx.device)
        for k in json.loads(state['config'])['blocks']:
            if k in covered:
                raise ValueError(f'block {k} was trained by both {covered[k].name} and {path.name}')
            covered[k] = path
            prefixes = method.block_prefixes(k)
            model.update({n: t for n, t in state['model'].items() if n.startswith(prefixes)})
        steps.append(int(state['step']))
    missing = [k for k in range(method.num_blocks) if k not in covered]
    if missing:
        raise FileNotFoundError(f'blocks {missing} have no checkpoint in {folder} (found {[f.name for f in files]})')
    return {'model': model, 'step': sum(steps), 'objective': state.get('objective')}, files


def block_checkpoint(cfg: Any, k: int) -> Path | None:
    """The checkpoint that holds block ``k``'s trained weights (``last.pt`` or the block job's file)."""
    folder = cfg.out / 'checkpoints'
    if (folder / 'last.pt').is_file():
        return folder / 'last.pt'
    for path in sorted(folder.glob('blocks*.pt')):
        if k in [int(x) for x in path.stem[len('blocks') :].split('-')]:
            return path
    return None


def load_trained(method: Any, ctx: engine.DistContext, checkpoint: Path | None = None) -> dict:
    """Build ``method`` and load its trained weights (``checkpoint``, else ``last.pt``, else the block jobs');
    returns the state. The module is left in eval mode."""
    split = holdout_split(method.cfg, ctx)
    runner = method.build(ctx, split)
    if checkpoint is not None:
        state, files = engine.load_checkpoint(checkpoint, ctx.device), [checkpoint]
    else:
        state, files = _merged_state(method, ctx)
    missing, unexpected = runner.load_state_dict(state['model'], strict=False)
    missing = [m for m in missing if m in method.trainable_state()]
    if unexpected or missing:
        names = ', '.join(str(f) for f in files)
        raise RuntimeError(f'{names} does not fit this supernet: missing {missing[:5]}, unexpected {unexpected[:5]}')
    runner.eval()
    return state


def search(method: Any, rated: Any, device: torch.device | None = None) -> list[dict]:
    """Run the method's searcher over ``rated``; write ``arch/top<i>.json`` (spec + provenance) and
    ``search_result.json``; returns the found architectures, best first."""
    cfg = method.cfg
    space = method.space
    found = method.searcher(device or torch.device('cpu')).search(space, rated, cfg.metric, cfg.budget, cfg.top_k)
    config = json.loads(cfg.to_json())
    out = []
    for rank, item in enumerate(found, 1):
        spec = space.to_spec(item.arch)
        provenance = {
            'method': method.name,
            'space': space.name,
            'rank': rank,
            'score': item.score,
            'metric': cfg.metric,
            'cost': item.cost,
            'budget': cfg.budget,
            'seed': cfg.seed,
            'arch': list(item.arch),
            **method.provenance(),
            **item.extra,
            'config': config,
        }
        write_spec(spec, cfg.out / 'arch' / f'top{rank}.json', **provenance)
        out.append({'spec': spec, **provenance})
    results = [{k: v for k, v in r.items() if k != 'config'} for r in out]
    summary = cfg.out / 'search_result.json'
    summary.write_text(json.dumps({'config': config, 'results': results}, indent=1) + '\n')
    return out


def run(method: Any, ctx: engine.DistContext, stages: Sequence[str] = STAGES, resume: bool = False) -> list[dict]:
    """The stages of ``method`` in order; returns the found architectures on the main process (else ``[]``)."""
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f'unknown stage(s) {unknown}: expected some of {STAGES}')
    found: list[dict] = []
    if 'train' in stages:
        train(method, ctx, resume=resume)
    rated = None
    if 'rate' in stages or 'search' in stages:
        rated = method.rater(ctx).rate()  # looks at its cache before it builds anything
    if 'search' in stages and ctx.is_main:
        if rated is None:
            print(f'{method.name}: not everything is rated yet: run `--stage search` once every block job has finished')
        else:
            found = search(method, rated, ctx.device)
    ctx.barrier()
    return found
