"""Serving attention: FlashAttention-2's variable-length and KV-cache APIs, and paged KV
cache writes, over the extension's ``varlen_forward`` and ``paged_kv_write``.

* :func:`flash_attn_varlen_func`: packed sequences (``cu_seqlens``), K/V packed or read
  in place from a paged cache through a block table; differentiable on packed K/V
  (sinks included).
* :func:`flash_attn_with_kvcache`: appends new K/V to a dense or paged cache in place,
  then attends, as FlashAttention-2's does.
* :func:`paged_kv_write`: vLLM's ``reshape_and_cache``: new rows scattered to cache slots.

Index arrays (``cu_seqlens``, ``seqused_k``, ``block_table``, ``slot_mapping``) may be
torch tensors, numpy arrays or lists of int32 or int64; they are read in place when they
are contiguous numpy or CPU torch arrays. torch is never imported here.
"""

import sys

import numpy as np

from . import _fastattn
from ._fastattn import Call
from ._functions import _no_dropout, _records_grad

__all__ = ["flash_attn_varlen_func", "flash_attn_with_kvcache", "paged_kv_write"]


def _is_torch(x):
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _idx(x, name, ndim=1):
    """An index array as a contiguous int32/int64 numpy array (``None`` stays ``None``)."""
    if x is None:
        return None
    if _is_torch(x):
        if x.device.type != "cpu":
            raise ValueError(f"{name} is on {x.device}; fastattn runs on the CPU")
        x = x.detach().numpy()
    elif not isinstance(x, np.ndarray):
        x = np.asarray(x)
        if x.dtype.kind in "iu" and x.dtype != np.int32:
            x = x.astype(np.int64)
        elif x.size == 0:
            x = x.astype(np.int64)
    if x.dtype not in (np.int32, np.int64):
        raise ValueError(f"{name} must hold int32 or int64 values, got {x.dtype}")
    if x.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(x.shape)}")
    return np.ascontiguousarray(x)


_NP_FORMATS = {"int8": "int8"}
_TORCH_FORMATS = ("int8", "float8_e4m3fn", "float8_e5m2")


def _kv_format(x):
    """The 8-bit format of a cache (``"int8"``, ``"float8_e4m3fn"``, ``"float8_e5m2"``), or
    ``None`` for a float one."""
    if _is_torch(x):
        torch = sys.modules["torch"]
        for name in _TORCH_FORMATS:
            dt = getattr(torch, name, None)
            if dt is not None and x.dtype == dt:
                return name
        return None
    if isinstance(x, np.ndarray) and x.dtype == np.int8:
        return "int8"
    return None


def _codes(x, name):
    """An 8-bit cache as a uint8 numpy array over the same memory (no copy)."""
    if _is_torch(x):
        torch = sys.modules["torch"]
        if x.device.type != "cpu":
            raise ValueError(f"{name} is on {x.device}; fastattn runs on the CPU")
        return x.detach().view(torch.uint8).numpy()
    return x.view(np.uint8)


def _pair_format(k, v, what):
    """The shared 8-bit format of K and V (``None`` when both are float)."""
    fk, fv = _kv_format(k), _kv_format(v)
    if fk != fv:
        raise TypeError(
            f"{what}: K and V must both be float or share an 8-bit dtype, got "
            f"{getattr(k, 'dtype', type(k))} and {getattr(v, 'dtype', type(v))}"
        )
    return fk


def _scale_array(s, name):
    """A scale as a float32 numpy array over the caller's memory where possible."""
    if isinstance(s, (float, int)) and not isinstance(s, bool):
        return np.array([s], dtype=np.float32)
    if _is_torch(s):
        torch = sys.modules["torch"]
        if s.dtype != torch.float32:
            raise TypeError(f"{name} must be float32, got {s.dtype}")
        if s.device.type != "cpu":
            raise ValueError(f"{name} is on {s.device}; fastattn runs on the CPU")
        return s.detach().numpy()
    if isinstance(s, np.ndarray):
        if s.dtype != np.float32:
            raise TypeError(f"{name} must be float32, got {s.dtype}")
        return s
    raise TypeError(f"{name} must be a float, a float32 torch tensor or numpy array")


