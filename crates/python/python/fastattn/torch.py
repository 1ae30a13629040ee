"""The ``fastattn::sdpa`` torch custom op.

``torch.ops.fastattn.sdpa(query, key, value, attn_mask=None, dropout_p=0.0,
is_causal=False, scale=None, enable_gqa=False)`` has the arguments and semantics of
``torch.nn.functional.scaled_dot_product_attention`` and runs
:func:`fastattn.scaled_dot_product_attention` on CPU tensors. It is registered with
``torch.library.custom_op`` and has a fake (meta) kernel, so ``torch.compile`` traces it as
one opaque node instead of breaking the graph. Its autograd formula raises: there is no
backward pass yet.

Importing this module registers the op::

    import fastattn.torch
    out = torch.compile(lambda q, k, v: torch.ops.fastattn.sdpa(q, k, v, is_causal=True))(q, k, v)
"""

from typing import Optional, Sequence

import torch
from torch import Tensor

from . import _fastattn
from ._autograd import NO_BACKWARD

__all__ = ["sdpa", "output_shape"]


def output_shape(
    q: Sequence[int], k: Sequence[int], v: Sequence[int], enable_gqa: bool = False
) -> tuple:
    """The result shape of SDPA on these shapes (torch's broadcasting rules; works on
    symbolic sizes)."""
    nd = max(len(q), len(k), len(v))

    def pad(s):
        return (1,) * (nd - len(s)) + tuple(s)

    q, k, v = pad(q), pad(k), pad(v)
    if nd == 2:
        return (q[0], v[1])
    batch = tuple(torch.broadcast_shapes(q[:-3], k[:-3], v[:-3])) if nd > 3 else ()
    heads = q[-3] if enable_gqa else torch.broadcast_shapes((q[-3],), (k[-3],), (v[-3],))[0]
    return (*batch, heads, q[-2], v[-1])


def _plain(t: Optional[Tensor]) -> Optional[Tensor]:
    # The kernel runs below autograd: give it tensors without a graph.
    return t.detach() if t is not None and t.requires_grad else t


@torch.library.custom_op("fastattn::sdpa", mutates_args=(), device_types="cpu")
def sdpa(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Optional[Tensor] = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: Optional[float] = None,
    enable_gqa: bool = False,
) -> Tensor:
    """``torch.nn.functional.scaled_dot_product_attention`` computed by fastattn."""
    return _fastattn.scaled_dot_product_attention(
        _plain(query),
        _plain(key),
        _plain(value),
        _plain(attn_mask),
        dropout_p,
        is_causal,
        scale,
        enable_gqa,
    )


@sdpa.register_fake
def _sdpa_fake(
    query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False
):
    return query.new_empty(output_shape(query.shape, key.shape, value.shape, enable_gqa))


def _setup_context(ctx, inputs, output):
    pass


def _backward(ctx, grad):
    raise NotImplementedError(NO_BACKWARD)


sdpa.register_autograd(_backward, setup_context=_setup_context)
