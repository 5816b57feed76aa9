# VOLO-D2 ImageNet-1k classification at 384x384 (official eval: crop_pct 1.0).
#
# Evaluate the official 384 weights: convert them with --keep-head and pass the file to
# mmpretrain's tools/test.py. Fine-tune from the 224 weights: convert those with --keep-head
# to `checkpoint` below; backbone and head load it through init_cfg, pos_embed is resized
# (bicubic) from 14x14 to 24x24 on load.
_base_ = ['./volo-d2_in1k-224.py']

checkpoint = 'checkpoints/volo-d2_in1k-224.pth'
model = dict(
    backbone=dict(img_size=384, init_cfg=dict(type='Pretrained', checkpoint=checkpoint)),
    head=dict(init_cfg=dict(type='Pretrained', checkpoint=checkpoint)),
)

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomResizedCrop', scale=384, backend='pillow', interpolation='bicubic'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
# official evaluation: crop_pct 1.0: bicubic resize of the short edge to floor(384 / 1.0) = 384,
# then a 384 center crop
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='ResizeEdge', scale=384, edge='short', backend='pillow',
         interpolation='bicubic'),
    dict(type='CenterCrop', crop_size=384),
    dict(type='PackInputs'),
]
train_dataloader = dict(batch_size=32, dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(batch_size=32, dataset=dict(pipeline=test_pipeline))
test_dataloader = dict(batch_size=32, dataset=dict(pipeline=test_pipeline))

# fine-tuning schedule: 30 epochs, small constant-then-cosine learning rate
optim_wrapper = dict(optimizer=dict(lr=2e-5, weight_decay=1e-8))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, end=5, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-6, by_epoch=True, begin=5),
]
train_cfg = dict(max_epochs=30)
auto_scale_lr = dict(base_batch_size=512)
