"""Convert the rating outputs shipped by the official BossNAS repository into ``benchmarks/bossnas/*.json``.

The repository (github.com/changlin31/BossNAS) keeps its per-block path ranks as PyYAML dumps of Python tuples
(``!!python/tuple``, which ``yaml.safe_load`` refuses) and the 23 DNA architectures with their ImageNet top-1 as
literals inside a script. This reads them as data from a git directory (e.g. the mirror the ``fetch`` tool makes)
and writes two self-describing JSON files; nothing of the repository's code is executed or copied.

Usage::

    python tools/convert_bossnas_data.py GIT_DIR [--commit bb8b26a09e3ae7889dd118950b022be6b3ce99a0] \\
        [--out benchmarks/bossnas]
"""

from __future__ import annotations

import argparse
import ast
import itertools
import json
import re
import subprocess
from pathlib import Path

import yaml

REPO = 'github.com/changlin31/BossNAS'
COMMIT = 'bb8b26a09e3ae7889dd118950b022be6b3ce99a0'
NATS_WIDTHS = [8, 16, 24, 32, 40, 48, 56, 64]
NATS_BLOCKS = [[0, 1], [2, 3], [4]]  # the CIFAR-10 split [2, 2, 1] (layers per block)
MBCONV_OPS = ['MB6 3x3', 'MB6 5x5', 'MB3 3x3', 'MB3 5x5']
MBCONV_LAYERS = [2, 4, 4, 4, 4]


class _TupleLoader(yaml.SafeLoader):
    """Safe loader that also reads ``!!python/tuple`` (as a list): the only non-safe tag in the rank files."""


_TupleLoader.add_constructor('tag:yaml.org,2002:python/tuple', lambda loader, node: loader.construct_sequence(node))


def _show(git_dir: str, commit: str, path: str) -> str:
    return subprocess.run(
        ['git', '--git-dir', git_dir, 'show', f'{commit}:{path}'], check=True, capture_output=True, text=True
    ).stdout


def _path_rank(text: str, path: str, num_ops: int, layers: int) -> dict[str, float]:
    """A rank file is a list of (path key, loss) sorted by ascending loss; keep that order."""
    rows = yaml.load(text, Loader=_TupleLoader)
    out = {str(key): float(loss) for key, loss in rows}
    expected = {''.join(map(str, c)) for c in itertools.product(range(num_ops), repeat=layers)}
    if set(out) != expected or len(rows) != len(expected):
        raise ValueError(f'{path}: expected the {len(expected)} paths of {layers} layers x {num_ops} ops')
    losses = list(out.values())
    if losses != sorted(losses):
        raise ValueError(f'{path}: losses are not in ascending order')
    return out


def _dna_archs(text: str, path: str) -> tuple[list[str], list[float]]:
    """The literal lists ``model_encod_list = [...]`` and ``TrueAcc = [...]`` of the MBConv script, as data."""
    values = {}
    for name in ('model_encod_list', 'TrueAcc'):
        match = re.search(rf'^\s*{name} = \[', text, re.M)
        if match is None:
            raise ValueError(f'{path}: no literal list {name}')
        start, depth = match.end() - 1, 0
        for end in range(start, len(text)):  # the matching closing bracket
            depth += {'[': 1, ']': -1}.get(text[end], 0)
            if depth == 0:
                break
        values[name] = ast.literal_eval(text[start : end + 1])
    archs = [' '.join(''.join(map(str, layer_ops)) for layer_ops in arch) for arch in values['model_encod_list']]
    return archs, [float(a) for a in values['TrueAcc']]


def convert(git_dir: str, commit: str, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    source = {'repository': REPO, 'commit': commit, 'licence': 'none (the repository has no LICENSE file)'}

    nats_paths = [f'ranking_nats/path_rank/path_rank_{b}.yml' for b in range(3)]
    ranks = [_path_rank(_show(git_dir, commit, p), p, 8, len(NATS_BLOCKS[b])) for b, p in enumerate(nats_paths)]
    acc_path = 'ranking_nats/nats_cifar10_acc_rank.yml'
    acc = yaml.safe_load(_show(git_dir, commit, acc_path))
    keys = [':'.join(map(str, c)) for c in itertools.product(NATS_WIDTHS, repeat=5)]
    if set(acc) != set(keys):
        raise ValueError(f'{acc_path}: expected the 32768 architectures W:W:W:W:W with W in {NATS_WIDTHS}')
    nats = {
        'source': {**source, 'paths': [*nats_paths, acc_path]},
        'widths': NATS_WIDTHS,
        'blocks': NATS_BLOCKS,
        'block_loss': ranks,
        'cifar10_top1': [float(acc[k]) for k in keys],
    }
    (out / 'nats_size_cifar10.json').write_text(json.dumps(nats, separators=(',', ':')) + '\n')

    mb_paths = [f'ranking_mbconv/path_rank/path_rank_{b}.yml' for b in range(5)]
    ranks = [_path_rank(_show(git_dir, commit, p), p, 4, n) for p, n in zip(mb_paths, MBCONV_LAYERS, strict=True)]
    script = 'ranking_mbconv/get_model_score_mbconv.py'
    archs, top1 = _dna_archs(_show(git_dir, commit, script), script)
    if len(archs) != len(top1):
        raise ValueError(f'{script}: {len(archs)} architectures but {len(top1)} accuracies')
    mbconv = {
        'source': {**source, 'paths': [*mb_paths, script]},
        'ops': MBCONV_OPS,
        'layers_per_block': MBCONV_LAYERS,
        'block_loss': ranks,
        'dna_archs': [{'path': a, 'imagenet_top1': t} for a, t in zip(archs, top1, strict=True)],
    }
    (out / 'mbconv_imagenet.json').write_text(json.dumps(mbconv, indent=1) + '\n')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('git_dir', help='git directory of a BossNAS clone or mirror')
    parser.add_argument('--commit', default=COMMIT)
    parser.add_argument('--out', type=Path, default=Path('benchmarks/bossnas'))
    args = parser.parse_args()
    convert(args.git_dir, args.commit, args.out)


if __name__ == '__main__':
    main()
