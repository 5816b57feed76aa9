"""The one wrapper every fast path is built with: a forward/backward pair becomes a
differentiable ``torch.library.custom_op``, so ``torch.compile`` traces it as one opaque node
(no graph break; no fusion into it either) and every op looks the same to it.

``define_op('mmvolo::NAME', forward, backward, num_inputs)`` registers two ops:

* ``mmvolo::NAME_fwd``: ``forward`` itself (its annotated signature is the schema): the first
  ``num_inputs`` arguments are the differentiable tensors, the rest ints (sizes, counts);
  it returns ``out`` or ``(out, *residuals)`` (intermediates the backward reuses, e.g. local
  attention's softmax weights); its fake (meta) kernel is ``fake`` or a contiguous
  ``empty_like(first input)``;
* ``mmvolo::NAME_bwd(grad_out, saved, params, needs) -> grads``, calling
  ``backward(grad_out, *inputs, *residuals, *params, needs=needs)``, which returns one
  gradient per input, None where ``needs`` says it is not wanted (the op returns an empty
  tensor there: custom ops cannot return None);

and ``register_autograd`` connects them: the forward saves the inputs and residuals, the
backward (not itself differentiable) passes ``ctx.needs_input_grad`` on as ``needs``.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable, Optional

import torch

ForwardFn = Callable[..., Any]
BackwardFn = Callable[..., Sequence[Optional[torch.Tensor]]]


def define_op(name: str, forward: ForwardFn, backward: BackwardFn, num_inputs: int,
              fake: Callable[..., Any] | None = None) -> Callable:
    """Return the differentiable op ``op(*inputs, *params)`` (see the module docstring).

    Args:
        name: ``'namespace::base'``; the ops are ``base_fwd`` and ``base_bwd``.
        forward: annotated ``forward(*inputs, *params) -> out | (out, *residuals)``.
        backward: ``backward(grad_out, *inputs, *residuals, *params, needs) -> grads``.
        num_inputs: how many leading arguments are differentiable tensors.
        fake: the forward's fake kernel (same arguments); default ``empty_like(inputs[0])``.
    """

    def bwd(grad_out: torch.Tensor, saved: list[torch.Tensor], params: list[int],
            needs: list[bool]) -> list[torch.Tensor]:
        grads = backward(grad_out, *saved, *params, needs=tuple(needs))
        return [saved[index].new_empty(0) if grad is None else grad
                for index, grad in enumerate(grads)]

    fwd_op = torch.library.custom_op(f'{name}_fwd', forward, mutates_args=())
    bwd_op = torch.library.custom_op(f'{name}_bwd', bwd, mutates_args=())
    fwd_op.register_fake(fake or (lambda *args: _empty_like(args[0])))

    @bwd_op.register_fake
    def _(grad_out, saved, params, needs):
        return [_empty_like(saved[index]) if needs[index] else saved[index].new_empty(0)
                for index in range(num_inputs)]

    def setup_context(ctx: Any, inputs: tuple, output: Any) -> None:
        residuals = tuple(output[1:]) if isinstance(output, (tuple, list)) else ()
        ctx.save_for_backward(*inputs[:num_inputs], *residuals)
        ctx.params = [int(param) for param in inputs[num_inputs:]]

    def autograd_backward(ctx: Any, grad_out: torch.Tensor, *unused: Any) -> tuple:
        needs = [bool(need) for need in ctx.needs_input_grad[:num_inputs]]
        grads = bwd_op(grad_out.contiguous(), list(ctx.saved_tensors), ctx.params, needs)
        return (*(grad if need else None for grad, need in zip(grads, needs)),
                *(None for _ in ctx.params))

    fwd_op.register_autograd(autograd_backward, setup_context=setup_context)
    return fwd_op


def define_outlook_op(name: str, forward: ForwardFn, backward: BackwardFn) -> Callable:
    """:func:`define_op` for outlook attention: ``op(v, logits, num_heads, kernel_size,
    padding, stride)``; ``backward(grad_out, v, logits, num_heads, kernel_size, padding,
    stride, need_v, need_logits) -> (grad_v | None, grad_logits | None)``."""

    def fwd(v: torch.Tensor, logits: torch.Tensor, num_heads: int, kernel_size: int,
            padding: int, stride: int) -> torch.Tensor:
        return forward(v, logits, num_heads, kernel_size, padding, stride)

    def bwd(grad_out: torch.Tensor, v: torch.Tensor, logits: torch.Tensor, num_heads: int,
            kernel_size: int, padding: int, stride: int,
            needs: tuple[bool, ...]) -> tuple[torch.Tensor | None, ...]:
        return backward(grad_out, v, logits, num_heads, kernel_size, padding, stride, *needs)

    return define_op(name, fwd, bwd, num_inputs=2)


def _empty_like(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x, memory_format=torch.contiguous_format)
