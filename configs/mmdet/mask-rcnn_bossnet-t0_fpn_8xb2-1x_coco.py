# Mask R-CNN + FPN + bossnet_t0, COCO, 8 GPUs x 2 images, 1x schedule (12 epochs).
# Paper number to reproduce: none. BossNAS (arXiv 2103.12424) reports no downstream result; this is a new baseline.
# Base: mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py (shipped inside the installed package); only the backbone and
#   the channels are overridden.
_base_ = ['mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py']
custom_imports = dict(imports=['backbones.mm'], allow_failed_imports=False)
# checkpoints load under torch.load(weights_only=True), resume included (backbones/mm_checkpoint.py)
custom_hooks = [dict(type='PlainCheckpointHook')]
model = dict(
    backbone=dict(
        _delete_=True,
        type='BossNet',
        model='bossnet_t0',
        out_indices=(0, 1, 2, 3),
        frozen_stages=1,
        norm_eval=True,
        init_cfg=dict(type='Pretrained', checkpoint='supernet-zoo/bossnet_t0.official_in1k'),
    ),
    neck=dict(in_channels=[256, 512, 1024, 2048]),
)
