# UperNet + VOLO-D5 on Cityscapes, 1024x1024 crops, 80k iterations, 8 GPUs x 1 image.
# Same recipe as the VOLO-D1 config it inherits; only the variant-specific settings differ.
_base_ = './volo-d1_upernet_8xb1-80k_cityscapes-1024x1024.py'

checkpoint_file = 'pretrained/volo_d5_224.pth'  # converted weights, see README.md
model = dict(
    backbone=dict(
        arch='d5',
        drop_path_rate=0.4,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file)),
    decode_head=dict(in_channels=[384, 384, 768, 768]),
    auxiliary_head=dict(in_channels=768))

optim_wrapper = dict(paramwise_cfg=dict(layer_decay_rate=0.95))
