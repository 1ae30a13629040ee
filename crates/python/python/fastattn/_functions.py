"""The public functions of fastattn, over the extension's private entry points.

Each function takes its arguments as torch's or FlashAttention-2's API has them, checks
what only Python sees (dropout, autograd), describes the call once as a
``_fastattn.Call`` and hands it, with the tensors, to ``_fastattn.forward``. A call on
torch tensors that require grad (with grad mode on) goes through the ``fastattn::attention``
torch op instead (:mod:`fastattn.torch`), whose registered backward is fastattn's one
autograd mechanism. torch is never imported here: a call can only record a graph if the
caller has imported torch.
"""

import sys

from . import _fastattn
from ._fastattn import Call

_forward = _fastattn.forward
_torch_call = Call.torch
_flash_call = Call.flash
# The calls of scaled_dot_product_attention without a scale, by (is_causal, enable_gqa).
_SDPA_CALLS = {
    (c, g): _torch_call(is_causal=c, enable_gqa=g) for c in (False, True) for g in (False, True)
}
_SDPA_PLAIN = _SDPA_CALLS[False, False]


# torch.is_grad_enabled, once torch is imported (by the caller: fastattn never imports it).
_grad_mode = None


def _find_grad_mode():
    global _grad_mode
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "is_grad_enabled"):
        _grad_mode = torch.is_grad_enabled
    return _grad_mode


def _requires_grad(objs):
    """Whether any of ``objs`` is a torch tensor that requires grad."""
    torch = sys.modules.get("torch")
    return any(isinstance(t, torch.Tensor) and t.requires_grad for t in objs)


def _records_grad(*objs):
    """Whether a call on ``objs`` records an autograd node: grad mode is on and one of
    them is a torch tensor that requires grad."""
    grad_mode = _grad_mode or _find_grad_mode()
    return grad_mode is not None and grad_mode() and _requires_grad(objs)


def _no_dropout(dropout_p):
    if dropout_p != 0.0:
        raise ValueError(f"dropout_p must be 0.0: fastattn has no dropout (got {dropout_p})")


def _graph(rules, options, tensors, mask, no_grad=()):
    """The call through the ``fastattn::attention`` op (differentiable): ``(first, lse)``.
    ``options`` are the ``Call`` constructor's keyword arguments; ``no_grad``: named
    operands that must not require grad."""
    from . import torch as ops

    ops.check_graph_operands(tensors, mask, no_grad)
    return ops.attention(*tensors, mask, ops.spec(rules, **options))


def scaled_dot_product_attention(
    query,
    key,
    value,
    attn_mask=None,
    dropout_p=0.0,
    is_causal=False,
    scale=None,
    enable_gqa=False,
    s_aux=None,
):
    """Scaled dot-product attention with the semantics of
    ``torch.nn.functional.scaled_dot_product_attention``, on torch tensors or numpy arrays.

    ``query`` is ``[..., Hq, Lq, E]``, ``key`` ``[..., Hk, Lk, E]``, ``value``
    ``[..., Hv, Lk, Ev]`` (2-D or more; batch dimensions broadcast); the result is
    ``[..., Hq, Lq, Ev]`` in the query's kind and dtype (float32, float16 or bfloat16; Q, K
    and V of one dtype), read and written without copies, whatever the strides.

    * ``attn_mask``: bool (True = the key may be seen) or float (added to the scores;
      float32 or the query's dtype), broadcast to ``[..., Hq, Lq, Lk]``. A row with no
      visible key gives 0.
    * ``dropout_p``: must be 0 (``ValueError`` otherwise).
    * ``is_causal``: query ``i`` sees keys ``j <= i`` (aligned to the top left, as
      torch's); not together with ``attn_mask``.
    * ``scale``: default ``1/sqrt(E)``.
    * ``enable_gqa``: ``Hq`` may be a multiple of ``Hk = Hv`` (grouped-query attention,
      without repeating K and V); without it the head counts must be equal or 1.
    * ``s_aux`` (not in torch): attention sinks, one logit per query head (gpt-oss's
      ``s_aux``), in every row's softmax denominator, contributing no value.

    Differentiable on torch tensors that require grad (the library's backward pass, through
    the ``fastattn::attention`` op): the gradients come back in the inputs' dtypes and
    shapes, summed over broadcast dimensions. The mask gets no gradient (one that requires
    grad is a ``ValueError``).
    """
    if dropout_p != 0.0:
        _no_dropout(dropout_p)
    if s_aux is not None:
        options = dict(is_causal=is_causal, scale=scale, enable_gqa=enable_gqa)
        return _with_sinks("torch", options, query, key, value, attn_mask, s_aux)
    # The per-call cost of this function is the binding's overhead on small problems:
    # grad mode is read first (no tensor records a graph without it), and the calls of
    # the plain options are built once.
    grad_mode = _grad_mode or _find_grad_mode()
    if (
        grad_mode is not None
        and grad_mode()
        and (
            getattr(query, "requires_grad", False)
            or getattr(key, "requires_grad", False)
            or getattr(value, "requires_grad", False)
            or (attn_mask is not None and getattr(attn_mask, "requires_grad", False))
        )
        and _requires_grad((query, key, value, attn_mask))
    ):
        options = dict(returns="out_lse", is_causal=is_causal, scale=scale, enable_gqa=enable_gqa)
        return _graph("torch", options, (query, key, value), attn_mask)[0]
    if scale is None and is_causal is False and enable_gqa is False:
        call = _SDPA_PLAIN
    elif scale is None and (is_causal is False or is_causal is True) and (
        enable_gqa is False or enable_gqa is True
    ):
        call = _SDPA_CALLS[is_causal, enable_gqa]
    else:
        call = _torch_call(is_causal=is_causal, scale=scale, enable_gqa=enable_gqa)
    return _forward(call, query, key, value, attn_mask)


