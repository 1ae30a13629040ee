"""8-bit (int8, float8_e4m3fn, float8_e5m2) K/V caches with scales in the serving
functions: ``paged_kv_write`` quantises, ``flash_attn_with_kvcache`` and
``flash_attn_varlen_func`` read the codes in place. Each result is compared with the same
call on float32 caches holding the dequantised values, and with torch's SDPA."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fastattn
from conftest import assert_close

NB, BS, HKV, HQ, D = 5, 4, 2, 4, 8

# (dtype, scale kind): per row (written), fp8 also per tensor or per KV head (given).
CASES = [
    (torch.int8, "row"),
    (torch.float8_e4m3fn, "row"),
    (torch.float8_e4m3fn, "tensor"),
    (torch.float8_e4m3fn, "head"),
    (torch.float8_e5m2, "row"),
    (torch.float8_e5m2, "tensor"),
    (torch.float8_e5m2, "head"),
]
IDS = [f"{str(d).split('.')[-1]}-{s}" for d, s in CASES]


def scales(kind, rows, seed):
    """Scales of a cache whose rows are ``rows`` (its shape without D)."""
    if kind == "row":
        return torch.zeros(rows)
    gen = torch.Generator().manual_seed(seed)
    if kind == "tensor":
        return 0.02 + 0.05 * torch.rand(1, generator=gen).item()
    return 0.02 + 0.05 * torch.rand(HKV, generator=gen)


def dequant(cache, scale):
    """The float32 values of an 8-bit cache ``[.., Hkv, D]``."""
    x = cache.float()
    if isinstance(scale, float):
        return x * scale
    if scale.shape == (HKV,):
        return x * scale[:, None]
    return x * scale[..., None]


def ref_attn(q, k, v, causal):
    """torch SDPA of one sequence: q ``[Lq, Hq, D]``, k/v ``[L, Hkv, D]``, bottom-right
    causal."""
    lq, lk = q.shape[0], k.shape[0]
    k = k.repeat_interleave(HQ // HKV, dim=1)
    v = v.repeat_interleave(HQ // HKV, dim=1)
    mask = None
    if causal:
        i = torch.arange(lq)[:, None] + (lk - lq)
        mask = torch.arange(lk)[None, :] <= i
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1).double(), k.transpose(0, 1).double(), v.transpose(0, 1).double(),
        attn_mask=mask,
    )
    return out.transpose(0, 1)


def filled(dtype, kind, seed=1):
    """Paged 8-bit caches written with ``paged_kv_write``: ``(kc, vc, ks, vs)``, with every
    slot written."""
    gen = torch.Generator().manual_seed(seed)
    t = NB * BS
    k = torch.randn(t, HKV, D, generator=gen)
    v = torch.randn(t, HKV, D, generator=gen)
    kc = torch.zeros(NB, BS, HKV, D, dtype=dtype)
    vc = torch.zeros(NB, BS, HKV, D, dtype=dtype)
    ks, vs = scales(kind, (NB, BS, HKV), seed), scales(kind, (NB, BS, HKV), seed + 1)
    slots = torch.randperm(t, generator=gen)
    fastattn.paged_kv_write(k, v, kc, vc, slots, k_scale=ks, v_scale=vs)
    # The codes hold the rows: int8 within half a step, fp8 within its rounding.
    tol = 0.5 / 127 * 3.5 if dtype == torch.int8 else 0.2
    got = dequant(kc, ks).reshape(t, HKV, D)[slots]
    assert (got - k).abs().max() <= tol * max(1.0, k.abs().max().item())
    if kind == "row":
        assert (ks > 0).all() and (vs > 0).all()
    return kc, vc, ks, vs


@pytest.mark.parametrize("dtype, kind", CASES, ids=IDS)
def test_paged_decode_and_prefill(dtype, kind):
    kc, vc, ks, vs = filled(dtype, kind)
    kf, vf = dequant(kc, ks), dequant(vc, vs)
    gen = torch.Generator().manual_seed(7)
    table = torch.tensor([[3, 0], [4, 1]], dtype=torch.int32)
    seqlens = torch.tensor([5, 7], dtype=torch.int32)
    for lq, causal in ((1, False), (3, True)):
        q = torch.randn(2, lq, HQ, D, generator=gen)
        got = fastattn.flash_attn_with_kvcache(
            q, kc, vc, cache_seqlens=seqlens, block_table=table, causal=causal,
            k_scale=ks, v_scale=vs,
        )
        want = fastattn.flash_attn_with_kvcache(
            q, kf, vf, cache_seqlens=seqlens, block_table=table, causal=causal
        )
        assert_close(got, want, 1e-5, case=f"kvcache lq={lq}")
        for b in range(2):
            slots = (table[b].long()[:, None] * BS + torch.arange(BS)).reshape(-1)[: seqlens[b]]
            kb = kf.reshape(-1, HKV, D)[slots]
            vb = vf.reshape(-1, HKV, D)[slots]
            assert_close(got[b], ref_attn(q[b], kb, vb, causal), 1e-4, case=f"sdpa b={b}")
        # The same through flash_attn_varlen_func on the paged caches.
        cu_q = torch.arange(3, dtype=torch.int32) * lq
        qp = q.reshape(2 * lq, HQ, D)
        got_v, lse = fastattn.flash_attn_varlen_func(
            qp, kc, vc, cu_q, None, lq, 8, causal=causal, block_table=table,
            seqused_k=seqlens, k_scale=ks, v_scale=vs, return_attn_probs=True,
        )[:2]
        want_v, lse_f = fastattn.flash_attn_varlen_func(
            qp, kf, vf, cu_q, None, lq, 8, causal=causal, block_table=table,
            seqused_k=seqlens, return_attn_probs=True,
        )[:2]
        assert_close(got_v, want_v, 1e-5, case=f"varlen paged lq={lq}")
        assert_close(lse, lse_f, 1e-5, case=f"varlen lse lq={lq}")


@pytest.mark.parametrize("dtype, kind", CASES, ids=IDS)
def test_kvcache_append(dtype, kind):
    """New rows appended to an 8-bit cache are quantised as paged_kv_write does."""
    kc, vc, ks, vs = filled(dtype, kind, seed=3)
    gen = torch.Generator().manual_seed(9)
    table = torch.tensor([[2, 4], [0, 1]], dtype=torch.int32)
    seqlens = torch.tensor([3, 4], dtype=torch.int32)
    q = torch.randn(2, 2, HQ, D, generator=gen)
    kn = torch.randn(2, 2, HKV, D, generator=gen)
    vn = torch.randn(2, 2, HKV, D, generator=gen)
    got = fastattn.flash_attn_with_kvcache(
        q, kc, vc, kn, vn, cache_seqlens=seqlens, block_table=table, causal=True,
        k_scale=ks, v_scale=vs,
    )
    # The cache now holds the new rows (quantised).
    kc2, vc2 = kc.clone(), vc.clone()
    ks2 = ks.clone() if isinstance(ks, torch.Tensor) else ks
    vs2 = vs.clone() if isinstance(vs, torch.Tensor) else vs
    kf, vf = dequant(kc2, ks2), dequant(vc2, vs2)
    want = fastattn.flash_attn_with_kvcache(
        q, kf, vf, cache_seqlens=seqlens + 2, block_table=table, causal=True
    )
    assert_close(got, want, 1e-5, case="append")
    tol = 0.03 if dtype == torch.int8 else 0.3
    assert (kf[2, 3] - kn[0, 0]).abs().max() < tol * kn.abs().max()
    assert (vf[1, 1] - vn[1, 1]).abs().max() < tol * vn.abs().max()


@pytest.mark.parametrize("dtype, kind", CASES, ids=IDS)
def test_dense_cache(dtype, kind):
    b, lc = 2, 6
    gen = torch.Generator().manual_seed(11)
    kc = torch.zeros(b, lc, HKV, D, dtype=dtype)
    vc = torch.zeros(b, lc, HKV, D, dtype=dtype)
    ks, vs = scales(kind, (b, lc, HKV), 5), scales(kind, (b, lc, HKV), 6)
    q = torch.randn(b, 1, HQ, D, generator=gen)
    kn = torch.randn(b, lc, HKV, D, generator=gen)
    vn = torch.randn(b, lc, HKV, D, generator=gen)
    got = fastattn.flash_attn_with_kvcache(
        q, kc, vc, kn, vn, cache_seqlens=0, k_scale=ks, v_scale=vs
    )
    kf, vf = dequant(kc, ks), dequant(vc, vs)
    want = fastattn.flash_attn_with_kvcache(q, kf, vf)
    assert_close(got, want, 1e-5, case="dense")
    for i in range(b):
        assert_close(got[i], ref_attn(q[i], kf[i], vf[i], False), 1e-4, case="dense sdpa")


@pytest.mark.parametrize("dtype, kind", CASES, ids=IDS)
def test_varlen_packed(dtype, kind):
    gen = torch.Generator().manual_seed(13)
    tk = 9
    if dtype == torch.int8:
        k = torch.randint(-127, 128, (tk, HKV, D), generator=gen, dtype=torch.int8)
        v = torch.randint(-127, 128, (tk, HKV, D), generator=gen, dtype=torch.int8)
    else:
        k = torch.randn(tk, HKV, D, generator=gen).to(dtype)
        v = torch.randn(tk, HKV, D, generator=gen).to(dtype)
    if kind == "row":
        ks = 0.01 + 0.02 * torch.rand(tk, HKV, generator=gen)
        vs = 0.01 + 0.02 * torch.rand(tk, HKV, generator=gen)
    else:
        ks, vs = scales(kind, None, 1), scales(kind, None, 2)
        if kind == "tensor":  # a 0-d tensor is a per-tensor scale too
            vs = torch.tensor(vs)
    q = torch.randn(5, HQ, D, generator=gen)
    cu_q = torch.tensor([0, 2, 5], dtype=torch.int32)
    cu_k = torch.tensor([0, 4, 9], dtype=torch.int32)
    got = fastattn.flash_attn_varlen_func(
        q, k, v, cu_q, cu_k, 3, 5, causal=True, k_scale=ks, v_scale=vs
    )
    vs_f = vs.item() if isinstance(vs, torch.Tensor) and vs.dim() == 0 else vs
    kf, vf = dequant(k, ks), dequant(v, vs_f)
    want = fastattn.flash_attn_varlen_func(q, kf, vf, cu_q, cu_k, 3, 5, causal=True)
    assert_close(got, want, 1e-5, case="packed")
    for i in range(2):
        qs, ksl = slice(cu_q[i], cu_q[i + 1]), slice(cu_k[i], cu_k[i + 1])
        assert_close(got[qs], ref_attn(q[qs], kf[ksl], vf[ksl], True), 1e-4, case="packed sdpa")


def test_numpy_int8():
    rng = np.random.default_rng(3)
    kc = np.zeros((NB, BS, HKV, D), np.int8)
    vc = np.zeros((NB, BS, HKV, D), np.int8)
    ks = np.zeros((NB, BS, HKV), np.float32)
    vs = np.zeros((NB, BS, HKV), np.float32)
    k = rng.standard_normal((6, HKV, D)).astype(np.float32)
    v = rng.standard_normal((6, HKV, D)).astype(np.float32)
    fastattn.paged_kv_write(k, v, kc, vc, np.arange(6), k_scale=ks, v_scale=vs)
    assert (ks[:1, :4] > 0).all() and (ks[1, 2:] == 0).all()
    q = rng.standard_normal((1, 1, HQ, D)).astype(np.float32)
    table = np.array([[0, 1]], np.int32)
    got = fastattn.flash_attn_with_kvcache(
        q, kc, vc, cache_seqlens=6, block_table=table, k_scale=ks, v_scale=vs
    )
    kf = kc.astype(np.float32) * ks[..., None]
    vf = vc.astype(np.float32) * vs[..., None]
    want = fastattn.flash_attn_with_kvcache(q, kf, vf, cache_seqlens=6, block_table=table)
    assert isinstance(got, np.ndarray)
    assert_close(got, want, 1e-5, case="numpy int8")


# --- errors: a ValueError or TypeError, and nothing written ---------------------------


def setup_paged(dtype=torch.int8):
    kc = torch.zeros(NB, BS, HKV, D, dtype=dtype)
    vc = torch.zeros(NB, BS, HKV, D, dtype=dtype)
    ks, vs = torch.zeros(NB, BS, HKV), torch.zeros(NB, BS, HKV)
    k, v = torch.randn(3, HKV, D), torch.randn(3, HKV, D)
    return k, v, kc, vc, ks, vs


def unchanged(*xs):
    return all(not x.view(torch.uint8).any() if x.element_size() == 1 else not x.any() for x in xs)


def test_write_errors():
    k, v, kc, vc, ks, vs = setup_paged()
    slots = torch.arange(3)
    with pytest.raises(ValueError):  # no scales
        fastattn.paged_kv_write(k, v, kc, vc, slots)
    with pytest.raises(ValueError):  # int8 needs per-row scales, not a scalar
        fastattn.paged_kv_write(k, v, kc, vc, slots, k_scale=0.1, v_scale=0.1)
    with pytest.raises(ValueError):  # wrong shape
        fastattn.paged_kv_write(k, v, kc, vc, slots, k_scale=ks[:2], v_scale=vs)
    with pytest.raises(TypeError):  # wrong dtype
        fastattn.paged_kv_write(k, v, kc, vc, slots, k_scale=ks.double(), v_scale=vs)
    with pytest.raises(ValueError):  # non-contiguous: cannot be written in place
        t = torch.zeros(NB, BS, HKV * 2)[..., ::2]
        fastattn.paged_kv_write(k, v, kc, vc, slots, k_scale=t, v_scale=vs)
    with pytest.raises(TypeError):  # mixed pair
        fastattn.paged_kv_write(k, v, kc, vc.float(), slots, k_scale=ks, v_scale=vs)
    with pytest.raises(ValueError):  # a scale for a float cache
        fastattn.paged_kv_write(k, v, kc.float(), vc.float(), slots, k_scale=ks, v_scale=vs)
    assert unchanged(kc, vc, ks, vs)
    k8, v8, fc, fv, _, _ = setup_paged(torch.float8_e4m3fn)
    for bad in (0.0, -1.0, float("nan"), float("inf"), torch.tensor([0.1, 0.0])):
        with pytest.raises(ValueError):
            fastattn.paged_kv_write(k8, v8, fc, fv, slots, k_scale=bad, v_scale=0.1)
    with pytest.raises(ValueError):  # fp8 scales: a scalar or [Hkv]
        fastattn.paged_kv_write(k8, v8, fc, fv, slots, k_scale=torch.ones(3), v_scale=0.1)
    with pytest.raises(ValueError):  # one scale written per row, the other given
        fastattn.paged_kv_write(k8, v8, fc, fv, slots, k_scale=ks, v_scale=0.1)
    with pytest.raises(TypeError):  # 8-bit rows into an 8-bit cache
        fastattn.paged_kv_write(kc[0], vc[0], fc, fv, slots[:1], k_scale=0.1, v_scale=0.1)
    assert unchanged(fc, fv)


def test_read_errors():
    kc, vc, ks, vs = filled(torch.int8, "row", seed=5)
    before = (kc.clone(), vc.clone(), ks.clone(), vs.clone())
    q = torch.randn(1, 1, HQ, D)
    table = torch.tensor([[0, 1]], dtype=torch.int32)
    kw = dict(cache_seqlens=6, block_table=table)
    new = dict(k=torch.randn(1, 1, HKV, D), v=torch.randn(1, 1, HKV, D))
    with pytest.raises(ValueError):  # no scales
        fastattn.flash_attn_with_kvcache(q, kc, vc, **kw, **new)
    with pytest.raises(ValueError):  # only one
        fastattn.flash_attn_with_kvcache(q, kc, vc, **kw, **new, k_scale=ks)
    with pytest.raises(ValueError):  # wrong shape
        fastattn.flash_attn_with_kvcache(q, kc, vc, **kw, **new, k_scale=ks[:, :2], v_scale=vs)
    with pytest.raises(TypeError):  # wrong dtype
        fastattn.flash_attn_with_kvcache(q, kc, vc, **kw, **new, k_scale=ks.half(), v_scale=vs)
    with pytest.raises(TypeError):  # mixed pair
        fastattn.flash_attn_with_kvcache(q, kc, vc.float(), **kw, **new, k_scale=ks, v_scale=vs)
    with pytest.raises(ValueError):  # scales for a float cache
        fastattn.flash_attn_with_kvcache(
            q, kc.float(), vc.float(), **kw, **new, k_scale=ks, v_scale=vs
        )
    with pytest.raises(TypeError):  # 8-bit query
        fastattn.flash_attn_with_kvcache(q.to(torch.int8), kc, vc, **kw, k_scale=ks, v_scale=vs)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        vb = vs.clone()
        vb[0, 1, 0] = bad
        with pytest.raises(ValueError, match="scale"):  # AttnError::Scale
            fastattn.flash_attn_with_kvcache(q, kc, vc, **kw, k_scale=ks, v_scale=vb)
    fc = kc.to(torch.float32).to(torch.float8_e5m2)
    fv = vc.to(torch.float32).to(torch.float8_e5m2)
    fbefore = (fc.clone(), fv.clone())
    for bad in (0.0, float("nan"), torch.tensor([0.1, -0.1])):
        with pytest.raises(ValueError):
            fastattn.flash_attn_with_kvcache(q, fc, fv, **kw, **new, k_scale=0.1, v_scale=bad)
        with pytest.raises(ValueError):
            fastattn.flash_attn_with_kvcache(q, fc, fv, **kw, k_scale=bad, v_scale=0.1)
    for x, y in zip((kc, vc, ks, vs, fc, fv), before + fbefore):
        assert torch.equal(x.view(torch.uint8) if x.element_size() == 1 else x,
                           y.view(torch.uint8) if y.element_size() == 1 else y)
    # flash_attn_varlen_func: packed and paged
    cu = torch.tensor([0, 1], dtype=torch.int32)
    with pytest.raises(ValueError):
        fastattn.flash_attn_varlen_func(q[0], kc, vc, cu, None, 1, 6, block_table=table,
                                        seqused_k=torch.tensor([6], dtype=torch.int32))
    with pytest.raises(TypeError):  # mixed pair, packed
        fastattn.flash_attn_varlen_func(q[0], kc[0], vc[0].float(), cu, torch.tensor([0, 4]),
                                        1, 4, k_scale=ks[0])
    with pytest.raises(ValueError):  # packed scales of the wrong shape
        fastattn.flash_attn_varlen_func(q[0], kc[0], vc[0], cu, torch.tensor([0, 4]), 1, 4,
                                        k_scale=ks, v_scale=vs[0])
    qg = q[0].clone().requires_grad_()
    with pytest.raises(ValueError):  # no backward through 8-bit K/V
        fastattn.flash_attn_varlen_func(qg, kc[0], vc[0], cu, torch.tensor([0, 4]), 1, 4,
                                        k_scale=ks[0], v_scale=vs[0])
