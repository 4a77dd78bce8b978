# RetinaNet + FPN + dna_c, COCO, 8 GPUs x 2 images, 1x schedule (12 epochs).
# Paper number to reproduce: none for DNA-c. The DNA family paper reports COCO only for DNA-d with Faster R-CNN C4
#   (Table 14: 32.3 mAP); this is a new baseline.
# Base: mmdet::retinanet/retinanet_r50_fpn_1x_coco.py (shipped inside the installed package); only the backbone and
#   the channels are overridden.
_base_ = ['mmdet::retinanet/retinanet_r50_fpn_1x_coco.py']
custom_imports = dict(imports=['backbones.mm'], allow_failed_imports=False)
# checkpoints load under torch.load(weights_only=True), resume included (backbones/mm_checkpoint.py)
custom_hooks = [dict(type='PlainCheckpointHook')]
model = dict(
    backbone=dict(
        _delete_=True,
        type='DNA',
        model='dna_c',
        out_indices=(1, 2, 3, 4),
        frozen_stages=1,
        norm_eval=True,
        init_cfg=dict(type='Pretrained', checkpoint='supernet-zoo/dna_c.official_in1k'),
    ),
    neck=dict(in_channels=[24, 40, 112, 320]),
)
