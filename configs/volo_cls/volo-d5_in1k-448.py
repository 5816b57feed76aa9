# VOLO-D5 ImageNet-1k classification at 448x448 (official eval: crop_pct 1.15).
#
# Evaluate the official 448 weights: convert them with --keep-head and pass the file to
# mmpretrain's tools/test.py. Fine-tune from the 224 weights: convert those with --keep-head
# to `checkpoint` below; backbone and head load it through init_cfg, pos_embed is resized
# (bicubic) from 14x14 to 28x28 on load.
_base_ = ['./volo-d5_in1k-224.py']

checkpoint = 'checkpoints/volo-d5_in1k-224.pth'
model = dict(
    backbone=dict(img_size=448, init_cfg=dict(type='Pretrained', checkpoint=checkpoint)),
    head=dict(init_cfg=dict(type='Pretrained', checkpoint=checkpoint)),
)

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomResizedCrop', scale=448, backend='pillow', interpolation='bicubic'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
# official evaluation: crop_pct 1.15: bicubic resize of the short edge to floor(448 / 1.15) = 389,
# then a 448 center crop (zero-padded: crop_pct > 1 means the crop is larger than the image)
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='ResizeEdge', scale=389, edge='short', backend='pillow',
         interpolation='bicubic'),
    dict(type='CenterCrop', crop_size=448, auto_pad=True),
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
