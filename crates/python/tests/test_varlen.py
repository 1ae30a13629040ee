"""fastattn.flash_attn_varlen_func, flash_attn_with_kvcache and paged_kv_write against
attention run once per sequence (torch SDPA, and an f64 reference for the options SDPA
lacks: soft-cap, ALiBi, sinks, windows)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fastattn
from conftest import assert_close


def ref_seq(q, k, v, scale=None, causal=False, window=(-1, -1), softcap=0.0, alibi=None, sinks=None):
    """One sequence in float64: q [lq, Hq, D], k [lk, Hkv, D], v [lk, Hkv, Dv]; bottom-right
    aligned. Returns (out [lq, Hq, Dv], lse [Hq, lq])."""
    q, k, v = q.double(), k.double(), v.double()
    lq, hq, d = q.shape
    lk, hkv = k.shape[0], k.shape[1]
    g = hq // hkv
    k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
    scale = d**-0.5 if scale is None else scale
    s = torch.einsum("qhd,khd->hqk", q, k) * scale
    if softcap:
        s = softcap * torch.tanh(s / softcap)
    rel = torch.arange(lk)[None, :] - (torch.arange(lq) + lk - lq)[:, None]
    if alibi is not None:
        s = s - torch.as_tensor(alibi).double()[:, None, None] * rel.abs()
    vis = torch.ones(lq, lk, dtype=torch.bool)
    if causal:
        vis &= rel <= 0
    if window[0] >= 0:
        vis &= rel >= -window[0]
    if window[1] >= 0:
        vis &= rel <= window[1]
    s = s.masked_fill(~vis, float("-inf"))
    if sinks is not None:
        s = torch.cat([s, torch.as_tensor(sinks).double()[:, None, None].expand(hq, lq, 1)], -1)
    lse = torch.logsumexp(s, -1)
    p = torch.nan_to_num(torch.exp(s - lse[..., None]), nan=0.0)
    if sinks is not None:
        p = p[..., :-1]
    return torch.einsum("hqk,khd->qhd", p, v), lse


def random_cu(rs, b, lo, hi):
    lens = rs.integers(lo, hi, b)
    return np.concatenate([[0], np.cumsum(lens)]).astype(np.int32), lens


def ref_varlen(q, k, v, cu_q, cu_k, **kw):
    outs, lses = [], []
    for i in range(len(cu_q) - 1):
        qs, qe, ks, ke = cu_q[i], cu_q[i + 1], cu_k[i], cu_k[i + 1]
        o, l = ref_seq(q[qs:qe], k[ks:ke], v[ks:ke], **kw)
        outs.append(o)
        lses.append(l)
    return torch.cat(outs), torch.cat(lses, dim=1)


def test_packed_matches_torch_sdpa_per_sequence():
    seed = 30
    gen = torch.Generator().manual_seed(seed)
    rs = np.random.default_rng(seed)
    for trial in range(12):
        b, hkv, g = int(rs.integers(1, 6)), int(rs.integers(1, 3)), int(rs.integers(1, 4))
        hq, d = hkv * g, int(rs.choice([8, 16, 33]))
        cu_q, lq = random_cu(rs, b, 0, 9)  # empty sequences included
        cu_k, lk = random_cu(rs, b, 0, 13)
        causal = bool(trial % 2)
        q = torch.randn(int(cu_q[-1]), hq, d, generator=gen)
        k = torch.randn(int(cu_k[-1]), hkv, d, generator=gen)
        v = torch.randn(int(cu_k[-1]), hkv, d, generator=gen)
        got = fastattn.flash_attn_varlen_func(
            q, k, v, torch.from_numpy(cu_q), torch.from_numpy(cu_k), int(lq.max()), int(lk.max()), causal=causal
        )
        case = f"seed {seed} trial {trial} lq {lq.tolist()} lk {lk.tolist()} causal {causal}"
        assert got.shape == q.shape and got.dtype == torch.float32, case
        for i in range(b):
            qs, qe, ks, ke = cu_q[i], cu_q[i + 1], cu_k[i], cu_k[i + 1]
            if qe == qs:
                continue
            qi, ki, vi = (x.transpose(0, 1)[None] for x in (q[qs:qe], k[ks:ke], v[ks:ke]))
            rel = torch.arange(ke - ks)[None, :] - (torch.arange(qe - qs) + (ke - ks) - (qe - qs))[:, None]
            mask = rel <= 0 if causal else torch.ones_like(rel, dtype=torch.bool)
            want = F.scaled_dot_product_attention(qi, ki, vi, attn_mask=mask, enable_gqa=g > 1)
            want = torch.nan_to_num(want, nan=0.0)[0].transpose(0, 1)
            assert_close(got[qs:qe], want, atol=2e-5, case=f"{case} seq {i}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_options_and_lse_match_reference(dtype):
    seed = 31
    gen = torch.Generator().manual_seed(seed)
    rs = np.random.default_rng(seed)
    hkv, g, d, dv = 2, 2, 16, 12
    hq = hkv * g
    for trial, kw in enumerate([
        dict(causal=True),
        dict(causal=True, window_size=(3, -1)),
        dict(window_size=(2, 1), softcap=5.0, softmax_scale=0.3),
        dict(causal=True, alibi_slopes=[0.5, 0.25, 0.125, 0.0625]),
        dict(causal=True, s_aux=torch.tensor([0.5, -1.0, 2.0, 0.0])),
        dict(s_aux=np.array([1.0, 0.0, -0.5, 3.0], dtype=np.float32), softcap=3.0),
    ]):
        cu_q, _ = random_cu(rs, 5, 0, 7)
        cu_k, _ = random_cu(rs, 5, 0, 11)
        q = torch.randn(int(cu_q[-1]), hq, d, generator=gen).to(dtype)
        k = torch.randn(int(cu_k[-1]), hkv, d, generator=gen).to(dtype)
        v = torch.randn(int(cu_k[-1]), hkv, dv, generator=gen).to(dtype)
        out, lse, none = fastattn.flash_attn_varlen_func(
            q, k, v, cu_q, cu_k, 7, 11, return_attn_probs=True, **kw
        )
        assert none is None and out.dtype == dtype and lse.dtype == torch.float32
        rkw = dict(
            scale=kw.get("softmax_scale"), causal=kw.get("causal", False),
            window=kw.get("window_size", (-1, -1)), softcap=kw.get("softcap", 0.0),
            alibi=kw.get("alibi_slopes"), sinks=kw.get("s_aux"),
        )
        want, want_lse = ref_varlen(q, k, v, cu_q, cu_k, **rkw)
        case = f"seed {seed} trial {trial} {sorted(kw)} {dtype}"
        atol = 2e-5 if dtype == torch.float32 else 1.5e-2
        assert_close(out, want, atol=atol, case=case)
        seen = torch.isfinite(want_lse)
        assert_close(lse[seen], want_lse[seen], atol=1e-4, case=case + " lse")


def paged_cache(k, cu_k, block_size, rs, pad=2, dtype=None):
    """K rows [Tk, Hkv, D] of each sequence spread over shuffled pages of a paged cache
    [num_blocks, block_size, Hkv, D]; a block table padded with -1; seqused_k."""
    b = len(cu_k) - 1
    lens = np.diff(cu_k)
    pages = [int(-(-n // block_size)) for n in lens]
    total = sum(pages) + 3  # spare pages, never referenced
    order = rs.permutation(total)
    width = max(pages) + pad
    table = np.full((b, width), -1, dtype=np.int32)
    cache = torch.full((total, block_size, *k.shape[1:]), float("nan"), dtype=dtype or k.dtype)
    nxt = 0
    for i in range(b):
        for p in range(pages[i]):
            blk = int(order[nxt])
            nxt += 1
            table[i, p] = blk
            rows = k[cu_k[i] + p * block_size : min(cu_k[i] + (p + 1) * block_size, cu_k[i + 1])]
            cache[blk, : rows.shape[0]] = rows.to(cache.dtype)
    return cache, table, lens.astype(np.int32)


@pytest.mark.parametrize("block_size", [1, 7, 16])
def test_paged_matches_packed(block_size):
    seed = 32 + block_size
    gen = torch.Generator().manual_seed(seed)
    rs = np.random.default_rng(seed)
    hkv, g, d = 2, 4, 16
    for trial in range(3):
        cu_q, lq = random_cu(rs, 6, 0, 5)
        # Mixed decode (1 query) and prefill; keys >= queries, some sequences empty.
        lk = np.where(lq > 0, lq + rs.integers(0, 40, 6), rs.integers(0, 3, 6))
        cu_k = np.concatenate([[0], np.cumsum(lk)]).astype(np.int32)
        q = torch.randn(int(cu_q[-1]), hkv * g, d, generator=gen)
        k = torch.randn(int(cu_k[-1]), hkv, d, generator=gen)
        v = torch.randn(int(cu_k[-1]), hkv, d, generator=gen)
        sinks = torch.randn(hkv * g, generator=gen) if trial == 2 else None
        for cache_dtype in (torch.float32, torch.bfloat16):
            kc, table, used = paged_cache(k, cu_k, block_size, np.random.default_rng(seed + trial), dtype=cache_dtype)
            vc, _, _ = paged_cache(v, cu_k, block_size, np.random.default_rng(seed + trial), dtype=cache_dtype)
            got = fastattn.flash_attn_varlen_func(
                q, kc, vc, cu_q, None, 4, int(lk.max()), causal=True, block_table=table,
                seqused_k=used, s_aux=sinks,
            )
            kr, vr = k.to(cache_dtype), v.to(cache_dtype)
            want, _ = ref_varlen(q, kr, vr, cu_q, cu_k, causal=True, sinks=sinks)
            case = f"seed {seed} trial {trial} block {block_size} cache {cache_dtype} lq {lq.tolist()} lk {lk.tolist()}"
            assert_close(got, want, atol=3e-5, case=case)
            # Key counts from cu_seqlens_k's differences instead of seqused_k.
            got2 = fastattn.flash_attn_varlen_func(
                q, kc, vc, cu_q, cu_k, 4, int(lk.max()), causal=True, block_table=torch.from_numpy(table), s_aux=sinks,
            )
            assert torch.equal(got, got2), case


def test_numpy_in_numpy_out():
    rs = np.random.default_rng(33)
    cu_q = np.array([0, 3, 3, 8], dtype=np.int64)
    cu_k = np.array([0, 5, 6, 14], dtype=np.int64)
    q = rs.standard_normal((8, 4, 16), dtype=np.float32)
    k = rs.standard_normal((14, 2, 16), dtype=np.float32)
    v = rs.standard_normal((14, 2, 8), dtype=np.float32)
    out = fastattn.flash_attn_varlen_func(q, k, v, cu_q, cu_k, 5, 8, causal=True)
    assert isinstance(out, np.ndarray) and out.shape == (8, 4, 8) and out.dtype == np.float32
    want, _ = ref_varlen(*(torch.from_numpy(x) for x in (q, k, v)), cu_q, cu_k, causal=True)
    assert_close(out, want, atol=2e-5, case="numpy seed 33")


def test_kvcache_on_numpy():
    rs = np.random.default_rng(38)
    q = rs.standard_normal((2, 1, 4, 8), dtype=np.float32)
    kc = rs.standard_normal((2, 5, 2, 8), dtype=np.float32)
    vc = rs.standard_normal((2, 5, 2, 8), dtype=np.float32)
    kn = rs.standard_normal((2, 1, 2, 8), dtype=np.float32)
    vn = rs.standard_normal((2, 1, 2, 8), dtype=np.float32)
    before = kc.copy(), vc.copy()
    out = fastattn.flash_attn_with_kvcache(q, kc, vc, kn, vn, cache_seqlens=np.array([2, 4], np.int32))
    assert isinstance(out, np.ndarray) and out.shape == (2, 1, 4, 8)
    for i, n in enumerate([2, 4]):
        assert np.array_equal(kc[i, n], kn[i, 0]) and np.array_equal(vc[i, n], vn[i, 0])
        ki = torch.from_numpy(np.concatenate([before[0][i, :n], kn[i]]))
        vi = torch.from_numpy(np.concatenate([before[1][i, :n], vn[i]]))
        want, _ = ref_seq(torch.from_numpy(q[i]), ki, vi)
        assert_close(out[i], want, atol=2e-5, case=f"numpy kvcache seed 38 seq {i}")


def test_paged_kv_write_skips_and_converts():
    gen = torch.Generator().manual_seed(34)
    k = torch.randn(5, 2, 8, generator=gen)
    v = torch.randn(5, 2, 4, generator=gen)
    kc = torch.zeros(4, 3, 2, 8, dtype=torch.bfloat16)
    vc = torch.zeros(4, 3, 2, 4, dtype=torch.bfloat16)
    slots = [11, -1, 0, 4, 7]
    fastattn.paged_kv_write(k, v, kc, vc, torch.tensor(slots))
    flat_k, flat_v = kc.view(12, 2, 8), vc.view(12, 2, 4)
    for t, s in enumerate(slots):
        if s >= 0:
            assert torch.equal(flat_k[s], k[t].bfloat16()) and torch.equal(flat_v[s], v[t].bfloat16())
    untouched = [s for s in range(12) if s not in slots]
    assert (flat_k[untouched] == 0).all() and (flat_v[untouched] == 0).all()


@pytest.mark.parametrize("paged", [False, True])
def test_kvcache_appends_then_attends(paged):
    seed = 35
    gen = torch.Generator().manual_seed(seed)
    rs = np.random.default_rng(seed)
    b, lnew, hq, hkv, d, lcache = 3, 2, 4, 2, 16, 24
    cached = np.array([5, 0, 17], dtype=np.int32)
    history_k = torch.randn(b, lcache, hkv, d, generator=gen)
    history_v = torch.randn(b, lcache, hkv, d, generator=gen)
    q = torch.randn(b, lnew, hq, d, generator=gen)
    k_new = torch.randn(b, lnew, hkv, d, generator=gen)
    v_new = torch.randn(b, lnew, hkv, d, generator=gen)
    sinks = torch.tensor([0.1, 0.2, -0.3, 1.0])
    if paged:
        bs = 4
        order = rs.permutation(b * lcache // bs + 2)
        table = np.full((b, lcache // bs + 1), -1, dtype=np.int32)
        table[:, : lcache // bs] = order[: b * lcache // bs].reshape(b, -1)
        kc = torch.zeros(len(order), bs, hkv, d)
        vc = torch.zeros(len(order), bs, hkv, d)
        for i in range(b):
            for p in range(lcache // bs):
                kc[table[i, p]] = history_k[i, p * bs : (p + 1) * bs]
                vc[table[i, p]] = history_v[i, p * bs : (p + 1) * bs]
    else:
        table = None
        kc, vc = history_k.clone(), history_v.clone()
    out, lse = fastattn.flash_attn_with_kvcache(
        q, kc, vc, k_new, v_new, cache_seqlens=torch.from_numpy(cached), block_table=table,
        causal=True, return_softmax_lse=True, s_aux=sinks,
    )
    assert out.shape == (b, lnew, hq, d) and lse.shape == (b, hq, lnew)
    for i in range(b):
        n = int(cached[i])
        ki = torch.cat([history_k[i, :n], k_new[i]])
        vi = torch.cat([history_v[i, :n], v_new[i]])
        want, want_lse = ref_seq(q[i], ki, vi, causal=True, sinks=sinks)
        case = f"seed {seed} paged {paged} seq {i}"
        assert_close(out[i], want, atol=2e-5, case=case)
        assert_close(lse[i], want_lse, atol=1e-4, case=case + " lse")
        # The new rows are in the cache, where they belong.
        for t in range(lnew):
            pos = n + t
            if paged:
                row = kc[table[i, pos // 4], pos % 4]
            else:
                row = kc[i, pos]
            assert torch.equal(row, k_new[i, t]), case


def test_varlen_grads_match_reference_with_sinks():
    seed = 36
    gen = torch.Generator().manual_seed(seed)
    cu_q = np.array([0, 3, 3, 7, 8], dtype=np.int32)
    cu_k = np.array([0, 5, 6, 10, 10], dtype=np.int32)  # the last sequence sees no key
    hq, hkv, d = 4, 2, 8
    leaves = [
        torch.randn(8, hq, d, generator=gen),
        torch.randn(10, hkv, d, generator=gen),
        torch.randn(10, hkv, d, generator=gen),
        torch.randn(hq, generator=gen),
    ]
    for x in leaves:
        x.requires_grad_(True)
    q, k, v, s = leaves
    grad = torch.randn(8, hq, d, generator=gen)
    out = fastattn.flash_attn_varlen_func(q, k, v, cu_q, cu_k, 4, 5, causal=True, softcap=4.0, s_aux=s)
    out.backward(grad)
    ours = [x.grad.clone() for x in leaves]
    for x in leaves:
        x.grad = None
    want, _ = ref_varlen(q, k, v, cu_q, cu_k, causal=True, softcap=4.0, sinks=s)
    want.backward(grad.double())
    for name, a, w in zip("qkvs", ours, leaves):
        assert_close(a, w.grad, atol=1e-4, case=f"seed {seed} d{name}")


@pytest.mark.parametrize("api", ["sdpa", "flash"])
def test_dense_sinks_forward_and_grads(api):
    seed = 37
    gen = torch.Generator().manual_seed(seed)
    b, hq, hkv, lq, lk, d = 2, 4, 2, 5, 9, 8
    leaves = [
        torch.randn(b, hq, lq, d, generator=gen),
        torch.randn(b, hkv, lk, d, generator=gen),
        torch.randn(b, hkv, lk, d, generator=gen),
        torch.randn(hq, generator=gen),
    ]
    for x in leaves:
        x.requires_grad_(True)
    q, k, v, s = leaves
    if api == "sdpa":
        out = fastattn.scaled_dot_product_attention(q, k, v, enable_gqa=True, s_aux=s)
    else:
        out = fastattn.flash_attn_func(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=True, s_aux=s
        ).transpose(1, 2)
    with torch.no_grad():
        plain = fastattn.scaled_dot_product_attention(q, k, v, enable_gqa=True, s_aux=s.detach())
    grad = torch.randn(out.shape, generator=gen)
    out.backward(grad)
    ours = [x.grad.clone() for x in leaves]
    for x in leaves:
        x.grad = None
    wants = []
    for i in range(b):
        w, _ = ref_seq(q[i].transpose(0, 1), k[i].transpose(0, 1), v[i].transpose(0, 1),
                       causal=api == "flash", sinks=s)
        wants.append(w.transpose(0, 1))
    want = torch.stack(wants)
    assert_close(out.detach(), want.detach(), atol=2e-5, case=f"{api} forward")
    if api == "sdpa":
        assert_close(plain, want.detach(), atol=2e-5, case="sdpa no-grad forward")
    want.backward(grad.double())
    for name, a, w in zip("qkvs", ours, leaves):
        assert_close(a, w.grad, atol=1e-4, case=f"{api} seed {seed} d{name}")
