# Mask R-CNN + FPN with a VOLO-D1 backbone on COCO, 1x schedule (12 epochs), 8 GPUs x 2 images.
# Inherits mmdet's own Mask R-CNN R-50 config; only the backbone, the FPN input channels and the
# optimizer differ. Pretrained weights: convert the official ImageNet checkpoint first:
#   python tools/model_converters/volo2mmseg.py d1_224_84.2.pth.tar pretrained/volo_d1_224.pth
# Runs on mmcv-lite: mmvolo.runtime backs nms and RoIAlign with torchvision (docs/detection.md).
_base_ = [
    'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py',
    '../_base_/models/volo-d1_fpn_backbone.py',
    '../_base_/schedules/volo_adamw_layer_decay.py',
]

# mmvolo.runtime: the stack fixes (explicit; `import mmvolo` only registers).
custom_imports = dict(imports=['mmvolo.runtime', 'mmvolo'], allow_failed_imports=False)

model = dict(backbone={{_base_.volo_d1_backbone}},
             neck=dict(in_channels={{_base_.volo_d1_out_channels}}))

optim_wrapper = {{_base_.volo_optim_wrapper}}

# mmvolo's CheckpointHook: files appear whole or not at all (same arguments)
default_hooks = dict(checkpoint=dict(type='AtomicCheckpointHook'))
