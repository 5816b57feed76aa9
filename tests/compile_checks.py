"""torch.compile checks shared by the op and mixer tests."""
from __future__ import annotations

import torch


def assert_compiles_like_eager(model: torch.nn.Module, x: torch.Tensor) -> None:
    """``model`` (float64) is one dynamo graph (0 breaks) on ``x``, and its compiled forward
    and backward (``aot_eager``, fullgraph: AOT autograd through the fake kernels) equal
    eager: the summed squared means of the outputs and every parameter's gradient."""
    import torch._dynamo

    torch._dynamo.reset()
    assert torch._dynamo.explain(model)(x).graph_break_count == 0

    def loss(fn) -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        value = sum(out.square().mean() for out in fn(x))
        value.backward()
        return value.detach(), [p.grad.clone() for p in model.parameters()]

    want, want_grads = loss(model)
    got, got_grads = loss(torch.compile(model, backend='aot_eager', fullgraph=True))
    assert torch.allclose(got, want, atol=1e-10)
    assert all(torch.allclose(g, w, atol=1e-9) for g, w in zip(got_grads, want_grads))
