"""Where pretrained weights come from, and the checks they pass before timm loads them.

All weights are safetensors on the Hugging Face Hub under one organisation (:data:`HUB_ORG`). Before timm's
loader runs, :func:`resolve_pretrained` downloads the file with the real ``huggingface_hub`` client (so
``HF_ENDPOINT``, ``HF_HUB_OFFLINE`` and the cache behave as everywhere else), refuses anything that is not
safetensors, checks the sha256 where one is recorded and that the file is complete, and removes a bad download
from the cache so that the next attempt fetches it again. timm then loads the verified local file.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from huggingface_hub import hf_hub_download
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
from safetensors import SafetensorError, safe_open
from timm.models._builder import resolve_pretrained_cfg

#: The one Hub organisation that hosts the zoo's weights.
HUB_ORG = 'supernet-zoo'
WEIGHTS_FILENAME = 'model.safetensors'
#: sha256 of ``model.safetensors`` per Hub repo id, where the catalog records one.
KNOWN_SHA256: dict[str, str] = {}


class PretrainedWeightsError(RuntimeError):
    """Pretrained weights could not be fetched or failed a check; the message names the file."""


def hub_id(arch: str, tag: str = 'official_in1k') -> str:
    """The Hub repo id of a model's weights: ``<HUB_ORG>/<arch>.<tag>``."""
    return f'{HUB_ORG}/{arch}.{tag}'


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()


def _purge_cached(path: Path) -> None:
    """Remove a downloaded file from the Hub cache (the snapshot link and the blob it points to)."""
    blob = path.resolve()
    path.unlink(missing_ok=True)
    if blob != path:
        blob.unlink(missing_ok=True)


def verify_weights(path: str | Path, sha256: str | None = None, purge: bool = False) -> Path:
    """Check that ``path`` is a complete safetensors file (and matches ``sha256`` if given).

    With ``purge`` (downloads), a bad file is removed so that it does not stay in the cache.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'pretrained weights not found: {path}')
    if path.suffix != '.safetensors':
        raise PretrainedWeightsError(
            f'{path}: only safetensors weights are loaded; convert the checkpoint first '
            '(tools/convert_checkpoint.py writes safetensors)'
        )
    problem = None
    if sha256 is not None and _sha256(path) != sha256.lower():
        problem = f'sha256 mismatch (expected {sha256})'
    else:
        try:
            with safe_open(str(path), framework='pt') as f:
                f.keys()
        except (SafetensorError, OSError) as err:
            problem = f'not a complete safetensors file ({err})'
    if problem:
        if purge:
            _purge_cached(path)
        where = ' (removed from the cache; the next call downloads it again)' if purge else ''
        raise PretrainedWeightsError(f'corrupt pretrained weights {path}: {problem}{where}')
    return path


def fetch_weights(cfg: dict[str, Any], cache_dir: str | Path | None = None) -> Path:
    """Return a verified local safetensors file for a resolved pretrained cfg (downloading it if needed)."""
    file, repo = cfg.get('file'), cfg.get('hf_hub_id')
    if file:
        path = Path(file)
        if path.is_dir():
            path = path / WEIGHTS_FILENAME
        return verify_weights(path, KNOWN_SHA256.get(repo) if repo else None)
    if not repo:
        raise PretrainedWeightsError(
            f'{cfg.get("architecture")}: no pretrained weights are published for this model '
            "(its pretrained_cfg has no hf_hub_id); pass pretrained_cfg_overlay=dict(file='weights.safetensors')"
        )
    repo_id, _, revision = repo.partition('@')
    filename = cfg.get('hf_hub_filename') or WEIGHTS_FILENAME
    if not filename.endswith('.safetensors'):
        raise PretrainedWeightsError(f'{repo}/{filename}: only safetensors weights are loaded')
    try:
        path = hf_hub_download(repo_id, filename, revision=revision or None, cache_dir=cache_dir)
    except LocalEntryNotFoundError as err:
        raise PretrainedWeightsError(
            f'{repo}/{filename} is not in the local Hub cache and the Hub cannot be reached '
            f'(offline mode or no network): {err}'
        ) from err
    except HfHubHTTPError as err:
        raise PretrainedWeightsError(f'could not download {repo}/{filename}: {err}') from err
    return verify_weights(path, KNOWN_SHA256.get(repo), purge=True)


def resolve_pretrained(variant: str, pretrained: bool, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Prepare timm kwargs so that ``build_model_with_cfg`` loads verified local safetensors weights."""
    if not pretrained:
        return kwargs
    cfg = resolve_pretrained_cfg(
        variant,
        pretrained_cfg=kwargs.get('pretrained_cfg'),
        pretrained_cfg_overlay=kwargs.get('pretrained_cfg_overlay'),
    ).to_dict()
    path = fetch_weights(cfg, cache_dir=kwargs.get('cache_dir'))
    overlay = dict(kwargs.get('pretrained_cfg_overlay') or {})
    overlay.update(file=str(path), source='file')  # timm loads the verified file, not the Hub
    return {**kwargs, 'pretrained_cfg_overlay': overlay}
