# DeepLabV3 + Pi-NAS-trans (output stride 8), ADE20K 512x512, 4 GPUs x 4 images, 160k iterations.
# Paper number to reproduce: Pi-NAS (arXiv 2108.09671) Table 6: ADE20K val 45.49 +- 0.02 mIoU / 81.31 pixAcc, multi-
#   scale + flip, PyTorch-Encoding (120 epochs, crop 480); expect lower single-scale numbers from mmseg.
# Base: mmseg::deeplabv3/deeplabv3_r50-d8_4xb4-160k_ade20k-512x512.py (shipped inside the installed package); only the
#   backbone and the channels are overridden.
_base_ = ['mmseg::deeplabv3/deeplabv3_r50-d8_4xb4-160k_ade20k-512x512.py']
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
