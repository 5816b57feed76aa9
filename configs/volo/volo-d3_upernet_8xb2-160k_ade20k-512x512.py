# UperNet + VOLO-D3 on ADE20K, 512x512 crops, 160k iterations, 8 GPUs x 2 images.
# Same recipe as the VOLO-D1 config it inherits; only the variant-specific settings differ.
_base_ = './volo-d1_upernet_8xb2-160k_ade20k-512x512.py'

checkpoint_file = 'pretrained/volo_d3_224.pth'  # converted weights, see README.md
model = dict(
    backbone=dict(
        arch='d3',
        drop_path_rate=0.3,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file)),
    decode_head=dict(in_channels=[256, 256, 512, 512]),
    auxiliary_head=dict(in_channels=512))

optim_wrapper = dict(paramwise_cfg=dict(layer_decay_rate=0.95))
