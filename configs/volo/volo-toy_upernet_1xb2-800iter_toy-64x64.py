# Quick start: a tiny VOLO + UperNet on the generated toy dataset (tools/make_toy_dataset.py),
# 64x64 images, 6 classes. Trains, validates and tests on a laptop CPU in a few minutes.
# (The file name predates the schedule below: it now runs 800 iterations of batch 2.)
# Same structure as the ADE20K configs: mmseg's ADE20K dataset base (layout, pipelines,
# mIoU evaluator), runtime and schedule bases, and mmvolo's UperNet-VOLO model base.
_base_ = [
    '../_base_/models/upernet_volo.py',
    'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_20k.py',
]
custom_imports = dict(imports=['mmvolo.runtime', 'mmvolo', 'mmvolo.datasets.toy_shapes'], allow_failed_imports=False)

dataset_type = 'ToyShapesDataset'
data_root = 'work_dirs/toy_data'
crop_size = (64, 64)
num_classes = 6
norm_cfg = dict(type='BN', requires_grad=True)

model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        # a dict replaces the base's arch name: _delete_ drops the string it merges into
        arch=dict(_delete_=True, layers=(1, 1, 1, 1), embed_dims=(32, 64, 64, 64),
                  num_heads=(1, 2, 2, 2), stem_hidden_dims=16),
        img_size=64,
        drop_path_rate=0.0),
    decode_head=dict(in_channels=[32, 32, 64, 64], channels=32, num_classes=num_classes,
                     norm_cfg=norm_cfg),
    auxiliary_head=dict(in_channels=64, channels=16, num_classes=num_classes,
                        norm_cfg=norm_cfg))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomResize', scale=crop_size, ratio_range=(0.75, 1.5), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.9),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=crop_size, keep_ratio=True),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    dataset=dict(type=dataset_type, data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1, num_workers=0, persistent_workers=False,
    dataset=dict(type=dataset_type, data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader

# Schedule: AdamW (lr 6e-3) for 800 iterations of batch 2. The old SGD (lr 0.05, momentum 0.9),
# 400 x batch 4, learnt by seed luck (final mIoU 36-89 over seeds 0-4): the rarer object classes
# stayed merged into one. AdamW at 1e-3 was slower still, batch 8 worse than 4; what splits
# them is more (noisier) steps, at about the same cost per run. With the generator's even class
# areas (mmvolo/datasets/toy_generator.py) every seed tried learns all six classes.
# lr 6e-3, not 4e-3 (onedl seed 3 kept box merged into triangle, mIoU 79): all seeds split
optimizer = dict(_delete_=True, type='AdamW', lr=6e-3, betas=(0.9, 0.999), weight_decay=0.05)
optim_wrapper = dict(type='OptimWrapper', optimizer=optimizer, clip_grad=None)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=40),
    dict(type='PolyLR', power=0.9, eta_min=1e-5, by_epoch=False, begin=40, end=800),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=800, val_interval=400)
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=100, log_metric_by_epoch=False),
    checkpoint=dict(type='AtomicCheckpointHook', by_epoch=False, interval=400, max_keep_ckpts=2,
                    save_best='mIoU'))
randomness = dict(seed=0)