def _read_scale(s, fmt, cache_shape, name, paged):
    """``(scales, strides)`` for ``varlen_forward``: the scales of an 8-bit cache as a
    contiguous 1-D float32 array and the strides that map the library's rows to them.
    Layouts: one per row (the cache's shape without D), one per KV head ``[Hkv]``, or one
    for all (a float, a 0-d or 1-element array)."""
    if fmt is None:
        if s is not None:
            raise ValueError(f"{name} is for 8-bit caches; this cache is float")
        return None
    if s is None:
        raise ValueError(f"an 8-bit ({fmt}) cache needs {name}")
    a = _scale_array(s, name)
    rows, hkv = tuple(cache_shape[:-1]), cache_shape[-2]
    if a.shape == rows:
        a = np.ascontiguousarray(a)
        if paged:  # [num_blocks, block_size, Hkv] for rows [num_blocks, block_size, Hkv]
            strides = (rows[1] * rows[2], rows[2], 1)
        else:  # [T, Hkv] for rows [1, Hkv, T]
            strides = (0, 1, rows[1])
    elif a.size == 1 and a.ndim <= 1:
        strides = (0, 0, 0)
    elif a.shape == (hkv,):
        strides = (0, 0, 1) if paged else (0, 1, 0)
    else:
        raise ValueError(
            f"{name} must be one per row {list(rows)}, one per KV head [{hkv}] or a scalar, "
            f"got shape {list(a.shape)}"
        )
    return np.ascontiguousarray(a, dtype=np.float32).reshape(-1), strides


def _write_scale(s, fmt, cache_shape, name):
    """The scales ``paged_kv_write`` takes for an 8-bit cache, and whether they are written
    per row: ``(array, per_row)``. One per slot and head, the caller's writable contiguous
    float32 ``[num_blocks, block_size, Hkv]``, filled in place with each written row's scale
    (int8 always; fp8 when given in this shape); for fp8 also a scalar or ``[Hkv]``, read."""
    if s is None:
        raise ValueError(f"an 8-bit ({fmt}) cache needs {name}")
    a = _scale_array(s, name)
    rows, hkv = tuple(cache_shape[:-1]), cache_shape[-2]
    if a.shape == rows:
        if not a.flags.c_contiguous or not a.flags.writeable:
            raise ValueError(f"{name} must be contiguous and writable: it is written in place")
        return a.reshape(-1), True
    if fmt == "int8":
        raise ValueError(
            f"{name} of an int8 cache must be a float32 tensor {list(rows)} (one scale per "
            f"slot and head, written), got {list(a.shape)}"
        )
    if not ((a.size == 1 and a.ndim <= 1) or a.shape == (hkv,)):
        raise ValueError(
            f"{name} of an fp8 cache must be {list(rows)} (one per slot and head, written), "
            f"a scalar or [{hkv}] (one per KV head), got shape {list(a.shape)}"
        )
    return np.ascontiguousarray(a.reshape(-1)), False


def _write_scales(k_scale, v_scale, fmt, k_shape, v_shape):
    """:func:`_write_scale` of both caches: ``(k array, v array, per_row)``; the two must
    both be per row or both given."""
    ks, per_row = _write_scale(k_scale, fmt, k_shape, "k_scale")
    vs, v_per_row = _write_scale(v_scale, fmt, v_shape, "v_scale")
    if per_row != v_per_row:
        raise ValueError("k_scale and v_scale must both be per row, or both given per head/tensor")
    return ks, vs, per_row


def _sinks(s_aux):
    """``s_aux`` as a list of floats (``None`` stays ``None``)."""
    if s_aux is None:
        return None
    if _is_torch(s_aux):
        s_aux = s_aux.detach().float().cpu().numpy()
    s = np.asarray(s_aux, dtype=np.float32)
    if s.ndim != 1:
        raise ValueError(f"s_aux must be 1-D (one logit per query head), got shape {s.shape}")
    return s.tolist()


