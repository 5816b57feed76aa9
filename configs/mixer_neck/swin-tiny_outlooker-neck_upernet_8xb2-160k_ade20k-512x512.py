# "Outlooker for any backbone": mmseg's own Swin-T UperNet ADE20K recipe, plus a MixerNeck with
# one Outlooker block (K=3, stride 1) on each of the two finest levels (strides 4 and 8).
# Pretrained Swin-T weights: no download at run time. Fetch mmseg's converted checkpoint
# (the URL is in mmseg's swin config) to pretrained/swin_tiny_patch4_window7_224.pth first.
_base_ = ['mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py']

# mmvolo.runtime: the stack fixes (explicit); mmvolo registers MixerNeck and the hooks.
custom_imports = dict(imports=['mmvolo.runtime', 'mmvolo'], allow_failed_imports=False)
custom_hooks = [dict(type='RNGStateHook')]
default_hooks = dict(checkpoint=dict(type='AtomicCheckpointHook'))

checkpoint_file = 'pretrained/swin_tiny_patch4_window7_224.pth'
model = dict(
    backbone=dict(init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file)),
    neck=dict(
        type='MixerNeck',
        in_channels=[96, 192, 384, 768],
        levels=[0, 1],
        num_blocks=1,
        token_mixer=dict(type='OutlookAttention', kernel_size=3, padding=1, stride=1)))
