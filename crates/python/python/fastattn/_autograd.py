"""Autograd for calls on torch tensors that require grad (with grad mode on).

The extension sends such calls here (``needs_graph`` in ``src/lib.rs``), and each runs as
a :class:`torch.autograd.Function`:

* ``scaled_dot_product_attention`` and the transformers entry (``_sdpa_ext``): the forward
  (``_fastattn._sdpa_fwd``) keeps the output and its log-sum-exp; the backward
  (``_fastattn._sdpa_bwd``) runs the library's backward pass on the same plan and options
  (FlashAttention-2's algorithm, float32 gradients). A gradient comes back summed over the
  dimensions its input was broadcast along (``sum_to_size``) and cast to the input's dtype.
* ``flash_attn_func``: the same with ``_fastattn._flash_bwd``; the LSE output of
  ``return_lse=True`` is not differentiable (its gradient is ignored).
* ``attention_weights``: no backward; its node raises ``NotImplementedError`` at
  ``backward()``.

Masks and ALiBi slopes get no gradient: one that requires grad is a ``ValueError`` (detach
it if it is a constant). The backward itself is not differentiable (no double backward).
"""

import functools

import torch

from . import _fastattn

NO_BACKWARD = (
    "fastattn.attention_weights has no backward pass: call it under torch.no_grad(), or "
    "compute the weights with torch to train through them"
)


def _first_order(backward):
    """Like ``torch.autograd.function.once_differentiable``, but with ``create_graph=True``
    the gradients always get a node that raises if they are differentiated (not only when
    the incoming gradients require grad: the saved inputs do, and a second derivative
    through them would otherwise be silently zero)."""

    @functools.wraps(backward)
    def wrapper(ctx, *grads):
        with torch.no_grad():
            outputs = backward(ctx, *grads)
        if not torch.is_grad_enabled():
            return outputs
        err = torch._C._functions.DelayedError(
            b"fastattn's attention backward is not differentiable (no double backward)",
            len(outputs),
        )

        def fake_requires_grad(g):
            if g is not None:
                g = g.detach()
                g.requires_grad = True
            return g

        return err(*[fake_requires_grad(g) for g in outputs])

    return wrapper


def _no_grad_operand(name, t):
    if isinstance(t, torch.Tensor) and t.requires_grad:
        raise ValueError(
            f"{name} requires grad, but fastattn computes no gradient for it: pass "
            f"{name}.detach() if it is a constant, or use torch's attention to train it"
        )


def _tensors(**named):
    for name, t in named.items():
        if t is not None and not isinstance(t, torch.Tensor):
            raise TypeError(
                f"with inputs that require grad, {name} must be a torch.Tensor, got "
                f"{type(t).__name__}"
            )


def _fit(grad, like, needed):
    """The gradient of ``like``: ``grad`` summed to its shape, in its dtype."""
    if not needed:
        return None
    return grad.sum_to_size(like.shape).to(like.dtype)


def _as_list(x):
    return x.tolist() if hasattr(x, "tolist") else x


class _Sdpa(torch.autograd.Function):
    """Torch-semantics attention (``_sdpa_fwd`` / ``_sdpa_bwd``)."""

    @staticmethod
    def forward(ctx, query, key, value, attn_mask, is_causal, scale, enable_gqa, softcap, blhd, strict_mask):
        out, lse = _fastattn._sdpa_fwd(
            query, key, value, attn_mask, is_causal, scale, enable_gqa, softcap, blhd, strict_mask
        )
        ctx.save_for_backward(query, key, value, attn_mask, out, lse)
        ctx.options = (is_causal, scale, enable_gqa, softcap, blhd)
        return out

    @staticmethod
    @_first_order
    def backward(ctx, grad):
        q, k, v, mask, out, lse = ctx.saved_tensors
        dq, dk, dv = _fastattn._sdpa_bwd(grad, q, k, v, out, lse, mask, *ctx.options)
        need = ctx.needs_input_grad
        return (
            _fit(dq, q, need[0]),
            _fit(dk, k, need[1]),
            _fit(dv, v, need[2]),
        ) + (None,) * 7


