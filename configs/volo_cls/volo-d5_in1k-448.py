# VOLO-D5 ImageNet-1k classification at 448x448 (official eval: crop_pct 1.15).
# Same pipelines and fine-tuning schedule as the VOLO-D4 448 config; see it for usage.
_base_ = ['./volo-d4_in1k-448.py']

checkpoint = 'checkpoints/volo-d5_in1k-224.pth'
model = dict(
    backbone=dict(arch='d5', drop_path_rate=0.75, init_cfg=dict(checkpoint=checkpoint)),
    head=dict(in_channels=768, num_heads=16, mlp_ratio=4.0, init_cfg=dict(checkpoint=checkpoint)),
)