def _flash_options(causal, softmax_scale, window_size, softcap, alibi_slopes):
    return dict(
        causal=causal,
        softmax_scale=softmax_scale,
        window_size=window_size,
        softcap=softcap,
        alibi_slopes=alibi_slopes,
    )


def flash_attn_varlen_func(
    q,
    k,
    v,
    cu_seqlens_q,
    cu_seqlens_k,
    max_seqlen_q=None,
    max_seqlen_k=None,
    dropout_p=0.0,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),
    softcap=0.0,
    alibi_slopes=None,
    deterministic=False,
    return_attn_probs=False,
    block_table=None,
    seqused_k=None,
    s_aux=None,
    k_scale=None,
    v_scale=None,
):
    """FlashAttention-2's ``flash_attn_varlen_func``: attention over a batch of sequences
    of different lengths, packed without padding.

    * ``q``: ``[Tq, Hq, D]``, sequence ``i`` in rows ``cu_seqlens_q[i]:cu_seqlens_q[i+1]``
      (``cu_seqlens_q``: ``B + 1`` non-decreasing offsets from 0 to ``Tq``; a sequence may
      be empty).
    * ``k``, ``v``: packed ``[Tk, Hkv, D]`` / ``[Tk, Hkv, Dv]`` with ``cu_seqlens_k``; or,
      with ``block_table`` (``[B, max_blocks]`` int32 page indices; entries past a
      sequence's last page are ignored and may be -1), the paged caches
      ``[num_blocks, block_size, Hkv, D]``, read in place. ``seqused_k`` (``[B]``) gives
      each sequence's key count (else ``cu_seqlens_k``'s differences).
    * Each sequence is its own problem: ``causal`` is aligned to the bottom right (a chunk
      of new queries sees its cached prefix and itself), ``window_size``, ``softcap``,
      ``alibi_slopes`` (``(Hq,)``) and ``softmax_scale`` as in :func:`flash_attn_func`.
    * ``s_aux``: attention sinks, one logit per query head (gpt-oss): it joins every row's
      softmax denominator and contributes no value.
    * ``max_seqlen_q``, ``max_seqlen_k``, ``deterministic``: accepted for
      FlashAttention-2 callers and not needed (every call is deterministic).
    * ``return_attn_probs``: ``(out, softmax_lse, None)`` with the LSE ``[Hq, Tq]``
      float32 (FlashAttention-2's triple; no probabilities without dropout).
    * 8-bit K/V: ``k``, ``v`` (packed or paged) may be ``torch.int8``,
      ``torch.float8_e4m3fn``, ``torch.float8_e5m2`` (or numpy ``int8``), both of one
      dtype, with ``k_scale``, ``v_scale`` (float32 tensors or arrays, or floats): one per
      row (the cache's shape without D: ``[num_blocks, block_size, Hkv]`` paged,
      ``[Tk, Hkv]`` packed; int8's layout), one per KV head ``[Hkv]``, or one for all (a
      float or 1-element tensor). A value is ``code × scale``. No backward.

    Returns ``[Tq, Hq, Dv]`` in q's kind and dtype. Differentiable on torch tensors that
    require grad (q, k, v and ``s_aux``), for packed K/V; a paged cache has no backward.
    """
    _no_dropout(dropout_p)
    del max_seqlen_q, max_seqlen_k, deterministic
    options = _flash_options(causal, softmax_scale, window_size, softcap, alibi_slopes)
    cu_q = _idx(cu_seqlens_q, "cu_seqlens_q")
    cu_k = _idx(cu_seqlens_k, "cu_seqlens_k")
    used = _idx(seqused_k, "seqused_k")
    table = _idx(block_table, "block_table", ndim=2)
    fmt = _pair_format(k, v, "flash_attn_varlen_func")
    paged = table is not None
    ks = _read_scale(k_scale, fmt, tuple(k.shape), "k_scale", paged)
    vs = _read_scale(v_scale, fmt, tuple(v.shape), "v_scale", paged)
    if fmt is not None:
        if _records_grad(q, s_aux, alibi_slopes):
            raise ValueError(
                "flash_attn_varlen_func: no backward through 8-bit K/V: call it under "
                "torch.no_grad()"
            )
        call = Call.flash(
            returns="out_lse" if return_attn_probs else "out", sinks=_sinks(s_aux), **options
        )
        res = _fastattn.varlen_forward(
            call, q, _codes(k, "k"), _codes(v, "v"), cu_q, cu_k, used, table, fmt, ks, vs
        )
        return (res[0], res[1], None) if return_attn_probs else res
    if _records_grad(q, k, v, s_aux, alibi_slopes):
        if table is not None:
            raise ValueError(
                "flash_attn_varlen_func: no backward through a paged cache (block_table): "
                "call it under torch.no_grad(), or pass packed K/V to train"
            )
        if used is not None:
            raise ValueError("flash_attn_varlen_func: seqused_k has no backward; pass packed K/V")
        from .torch import varlen_attention

        out, lse = varlen_attention(q, k, v, s_aux, cu_q, cu_k, options)
        return (out, lse, None) if return_attn_probs else out
    call = Call.flash(
        returns="out_lse" if return_attn_probs else "out", sinks=_sinks(s_aux), **options
    )
    res = _fastattn.varlen_forward(call, q, k, v, cu_q, cu_k, used, table)
    return (res[0], res[1], None) if return_attn_probs else res


