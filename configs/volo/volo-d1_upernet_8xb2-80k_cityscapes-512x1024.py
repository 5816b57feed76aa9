# UperNet + VOLO-D1 on Cityscapes: 512x1024 crops, 80k iterations, 8 GPUs x 2 images.
# Pretrained weights: convert the official ImageNet checkpoint first (no download at run time),
# see configs/volo/README.md.
_base_ = [
    '../_base_/models/upernet_volo.py',
    'mmseg::_base_/datasets/cityscapes.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_80k.py',
    '../_base_/schedules/volo_adamw_layer_decay.py',
]

crop_size = (512, 1024)
checkpoint_file = 'pretrained/volo_d1_224.pth'
data_preprocessor = dict(size=crop_size)
model = dict(
    # mmseg's EncoderDecoder, its sliding windows run `crop_batch` at a time (mmvolo)
    type='BatchedSlideEncoderDecoder',
    data_preprocessor=data_preprocessor,
    backbone=dict(
        arch='d1',
        # pos_embed sized for the crop: the checkpoint's 14x14 grid is resized once at load.
        img_size=crop_size,
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file)),
    decode_head=dict(in_channels=[192, 192, 384, 384], num_classes=19),
    auxiliary_head=dict(in_channels=384, num_classes=19),
    # 1024x2048 images, 512x1024 windows, 2/3 overlap stride: 3 x 3 windows per image,
    # 3 windows per forward pass (3 passes; same logits as one at a time, within 1e-5).
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(341, 682), crop_batch=3))

optim_wrapper = {{_base_.volo_optim_wrapper}}

param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=1500, end=80000, by_epoch=False),
]

# 8 GPUs x 2 images per GPU
train_dataloader = dict(batch_size=2)
val_dataloader = dict(batch_size=1)
test_dataloader = val_dataloader

# mmvolo's CheckpointHook: files appear whole or not at all (same arguments)
default_hooks = dict(checkpoint=dict(type='AtomicCheckpointHook'))
