# UperNet + VOLO-D1 on ADE20K with a MixerNeck: one Outlooker block (K=3, stride 1) on each of
# the two finest pyramid levels (strides 4 and 8) before the decode head. Everything else is
# the plain VOLO-D1 recipe (which inherits mmseg's own bases).
_base_ = ['../volo/volo-d1_upernet_8xb2-160k_ade20k-512x512.py']

model = dict(
    neck=dict(
        type='MixerNeck',
        in_channels=[192, 192, 384, 384],
        levels=[0, 1],
        num_blocks=1,
        token_mixer=dict(type='OutlookAttention', kernel_size=3, padding=1, stride=1)))
