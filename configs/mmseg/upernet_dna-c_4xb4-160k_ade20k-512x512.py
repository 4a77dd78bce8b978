# UPerNet + dna_c, ADE20K 512x512, 4 GPUs x 4 images, 160k iterations.
# Paper number to reproduce: none for DNA-c. The DNA family paper (arXiv 2403.01326) reports ADE20K only for DNA-d
#   with an ASPP head (Table 12: 40.7 mIoU) and DNA-T++ with UperNet (Table 13: 47.3); this is a new baseline.
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
        type='DNA',
        model='dna_c',
        out_indices=(1, 2, 3, 4),
        frozen_stages=-1,
        norm_eval=False,
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint='supernet-zoo/dna_c.official_in1k'),
    ),
    decode_head=dict(in_channels=[24, 40, 112, 320]),
    auxiliary_head=dict(in_channels=112),
)
