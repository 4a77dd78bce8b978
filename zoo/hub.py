"""Publishing models to the Hugging Face Hub: safetensors weights, a timm ``config.json`` and a model card.

The spec travels in ``config.json`` as ``model_args``, so ``timm.create_model('hf-hub:<org>/<repo>')`` rebuilds a
searched model from the repo alone, even one that is not in the catalog.
"""

from __future__ import annotations

import json
import tempfile
from os import PathLike
from pathlib import Path
from typing import Any

import torch.nn as nn
from timm.models import save_for_hf

from backbones._pretrained import HUB_ORG

from .catalog import CATALOG
from .flops import count_macs, count_params
from .spec import spec_of

# Hub license ids for the licenses named in pretrained_cfg.
_HUB_LICENSES = {'mit': 'mit', 'apache-2.0': 'apache-2.0', 'cc-by-nc-4.0': 'cc-by-nc-4.0'}


def _front_matter(fields: dict[str, Any]) -> str:
    lines = ['---']
    for key, value in fields.items():
        if isinstance(value, list):
            lines.append(f'{key}:')
            lines += [f'- {v}' for v in value]
        else:
            lines.append(f'{key}: {value}')
    return '\n'.join([*lines, '---', ''])


def model_card(model: nn.Module, repo_id: str) -> str:
    """A model card: timm front matter, the params/FLOPs/top-1 table, provenance, citation and usage."""
    cfg = model.pretrained_cfg
    arch = cfg.get('architecture') or type(model).__name__
    record = CATALOG.get(arch)
    size = cfg.get('input_size', (3, 224, 224))
    params, macs = count_params(model), count_macs(model, tuple(size))
    license_id = _HUB_LICENSES.get(str(cfg.get('license', '')).lower(), 'other')
    head = {
        'tags': ['image-classification', 'timm', 'supernet-zoo', 'neural-architecture-search'],
        'library_name': 'timm',
        'license': license_id,
        'datasets': ['imagenet-1k'],
        'metrics': ['accuracy'],
    }
    paper_flops = '- | -'
    if record is not None:
        paper_flops = f'{macs * record.flops_rule.factor / 1e6:.0f} | {record.flops_m:g} ({record.source_table})'
    rows = [
        '| | ours (measured) | paper |',
        '|---|---|---|',
        f'| Params (M) | {params / 1e6:.3f} | {record.params_m if record else "-"} |',
        f'| MACs (M), {size[-1]}px, torch flop counter | {macs / 1e6:.0f} | - |',
        f"| FLOPs (M) under the paper's counting rule | {paper_flops} |",
        f'| ImageNet top-1 | - | {record.top1 if record and record.top1 is not None else "-"} |',
    ]
    notes = cfg.get('notes') or ()
    notes = [notes] if isinstance(notes, str) else list(notes)
    spec = json.dumps(spec_of(model), indent=2)
    body = [
        f'# {repo_id.split("/")[-1]}',
        '',
        f'`{arch}` from supernet-zoo: {cfg.get("paper_name", "")} ({cfg.get("paper_ids", "")}).',
        '',
        *rows,
        '',
        '## Provenance',
        f'- Origin: {cfg.get("origin_url", "-")}',
        f'- License of the weights: {cfg.get("license", "unknown")}',
        *[f'- {n}' for n in notes],
        '',
        '## Usage',
        '```python',
        'import timm, zoo  # importing zoo registers the architectures with timm',
        f"model = timm.create_model('hf-hub:{repo_id}', pretrained=True).eval()",
        f"features = timm.create_model('hf-hub:{repo_id}', pretrained=True, features_only=True)",
        '```',
        '',
        '## Architecture spec',
        '```json',
        spec,
        '```',
        '',
        '## Citation',
        f'{cfg.get("paper_name", "")}, {cfg.get("paper_ids", "")}.',
        '',
    ]
    return _front_matter(head) + '\n'.join(body)


def save_for_hub(model: nn.Module, directory: str | PathLike, repo_id: str | None = None) -> Path:
    """Write ``model.safetensors``, ``config.json`` (spec in ``model_args``) and ``README.md`` to ``directory``.

    ``repo_id`` (default ``<HUB_ORG>/<directory name>``) is the repo the card's usage lines point to.
    """
    directory = Path(directory)
    save_for_hf(model, str(directory), model_args={'spec': spec_of(model)}, safe_serialization=True)
    (directory / 'README.md').write_text(model_card(model, repo_id or f'{HUB_ORG}/{directory.name}'))
    return directory


def push_to_hub(
    model: nn.Module,
    repo_id: str,
    token: str | None = None,
    private: bool = False,
    commit_message: str = 'Add supernet-zoo model',
    revision: str | None = None,
) -> str:
    """Create (or update) ``repo_id`` on the Hub with the model's weights, config and card; returns the URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_for_hub(model, Path(tmp) / repo_id.split('/')[-1], repo_id=repo_id)
        info = api.upload_folder(
            repo_id=repo_id, folder_path=str(folder), commit_message=commit_message, revision=revision
        )
    return str(info)