class _Flash(torch.autograd.Function):
    """``flash_attn_func`` (its forward with ``return_lse=True``, then ``_flash_bwd``)."""

    @staticmethod
    def forward(ctx, q, k, v, attn_mask, options):
        o = options
        out, lse = _fastattn.flash_attn_func(
            q, k, v, o["causal"], o["softmax_scale"], o["window_size"], o["softcap"],
            o["alibi_slopes"], True, o["kv_lengths"],
            attn_mask=attn_mask, path=o["path"], variant=o["variant"],
        )
        ctx.save_for_backward(q, k, v, attn_mask, out, lse)
        ctx.options = o
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    @_first_order
    def backward(ctx, grad, _grad_lse):
        q, k, v, mask, out, lse = ctx.saved_tensors
        o = ctx.options
        dq, dk, dv = _fastattn._flash_bwd(
            grad, q, k, v, out, lse, o["causal"], o["softmax_scale"], o["window_size"],
            o["softcap"], o["alibi_slopes"], o["kv_lengths"],
            attn_mask=mask, variant=o["variant"],
        )
        need = ctx.needs_input_grad
        return _fit(dq, q, need[0]), _fit(dk, k, need[1]), _fit(dv, v, need[2]), None, None


class _NoBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, run, *tensors):
        return run(*tensors)

    @staticmethod
    def backward(ctx, *grads):
        raise NotImplementedError(NO_BACKWARD)


def _sdpa(q, k, v, mask, is_causal, scale, gqa, softcap, blhd, strict_mask):
    _tensors(query=q, key=k, value=v, attn_mask=mask)
    _no_grad_operand("attn_mask", mask)
    return _Sdpa.apply(q, k, v, mask, is_causal, scale, gqa, softcap, blhd, strict_mask)


def _flash(q, k, v, causal, softmax_scale, window_size, softcap, alibi_slopes, return_lse,
           kv_lengths, attn_mask=None, path=None, variant=None):
    _tensors(q=q, k=k, v=v, attn_mask=attn_mask)
    _no_grad_operand("attn_mask", attn_mask)
    _no_grad_operand("alibi_slopes", alibi_slopes)
    options = dict(
        causal=causal, softmax_scale=softmax_scale, window_size=tuple(window_size),
        softcap=softcap, alibi_slopes=_as_list(alibi_slopes), kv_lengths=_as_list(kv_lengths),
        path=path, variant=variant,
    )
    out, lse = _Flash.apply(q, k, v, attn_mask, options)
    return (out, lse) if return_lse else out


def _attention_weights(*args):
    values = list(args)
    positions = [i for i, a in enumerate(values) if isinstance(a, torch.Tensor)]

    def run(*tensors):
        full = list(values)
        for i, t in zip(positions, tensors):
            full[i] = t
        return _fastattn.attention_weights(*full)

    return _NoBackward.apply(run, *[values[i] for i in positions])


def call(name, args, kwargs=None):
    """``_fastattn.<name>(*args, **kwargs)`` recorded in the autograd graph."""
    kwargs = dict(kwargs or {})
    if name == "scaled_dot_product_attention":
        q, k, v, mask, _dropout_p, is_causal, scale, gqa = args
        return _sdpa(q, k, v, mask, is_causal, scale, gqa, None, False, True)
    if name == "_sdpa_ext":
        q, k, v, mask, is_causal, scale, gqa, softcap, blhd = args
        return _sdpa(q, k, v, mask, is_causal, scale, gqa, softcap, blhd, False)
    if name == "flash_attn_func":
        return _flash(*args, **kwargs)
    if name == "attention_weights":
        return _attention_weights(*args)
    raise ValueError(f"fastattn._autograd: unknown function {name!r}")
