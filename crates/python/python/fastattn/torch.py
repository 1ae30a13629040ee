"""fastattn's torch ops, and its autograd (the one place it is defined).

``torch.ops.fastattn.sdpa(query, key, value, attn_mask=None, dropout_p=0.0,
is_causal=False, scale=None, enable_gqa=False)`` has the arguments and semantics of
``torch.nn.functional.scaled_dot_product_attention`` on CPU tensors, gradients included.
The ops are declared with ``torch.library.define``, implemented with
``torch.library.impl`` and given fake (meta) kernels with ``torch.library.register_fake``,
so ``torch.compile`` traces them as opaque nodes instead of breaking the graph:

* ``fastattn::attention(query, key, value, attn_mask, call)`` returns ``(out, lse)`` (or
  ``(weights, lse)``), computed by the extension's ``forward``. ``call`` is the call's
  description as a string (:func:`spec`: its shape rules and options as JSON), so one op
  serves every public function and option. Its backward is registered with
  ``torch.library.register_autograd`` (autograd sits outside the op): it saves the inputs,
  the output and the LSE, and calls
* ``fastattn::attention_backward(grad, query, key, value, attn_mask, out, lse, call)``,
  which returns ``(dq, dk, dv)`` in the inputs' shapes and dtypes (summed over broadcast
  dimensions), computed by the library's backward pass.
* ``fastattn::sdpa_fwd(query, key, value, attn_mask, is_causal, scale, enable_gqa)`` (the
  output and its float32 log-sum-exp ``[..., H, Lq]``), ``fastattn::sdpa_bwd(grad, query,
  key, value, out, lse, attn_mask, is_causal, scale, enable_gqa)`` and
  ``fastattn::sdpa`` (``sdpa_fwd(...)[0]``) are ``CompositeImplicitAutograd`` ops over
  those two with torch's SDPA arguments, as torch's own ``scaled_dot_product_attention``
  is a composite of its fused kernels.

The public functions of :mod:`fastattn` send a call on torch tensors that require grad
through ``fastattn::attention``, so eager calls and compiled graphs share this autograd.
The mask and ALiBi slopes get no gradient (one that requires grad is a ``ValueError``),
the LSE is not differentiable, the weights of ``attention_weights`` have no backward
(``NotImplementedError`` at ``backward()``), and the backward is not differentiable again
(no double backward).

Importing this module registers the ops::

    import fastattn.torch
    out = torch.compile(lambda q, k, v: torch.ops.fastattn.sdpa(q, k, v, is_causal=True))(q, k, v)
    out.sum().backward()
"""

import functools
import json
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from . import _fastattn

__all__ = ["sdpa", "sdpa_fwd", "sdpa_bwd", "attention", "spec", "output_shape"]

NO_BACKWARD = (
    "fastattn.attention_weights has no backward pass: call it under torch.no_grad(), or "
    "compute the weights with torch to train through them"
)

# ---------------------------------------------------------------------------------------
# The call description of the ops.


def _as_list(x):
    return x.tolist() if hasattr(x, "tolist") else x


def spec(rules: str, **options) -> str:
    """The description of a call as the ops take it: ``rules`` (``"torch"`` or
    ``"flash"``) and the keyword arguments of ``_fastattn.Call.<rules>`` as JSON. The
    options are checked first (the ``Call`` is built and kept), so a bad one raises the
    error of a call without autograd."""
    make = getattr(_fastattn.Call, rules)
    make(**options)  # the errors of a bad option
    plain = {}
    for name, value in options.items():
        if name in ("alibi_slopes", "kv_lengths", "sinks"):
            value = _as_list(value)
        elif name == "window_size":
            value = [int(x) for x in value]
        elif isinstance(value, bool) or value is None or isinstance(value, str):
            pass
        elif name in ("scale", "softmax_scale", "softcap"):
            value = float(value)
        else:
            value = bool(value)
        plain[name] = value
    return json.dumps([rules, plain], sort_keys=True)


@functools.lru_cache(maxsize=1024)
def _call(text: str) -> "_fastattn.Call":
    """The ``_fastattn.Call`` a :func:`spec` describes."""
    rules, options = json.loads(text)
    if "window_size" in options:
        options["window_size"] = tuple(options["window_size"])
    return getattr(_fastattn.Call, rules)(**options)


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


