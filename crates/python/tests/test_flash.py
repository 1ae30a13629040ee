"""fastattn.flash_attn_func (FlashAttention-2's API, bottom-right aligned) against a
float64 reference of the library's semantics."""

import numpy as np
import pytest
import torch

import fastattn
from conftest import assert_close


def reference(q, k, v, causal=False, scale=None, window=(-1, -1), softcap=0.0,
              alibi=None, kv_lengths=None, mask=None):
    """out [B, Lq, H, Dv] and lse [B, H, Lq] in float64, from [B, L, H, D] inputs."""
    b, lq, hq, d = q.shape
    lk, hkv = k.shape[1], k.shape[2]
    qh = q.transpose(1, 2).double()
    kh = k.transpose(1, 2).double().repeat_interleave(hq // hkv, 1)
    vh = v.transpose(1, 2).double().repeat_interleave(hq // hkv, 1)
    s = qh @ kh.transpose(-1, -2) * (scale if scale is not None else d ** -0.5)
    if softcap:
        s = softcap * torch.tanh(s / softcap)
    n = torch.tensor(kv_lengths if kv_lengths is not None else [lk] * b).view(b, 1, 1, 1)
    pos = torch.arange(lq).view(1, 1, lq, 1) + n - lq
    j = torch.arange(lk).view(1, 1, 1, lk)
    if alibi is not None:
        slopes = torch.as_tensor(alibi, dtype=torch.float64)
        slopes = slopes.view(1, hq, 1, 1) if slopes.dim() == 1 else slopes.view(b, hq, 1, 1)
        s = s - slopes * (pos - j).abs()
    visible = j < n
    if mask is not None:
        if mask.dtype == torch.bool:
            visible = visible & mask
        else:
            s = s + mask.double()
    if causal:
        visible = visible & (j <= pos)
    if window[0] >= 0:
        visible = visible & (j >= pos - window[0])
    if window[1] >= 0:
        visible = visible & (j <= pos + window[1])
    s = s.masked_fill(~visible, float("-inf"))
    lse = torch.logsumexp(s, -1)
    p = torch.nan_to_num(torch.softmax(s, -1))
    return (p @ vh).transpose(1, 2), lse


def test_random_options_match_reference():
    seed = 31
    gen = torch.Generator().manual_seed(seed)
    rs = np.random.default_rng(seed)
    for trial in range(80):
        b, hkv, group = int(rs.integers(1, 3)), int(rs.integers(1, 3)), int(rs.integers(1, 3))
        hq = hkv * group
        lq, lk = int(rs.integers(1, 30)), int(rs.integers(1, 30))
        d, dv = int(rs.choice([4, 16, 31])), int(rs.choice([4, 8, 17]))
        q = torch.randn(b, lq, hq, d, generator=gen)
        k = torch.randn(b, lk, hkv, d, generator=gen)
        v = torch.randn(b, lk, hkv, dv, generator=gen)
        kw = {}
        if rs.random() < 0.5:
            kw["causal"] = True
        if rs.random() < 0.3:
            kw["window"] = (int(rs.integers(-1, 8)), int(rs.integers(-1, 8)))
        if rs.random() < 0.3:
            kw["softcap"] = float(rs.uniform(0.5, 5.0))
        if rs.random() < 0.3:
            shape = (hq,) if rs.random() < 0.5 else (b, hq)
            kw["alibi"] = torch.rand(*shape, generator=gen) * 0.5
        if rs.random() < 0.3:
            kw["kv_lengths"] = [int(x) for x in rs.integers(0, lk + 1, size=b)]
        if rs.random() < 0.3:
            kw["mask"] = torch.rand(b, 1, lq, lk, generator=gen) > 0.3
        elif rs.random() < 0.2:
            kw["mask"] = torch.randn(1, hq, lq, lk, generator=gen)
        if rs.random() < 0.3:
            kw["scale"] = float(rs.uniform(0.1, 1.0))
        case = f"seed {seed} trial {trial}: q {tuple(q.shape)} k {tuple(k.shape)} v {tuple(v.shape)} {sorted(kw)}"
        want, want_lse = reference(q, k, v, **kw)
        out, lse = fastattn.flash_attn_func(
            q, k, v,
            causal=kw.get("causal", False),
            softmax_scale=kw.get("scale"),
            window_size=kw.get("window", (-1, -1)),
            softcap=kw.get("softcap", 0.0),
            alibi_slopes=kw.get("alibi"),
            return_lse=True,
            kv_lengths=kw.get("kv_lengths"),
            attn_mask=kw.get("mask"),
        )
        assert out.shape == (b, lq, hq, dv) and lse.shape == (b, hq, lq), case
        assert_close(out, want, atol=3e-5, rtol=1e-5, case=case)
        finite = torch.isfinite(want_lse)
        assert_close(lse[finite], want_lse[finite], atol=3e-5, rtol=1e-5, case="lse " + case)
        assert (lse[~finite] == float("-inf")).all(), case


def test_layout_kinds_and_dtypes():
    gen = torch.Generator().manual_seed(32)
    q = torch.randn(2, 9, 4, 16, generator=gen)
    k = torch.randn(2, 11, 2, 16, generator=gen)
    v = torch.randn(2, 11, 2, 16, generator=gen)
    want, _ = reference(q, k, v, causal=True)
    # Strided: [B, H, L, D] memory seen as [B, L, H, D].
    qs = q.transpose(1, 2).contiguous().transpose(1, 2)
    got = fastattn.flash_attn_func(qs, k, v, causal=True)
    assert got.shape == (2, 9, 4, 16) and got.is_contiguous()
    assert_close(got, want, atol=2e-5, case="strided seed 32")
    gotn = fastattn.flash_attn_func(q.numpy(), k.numpy(), v.numpy(), causal=True)
    assert isinstance(gotn, np.ndarray)
    assert_close(gotn, want, atol=2e-5, case="numpy seed 32")
    # Mixed element types: bf16 K/V with an f32 query and output.
    got = fastattn.flash_attn_func(q, k.bfloat16(), v.bfloat16(), causal=True)
    assert got.dtype == torch.float32
    want16, _ = reference(q, k.bfloat16().float(), v.bfloat16().float(), causal=True)
    assert_close(got, want16, atol=2e-5, case="bf16 K/V seed 32")
    got = fastattn.flash_attn_func(q.half(), k.half(), v.half(), causal=True)
    assert got.dtype == torch.float16
    wanth, _ = reference(q.half().float(), k.half().float(), v.half().float(), causal=True)
    assert_close(got, wanth, atol=1e-5, rtol=2**-10, case="f16 seed 32")


def test_decode_against_a_long_cache_with_lengths():
    gen = torch.Generator().manual_seed(33)
    q = torch.randn(3, 1, 8, 64, generator=gen)
    k = torch.randn(3, 300, 2, 64, generator=gen)
    v = torch.randn(3, 300, 2, 64, generator=gen)
    lens = [300, 17, 0]
    out, lse = fastattn.flash_attn_func(q, k, v, causal=True, kv_lengths=torch.tensor(lens), return_lse=True)
    want, want_lse = reference(q, k, v, causal=True, kv_lengths=lens)
    assert_close(out, want, atol=2e-5, case="decode seed 33")
    assert (out[2] == 0).all() and (lse[2] == float("-inf")).all()


def test_flash_attention_2_keywords_and_grad_inputs():
    gen = torch.Generator().manual_seed(34)
    q = torch.randn(1, 6, 2, 16, generator=gen, requires_grad=True)
    k, v = (torch.randn(1, 6, 2, 16, generator=gen) for _ in range(2))
    mask = torch.rand(1, 1, 6, 6, generator=gen) > 0.3
    out = fastattn.flash_attn_func(q, k, v, dropout_p=0.0, deterministic=True, attn_mask=mask)
    want, _ = reference(q.detach(), k, v, mask=mask)
    assert out.grad_fn is not None
    assert_close(out.detach(), want, atol=2e-5, case="grad + keywords seed 34")
    out.sum().backward()  # gradients are checked in test_backward.py
    assert q.grad is not None and q.grad.shape == q.shape


def test_paths_and_kernel_variants_agree():
    gen = torch.Generator().manual_seed(35)
    q = torch.randn(1, 33, 4, 24, generator=gen)
    k, v = (torch.randn(1, 40, 2, 24, generator=gen) for _ in range(2))
    want, _ = reference(q, k, v, causal=True, softcap=3.0)
    for path in ("auto", "flash", "materialized"):
        for variant in (None, "scalar", "portable"):
            got = fastattn.flash_attn_func(q, k, v, causal=True, softcap=3.0, path=path, variant=variant)
            assert_close(got, want, atol=3e-5, case=f"seed 35 path={path} variant={variant}")
