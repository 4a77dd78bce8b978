"""OpenMMLab adapter and configs: every config builds and runs, the backbone honours mm's vocabulary.

Skipped as a whole without OpenMMLab (``bash tools/install_mm.sh .venv`` installs it, mmcv ops included).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip('mmseg.models', exc_type=ImportError)
pytest.importorskip('mmdet.models', exc_type=ImportError)
# mmengine resolves the configs' 'mmseg::' / 'mmdet::' bases with pkg_resources (setuptools < 81)
pytest.importorskip('pkg_resources', reason='OpenMMLab configs need setuptools<81 (tools/install_mm.sh pins it)')

from mmdet.registry import MODELS as DET_MODELS
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmseg.registry import MODELS as SEG_MODELS
from safetensors.torch import save_file

import zoo
from backbones import mm

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / 'configs').glob('mm*/*.py'))
SIZE = 64


def test_configs_found() -> None:
    names = {p.name for p in CONFIGS}
    assert 'upernet_pinas-trans_4xb4-160k_ade20k-512x512.py' in names
    assert 'mask-rcnn_dna-c_fpn_8xb2-1x_coco.py' in names
    assert len(CONFIGS) >= 14


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: p.stem)
def test_config_builds_and_runs(path: Path) -> None:
    cfg = Config.fromfile(str(path))
    assert cfg.custom_imports['imports'] == ['backbones.mm']
    scope = cfg.default_scope
    init_default_scope(scope)
    registry = SEG_MODELS if scope == 'mmseg' else DET_MODELS
    model = registry.build(cfg.model).eval()
    backbone = model.backbone
    assert isinstance(backbone, mm.ZooBackbone)
    mm.check_config_channels(cfg.model, backbone)  # the neck / decode head reads what the backbone emits
    if 'nasvit' in path.name:  # the paper's segmentation windows (NASViT section 4.2)
        sizes = {m.window_size for m in backbone.modules() if type(m).__name__ == 'TransformerLayer'}
        assert sizes == {7}
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        feats = backbone(x)
        assert isinstance(feats, tuple)
        assert [f.shape[1] for f in feats] == backbone.out_channels
        assert [SIZE // f.shape[-1] for f in feats] == backbone.out_strides
        if scope == 'mmseg':
            logits = model(x, mode='tensor')
            num_classes = cfg.model.decode_head.num_classes
            in_index = cfg.model.decode_head.in_index
            first = in_index if isinstance(in_index, int) else in_index[0]  # heads predict at their first input
            assert logits.shape == (1, num_classes, *(2 * (SIZE // backbone.out_strides[first],)))
        else:
            outs = model.extract_feat(x)
            assert len(outs) == cfg.model.neck.num_outs
            assert all(o.shape[1] == cfg.model.neck.out_channels for o in outs)


def test_mask_rcnn_predicts() -> None:
    from mmdet.structures import DetDataSample

    cfg = Config.fromfile(str(ROOT / 'configs/mmdet/mask-rcnn_dna-c_fpn_8xb2-1x_coco.py'))
    init_default_scope('mmdet')
    model = DET_MODELS.build(cfg.model).eval()
    meta = dict(img_shape=(SIZE, SIZE), ori_shape=(SIZE, SIZE), pad_shape=(SIZE, SIZE), scale_factor=(1.0, 1.0))
    meta['batch_input_shape'] = (SIZE, SIZE)
    with torch.no_grad():
        (result,) = model.predict(torch.randn(1, 3, SIZE, SIZE), [DetDataSample(metainfo=meta)])
    assert {'bboxes', 'scores', 'labels', 'masks'} <= set(result.pred_instances.keys())


def test_registered_in_both_scopes() -> None:
    assert mm.registered_in() == ['mmseg', 'mmdet']
    for registry in (SEG_MODELS, DET_MODELS):
        for name in ('ZooBackbone', 'BossNet', 'DNA', 'PiNAS', 'NASViT'):
            assert registry.get(name) is getattr(mm, name)
    backbone = DET_MODELS.build(dict(type='DNA', out_indices=(2, 3, 4)))
    assert backbone.model_name == 'dna_c' and backbone.out_channels == [40, 112, 320]
    assert backbone.out_strides == [8, 16, 32]


def test_spec_and_default_out_indices() -> None:
    backbone = mm.ZooBackbone(spec=zoo.get_spec('dna_a'))
    assert backbone.out_strides == [4, 8, 16, 32]  # default: the stride 4..32 levels
    assert backbone.out_indices == (1, 2, 3, 4)


def test_frozen_stages_and_norm_eval() -> None:
    backbone = mm.DNA(frozen_stages=2, norm_eval=True)
    backbone.train()
    frozen = {n for n, p in backbone.named_parameters() if not p.requires_grad}
    assert 'model.conv_stem.weight' in frozen and any(n.startswith('model.blocks.2.') for n in frozen)
    assert not any(n.startswith('model.blocks.3.') for n in frozen)
    bns = [m for m in backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)
    loss = sum(f.mean() for f in backbone(torch.randn(2, 3, SIZE, SIZE)))
    loss.backward()
    for name, p in backbone.named_parameters():
        assert (p.grad is None) == (name in frozen), name
    # without norm_eval only the frozen modules stay in eval
    backbone = mm.DNA(frozen_stages=1)
    backbone.train()
    assert not backbone.model.conv_stem.training and backbone.model.blocks[3].training


def test_frozen_stem_only() -> None:
    backbone = mm.PiNAS(frozen_stages=0)
    frozen = {n.split('.')[1] for n, p in backbone.named_parameters() if not p.requires_grad}
    assert frozen == {'conv1', 'bn1'}


def test_with_cp_gradients() -> None:
    backbone = mm.DNA(with_cp=True).train()
    sum(f.mean() for f in backbone(torch.randn(2, 3, 32, 32))).backward()
    assert backbone.model.conv_stem.weight.grad is not None


@pytest.mark.parametrize(
    ('kwargs', 'match'),
    [
        (dict(model='dna_c', out_indices=(1, 5)), 'out of range'),
        (dict(model='dna_c', frozen_stages=5), 'frozen_stages=5 is out of range'),
        (dict(model='dna_c', frozen_stages=-2), 'valid values are -1'),
        (dict(model='dna_c', pretrained=True), 'init_cfg'),
        (dict(), 'give model'),
    ],
)
def test_build_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        mm.ZooBackbone(**kwargs)


def test_family_alias_refuses_a_model_of_another_family() -> None:
    match = r"type 'DNA' is for mbconv models, but model 'bossnet_t0' is a hytra model; use type='BossNet'"
    with pytest.raises(ValueError, match=match):
        DET_MODELS.build(dict(type='DNA', model='bossnet_t0'))
    with pytest.raises(ValueError, match=r"type 'NASViT' is for nasvit models, but model 'spec:mbconv' is a mbconv"):
        mm.NASViT(spec=zoo.get_spec('dna_a'))
    assert mm.BossNet(model='bossnet_t0_nose').model_name == 'bossnet_t0_nose'  # same family: fine
    assert mm.ZooBackbone(model='bossnet_t0_nose').out_strides == [4, 8, 16, 32]  # the generic type takes any


def test_int_out_indices_are_the_last_levels() -> None:
    backbone = mm.DNA(out_indices=3)
    assert backbone.out_indices == (2, 3, 4) and backbone.out_strides == [8, 16, 32]
    for bad in (0, 6, -1):
        with pytest.raises(ValueError, match='out_indices'):
            mm.DNA(out_indices=bad)


def test_check_neck_channels() -> None:
    cfg = dict(type='DNA', out_indices=(1, 2, 3, 4))
    assert mm.check_neck_channels(cfg, [24, 40, 112, 320]) == [24, 40, 112, 320]
    with pytest.raises(ValueError, match=r'\[256, 512, 1024, 2048\].*\[24, 40, 112, 320\]'):
        mm.check_neck_channels(cfg, [256, 512, 1024, 2048])
    model = dict(backbone=cfg, decode_head=dict(in_channels=[40, 112], in_index=[1, 2]))
    assert mm.check_config_channels(model) == [24, 40, 112, 320]
    model['decode_head'] = dict(in_channels=2048, in_index=3)  # an ASPP head copied from a ResNet config
    with pytest.raises(ValueError, match=r'decode_head in_channels \[2048\].*expected \[320\]'):
        mm.check_config_channels(model)


@pytest.mark.parametrize('name', ['dna_c', 'nasvit_a1'])
def test_pretrained_from_local_safetensors(name: str, tmp_path: Path) -> None:
    full = zoo.create_model(name)
    state = {k: v.contiguous() for k, v in full.state_dict().items()}
    path = tmp_path / 'model.safetensors'
    save_file(state, str(path))
    backbone = mm.ZooBackbone(name, init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    before = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    backbone.init_weights()
    loaded = backbone.model.state_dict()
    changed = [k for k in loaded if k.endswith('weight') and not torch.equal(before[k], loaded[k])]
    assert changed, 'weights were not loaded'
    for key, value in loaded.items():
        source = key.removeprefix('model.') if name.startswith('nasvit') else key
        assert torch.equal(value, state[source]), key
    # the same weights inside an mm checkpoint ('backbone.' prefix, with a head) load too
    mm_path = tmp_path / 'mm.safetensors'
    prefixed = {f'backbone.model.{k}': v for k, v in backbone.model.state_dict().items()}
    save_file({**prefixed, 'decode_head.conv_seg.weight': torch.zeros(2, 2)}, str(mm_path))
    again = mm.ZooBackbone(name, init_cfg=dict(type='Pretrained', checkpoint=str(mm_path)))
    again.init_weights()
    assert all(torch.equal(v, loaded[k]) for k, v in again.model.state_dict().items())


def test_pretrained_errors(tmp_path: Path) -> None:
    wrong = tmp_path / 'wrong.safetensors'
    save_file({k: v.contiguous() for k, v in zoo.create_model('dna_a').state_dict().items()}, str(wrong))
    backbone = mm.DNA(init_cfg=dict(type='Pretrained', checkpoint=str(wrong)))
    with pytest.raises(ValueError, match='does not fit dna_c'):
        backbone.init_weights()
    with pytest.raises(ValueError, match='URL schemes are not supported'):
        mm.DNA(init_cfg=dict(type='Pretrained', checkpoint='torchvision://resnet50')).init_weights()
    with pytest.raises(FileNotFoundError):
        mm.DNA(init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 'missing.safetensors'))).init_weights()


def _tiny_seg_config(tmp_path: Path) -> Path:
    """The dna_c UPerNet config on a tiny ADE20K-format set, 64 px crops, 2 iterations, offline init."""
    sys.path.insert(0, str(ROOT / 'tools'))
    import make_tiny_datasets

    data = make_tiny_datasets.make_ade20k(tmp_path / 'ade', num_train=4, num_val=2, size=64)
    cfg = Config.fromfile(str(ROOT / 'configs/mmseg/upernet_dna-c_4xb4-160k_ade20k-512x512.py'))
    train_pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='LoadAnnotations', reduce_zero_label=True),
        dict(type='RandomResize', scale=(128, 64), ratio_range=(0.8, 1.2), keep_ratio=True),
        dict(type='RandomCrop', crop_size=(64, 64)),
        dict(type='RandomFlip', prob=0.5),
        dict(type='PackSegInputs'),
    ]
    test_pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='Resize', scale=(128, 64), keep_ratio=True),
        dict(type='LoadAnnotations', reduce_zero_label=True),
        dict(type='PackSegInputs'),
    ]
    loader = dict(num_workers=0, persistent_workers=False)
    cfg.train_dataloader.update(batch_size=2, **loader)
    cfg.train_dataloader.dataset.update(data_root=str(data), pipeline=train_pipeline)
    for key in ('val_dataloader', 'test_dataloader'):
        cfg[key].update(**loader)
        cfg[key].dataset.update(data_root=str(data), pipeline=test_pipeline)
    cfg.model.data_preprocessor.size = (64, 64)
    cfg.model.backbone.init_cfg = None  # the Hub is not reachable in tests
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=2, val_interval=2)
    cfg.param_scheduler = [dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=0, end=10, by_epoch=False)]
    cfg.default_hooks.checkpoint.interval = 2
    cfg.default_hooks.logger.interval = 1
    path = tmp_path / 'tiny_seg.py'
    cfg.dump(str(path))
    return path


def test_seg_train_two_iterations_and_validate(tmp_path: Path) -> None:
    config = _tiny_seg_config(tmp_path)  # also puts tools/ on sys.path
    import seg_train

    work = tmp_path / 'work'
    seg_train.build_runner([str(config), '--work-dir', str(work)]).train()
    assert (work / 'iter_2.pth').is_file()
    logs = ''.join(p.read_text() for p in work.rglob('*.log'))
    assert 'mIoU' in logs, 'validation did not run'


def _assert_weights_only(path: Path) -> dict:
    """The Runner checkpoint loads with torch's safe loader and holds only plain data."""
    from backbones.mm_checkpoint import check_plain

    checkpoint = torch.load(path, map_location='cpu', weights_only=True)
    check_plain(checkpoint)
    assert {'state_dict', 'message_hub', 'optimizer', 'meta'} <= set(checkpoint)
    return checkpoint


