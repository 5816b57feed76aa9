# UperNet + VOLO-D3 on Cityscapes, 1024x1024 crops, 80k iterations, 8 GPUs x 1 image.
# Same recipe as the VOLO-D1 config it inherits; only the variant-specific settings differ.
_base_ = './volo-d1_upernet_8xb1-80k_cityscapes-1024x1024.py'

checkpoint_file = 'pretrained/volo_d3_224.pth'  # converted weights, see README.md
model = dict(
    backbone=dict(
        arch='d3',
        drop_path_rate=0.3,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file)),
    decode_head=dict(in_channels=[256, 256, 512, 512]),
    auxiliary_head=dict(in_channels=512))

optim_wrapper = dict(paramwise_cfg=dict(layer_decay_rate=0.95))