def _shapes(text, q, k, v):
    """The shapes of a call's ``(out, lse, weights)`` (works on symbolic sizes)."""
    rules, options = json.loads(text)
    if rules == "flash":
        b, lq, hq, lk = q[0], q[1], q[2], k[1]
        return (b, lq, hq, v[3]), (b, hq, lq), (b, hq, lq, lk)
    out = output_shape(q, k, v, options.get("enable_gqa", False))
    lse = out[:-1]
    weights = (*lse, k[-2])
    if options.get("blhd", False):
        out = (out[0], out[2], out[1], out[3])
    return out, lse, weights


# ---------------------------------------------------------------------------------------
# The ops.

_LIB = torch.library.Library("fastattn", "FRAGMENT")


def _plain(t: Optional[Tensor]) -> Optional[Tensor]:
    # The kernels run below autograd: give them tensors without a graph.
    return t.detach() if t is not None and t.requires_grad else t


def _fit(grad: Tensor, like: Tensor) -> Tensor:
    """The gradient of ``like``: summed to its shape, in its dtype."""
    return grad.sum_to_size(like.shape).to(like.dtype)


torch.library.define(
    "fastattn::attention",
    "(Tensor query, Tensor key, Tensor value, Tensor? attn_mask, str call) -> (Tensor, Tensor)",
    lib=_LIB,
)


@torch.library.impl("fastattn::attention", "cpu", lib=_LIB)
def _attention(query, key, value, attn_mask, call):
    return tuple(
        _fastattn.forward(_call(call), _plain(query), _plain(key), _plain(value), _plain(attn_mask))
    )


@torch.library.register_fake("fastattn::attention", lib=_LIB)
def _attention_fake(query, key, value, attn_mask, call):
    out, lse, weights = _shapes(call, query.shape, key.shape, value.shape)
    if json.loads(call)[1].get("returns") == "weights_lse":
        return query.new_empty(weights, dtype=torch.float32), query.new_empty(lse, dtype=torch.float32)
    return query.new_empty(out), query.new_empty(lse, dtype=torch.float32)


torch.library.define(
    "fastattn::attention_backward",
    "(Tensor grad, Tensor query, Tensor key, Tensor value, Tensor? attn_mask, Tensor out, "
    "Tensor lse, str call) -> (Tensor, Tensor, Tensor)",
    lib=_LIB,
)


@torch.library.impl("fastattn::attention_backward", "cpu", lib=_LIB)
def _attention_backward(grad, query, key, value, attn_mask, out, lse, call):
    dq, dk, dv = _fastattn.backward(
        _call(call), _plain(query), _plain(key), _plain(value), _plain(attn_mask),
        _plain(out), _plain(lse), _plain(grad),
    )
    return _fit(dq, query), _fit(dk, key), _fit(dv, value)


@torch.library.register_fake("fastattn::attention_backward", lib=_LIB)
def _attention_backward_fake(grad, query, key, value, attn_mask, out, lse, call):
    return tuple(x.new_empty(x.shape) for x in (query, key, value))


# ---------------------------------------------------------------------------------------
# Autograd: the one mechanism, registered on fastattn::attention.


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


def check_graph_operands(tensors, mask, no_grad=()):
    """The checks of a call that records a graph: Q, K, V and the mask are torch tensors,
    and the mask and the ``no_grad`` operands (``(name, value)`` pairs) require no grad."""
    for name, t in zip(("query", "key", "value"), tensors):
        if not isinstance(t, torch.Tensor):
            raise TypeError(
                f"with inputs that require grad, {name} must be a torch.Tensor, got "
                f"{type(t).__name__}"
            )
    if mask is not None and not isinstance(mask, torch.Tensor):
        raise TypeError(
            "with inputs that require grad, attn_mask must be a torch.Tensor, got "
            f"{type(mask).__name__}"
        )
    _no_grad_operand("attn_mask", mask)
    for name, t in no_grad:
        _no_grad_operand(name, t)


def _setup_context(ctx, inputs, output):
    query, key, value, attn_mask, call = inputs
    _no_grad_operand("attn_mask", attn_mask)
    first, lse = output
    ctx.weights = json.loads(call)[1].get("returns") == "weights_lse"
    ctx.call = call
    ctx.save_for_backward(query, key, value, attn_mask, first, lse)
    if not ctx.weights:
        ctx.mark_non_differentiable(lse)


@_first_order
def _backward(ctx, grad, _grad_lse):
    if ctx.weights:
        raise NotImplementedError(NO_BACKWARD)
    query, key, value, attn_mask, out, lse = ctx.saved_tensors
    dq, dk, dv = torch.ops.fastattn.attention_backward(
        grad, query, key, value, attn_mask, out, lse, ctx.call
    )
    need = ctx.needs_input_grad
    return (
        dq if need[0] else None,
        dk if need[1] else None,
        dv if need[2] else None,
        None,
        None,
    )


