# AdamW with layer-wise lr decay for VOLO backbones: lr * layer_decay_rate ** (top id - layer id)
# (layer ids from VOLO.get_layer_depth; heads at the full lr); no weight decay on pos_embed,
# norms and biases (see mmvolo/engine). mmseg's schedule_*k.py bases define `optim_wrapper`
# too and mmengine refuses duplicate keys among bases, so this file defines
# `volo_optim_wrapper` and configs take it with `optim_wrapper = {{_base_.volo_optim_wrapper}}`.
volo_optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    constructor='VOLOLayerDecayOptimWrapperConstructor',
    paramwise_cfg=dict(layer_decay_rate=0.9))
