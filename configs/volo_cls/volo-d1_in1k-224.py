# VOLO-D1 ImageNet-1k classification at 224x224 in mmpretrain (official eval: crop_pct 0.96).
#
# Weights: convert the official release (or timm's) with the head kept, then
#   python tools/model_converters/volo2mmseg.py d1_224_84.2.pth.tar \
#       checkpoints/volo-d1_in1k-224.pth --keep-head
#   evaluate:  mmpretrain's tools/test.py THIS_CONFIG checkpoints/volo-d1_in1k-224.pth
#              (the classifier layout backbone.* / head.* loads through load_from)
#   fine-tune: set init_cfg=dict(type='Pretrained', checkpoint=...) on backbone and head
#              (pos_embed is resized to img_size on load; see the 384/448/512 configs).
_base_ = [
    'mmpretrain::_base_/datasets/imagenet_bs64_swin_224.py',
    'mmpretrain::_base_/schedules/imagenet_bs1024_adamw_swin.py',
    'mmpretrain::_base_/default_runtime.py',
]
# mmvolo.runtime: the stack fixes (explicit; `import mmvolo` only registers). The hooks:
# atomic checkpoints and RNG states saved with them, so --resume continues exactly.
custom_imports = dict(imports=['mmvolo.runtime', 'mmvolo', 'mmvolo.cls'],
                      allow_failed_imports=False)
custom_hooks = [dict(type='RNGStateHook')]
default_hooks = dict(checkpoint=dict(type='AtomicCheckpointHook'))

model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='VOLO',
        arch='d1',
        img_size=224,
        feature_pyramid=False,
        out_indices=(3, ),
        drop_path_rate=0.1),
    neck=None,
    head=dict(
        type='VOLOClsHead',
        num_classes=1000,
        in_channels=384,
        num_heads=12,
        mlp_ratio=3.,
        loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original')),
    train_cfg=dict(augments=[
        dict(type='Mixup', alpha=0.8),
        dict(type='CutMix', alpha=1.0),
    ]),
)

# official evaluation: bicubic resize of the short edge to floor(224 / 0.96) = 233, crop 224
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='ResizeEdge', scale=233, edge='short', backend='pillow',
         interpolation='bicubic'),
    dict(type='CenterCrop', crop_size=224),
    dict(type='PackInputs'),
]
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = dict(dataset=dict(pipeline=test_pipeline))

# official recipe: AdamW, lr 1.6e-3 at batch 1024, weight decay 0.05, 300 epochs, 20 warm-up
optim_wrapper = dict(
    optimizer=dict(lr=1.6e-3),
    paramwise_cfg=dict(custom_keys={
        '.pos_embed': dict(decay_mult=0.0),
        '.cls_token': dict(decay_mult=0.0),
    }),
)
