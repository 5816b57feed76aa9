"""Training machinery: the layer-wise lr decay optimizer-wrapper constructor."""
from .layer_decay_optim_constructor import (
    LayerDecayPlan,
    VOLOLayerDecayOptimWrapperConstructor,
    plan_layer_decay,
)

__all__ = ['LayerDecayPlan', 'VOLOLayerDecayOptimWrapperConstructor', 'plan_layer_decay']
