# VOLO-D3 ImageNet-1k classification at 224x224 (official eval: crop_pct 0.96).
# Weights and usage: see volo-d1_in1k-224.py.
_base_ = ['./volo-d1_in1k-224.py']

model = dict(
    backbone=dict(arch='d3', drop_path_rate=0.5),
    head=dict(in_channels=512, num_heads=16, mlp_ratio=3.0),
)