def attention_weights(query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False):
    """The attention weights of a torch-semantics call (the arguments of
    :func:`scaled_dot_product_attention`, without dropout): ``(weights, lse)``, float32,
    with ``weights[..., h, i, j]`` the weight query ``i`` gives key ``j`` (rows sum to 1, or
    are all 0 when no key is visible) and ``lse[..., h, i]`` the log-sum-exp of row ``i``'s
    scores (``-inf`` when no key is visible). Not differentiable: on inputs that require
    grad, the results' backward raises ``NotImplementedError``.
    """
    options = dict(returns="weights_lse", is_causal=is_causal, scale=scale, enable_gqa=enable_gqa)
    if _records_grad(query, key, value, attn_mask):
        return _graph("torch", options, (query, key, value), attn_mask)
    return _forward(_torch_call(**options), query, key, value, attn_mask)


def flash_attn_func(
    q,
    k,
    v,
    causal=False,
    softmax_scale=None,
    window_size=(-1, -1),
    softcap=0.0,
    alibi_slopes=None,
    return_lse=False,
    kv_lengths=None,
    *,
    attn_mask=None,
    dropout_p=0.0,
    deterministic=True,
    path=None,
    variant=None,
    s_aux=None,
):
    """FlashAttention-2's ``flash_attn_func``: ``q`` ``[B, Lq, Hq, D]``, ``k``
    ``[B, Lk, Hkv, D]``, ``v`` ``[B, Lk, Hkv, Dv]`` (Hq a multiple of Hkv: GQA/MQA), result
    ``[B, Lq, Hq, Dv]`` in q's kind and dtype. Q, K and V may each be float32, float16 or
    bfloat16, with any strides.

    Queries are aligned to the bottom right of the keys (query ``i`` sits at position
    ``i + n - Lq``, with ``n`` the batch's valid key count), as in FlashAttention-2 and the
    Rust library.

    * ``causal``: keys after the query's position are hidden.
    * ``softmax_scale``: default ``1/sqrt(D)``.
    * ``window_size=(left, right)``: keys at most ``left`` before / ``right`` after the
      query's position (-1: unbounded).
    * ``softcap``: ``cap * tanh(s / cap)`` on the scores (0: off).
    * ``alibi_slopes``: ``(Hq,)`` or ``(B, Hq)``; subtracts ``slope * |pos - j|``.
    * ``return_lse``: also return the log-sum-exp ``[B, Hq, Lq]`` (float32):
      ``(out, lse)``. The LSE is not differentiable (no gradient flows back through it).
    * ``kv_lengths``: ``B`` valid key counts (keys past them are padding).
    * ``attn_mask`` (keyword): a bool or additive mask broadcast to ``[B, Hq, Lq, Lk]``
      (not in FlashAttention-2; the library has it).
    * ``dropout_p``, ``deterministic`` (keywords, for FlashAttention-2 callers): dropout
      must be 0; every call is deterministic (bit-identical at any thread count).
    * ``path`` (keyword): ``"auto"``, ``"flash"`` or ``"materialized"`` (both give the same
      results within rounding; for profiling).
    * ``variant`` (keyword): force a kernel variant (``"scalar"``, ``"portable"``,
      ``"avx2"``, ``"avx512"``); one this CPU lacks is a ``ValueError``.
    * ``s_aux`` (keyword): attention sinks, one logit per query head (gpt-oss), in every
      row's softmax denominator, contributing no value; differentiable.

    Differentiable on torch tensors that require grad, with every option: the gradients of
    q, k and v come back in their dtypes (dK and dV summed over each group of query heads).
    The mask and the ALiBi slopes get no gradient (a tensor of them that requires grad is a
    ``ValueError``).
    """
    _no_dropout(dropout_p)
    # Results never depend on the thread count: every call is deterministic.
    del deterministic
    options = dict(
        returns="out_lse" if return_lse else "out",
        causal=causal,
        softmax_scale=softmax_scale,
        window_size=window_size,
        softcap=softcap,
        alibi_slopes=alibi_slopes,
        kv_lengths=kv_lengths,
        path=path,
        variant=variant,
    )
    if s_aux is not None:
        del options["returns"]
        out = _with_sinks("flash", options, q, k, v, attn_mask, s_aux, return_lse)
        return out
    if _records_grad(q, k, v, attn_mask, alibi_slopes):
        options["returns"] = "out_lse"
        out, lse = _graph(
            "flash", options, (q, k, v), attn_mask, no_grad=(("alibi_slopes", alibi_slopes),)
        )
        return (out, lse) if return_lse else out
    return _forward(_flash_call(**options), q, k, v, attn_mask)