def test_seg_train_resume_and_test_under_weights_only(tmp_path: Path) -> None:
    """Train 2 iterations, resume to 3 (optimizer, scheduler and log history restored), then seg_test the result."""
    config = _tiny_seg_config(tmp_path)
    import seg_test
    import seg_train

    work = tmp_path / 'work'
    seg_train.build_runner([str(config), '--work-dir', str(work)]).train()
    first = _assert_weights_only(work / 'iter_2.pth')
    args = [str(config), '--work-dir', str(work), '--resume', '--cfg-options', 'train_cfg.max_iters=3']
    resumed = seg_train.build_runner(args)
    resumed.train()
    assert resumed.iter == 3 and (work / 'iter_3.pth').is_file()
    loss = resumed.message_hub.get_scalar('train/loss')
    assert loss.data[1].tolist() == [1.0, 1.0, 1.0], 'the log history of the first run was not restored'
    assert loss.data[0][:2].tolist() == pytest.approx(
        first['message_hub']['log_scalars']['train/loss']['log_history'].tolist()
    )
    _assert_weights_only(work / 'iter_3.pth')

    out = tmp_path / 'metrics.json'
    metrics = seg_test.main(
        [str(config), str(work / 'iter_3.pth'), '--work-dir', str(tmp_path / 't'), '--out', str(out)]
    )
    assert 'mIoU' in metrics and out.is_file()


