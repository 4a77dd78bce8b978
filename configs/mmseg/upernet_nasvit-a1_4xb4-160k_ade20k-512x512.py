# UPerNet + nasvit_a1, ADE20K 512x512, 4 GPUs x 4 images, 160k iterations.
# Paper number to reproduce: none with UperNet. NASViT (ICLR 2022) uses a SegFormer head: ADE20K 37.9 mIoU at ~5G
#   FLOPs (see segformer_nasvit-*.py).
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
        type='NASViT',
        model='nasvit_a1',
        out_indices=(0, 1, 2, 3),
        frozen_stages=-1,
        norm_eval=False,
        window_size=7,  # NASViT 4.2: windows = feature side / 7 for segmentation
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint='supernet-zoo/nasvit_a1.supernet_in1k'),
    ),
    decode_head=dict(in_channels=[24, 32, 64, 160]),
    auxiliary_head=dict(in_channels=64),
)
