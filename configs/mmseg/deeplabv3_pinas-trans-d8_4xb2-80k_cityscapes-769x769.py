# DeepLabV3 + Pi-NAS-trans (output stride 8), Cityscapes 769x769, 4 GPUs x 2 images, 80k iterations.
# Paper number to reproduce: Pi-NAS (arXiv 2108.09671) Table 6: Cityscapes val 80.40 +- 0.30 mIoU (README checkpoint
#   80.70), multi-scale + flip, PyTorch-Encoding (240 epochs, crop 768); expect lower single-scale numbers from mmseg.
# Base: mmseg::deeplabv3/deeplabv3_r50-d8_4xb2-80k_cityscapes-769x769.py (shipped inside the installed package); only
#   the backbone and the channels are overridden.
_base_ = ['mmseg::deeplabv3/deeplabv3_r50-d8_4xb2-80k_cityscapes-769x769.py']
custom_imports = dict(imports=['backbones.mm'], allow_failed_imports=False)
# checkpoints load under torch.load(weights_only=True), resume included (backbones/mm_checkpoint.py)
custom_hooks = [dict(type='PlainCheckpointHook')]
sync_bn = 'torch'
model = dict(
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='PiNAS',
        model='pinas_trans',
        out_indices=(1, 2, 3, 4),
        output_stride=8,  # dilated last two stages ("-d8"), as Pi-NAS's PyTorch-Encoding DeepLabV3
        frozen_stages=-1,
        norm_eval=False,
        init_cfg=dict(type='Pretrained', checkpoint='supernet-zoo/pinas_trans.in1k'),
    ),
    decode_head=dict(in_channels=2048, in_index=3),
    auxiliary_head=dict(in_channels=1024, in_index=2),
)