torch.library.register_autograd(
    "fastattn::attention", _backward, setup_context=_setup_context, lib=_LIB
)


def attention(
    query: Tensor, key: Tensor, value: Tensor, attn_mask: Optional[Tensor], call: str
) -> Tuple[Tensor, Tensor]:
    """``torch.ops.fastattn.attention``: the call :func:`spec` describes, differentiable."""
    return torch.ops.fastattn.attention(query, key, value, attn_mask, call)


# ---------------------------------------------------------------------------------------
# torch's SDPA arguments, as composites.


def _sdpa_spec(is_causal, scale, enable_gqa, returns="out_lse"):
    return spec("torch", returns=returns, is_causal=is_causal, scale=scale, enable_gqa=enable_gqa)


torch.library.define(
    "fastattn::sdpa_fwd",
    "(Tensor query, Tensor key, Tensor value, Tensor? attn_mask=None, bool is_causal=False, "
    "float? scale=None, bool enable_gqa=False) -> (Tensor, Tensor)",
    lib=_LIB,
)


@torch.library.impl("fastattn::sdpa_fwd", "CompositeImplicitAutograd", lib=_LIB)
def sdpa_fwd(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Optional[Tensor] = None,
    is_causal: bool = False,
    scale: Optional[float] = None,
    enable_gqa: bool = False,
) -> Tuple[Tensor, Tensor]:
    """SDPA's output and its float32 log-sum-exp ``[..., H, Lq]``, computed by fastattn
    (``torch.ops.fastattn.sdpa_fwd``)."""
    return torch.ops.fastattn.attention(
        query, key, value, attn_mask, _sdpa_spec(is_causal, scale, enable_gqa)
    )


torch.library.define(
    "fastattn::sdpa_bwd",
    "(Tensor grad, Tensor query, Tensor key, Tensor value, Tensor out, Tensor lse, "
    "Tensor? attn_mask=None, bool is_causal=False, float? scale=None, bool enable_gqa=False) "
    "-> (Tensor, Tensor, Tensor)",
    lib=_LIB,
)


