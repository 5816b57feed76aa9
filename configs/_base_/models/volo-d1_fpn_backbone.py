# VOLO-D1 as the backbone of an mmdet detector with an FPN neck: its pyramid at strides 4, 8,
# 16 and 32, from converted ImageNet weights (tools/model_converters/volo2mmseg.py). mmdet's
# model bases define `model` and mmengine refuses the same key in two bases, so this file
# defines `volo_d1_backbone` and `volo_d1_out_channels`; the volo_det configs take them with
# `model = dict(backbone={{_base_.volo_d1_backbone}},
#               neck=dict(in_channels={{_base_.volo_d1_out_channels}}))`.
volo_d1_backbone = dict(
    _delete_=True,
    type='VOLO',
    arch='d1',
    # pos_embed keeps the checkpoint's 14x14 grid; it is resized to each batch's grid.
    img_size=224,
    out_indices=(0, 1, 2, 3),
    feature_pyramid=True,
    drop_path_rate=0.1,
    init_cfg=dict(type='Pretrained', checkpoint='pretrained/volo_d1_224.pth'))
# (C0, C0, C, C) at strides 4, 8, 16, 32: VOLO.out_channels of D1
volo_d1_out_channels = [192, 192, 384, 384]
