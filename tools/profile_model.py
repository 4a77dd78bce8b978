"""Profile one inference or training step of a model with torch.profiler: top kernels and a Chrome trace.

Usage: python tools/profile_model.py bossnet_t0 --device cuda --mode train --batch 128 --out trace.json
"""

from __future__ import annotations

import argparse
import sys

import timm
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

import zoo  # noqa: F401  (registers the models)
from zoo._cli_errors import positive_int, run_cli
from zoo.benchmark import check_models


def main(argv: list[str] | None = None) -> int:
    """Parse the options and profile; a user error prints one line and returns 2."""
    parser = argparse.ArgumentParser(prog='profile_model.py', description=__doc__.splitlines()[0])
    parser.add_argument('model', help='zoo or timm model name')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu', help='torch device')
    parser.add_argument('--mode', choices=['infer', 'train'], default='train', help='inference or a training step')
    parser.add_argument('--batch', type=positive_int, default=64, help='batch size (default: 64)')
    parser.add_argument('--compile', action='store_true', help='profile the torch.compile model')
    parser.add_argument('--no-amp', action='store_true', help='fp32 on CUDA instead of bf16 autocast')
    parser.add_argument('--rows', type=positive_int, default=25, help='kernels in the table (default: 25)')
    parser.add_argument('--out', default=None, help='write a Chrome trace here')
    args = parser.parse_args(argv)
    return run_cli(_profile, args, prog=parser.prog)


def _profile(args: argparse.Namespace) -> None:
    check_models([args.model], args.device)

    cuda = args.device.startswith('cuda')
    torch.backends.cudnn.benchmark = cuda
    model = timm.create_model(args.model).to(args.device, memory_format=torch.channels_last)
    fn = torch.compile(model) if args.compile else model
    size = model.pretrained_cfg['input_size'][-1]
    x = torch.randn(args.batch, 3, size, size, device=args.device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (args.batch,), device=args.device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    amp = torch.autocast(args.device.split(':')[0], dtype=torch.bfloat16, enabled=cuda and not args.no_amp)

    def step() -> None:
        if args.mode == 'infer':
            with torch.inference_mode(), amp:
                fn(x)
            return
        with amp:
            loss = F.cross_entropy(fn(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    model.train(args.mode == 'train')
    for _ in range(5):
        step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(3):
            step()
        if cuda:
            torch.cuda.synchronize()
    sort = 'self_cuda_time_total' if cuda else 'self_cpu_time_total'
    print(prof.key_averages().table(sort_by=sort, row_limit=args.rows))
    if args.out:
        prof.export_chrome_trace(args.out)


if __name__ == '__main__':
    sys.exit(main())
