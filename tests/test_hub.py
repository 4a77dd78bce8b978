"""Hub weights through the real huggingface_hub client against a local HTTP server (no internet).

Each scenario runs in a fresh interpreter, because huggingface_hub reads HF_ENDPOINT / HF_HUB_OFFLINE at import.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import timm
from safetensors.torch import load_file

import zoo
from backbones._pretrained import HUB_ORG, hub_id
from tests.hub_server import HubServer
from zoo.hub import HUB_TABLE_BEGIN, HUB_TABLE_END, hub_table, model_card, save_for_hub

ROOT = Path(__file__).resolve().parents[1]
HUB = f'{HUB_ORG}/'


def _run(code: str, env: dict[str, str]) -> str:
    full_env = {**os.environ, 'PYTHONPATH': str(ROOT), **env}
    proc = subprocess.run(
        [sys.executable, '-c', textwrap.dedent(code)], env=full_env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.fixture(scope='module')
def hub(tmp_path_factory):
    """A served hub with dna_a's weights, a custom (non-catalog) spec, and a corrupt file."""
    root = tmp_path_factory.mktemp('hub')
    save_for_hub(timm.create_model('dna_a'), root / hub_id('dna_a'))
    spec = zoo.get_spec('dna_a')
    spec['stages'][1][0] = 'ir_r1_k7_s2_e6_c24_se0.25'
    save_for_hub(zoo.create_model(spec), root / 'someone' / 'my-searched-net')
    bad = root / hub_id('dna_b')
    save_for_hub(timm.create_model('dna_b'), bad)
    data = (bad / 'model.safetensors').read_bytes()
    (bad / 'model.safetensors').write_bytes(data[: len(data) // 2])
    with HubServer(root) as server:
        yield server, root, spec


def test_hub_layout_and_card(hub):
    _, root, spec = hub
    repo = root / 'someone' / 'my-searched-net'
    config = json.loads((repo / 'config.json').read_text())
    assert config['architecture'] == 'mbconv' and config['model_args']['spec'] == spec
    assert config['pretrained_cfg']['license'] == 'unknown'
    card = (repo / 'README.md').read_text()
    assert card.startswith('---\ntags:') and 'library_name: timm' in card
    assert "timm.create_model('hf-hub:supernet-zoo/my-searched-net'" in card
    assert '| Params (M) | 4.2' in card  # a spec outside the catalog has no paper column
    dna_a_card = (root / hub_id('dna_a') / 'README.md').read_text()
    assert 'DNA Table 2' in dna_a_card and '77.1' in dna_a_card


def test_pretrained_download_offline_and_corrupt(hub, tmp_path):
    server, root, spec = hub
    env = {'HF_ENDPOINT': server.url, 'HF_HOME': str(tmp_path / 'hf'), 'HF_HUB_DISABLE_XET': '1'}
    code = f"""
        import torch, timm, zoo
        from safetensors.torch import load_file
        from backbones._pretrained import PretrainedWeightsError, KNOWN_SHA256, PUBLISHED
        root = {str(root)!r}
        # 0. unpublished tags never reach the server; publishing one (as a release would) enables its download
        try:
            timm.create_model('dna_a', pretrained=True)
            raise SystemExit('an unpublished tag was downloaded')
        except PretrainedWeightsError as err:
            assert 'not published on the Hub yet' in str(err) and 'pretrained_cfg_overlay' in str(err), err
        PUBLISHED.add('supernet-zoo/dna_a.official_in1k')
        PUBLISHED.add('supernet-zoo/dna_b.official_in1k')
        # 1. a catalog model downloads its safetensors through huggingface_hub
        m = timm.create_model('dna_a', pretrained=True)
        ref = load_file(root + '/supernet-zoo/dna_a.official_in1k/model.safetensors')
        assert all(torch.equal(m.state_dict()[k], v) for k, v in ref.items())
        # features_only and a new head load the same backbone weights
        f = timm.create_model('dna_a', pretrained=True, features_only=True)
        assert torch.equal(f.conv_stem.weight, ref['conv_stem.weight'])
        c = timm.create_model('dna_a', pretrained=True, num_classes=10)
        assert c.get_classifier().out_features == 10 and torch.equal(c.conv_stem.weight, ref['conv_stem.weight'])
        # 2. a repo alone rebuilds a searched model that is not in the catalog
        h = timm.create_model('hf-hub:someone/my-searched-net', pretrained=True)
        assert zoo.spec_of(h) == {json.dumps(spec)}
        ref = load_file(root + '/someone/my-searched-net/model.safetensors')
        assert all(torch.equal(h.state_dict()[k], v) for k, v in ref.items())
        # 3. a truncated file raises, names the file, and leaves nothing in the cache
        try:
            timm.create_model('dna_b', pretrained=True)
            raise SystemExit('corrupt file was loaded')
        except PretrainedWeightsError as err:
            assert 'model.safetensors' in str(err) and 'removed from the cache' in str(err), err
        import pathlib
        cached = list(pathlib.Path({str(tmp_path / 'hf')!r}).rglob('*dna_b*/**/model.safetensors'))
        assert not [p for p in cached if p.exists()], cached
        # 4. a recorded sha256 that does not match is refused
        KNOWN_SHA256['supernet-zoo/dna_a.official_in1k'] = '0' * 64
        try:
            timm.create_model('dna_a', pretrained=True)
            raise SystemExit('sha256 mismatch was loaded')
        except PretrainedWeightsError as err:
            assert 'sha256 mismatch' in str(err), err
        # the refused file was purged, so the next call downloads it again
        KNOWN_SHA256.clear()
        timm.create_model('dna_a', pretrained=True)
        # 5. a mirror answering 5xx is reported with its status and endpoint, not as offline
        PUBLISHED.add('supernet-zoo/dna_c.official_in1k')
        try:
            timm.create_model('dna_c', pretrained=True)
            raise SystemExit('a failing mirror was not reported')
        except PretrainedWeightsError as err:
            assert 'the Hub at ' + {server.url!r} + ' answered HTTP 501' in str(err), err
            assert 'offline' not in str(err).replace('not an offline problem', ''), err
        print('ok')
    """.replace('{json.dumps(spec)}', repr(spec))
    # 501 is not in huggingface_hub's retry list; 502/503/504 end in the same error after ~23 s of back-off
    server.failing['supernet-zoo/dna_c.official_in1k'] = 501
    assert _run(code, env).strip().endswith('ok')
    assert any('resolve/main/model.safetensors' in r for r in server.requests)

    # 6. offline: the cached dna_a loads without the server; an uncached model fails with a clear message
    server_down = {**env, 'HF_ENDPOINT': 'http://127.0.0.1:9', 'HF_HUB_OFFLINE': '1'}
    code = """
        import timm, zoo
        from backbones._pretrained import PretrainedWeightsError, PUBLISHED
        PUBLISHED.update({'supernet-zoo/dna_a.official_in1k', 'supernet-zoo/pinas_cls.official_in1k'})
        timm.create_model('dna_a', pretrained=True)
        try:
            timm.create_model('pinas_cls', pretrained=True)
            raise SystemExit('loaded without cache')
        except PretrainedWeightsError as err:
            assert 'not in the local Hub cache and HF_HUB_OFFLINE=1' in str(err), err
        print('ok')
    """
    assert _run(code, server_down).strip().endswith('ok')


def test_local_file_must_be_safetensors(tmp_path):
    from backbones._pretrained import PretrainedWeightsError

    pth = tmp_path / 'weights.pth'
    pth.write_bytes(b'not used')
    with pytest.raises(PretrainedWeightsError, match=r'only safetensors'):
        timm.create_model('dna_a', pretrained=True, pretrained_cfg_overlay={'file': str(pth)})
    with pytest.raises(FileNotFoundError, match=r'nope\.safetensors'):
        timm.create_model('dna_a', pretrained=True, pretrained_cfg_overlay={'file': str(tmp_path / 'nope.safetensors')})
    folder = save_for_hub(timm.create_model('dna_c'), tmp_path / 'dna_c')
    model = timm.create_model(
        'dna_c', pretrained=True, pretrained_cfg_overlay={'file': str(folder / 'model.safetensors')}
    )
    assert all((model.state_dict()[k] == v).all() for k, v in load_file(folder / 'model.safetensors').items())


def test_models_without_weights_say_so():
    from backbones._pretrained import PretrainedWeightsError

    with pytest.raises(PretrainedWeightsError, match='no pretrained weights are published'):
        timm.create_model('mbconv', pretrained=True)


def test_model_card_for_a_catalog_model():
    card = model_card(timm.create_model('pinas_cls'), 'supernet-zoo/pinas_cls.official_in1k')
    assert 'license: mit' in card and 'Pi-NAS Table 2' in card and '81.6' in card


def _registered_hub_ids() -> dict[str, str | None]:
    """Each registered model -> the Hub id of its default tag in code (None for the family entry points)."""
    return {n: timm.models.get_pretrained_cfg(n).hf_hub_id for n in zoo.list_models(include_families=True)}


def test_unpublished_tags_say_so_without_the_network(monkeypatch):
    from backbones._pretrained import PUBLISHED, WeightsNotPublishedError

    monkeypatch.setenv('HF_HUB_OFFLINE', '1')  # nothing may be downloaded; the error must not be about the network
    tags = [n for n in timm.list_pretrained() if (timm.models.get_pretrained_cfg(n).hf_hub_id or '').startswith(HUB)]
    # the decision: timm lists every zoo tag (its cfg names a Hub id), none is published yet, the load says so
    assert len(tags) == 17 and not PUBLISHED
    for tag in tags:
        with pytest.raises(WeightsNotPublishedError) as err:
            timm.create_model(tag, pretrained=True)
        text = str(err.value)
        assert text.startswith(f'{tag}: the weights for this tag are not published on the Hub yet'), text
        assert "pretrained_cfg_overlay=dict(file='model.safetensors')" in text
        assert 'connection' not in text and 'cache' not in text


def test_docs_models_table_agrees_with_the_code():
    text = (ROOT / 'docs' / 'models.md').read_text()
    section = text.split(HUB_TABLE_BEGIN, 1)[1].split(HUB_TABLE_END, 1)[0].strip()
    documented = {}
    for row in section.splitlines()[2:]:
        model, _, repo, _ = (cell.strip().strip('`') for cell in row.strip('|').split('|'))
        documented[model] = repo if repo.startswith(HUB) else None
    assert documented == _registered_hub_ids()
    assert section == hub_table(), 'regenerate with zoo.hub.write_hub_table("docs/models.md")'


def test_hub_table_follows_the_published_set(monkeypatch):
    from backbones import _pretrained

    monkeypatch.setattr(_pretrained, 'PUBLISHED', {hub_id('dna_c')})
    monkeypatch.setattr('zoo.hub.PUBLISHED', _pretrained.PUBLISHED)
    rows = [r for r in hub_table().splitlines() if '| published |' in r]
    assert rows == ['| `dna_c` | `dna_c.official_in1k` | `supernet-zoo/dna_c.official_in1k` | published |']


def test_weights_that_do_not_fit_give_one_short_error(tmp_path):
    from backbones._pretrained import PretrainedWeightsError

    wrong = save_for_hub(timm.create_model('dna_b'), tmp_path / 'dna_b') / 'model.safetensors'
    with pytest.raises(PretrainedWeightsError) as err:
        timm.create_model('dna_a', pretrained=True, pretrained_cfg_overlay={'file': str(wrong)})
    text = str(err.value)
    assert text.startswith(f'{wrong} does not fit dna_a: 22 missing keys (blocks.2.3.conv_pw.weight, '), text
    assert '131 shape mismatches (blocks.1.0.conv_dw.weight 48x1x3x3 in the file vs 48x1x5x5' in text
    assert '(126 more)' in text and len(text) < 1000
    with pytest.raises(PretrainedWeightsError, match=r'does not fit pinas_cls: \d+ missing keys .*; \d+ unexpected'):
        timm.create_model('pinas_cls', pretrained=True, pretrained_cfg_overlay={'file': str(wrong)})
    # what timm adapts itself still loads: a new head, features only, one input channel
    right = {'file': str(wrong)}
    for kwargs in ({'num_classes': 10}, {'features_only': True}, {'in_chans': 1}):
        timm.create_model('dna_b', pretrained=True, pretrained_cfg_overlay=right, **kwargs)


def test_recorded_checksums_are_keyed_by_the_repo_each_model_downloads_from():
    """KNOWN_SHA256 is read with the repo of the model's pretrained_cfg; the catalog must key it the same way."""
    import timm

    from zoo.catalog import CATALOG, weights_repo

    for name in CATALOG:
        model = timm.create_model(name, pretrained=False)
        assert weights_repo(name) == model.pretrained_cfg['hf_hub_id'], name
    assert weights_repo('nasvit_a0') == 'supernet-zoo/nasvit_a0.supernet_in1k'  # not <name>.official_in1k
    assert weights_repo('pinas_trans') == 'supernet-zoo/pinas_trans.in1k'
