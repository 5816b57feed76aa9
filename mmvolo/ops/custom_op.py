"""One helper turning an outlook-attention forward/backward pair into a differentiable
``torch.library.custom_op``, so ``torch.compile`` traces it as one opaque node (no graph
break; no fusion into it either).

``define_outlook_op('mmvolo::NAME', forward, backward)`` registers two ops:

* ``mmvolo::NAME_fwd(v, logits, num_heads, kernel_size, padding, stride) -> out``, calling
  ``forward`` with those arguments; its fake (meta) kernel returns a contiguous
  ``empty_like(v)``;
* ``mmvolo::NAME_bwd(grad_out, v, logits, num_heads, kernel_size, padding, stride, need_v,
  need_logits) -> (grad_v, grad_logits)``, calling ``backward`` with those arguments, which
  may return None for a gradient it was told is not needed (the op returns an empty tensor
  there: custom ops cannot return None);

and ``register_autograd`` connects them: the forward saves ``v`` and ``logits`` only, the
backward (not itself differentiable) passes ``ctx.needs_input_grad`` on as the two flags.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Tuple

import torch

ForwardFn = Callable[..., torch.Tensor]
BackwardFn = Callable[..., Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]]


def define_outlook_op(name: str, forward: ForwardFn, backward: BackwardFn) -> Callable:
    """Return the differentiable op ``op(v, logits, num_heads, kernel_size, padding, stride)``.

    Args:
        name: ``'namespace::base'``; the ops are ``base_fwd`` and ``base_bwd``.
        forward: ``forward(v, logits, num_heads, kernel_size, padding, stride) -> out``.
        backward: ``backward(grad_out, v, logits, num_heads, kernel_size, padding, stride,
            need_v, need_logits) -> (grad_v | None, grad_logits | None)``.
    """

    def fwd(v: torch.Tensor, logits: torch.Tensor, num_heads: int, kernel_size: int,
            padding: int, stride: int) -> torch.Tensor:
        return forward(v, logits, num_heads, kernel_size, padding, stride)

    def bwd(grad_out: torch.Tensor, v: torch.Tensor, logits: torch.Tensor, num_heads: int,
            kernel_size: int, padding: int, stride: int, need_v: bool,
            need_logits: bool) -> Tuple[torch.Tensor, torch.Tensor]:
        grad_v, grad_logits = backward(grad_out, v, logits, num_heads, kernel_size, padding,
                                       stride, need_v, need_logits)
        return (v.new_empty(0) if grad_v is None else grad_v,
                v.new_empty(0) if grad_logits is None else grad_logits)

    fwd_op = torch.library.custom_op(f'{name}_fwd', fwd, mutates_args=())
    bwd_op = torch.library.custom_op(f'{name}_bwd', bwd, mutates_args=())

    @fwd_op.register_fake
    def _(v, logits, num_heads, kernel_size, padding, stride):
        return _empty_like(v)

    @bwd_op.register_fake
    def _(grad_out, v, logits, num_heads, kernel_size, padding, stride, need_v, need_logits):
        return (_empty_like(v) if need_v else v.new_empty(0),
                _empty_like(logits) if need_logits else v.new_empty(0))

    def setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
        v, logits, *params = inputs
        ctx.save_for_backward(v, logits)
        ctx.params = tuple(params)

    def autograd_backward(ctx: Any, grad_out: torch.Tensor) -> tuple:
        v, logits = ctx.saved_tensors
        need_v, need_logits = (bool(need) for need in ctx.needs_input_grad[:2])
        grad_v, grad_logits = bwd_op(grad_out, v, logits, *ctx.params, need_v, need_logits)
        return (grad_v if need_v else None, grad_logits if need_logits else None,
                None, None, None, None)

    fwd_op.register_autograd(autograd_backward, setup_context=setup_context)
    return fwd_op


def _empty_like(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x, memory_format=torch.contiguous_format)