def _with_sinks(rules, options, q, k, v, mask, s_aux, return_lse=False):
    """A dense call with sinks: differentiable through :func:`fastattn.torch.sink_attention`
    when it records a graph, else one forward. ``options``: ``Call.<rules>``'s keyword
    arguments without ``returns``."""
    if _records_grad(q, k, v, mask, s_aux, options.get("alibi_slopes")):
        from . import torch as ops

        if options.get("alibi_slopes") is not None:
            ops.check_graph_operands((q, k, v), mask, (("alibi_slopes", options["alibi_slopes"]),))
        out, lse = ops.sink_attention(q, k, v, mask, s_aux, rules, options)
        return (out, lse) if return_lse else out
    from ._serving import _sinks

    call = getattr(Call, rules)(returns="out_lse" if return_lse else "out", sinks=_sinks(s_aux), **options)
    return _forward(call, q, k, v, mask)


def sdpa_ext(
    query,
    key,
    value,
    attn_mask=None,
    is_causal=False,
    scale=None,
    enable_gqa=False,
    softcap=None,
    blhd=False,
    s_aux=None,
    mixed_kv=False,
):
    """Torch-semantics attention with the extras the transformers integration needs:
    ``softcap``, any float mask dtype, (``blhd``) the output laid out ``[B, Lq, H, Ev]``,
    and sinks (``s_aux``). Differentiable as :func:`scaled_dot_product_attention`.
    ``mixed_kv``: key and value may have another float dtype than the query (one dtype for
    both; a ``FastattnCache`` storing bf16 under an f32 model), without gradients."""
    options = dict(
        is_causal=is_causal,
        scale=scale,
        enable_gqa=enable_gqa,
        softcap=softcap,
        blhd=blhd,
        strict_mask=False,
    )
    if mixed_kv and key.dtype != query.dtype:
        if _records_grad(query, key, value, attn_mask):
            raise ValueError("key/value of another dtype than the query: no gradients")
        options["mixed_kv"] = True
    if s_aux is not None:
        return _with_sinks("torch", options, query, key, value, attn_mask, s_aux)
    if _records_grad(query, key, value, attn_mask):
        return _graph("torch", dict(options, returns="out_lse"), (query, key, value), attn_mask)[0]
    return _forward(_torch_call(**options), query, key, value, attn_mask)


def set_num_threads(n):
    """Sets the number of threads of calls on numpy arrays (``n >= 1``; calls on torch
    tensors follow ``torch.get_num_threads()``)."""
    _fastattn.set_num_threads(n)


def get_num_threads():
    """The number of threads of calls on numpy arrays (:func:`set_num_threads`'s value,
    else one per CPU)."""
    return _fastattn.get_num_threads()


def set_blocktime(ms):
    """Sets how long fastattn's idle helper threads keep looking for work after a call,
    yielding their CPU to any other runnable thread (torch's, OpenBLAS's), before they
    sleep: milliseconds, like OpenMP's ``KMP_BLOCKTIME`` (a negative value or ``inf``:
    never sleep). A call that comes later than that wakes them and does not wait for them.
    The default is ``FASTATTN_BLOCKTIME`` (ms) if set, else 20 ms."""
    _fastattn.set_blocktime(ms)


def get_blocktime():
    """The helper threads' blocktime in milliseconds (``inf``: they never sleep)."""
    return _fastattn.get_blocktime()


def kernel_variant():
    """The name of the kernel variant in use (``avx2``, ``avx512``, ``neon``, ...)."""
    return _fastattn.kernel_variant()
