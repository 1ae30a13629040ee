"""The ``fastattn::sdpa`` torch custom op, with autograd.

``torch.ops.fastattn.sdpa(query, key, value, attn_mask=None, dropout_p=0.0,
is_causal=False, scale=None, enable_gqa=False)`` has the arguments and semantics of
``torch.nn.functional.scaled_dot_product_attention`` on CPU tensors, gradients included.
It is built from two custom ops (``torch.library.custom_op``), each with a fake (meta)
kernel, so ``torch.compile`` traces them as opaque nodes instead of breaking the graph:

* ``fastattn::sdpa_fwd(query, key, value, attn_mask, is_causal, scale, enable_gqa)``
  returns ``(out, lse)``, the output and its float32 log-sum-exp ``[..., H, Lq]``. Its
  autograd formula saves the inputs, the output and the LSE, and calls
* ``fastattn::sdpa_bwd(grad, query, key, value, out, lse, attn_mask, is_causal, scale,
  enable_gqa)``, which returns ``(dq, dk, dv)`` in the inputs' shapes and dtypes (summed
  over broadcast dimensions), computed by the library's backward pass.

``fastattn::sdpa`` itself is a ``CompositeImplicitAutograd`` op: ``sdpa_fwd(...)[0]``, so
it needs no autograd formula or fake kernel of its own, as torch's own
``scaled_dot_product_attention`` is a composite of its fused kernels. The mask gets no
gradient (one that requires grad is a ``ValueError``), the LSE is not differentiable, and
the backward is not differentiable again (no double backward).

Importing this module registers the ops::

    import fastattn.torch
    out = torch.compile(lambda q, k, v: torch.ops.fastattn.sdpa(q, k, v, is_causal=True))(q, k, v)
    out.sum().backward()
"""

from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from . import _fastattn

__all__ = ["sdpa", "sdpa_fwd", "sdpa_bwd", "output_shape"]


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
    # The kernels run below autograd: give them tensors without a graph.
    return t.detach() if t is not None and t.requires_grad else t


@torch.library.custom_op("fastattn::sdpa_fwd", mutates_args=(), device_types="cpu")
def sdpa_fwd(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Optional[Tensor] = None,
    is_causal: bool = False,
    scale: Optional[float] = None,
    enable_gqa: bool = False,
) -> Tuple[Tensor, Tensor]:
    """SDPA's output and its float32 log-sum-exp ``[..., H, Lq]``, computed by fastattn."""
    return _fastattn._sdpa_fwd(
        _plain(query), _plain(key), _plain(value), _plain(attn_mask), is_causal, scale, enable_gqa
    )


@sdpa_fwd.register_fake
def _sdpa_fwd_fake(query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False):
    shape = output_shape(query.shape, key.shape, value.shape, enable_gqa)
    return query.new_empty(shape), query.new_empty(shape[:-1], dtype=torch.float32)


def _fit(grad: Tensor, like: Tensor) -> Tensor:
    """The gradient of ``like``: summed to its shape, in its dtype."""
    return grad.sum_to_size(like.shape).to(like.dtype)


@torch.library.custom_op("fastattn::sdpa_bwd", mutates_args=(), device_types="cpu")
def sdpa_bwd(
    grad: Tensor,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    out: Tensor,
    lse: Tensor,
    attn_mask: Optional[Tensor] = None,
    is_causal: bool = False,
    scale: Optional[float] = None,
    enable_gqa: bool = False,
) -> Tuple[Tensor, Tensor, Tensor]:
    """The gradients of ``sdpa_fwd``'s output with respect to query, key and value, from
    the output's gradient ``grad`` and the forward's ``out`` and ``lse``."""
    dq, dk, dv = _fastattn._sdpa_bwd(
        _plain(grad), _plain(query), _plain(key), _plain(value), _plain(out), _plain(lse),
        _plain(attn_mask), is_causal, scale, enable_gqa,
    )
    return _fit(dq, query), _fit(dk, key), _fit(dv, value)


@sdpa_bwd.register_fake
def _sdpa_bwd_fake(grad, query, key, value, out, lse, attn_mask=None, is_causal=False, scale=None, enable_gqa=False):
    return tuple(x.new_empty(x.shape) for x in (query, key, value))


def _fwd_setup_context(ctx, inputs, output):
    query, key, value, attn_mask, is_causal, scale, enable_gqa = inputs
    if attn_mask is not None and attn_mask.requires_grad:
        raise ValueError(
            "attn_mask requires grad, but fastattn computes no gradient for it: pass "
            "attn_mask.detach() if it is a constant, or use torch's attention to train it"
        )
    out, lse = output
    ctx.save_for_backward(query, key, value, attn_mask, out, lse)
    ctx.options = (is_causal, scale, enable_gqa)
    ctx.mark_non_differentiable(lse)


def _fwd_backward(ctx, grad, _grad_lse):
    query, key, value, attn_mask, out, lse = ctx.saved_tensors
    dq, dk, dv = sdpa_bwd(grad, query, key, value, out, lse, attn_mask, *ctx.options)
    need = ctx.needs_input_grad
    return (
        dq if need[0] else None,
        dk if need[1] else None,
        dv if need[2] else None,
        None,
        None,
        None,
        None,
    )


sdpa_fwd.register_autograd(_fwd_backward, setup_context=_fwd_setup_context)

_LIB = torch.library.Library("fastattn", "FRAGMENT")
_LIB.define(
    "sdpa(Tensor query, Tensor key, Tensor value, Tensor? attn_mask=None, "
    "float dropout_p=0.0, bool is_causal=False, float? scale=None, bool enable_gqa=False) -> Tensor"
)


def _sdpa_composite(
    query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False
):
    if dropout_p != 0.0:
        raise ValueError(f"dropout_p must be 0.0: fastattn has no dropout (got {dropout_p})")
    return torch.ops.fastattn.sdpa_fwd(query, key, value, attn_mask, is_causal, scale, enable_gqa)[0]


_LIB.impl("sdpa", _sdpa_composite, "CompositeImplicitAutograd")


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
    """``torch.nn.functional.scaled_dot_product_attention`` computed by fastattn
    (``torch.ops.fastattn.sdpa``), differentiable."""
    return torch.ops.fastattn.sdpa(
        query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa
    )