def paged_kv_write(k, v, k_cache, v_cache, slot_mapping, k_scale=None, v_scale=None):
    """Writes the new rows ``k`` ``[T, Hkv, D]`` and ``v`` ``[T, Hkv, Dv]`` into the paged
    caches ``k_cache`` ``[num_blocks, block_size, Hkv, D]`` and ``v_cache`` (in place,
    converted to the caches' dtype): token ``t`` goes to slot ``slot_mapping[t]`` =
    ``block * block_size + offset``; a slot of -1 is skipped (vLLM's
    ``reshape_and_cache``). Bad input is a ``ValueError`` and nothing is written; the two
    caches must not overlap in memory, nor overlap ``k`` and ``v``.

    8-bit caches (both of one dtype): ``torch.int8`` (or numpy ``int8``) takes writable
    contiguous float32 ``k_scale``, ``v_scale`` ``[num_blocks, block_size, Hkv]``, filled
    in place with each written row's scale (``amax / 127``); ``torch.float8_e4m3fn`` and
    ``torch.float8_e5m2`` take either the same per-row scales (written, ``amax / max
    code``) or the caller's, a float or 1-element tensor (per tensor) or ``[Hkv]`` (per KV
    head), and store ``value / scale`` rounded to fp8."""
    slots = _idx(slot_mapping, "slot_mapping")
    fmt = _pair_format(k_cache, v_cache, "paged_kv_write")
    if fmt is None:
        for name, s in (("k_scale", k_scale), ("v_scale", v_scale)):
            if s is not None:
                raise ValueError(f"{name} is for 8-bit caches; these caches are float")
        _fastattn.paged_kv_write(k, v, k_cache, v_cache, slots)
        return
    if _kv_format(k) is not None or _kv_format(v) is not None:
        raise TypeError("paged_kv_write: the new rows k and v must be float")
    ks, vs, per_row = _write_scales(
        k_scale, v_scale, fmt, tuple(k_cache.shape), tuple(v_cache.shape)
    )
    _fastattn.paged_kv_write(
        k, v, _codes(k_cache, "k_cache"), _codes(v_cache, "v_cache"), slots, fmt, ks, vs,
        per_row_scales=per_row,
    )


def _shape(x):
    return tuple(x.shape)


def _reshape(x, shape):
    return x.reshape(shape)


