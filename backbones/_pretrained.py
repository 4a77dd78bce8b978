"""Where pretrained weights come from, and the checks they pass before timm loads them.

All weights are safetensors on the Hugging Face Hub under one organisation (:data:`HUB_ORG`). Every zoo tag has a
Hub id (``<HUB_ORG>/<model>.<tag>``), but only the repos in :data:`PUBLISHED` hold a file; for the others
``pretrained=True`` says that the weights are not published yet and how to load a local file, without touching the
network. ``timm.list_pretrained()`` still lists every tag, because timm lists the tags whose cfg names a weight
location; the load is where an unpublished tag is reported.

Before timm's loader runs, :func:`resolve_pretrained` downloads the file with the real ``huggingface_hub`` client
(so ``HF_ENDPOINT``, ``HF_HUB_OFFLINE`` and the cache behave as everywhere else), refuses anything that is not
safetensors, checks the sha256 where one is recorded and that the file is complete, and removes a bad download
from the cache so that the next attempt fetches it again. timm then loads the verified local file, through a
filter that checks that its keys and shapes fit the model and otherwise raises one short error naming the file
and the first mismatches.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from huggingface_hub import hf_hub_download
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
from safetensors import SafetensorError, safe_open
from timm.models._builder import resolve_pretrained_cfg
from torch import Tensor, nn

#: The one Hub organisation that hosts the zoo's weights.
HUB_ORG = 'supernet-zoo'
WEIGHTS_FILENAME = 'model.safetensors'
#: sha256 of ``model.safetensors`` per Hub repo id, where the catalog records one.
KNOWN_SHA256: dict[str, str] = {}
#: Hub repo ids whose ``model.safetensors`` is uploaded. Empty until the converted checkpoints are published
#: (docs/convert.md); adding a repo id here is what publishing a tag means to the loader.
PUBLISHED: set[str] = set()
#: How many names of each kind of mismatch an error shows.
_SHOWN = 5


class PretrainedWeightsError(RuntimeError):
    """Pretrained weights could not be fetched or failed a check; the message names the file."""


class WeightsNotPublishedError(PretrainedWeightsError):
    """The tag has a Hub id, but its weights are not uploaded yet."""


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
    if repo_id.startswith(f'{HUB_ORG}/') and repo_id not in PUBLISHED and cfg.get('source') != 'hf-hub':
        name = repo_id.split('/', 1)[1]
        raise WeightsNotPublishedError(
            f'{name}: the weights for this tag are not published on the Hub yet ({repo_id}); load a local '
            "safetensors file with pretrained_cfg_overlay=dict(file='model.safetensors') "
            "(tools/convert_checkpoint.py converts the authors' checkpoints, see docs/convert.md)"
        )
    filename = cfg.get('hf_hub_filename') or WEIGHTS_FILENAME
    if not filename.endswith('.safetensors'):
        raise PretrainedWeightsError(f'{repo}/{filename}: only safetensors weights are loaded')
    try:
        path = hf_hub_download(repo_id, filename, revision=revision or None, cache_dir=cache_dir)
    except LocalEntryNotFoundError as err:
        raise PretrainedWeightsError(_unreachable(f'{repo}/{filename}', err)) from err
    except HfHubHTTPError as err:
        raise PretrainedWeightsError(f'could not download {repo}/{filename}: {err}') from err
    return verify_weights(path, KNOWN_SHA256.get(repo), purge=True)


def _unreachable(what: str, err: LocalEntryNotFoundError) -> str:
    """Why a file that is not cached could not be fetched: offline mode, no connection, or an HTTP error."""
    from huggingface_hub import constants

    cause = err.__cause__
    if isinstance(cause, HfHubHTTPError) and cause.response is not None:
        return (
            f'{what}: the Hub at {constants.ENDPOINT} answered HTTP {cause.response.status_code} '
            f'({cause.response.reason_phrase}) and the file is not in the local Hub cache; the server is failing, '
            'this is not an offline problem (retry later, or set HF_ENDPOINT to another mirror)'
        )
    if constants.HF_HUB_OFFLINE:
        return f'{what} is not in the local Hub cache and HF_HUB_OFFLINE=1 forbids downloading it'
    return (
        f'{what} is not in the local Hub cache and the Hub at {constants.ENDPOINT} cannot be reached '
        f'(no network?): {cause or err}'
    )


def _dims(t: Tensor) -> str:
    return 'x'.join(map(str, t.shape)) or 'scalar'


def _first(keys: list[str]) -> str:
    return ', '.join(keys[:_SHOWN]) + (f', ... ({len(keys) - _SHOWN} more)' if len(keys) > _SHOWN else '')


def fit_check(
    path: str | Path,
    cfg: dict[str, Any],
    kwargs: dict[str, Any],
    inner: Callable[..., dict[str, Tensor]] | None = None,
) -> Callable[[dict[str, Tensor], nn.Module], dict[str, Tensor]]:
    """A timm ``pretrained_filter_fn`` that refuses a state dict that does not fit the model, in one short error.

    torch's strict ``load_state_dict`` lists every key (tens of thousands of characters for a wrong file); this
    names the file, counts the missing, unexpected and shape-mismatched keys and shows the first few of each.
    What timm adapts itself is allowed: the classifier when ``num_classes`` differs or ``features_only`` drops it,
    the first conv when ``in_chans`` differs, and keys the features-only model has no module for (its head).
    """
    heads = cfg.get('classifier') or ()
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    convs = cfg.get('first_conv') or ()
    convs = (convs,) if isinstance(convs, str) else tuple(convs)
    features = bool(kwargs.get('features_only'))
    new_head = features or kwargs.get('num_classes', cfg.get('num_classes', 1000)) != cfg.get('num_classes', 1000)
    new_chans = kwargs.get('in_chans', 3) != (cfg.get('input_size') or (3,))[0]
    adapted = {f'{m}.{p}' for m in heads for p in ('weight', 'bias')} if new_head else set()
    adapted |= {f'{m}.weight' for m in convs} if new_chans else set()

    def check(state_dict: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
        if inner is not None:
            state_dict = inner(state_dict, model)
        target = model.state_dict()
        missing = [k for k in target if k not in state_dict and k not in adapted]
        unexpected = [] if features else [k for k in state_dict if k not in target and k not in adapted]
        shapes = [
            f'{k} {_dims(v)} in the file vs {_dims(target[k])}'
            for k, v in state_dict.items()
            if k in target and k not in adapted and tuple(v.shape) != tuple(target[k].shape)
        ]
        if missing or unexpected or shapes:
            parts = [
                f'{len(found)} {kind} ({_first(found)})'
                for kind, found in (
                    ('missing keys', missing),
                    ('unexpected keys', unexpected),
                    ('shape mismatches', shapes),
                )
                if found
            ]
            raise PretrainedWeightsError(
                f'{path} does not fit {cfg.get("architecture") or type(model).__name__}: ' + '; '.join(parts)
            )
        return state_dict

    return check


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
    check = fit_check(path, cfg, kwargs, inner=kwargs.get('pretrained_filter_fn'))
    return {**kwargs, 'pretrained_cfg_overlay': overlay, 'pretrained_filter_fn': check}
