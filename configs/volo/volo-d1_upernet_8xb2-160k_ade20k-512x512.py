# UperNet + VOLO-D1 on ADE20K: 512x512 crops, 160k iterations, 8 GPUs x 2 images.
# Pretrained weights: convert the official ImageNet checkpoint first (no download at run time):
#   python tools/model_converters/volo2mmseg.py d1_224_84.2.pth.tar pretrained/volo_d1_224.pth
_base_ = [
    '../_base_/models/upernet_volo.py',
    'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_160k.py',
    '../_base_/schedules/volo_adamw_layer_decay.py',
]

crop_size = (512, 512)
checkpoint_file = 'pretrained/volo_d1_224.pth'
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(
        arch='d1',
        # pos_embed sized for the crop: the checkpoint's 14x14 grid is resized once at load.
        img_size=crop_size,
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file)),
    decode_head=dict(in_channels=[192, 192, 384, 384], num_classes=150),
    auxiliary_head=dict(in_channels=384, num_classes=150),
    # Sliding window at the training crop size: the backbone sees exactly its training
    # resolution (VOLO has an absolute pos_embed), as mmseg's BEiT/ViT-style configs do.
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(341, 341)))

optim_wrapper = {{_base_.volo_optim_wrapper}}

param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=1500, end=160000, by_epoch=False),
]

# 8 GPUs x 2 images per GPU
train_dataloader = dict(batch_size=2)
val_dataloader = dict(batch_size=1)
test_dataloader = val_dataloader

# mmvolo's CheckpointHook: files appear whole or not at all (same arguments)
default_hooks = dict(checkpoint=dict(type='AtomicCheckpointHook'))