@torch.library.impl("fastattn::sdpa_bwd", "CompositeImplicitAutograd", lib=_LIB)
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
    the output's gradient ``grad`` and the forward's ``out`` and ``lse``
    (``torch.ops.fastattn.sdpa_bwd``)."""
    return torch.ops.fastattn.attention_backward(
        grad, query, key, value, attn_mask, out, lse, _sdpa_spec(is_causal, scale, enable_gqa)
    )


torch.library.define(
    "fastattn::sdpa",
    "(Tensor query, Tensor key, Tensor value, Tensor? attn_mask=None, float dropout_p=0.0, "
    "bool is_causal=False, float? scale=None, bool enable_gqa=False) -> Tensor",
    lib=_LIB,
)


@torch.library.impl("fastattn::sdpa", "CompositeImplicitAutograd", lib=_LIB)
def _sdpa_composite(
    query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False
):
    if dropout_p != 0.0:
        raise ValueError(f"dropout_p must be 0.0: fastattn has no dropout (got {dropout_p})")
    return torch.ops.fastattn.sdpa_fwd(query, key, value, attn_mask, is_causal, scale, enable_gqa)[0]


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


# ---------------------------------------------------------------------------------------
# Autograd of attention sinks and of variable-length calls (eager torch.autograd.Function:
# the sinks are a differentiable input the fastattn::attention op does not take).
#
# The backward of a call with sinks is the backward of the same call without them, given
# the forward's LSE (which counts the sinks): P = exp(S - lse) is then the true attention,
# and rowsum(dO * O) is unchanged, since a sink contributes no value. The sinks' own
# gradient is d sink_h = -sum over the rows of head h of exp(sink_h - lse) * rowsum(dO * O).


def _sink_list(s_aux):
    return None if s_aux is None else s_aux.detach().float().reshape(-1).tolist()


def _sink_grad(s_aux, lse, delta):
    """The gradient of the sinks from the LSE and rowsum(dO * O), both ``[..., H, L]``."""
    h = s_aux.shape[0]
    p = torch.exp(s_aux.detach().float().reshape(h, 1) - lse)
    g = -torch.nan_to_num(p * delta, nan=0.0, posinf=0.0, neginf=0.0)
    dims = [i for i in range(g.dim()) if i != g.dim() - 2]
    return (g.sum(dim=dims) if dims else g.sum(dim=-1)).to(s_aux.dtype)


class _SinkAttention(torch.autograd.Function):
    """A dense call (torch or flash rules) with sinks, differentiable in q, k, v and the
    sinks."""

    @staticmethod
    def forward(ctx, query, key, value, attn_mask, s_aux, rules, options):
        call = getattr(_fastattn.Call, rules)(
            returns="out_lse", sinks=_sink_list(s_aux), **options
        )
        out, lse = _fastattn.forward(
            call, _plain(query), _plain(key), _plain(value), _plain(attn_mask)
        )
        ctx.rules, ctx.options = rules, options
        ctx.save_for_backward(query, key, value, attn_mask, s_aux, out, lse)
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    @_first_order
    def backward(ctx, grad, _grad_lse):
        query, key, value, attn_mask, s_aux, out, lse = ctx.saved_tensors
        call = getattr(_fastattn.Call, ctx.rules)(returns="out_lse", **ctx.options)
        dq, dk, dv = _fastattn.backward(
            call, _plain(query), _plain(key), _plain(value), _plain(attn_mask), out, lse, grad
        )
        ds = None
        if ctx.needs_input_grad[4]:
            delta = (grad.float() * out.float()).sum(-1)
            if ctx.rules == "flash" or ctx.options.get("blhd", False):
                delta = delta.transpose(-1, -2)  # [B, Lq, H] → [B, H, Lq], as the LSE
            ds = _sink_grad(s_aux, lse, delta)
        need = ctx.needs_input_grad
        return (
            _fit(dq, query) if need[0] else None,
            _fit(dk, key) if need[1] else None,
            _fit(dv, value) if need[2] else None,
            None,
            ds,
            None,
            None,
        )


def sink_attention(query, key, value, attn_mask, s_aux, rules, options):
    """A dense call with sinks ``s_aux`` on torch tensors, differentiable (``(out, lse)``);
    ``options``: the ``Call.<rules>`` keyword arguments, without ``returns``."""
    check_graph_operands((query, key, value), attn_mask)
    if torch.compiler.is_compiling():
        raise ValueError("fastattn under torch.compile: attention sinks (s_aux) are not supported")
    return _SinkAttention.apply(query, key, value, attn_mask, s_aux, rules, options)


class _VarlenAttention(torch.autograd.Function):
    """``flash_attn_varlen_func`` on packed K/V, differentiable in q, k, v and the sinks;
    the backward is the library's variable-length backward (``varlen_backward``), which
    also gives the sinks' gradient."""

    @staticmethod
    def forward(ctx, q, k, v, s_aux, cu_q, cu_k, options):
        call = _fastattn.Call.flash(returns="out_lse", sinks=_sink_list(s_aux), **options)
        out, lse = _fastattn.varlen_forward(
            call, _plain(q), _plain(k), _plain(v), cu_q, cu_k, None, None
        )
        ctx.options, ctx.cu = options, (cu_q, cu_k)
        ctx.save_for_backward(q, k, v, s_aux, out, lse)
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    @_first_order
    def backward(ctx, grad, _grad_lse):
        q, k, v, s_aux, out, lse = ctx.saved_tensors
        call = _fastattn.Call.flash(returns="out_lse", sinks=_sink_list(s_aux), **ctx.options)
        cu_q, cu_k = ctx.cu
        dq, dk, dv, ds = _fastattn.varlen_backward(
            call, _plain(q), _plain(k), _plain(v), out, lse, grad.contiguous(), cu_q, cu_k
        )
        need = ctx.needs_input_grad
        return (
            dq.to(q.dtype) if need[0] else None,
            dk.to(k.dtype) if need[1] else None,
            dv.to(v.dtype) if need[2] else None,
            ds.to(s_aux.dtype) if need[3] and ds is not None else None,
            None,
            None,
            None,
        )


def varlen_attention(q, k, v, s_aux, cu_q, cu_k, options):
    """``flash_attn_varlen_func`` on packed torch tensors, differentiable: ``(out, lse)``;
    ``cu_q``, ``cu_k``: int numpy arrays; ``options``: the ``Call.flash`` keyword
    arguments, without ``returns``."""
    check_graph_operands((q, k, v), None, (("alibi_slopes", options.get("alibi_slopes")),))
    if cu_k is None:
        raise ValueError("flash_attn_varlen_func: packed K/V need cu_seqlens_k")
    return _VarlenAttention.apply(q, k, v, s_aux, cu_q, cu_k, options)
