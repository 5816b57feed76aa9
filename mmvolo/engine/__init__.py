"""Training machinery: layer-wise lr decay, atomic checkpoints, exact resume."""
from .atomic_checkpoint_hook import AtomicCheckpointHook
from .layer_decay_optim_constructor import (
    LayerDecayPlan,
    VOLOLayerDecayOptimWrapperConstructor,
    plan_layer_decay,
)
from .rng_state_hook import RNGStateHook, capture_rng_state, restore_rng_state

__all__ = ['AtomicCheckpointHook', 'LayerDecayPlan', 'RNGStateHook',
           'VOLOLayerDecayOptimWrapperConstructor', 'capture_rng_state', 'plan_layer_decay',
           'restore_rng_state']
