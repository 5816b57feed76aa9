# VOLO-D2 ImageNet-1k classification at 384x384 (official eval: crop_pct 1.0).
# Same pipelines and fine-tuning schedule as the VOLO-D1 384 config; see it for usage.
_base_ = ['./volo-d1_in1k-384.py']

checkpoint = 'checkpoints/volo-d2_in1k-224.pth'
model = dict(
    backbone=dict(arch='d2', drop_path_rate=0.2, init_cfg=dict(checkpoint=checkpoint)),
    head=dict(in_channels=512, num_heads=16, mlp_ratio=3.0, init_cfg=dict(checkpoint=checkpoint)),
)
