# RetinaNet + FPN with a VOLO-D3 backbone on COCO, 1x schedule; same recipe as the D1 config.
_base_ = './retinanet_volo-d1_fpn_1x_coco.py'

checkpoint_file = 'pretrained/volo_d3_224.pth'  # converted weights, see the D1 config
model = dict(
    backbone=dict(
        arch='d3',
        drop_path_rate=0.3,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file)),
    neck=dict(in_channels=[256, 256, 512, 512]))

optim_wrapper = dict(paramwise_cfg=dict(layer_decay_rate=0.95))
