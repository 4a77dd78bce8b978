# UPerNet + pinas_trans, ADE20K 512x512, 4 GPUs x 4 images, 160k iterations.
# Paper number to reproduce: none with UperNet. Pi-NAS (arXiv 2108.09671) Table 6 gives DeepLabV3 ADE20K 45.49 mIoU
#   for Pi-NAS-trans (see deeplabv3_pinas-trans-d8_4xb4-160k_ade20k-512x512.py).
# Base: mmseg::upernet/upernet_r50_4xb4-160k_ade20k-512x512.py (shipped inside the installed package); only the
#   backbone and the channels are overridden.
_base_ = ['mmseg::upernet/upernet_r50_4xb4-160k_ade20k-512x512.py']
custom_imports = dict(imports=['backbones.mm'], allow_failed_imports=False)
# checkpoints load under torch.load(weights_only=True), resume included (backbones/mm_checkpoint.py)
custom_hooks = [dict(type='PlainCheckpointHook')]
sync_bn = 'torch'  # the backbone's BatchNorm becomes SyncBN under a distributed launcher, as mmseg's ResNet
model = dict(
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='PiNAS',
        model='pinas_trans',
        out_indices=(1, 2, 3, 4),
        frozen_stages=-1,
        norm_eval=False,
        drop_path_rate=0.0,
        init_cfg=dict(type='Pretrained', checkpoint='supernet-zoo/pinas_trans.in1k'),
    ),
    decode_head=dict(in_channels=[256, 512, 1024, 2048]),
    auxiliary_head=dict(in_channels=1024),
)
