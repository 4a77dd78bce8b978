# UPerNet + bossnet_t0, ADE20K 512x512, 4 GPUs x 4 images, 160k iterations.
# Paper number to reproduce: none. BossNAS (arXiv 2103.12424) reports no downstream result (its section 4.4 has none);
#   this is a new baseline.
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
        type='BossNet',
        model='bossnet_t0',
        out_indices=(0, 1, 2, 3),
        frozen_stages=-1,
        norm_eval=False,
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint='supernet-zoo/bossnet_t0.official_in1k'),
    ),
    decode_head=dict(in_channels=[256, 512, 1024, 2048]),
    auxiliary_head=dict(in_channels=1024),
)