def test_plain_checkpoint_hook_names_unsafe_entries() -> None:
    from mmengine.logging import HistoryBuffer

    from backbones.mm_checkpoint import check_plain, from_plain, to_plain

    buffer = HistoryBuffer([1.5, 2.5], [1, 2], max_length=7)
    plain = to_plain({'log_scalars': {'loss': buffer}, 'step': __import__('numpy').int64(3)})
    check_plain(plain)
    back = from_plain(plain)['log_scalars']['loss']
    assert back.data[0].tolist() == [1.5, 2.5] and back.max_length == 7
    with pytest.raises(TypeError, match=r'checkpoint\.meta\.obj is a .*object'):
        check_plain({'meta': {'obj': object()}})


def test_det_train_one_epoch_on_tiny_coco(tmp_path: Path) -> None:
    """Mask R-CNN (dna_c): one epoch (2 iterations) on tiny COCO, evaluated, resumed for a second epoch, tested."""
    sys.path.insert(0, str(ROOT / 'tools'))
    import make_tiny_datasets
    import seg_train

    data = make_tiny_datasets.make_coco(tmp_path / 'coco', num_train=4, num_val=2, size=64)
    cfg = Config.fromfile(str(ROOT / 'configs/mmdet/mask-rcnn_dna-c_fpn_8xb2-1x_coco.py'))
    for key in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        cfg[key].update(num_workers=0, persistent_workers=False)
        cfg[key].dataset.data_root = str(data)
        cfg[key].dataset.pop('filter_cfg', None)
        for step in cfg[key].dataset.pipeline:
            if step['type'] == 'Resize':
                step['scale'] = (128, 128)
    for key in ('val_evaluator', 'test_evaluator'):
        cfg[key].ann_file = str(data / 'annotations/instances_val2017.json')
    cfg.model.backbone.init_cfg = None
    cfg.model.test_cfg.rcnn.score_thr = 0.0  # after 2 iterations no score reaches 0.05; keep some detections
    cfg.train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=1, val_interval=1)
    cfg.default_hooks.logger.interval = 1
    config = tmp_path / 'tiny_det.py'
    cfg.dump(str(config))
    work = tmp_path / 'work'
    runner = seg_train.build_runner([str(config), '--work-dir', str(work)], task='mmdet')
    runner.train()
    assert runner.iter == 2 and (work / 'epoch_1.pth').is_file()
    logs = ''.join(p.read_text() for p in work.rglob('*.log'))
    assert 'bbox_mAP' in logs and 'segm_mAP' in logs, 'COCO evaluation did not run'
    _assert_weights_only(work / 'epoch_1.pth')

    args = [str(config), '--work-dir', str(work), '--resume', '--cfg-options', 'train_cfg.max_epochs=2']
    resumed = seg_train.build_runner(args, task='mmdet')
    resumed.train()
    assert resumed.epoch == 2 and resumed.iter == 4 and (work / 'epoch_2.pth').is_file()
    import seg_test

    metrics = seg_test.main([str(config), str(work / 'epoch_2.pth'), '--work-dir', str(tmp_path / 't')], task='mmdet')
    assert 'coco/bbox_mAP' in metrics and 'coco/segm_mAP' in metrics


def test_package_imports_without_openmmlab() -> None:
    """zoo/backbones never import OpenMMLab; backbones.mm fails with an install hint instead of a bare error."""
    import subprocess

    code = (
        "import sys\nfor m in ('mmengine', 'mmseg', 'mmdet', 'mmcv'): sys.modules[m] = None\n"
        'import zoo, backbones\n'
        'try:\n    import backbones.mm\nexcept ImportError as err:\n    print(err)\n'
    )
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert 'tools/install_mm.sh' in out
