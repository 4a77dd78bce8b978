# SegFormer all-MLP head + nasvit_a4, ADE20K 512x512, 8 GPUs x 2 images, 160k iterations.
# Paper number to reproduce: NASViT (ICLR 2022) section 4.2: A1..A4 with the SegFormer head span ADE20K 37.9 mIoU at
#   ~5G FLOPs to 41.4 at < 30G (per-model numbers only in its Fig. 5). Windows of 7 tokens a side in the
#   transformer blocks (window_size=7), the paper's segmentation setting.
# Base: mmseg::segformer/segformer_mit-b0_8xb2-160k_ade20k-512x512.py (shipped inside the installed package); only the
#   backbone and the channels are overridden.
_base_ = ['mmseg::segformer/segformer_mit-b0_8xb2-160k_ade20k-512x512.py']
custom_imports = dict(imports=['backbones.mm'], allow_failed_imports=False)
# checkpoints load under torch.load(weights_only=True), resume included (backbones/mm_checkpoint.py)
custom_hooks = [dict(type='PlainCheckpointHook')]
sync_bn = 'torch'
model = dict(
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='NASViT',
        model='nasvit_a4',
        out_indices=(0, 1, 2, 3),
        frozen_stages=-1,
        norm_eval=False,
        window_size=7,  # NASViT 4.2: windows = feature side / 7 for segmentation
        init_cfg=dict(type='Pretrained', checkpoint='supernet-zoo/nasvit_a4.supernet_in1k'),
    ),
    decode_head=dict(in_channels=[24, 32, 64, 160]),
)