def flash_attn_with_kvcache(
    q,
    k_cache,
    v_cache,
    k=None,
    v=None,
    cache_seqlens=None,
    block_table=None,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),
    softcap=0.0,
    alibi_slopes=None,
    return_softmax_lse=False,
    s_aux=None,
    k_scale=None,
    v_scale=None,
):
    """FlashAttention-2's ``flash_attn_with_kvcache``: attention of new queries over a KV
    cache, after appending the new keys and values to it in place.

    * ``q``: ``[B, Lq, Hq, D]``.
    * ``k_cache``, ``v_cache``: dense ``[B, Lcache, Hkv, D]`` (``[.., Dv]``), or paged
      ``[num_blocks, block_size, Hkv, D]`` with ``block_table`` ``[B, max_blocks]``.
    * ``k``, ``v``: optional new rows ``[B, Lnew, Hkv, D]``, written at positions
      ``cache_seqlens[b] .. cache_seqlens[b] + Lnew`` of sequence ``b`` before attending.
    * ``cache_seqlens``: an int or ``[B]`` ints, the keys already cached (default: the
      whole dense cache). Sequence ``b`` attends to ``cache_seqlens[b] + Lnew`` keys.
    * ``causal`` (bottom-right), ``window_size``, ``softcap``, ``alibi_slopes``,
      ``softmax_scale``, ``s_aux``: as in :func:`flash_attn_varlen_func`.
    * ``return_softmax_lse``: also return the LSE ``[B, Hq, Lq]`` (float32).
    * 8-bit caches: ``torch.int8``, ``torch.float8_e4m3fn``, ``torch.float8_e5m2`` (or
      numpy ``int8``), both of one dtype, with ``k_scale``, ``v_scale`` (float32): int8,
      one per row, the cache's shape without D (``[B, Lcache, Hkv]`` dense,
      ``[num_blocks, block_size, Hkv]`` paged), written in place for the new rows (so
      writable and contiguous when ``k``, ``v`` are given); fp8, the same per-row
      scales, or a float or 1-element tensor (per tensor) or ``[Hkv]`` (per KV head). New
      rows are quantised as :func:`paged_kv_write` does.

    Returns ``[B, Lq, Hq, Dv]``. Bad input is a ``ValueError`` raised before the caches are
    written. No backward.
    """
    qs = _shape(q)
    if len(qs) != 4:
        raise ValueError(f"q must be 4-D [batch, seqlen, heads, headdim], got shape {qs}")
    b, lq, hq, d = qs
    ks, vs = _shape(k_cache), _shape(v_cache)
    if len(ks) != 4 or len(vs) != 4:
        raise ValueError(f"k_cache and v_cache must be 4-D, got shapes {ks} and {vs}")
    if ks[:3] != vs[:3]:
        raise ValueError(f"k_cache {ks} and v_cache {vs} differ in pages, slots or heads")
    if ks[3] != d:
        raise ValueError(f"k_cache has head dim {ks[3]}, q has {d}")
    hkv = ks[2]
    if hkv == 0 or hq % hkv:
        raise ValueError(f"q has {hq} heads, the cache {hkv}: Hq must be a multiple of Hkv")
    sinks = _sinks(s_aux)
    if sinks is not None and len(sinks) != hq:
        raise ValueError(f"s_aux has {len(sinks)} values, q has {hq} heads")
    if (k is None) != (v is None):
        raise ValueError("pass both k and v, or neither")
    fmt = _pair_format(k_cache, v_cache, "flash_attn_with_kvcache")
    if _kv_format(q) is not None:
        raise TypeError(f"q must be float, got {q.dtype}")
    # Checked before the write, so that bad scales write nothing.
    ksr = _read_scale(k_scale, fmt, ks, "k_scale", True)
    vsr = _read_scale(v_scale, fmt, vs, "v_scale", True)
    if fmt is not None and k is not None:
        ksw, vsw, per_row = _write_scales(k_scale, v_scale, fmt, ks, vs)
        if not per_row:  # the read scales are the write scales: check them now
            for name, a in (("k_scale", ksw), ("v_scale", vsw)):
                if not np.all(np.isfinite(a) & (a > 0)):
                    raise ValueError(f"{name} must be finite and positive")
    lnew = 0
    if k is not None:
        kn, vn = _shape(k), _shape(v)
        if len(kn) != 4 or kn[0] != b or kn[2:] != (hkv, d) or vn[:3] != kn[:3] or vn[3] != vs[3]:
            raise ValueError(
                f"k {kn} and v {vn} must be [B={b}, Lnew, Hkv={hkv}, D={d}] / [.., Dv={vs[3]}]"
            )
        lnew = kn[1]
    if block_table is None:
        nblocks, page = b, ks[1]
        if ks[0] != b:
            raise ValueError(f"dense k_cache has batch {ks[0]}, q has {b}")
        table = np.arange(b, dtype=np.int32).reshape(b, 1)
    else:
        nblocks, page = ks[0], ks[1]
        table = _idx(block_table, "block_table", ndim=2)
        if table.shape[0] != b:
            raise ValueError(f"block_table has {table.shape[0]} rows, the batch is {b}")
    capacity = table.shape[1] * page
    if cache_seqlens is None:
        if block_table is not None:
            raise ValueError("a paged cache needs cache_seqlens")
        cached = np.full(b, page - lnew, dtype=np.int64)
    elif isinstance(cache_seqlens, (int, np.integer)):
        cached = np.full(b, int(cache_seqlens), dtype=np.int64)
    else:
        cached = _idx(cache_seqlens, "cache_seqlens").astype(np.int64)
        if cached.shape[0] != b:
            raise ValueError(f"cache_seqlens has {cached.shape[0]} entries, the batch is {b}")
    if b and (cached.min() < 0 or cached.max() + lnew > capacity):
        raise ValueError(
            f"cache_seqlens {cached.tolist()} + {lnew} new rows do not fit the cache "
            f"({capacity} slots per sequence)"
        )
    # Built before the write, so that a bad option writes nothing.
    call = Call.flash(
        returns="out_lse" if return_softmax_lse else "out",
        sinks=sinks,
        **_flash_options(causal, softmax_scale, window_size, softcap, alibi_slopes),
    )
    used = cached + lnew
    if b and lnew:
        pos = cached[:, None] + np.arange(lnew)[None, :]
        pages = np.take_along_axis(table.astype(np.int64), pos // page, axis=1)
        if pages.min() < 0 or pages.max() >= nblocks:
            raise ValueError(
                f"block_table holds a page outside 0..{nblocks} where the new rows go"
            )
        slots = (pages * page + pos % page).reshape(-1)
        k_rows = _reshape(k, (b * lnew, hkv, d))
        v_rows = _reshape(v, (b * lnew, hkv, vs[3]))
        if fmt is None:
            _fastattn.paged_kv_write(k_rows, v_rows, k_cache, v_cache, slots)
        else:
            _fastattn.paged_kv_write(
                k_rows,
                v_rows,
                _codes(k_cache, "k_cache"),
                _codes(v_cache, "v_cache"),
                slots,
                fmt,
                ksw,
                vsw,
                per_row_scales=per_row,
            )
    cu_q = np.arange(b + 1, dtype=np.int64) * lq
    qr = _reshape(q, (b * lq, hq, d))
    if fmt is None:
        res = _fastattn.varlen_forward(call, qr, k_cache, v_cache, cu_q, None, used, table)
    else:
        res = _fastattn.varlen_forward(
            call,
            qr,
            _codes(k_cache, "k_cache"),
            _codes(v_cache, "v_cache"),
            cu_q,
            None,
            used,
            table,
            fmt,
            ksr,
            vsr,
        )
    if return_softmax_lse:
        out, lse = res
        # [Hq, B·Lq] → [B, Hq, Lq]
        if isinstance(lse, np.ndarray):
            lse = np.ascontiguousarray(lse.reshape(hq, b, lq).transpose(1, 0, 2))
        else:
            lse = lse.reshape(hq, b, lq).transpose(0, 1).contiguous()
        return _reshape(out, (b, lq, hq, vs[3])), lse
    return _reshape(res, (b, lq, hq, vs[3]))
