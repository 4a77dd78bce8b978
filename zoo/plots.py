"""The zoo at a glance: paper top-1 against MACs (Pareto view) and against measured throughput."""

from __future__ import annotations

import json
from os import PathLike
from pathlib import Path

import timm

from .catalog import CATALOG
from .flops import count_macs

#: timm peers with the top-1 that one of our papers' tables lists for them (same recipe caveats as the paper).
PEER_TOP1: dict[str, tuple[float, str]] = {
    'resnet50': (77.7, 'BossNAS Table 1'),
    'efficientnet_b0': (76.3, 'DNA Table 2'),
    'efficientnet_b1': (79.1, 'BossNAS Table 1'),
    'deit_small_patch16_224': (79.8, 'BossNAS Table 1'),
    'resnest50d': (81.1, 'Pi-NAS Table 2'),
}


def _points() -> dict[str, tuple[float, float, str]]:
    """name -> (GMACs at the native input size, paper top-1, group)."""
    points = {}
    for name, record in CATALOG.items():
        if record.top1 is not None:
            points[name] = (record.flops_m / record.flops_rule.factor / 1e3, record.top1, record.paper)
    for name, (top1, _) in PEER_TOP1.items():
        model = timm.create_model(name)
        size = model.pretrained_cfg['input_size']
        points[name] = (count_macs(model, size) / 1e9, top1, 'timm peers')
    return points


def plot_zoo(out: str | PathLike, benchmark_json: str | PathLike | None = None) -> Path:
    """Write a PNG: top-1 vs GMACs, and (with a benchmark JSON of inference runs) top-1 vs images/s."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    points = _points()
    speed: dict[str, float] = {}
    device = ''
    if benchmark_json is not None:
        for row in json.loads(Path(benchmark_json).read_text()):
            if row['mode'] == 'infer' and row['backend'] == 'eager':
                speed[row['model']] = max(speed.get(row['model'], 0.0), row['img_per_s'])
                device = row['device']
    panels = 2 if speed else 1
    fig, axes = plt.subplots(1, panels, figsize=(7 * panels, 5.5), squeeze=False)
    groups = sorted({g for _, _, g in points.values()})
    markers = dict(zip(groups, 'osD^vP*X', strict=False))
    for ax, xkey in zip(axes[0], ['macs', 'speed'][:panels], strict=True):
        for group in groups:
            names = [n for n, p in points.items() if p[2] == group and (xkey == 'macs' or n in speed)]
            xs = [points[n][0] if xkey == 'macs' else speed[n] for n in names]
            ax.scatter(xs, [points[n][1] for n in names], marker=markers[group], label=group, s=40)
            for n, x in zip(names, xs, strict=True):
                ax.annotate(n, (x, points[n][1]), fontsize=7, xytext=(3, 3), textcoords='offset points')
        ax.set_xscale('log')
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f'{v:g}'))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_ylabel('ImageNet top-1 (%, paper tables)')
        ax.grid(alpha=0.3)
        if xkey == 'macs':
            ax.set_xlabel('GMACs at the native input size (torch flop counter)')
            ax.set_title('Accuracy vs compute')
        else:
            ax.set_xlabel(f'images/s, eager inference ({device})')
            ax.set_title('Accuracy vs measured throughput')
        ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
