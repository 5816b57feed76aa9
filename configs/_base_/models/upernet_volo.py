# UperNet with a VOLO backbone (VOLO-D1 settings; variant configs override arch, channels and
# the pretrained checkpoint). Inherits mmseg's own UperNet model base.
_base_ = ['mmseg::_base_/models/upernet_swin.py']

# mmvolo.runtime: the stack fixes (explicit; `import mmvolo` only registers). The hooks:
# atomic checkpoints and RNG states saved with them, so --resume continues exactly.
custom_imports = dict(imports=['mmvolo.runtime', 'mmvolo'], allow_failed_imports=False)
custom_hooks = [dict(type='RNGStateHook')]

model = dict(
    backbone=dict(
        _delete_=True,
        type='VOLO',
        arch='d1',
        img_size=224,
        out_indices=(0, 1, 2, 3),
        feature_pyramid=True,
        drop_path_rate=0.1,
        with_cp=False),
    # VOLO-D1 pyramid channels: (C0, C0, C, C) at strides 4, 8, 16, 32.
    # avg_non_ignore=True: the CE loss is averaged over labelled pixels only (PyTorch's
    # F.cross_entropy semantics) instead of over all pixels, ignored ones included; it also
    # silences mmseg's warning about the default. Under AdamW this is close to a per-batch
    # rescaling of the loss; both heads see the same labels, so their 1 : 0.4 ratio holds.
    decode_head=dict(
        in_channels=[192, 192, 384, 384],
        in_index=[0, 1, 2, 3],
        loss_decode=dict(avg_non_ignore=True)),
    auxiliary_head=dict(
        in_channels=384,
        in_index=2,
        loss_decode=dict(avg_non_ignore=True)))
