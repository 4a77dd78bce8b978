# Mask R-CNN + FPN + pinas_trans, COCO, 8 GPUs x 2 images, 1x schedule (12 epochs).
# Paper number to reproduce: Pi-NAS (arXiv 2108.09671) Table 5: COCO val2017 44.11 +- 0.04 box AP / 39.48 +- 0.02 mask
#   AP (detectron2, SyncBN in backbone, FPN and 4conv1fc heads, FREEZE_AT 0); the stock mmdet heads here (no norm) are
#   a different protocol, so expect a gap.
# Base: mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py (shipped inside the installed package); only the backbone and
#   the channels are overridden.
_base_ = ['mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py']
custom_imports = dict(imports=['backbones.mm'], allow_failed_imports=False)
# checkpoints load under torch.load(weights_only=True), resume included (backbones/mm_checkpoint.py)
custom_hooks = [dict(type='PlainCheckpointHook')]
sync_bn = 'torch'  # Pi-NAS trains with SyncBN and nothing frozen
model = dict(
    backbone=dict(
        _delete_=True,
        type='PiNAS',
        model='pinas_trans',
        out_indices=(1, 2, 3, 4),
        frozen_stages=-1,
        norm_eval=False,
        init_cfg=dict(type='Pretrained', checkpoint='supernet-zoo/pinas_trans.in1k'),
    ),
    neck=dict(in_channels=[256, 512, 1024, 2048]),
)
