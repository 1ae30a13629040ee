"""fastattn.scaled_dot_product_attention against torch's SDPA (torch's semantics)."""

import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fastattn
from conftest import assert_close

SDPA = F.scaled_dot_product_attention


def test_random_shapes_with_masks_match_torch():
    seed = 1
    gen = torch.Generator().manual_seed(seed)
    rs = np.random.default_rng(seed)
    for trial in range(60):
        b, hkv = int(rs.integers(1, 3)), int(rs.integers(1, 4))
        group = int(rs.integers(1, 4))
        hq = hkv * group
        lq, lk = int(rs.integers(1, 40)), int(rs.integers(1, 40))
        e, ev = int(rs.choice([1, 7, 16, 33, 64])), int(rs.choice([1, 8, 31, 64]))
        q = torch.randn(b, hq, lq, e, generator=gen)
        k = torch.randn(b, hkv, lk, e, generator=gen)
        v = torch.randn(b, hkv, lk, ev, generator=gen)
        kind = trial % 5
        kw = {"enable_gqa": group > 1}
        if kind == 1:
            kw["is_causal"] = True
        elif kind == 2:  # bool, broadcast over heads, some rows fully masked
            kw["attn_mask"] = torch.rand(b, 1, lq, lk, generator=gen) > 0.3
        elif kind == 3:  # additive, full shape, with -inf holes
            m = torch.randn(b, hq, lq, lk, generator=gen)
            m[torch.rand(b, hq, lq, lk, generator=gen) > 0.8] = float("-inf")
            kw["attn_mask"] = m
        elif kind == 4:  # a padding mask [B, 1, 1, Lk] and a scale
            kw["attn_mask"] = torch.rand(b, 1, 1, lk, generator=gen) > 0.2
            kw["scale"] = float(rs.uniform(0.05, 1.0))
        case = f"seed {seed} trial {trial}: q {tuple(q.shape)} k {tuple(k.shape)} v {tuple(v.shape)} {sorted(kw)}"
        got = fastattn.scaled_dot_product_attention(q, k, v, **kw)
        want = SDPA(q, k, v, **kw)
        # torch returns NaN or 0 for fully masked rows depending on version; fastattn 0.
        want = torch.nan_to_num(want, nan=0.0)
        assert isinstance(got, torch.Tensor) and got.dtype == torch.float32, case
        assert_close(got, want, atol=2e-5, rtol=1e-5, case=case)


def test_numpy_in_numpy_out():
    rs = np.random.default_rng(2)
    q = rs.standard_normal((2, 3, 9, 16), dtype=np.float32)
    k = rs.standard_normal((2, 3, 11, 16), dtype=np.float32)
    v = rs.standard_normal((2, 3, 11, 8), dtype=np.float32)
    mask = rs.random((9, 11)) > 0.2
    got = fastattn.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert isinstance(got, np.ndarray) and got.dtype == np.float32 and got.shape == (2, 3, 9, 8)
    t = [torch.from_numpy(x) for x in (q, k, v, mask)]
    want = SDPA(*t[:3], attn_mask=t[3])
    assert_close(got, want, atol=2e-5, case="numpy seed 2")


def test_strided_and_transposed_inputs():
    gen = torch.Generator().manual_seed(3)
    b, h, l, d = 2, 4, 13, 32
    # [B, L, H, D] memory seen as [B, H, L, D] (transposed), every other position of a
    # longer sequence, a padded head dim, and K broadcast over the batch (stride 0).
    q = torch.randn(b, l, h, d, generator=gen).transpose(1, 2)
    k = torch.randn(1, h, 2 * l, d + 5, generator=gen)[:, :, ::2, :d].expand(b, h, l, d)
    v = torch.randn(b, h, d, l, generator=gen).transpose(2, 3)
    assert not q.is_contiguous() and k.stride(0) == 0
    for causal in (False, True):
        got = fastattn.scaled_dot_product_attention(q, k, v, is_causal=causal)
        assert_close(got, SDPA(q, k, v, is_causal=causal), atol=2e-5, case=f"strided causal={causal}")
    # numpy: negative and odd strides are copied once and still give the right answer.
    qn, kn, vn = (x.contiguous().numpy() for x in (q, k, v))
    got = fastattn.scaled_dot_product_attention(qn[:, :, ::-1], kn[..., ::-1, :], vn[..., ::-1, :])
    want = SDPA(*(torch.from_numpy(np.ascontiguousarray(x)) for x in (qn[:, :, ::-1], kn[..., ::-1, :], vn[..., ::-1, :])))
    assert_close(got, want, atol=2e-5, case="negative strides")
    raw = np.zeros(4 * 2 * 9 * 8 + 1, dtype=np.uint8)
    odd = np.ndarray((2, 9, 8 * 4), dtype=np.uint8, buffer=raw[1:]).view(np.float32)
    odd[...] = np.random.default_rng(3).standard_normal(odd.shape)
    assert not odd.flags.aligned
    got = fastattn.scaled_dot_product_attention(odd, odd, odd)
    t = torch.from_numpy(np.ascontiguousarray(odd))
    assert_close(got, SDPA(t, t, t), atol=2e-5, case="misaligned numpy")


@pytest.mark.parametrize("lq,lk", [(5, 9), (9, 5), (7, 7), (1, 6), (6, 1)])
def test_causal_top_left_in_sdpa_bottom_right_in_flash(lq, lk):
    gen = torch.Generator().manual_seed(4)
    q = torch.randn(1, 2, lq, 8, generator=gen)
    k = torch.randn(1, 2, lk, 8, generator=gen)
    v = torch.randn(1, 2, lk, 8, generator=gen)
    case = f"seed 4 lq={lq} lk={lk}"
    # torch's is_causal: query i sees keys j <= i.
    top_left = torch.ones(lq, lk, dtype=torch.bool).tril()
    got = fastattn.scaled_dot_product_attention(q, k, v, is_causal=True)
    want = torch.nan_to_num(SDPA(q, k, v, attn_mask=top_left))
    assert_close(got, want, atol=2e-5, case="top-left " + case)
    assert_close(got, torch.nan_to_num(SDPA(q, k, v, is_causal=True)), atol=2e-5, case="torch causal " + case)
    # flash_attn_func's causal: query i sees keys j <= i + lk - lq.
    bottom_right = torch.ones(lq, lk, dtype=torch.bool).tril(lk - lq)
    got = fastattn.flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=True)
    want = torch.nan_to_num(SDPA(q, k, v, attn_mask=bottom_right)).transpose(1, 2)
    if lq > lk:  # rows before the first key see nothing: 0
        want[:, : lq - lk] = 0
    assert_close(got, want, atol=2e-5, case="bottom-right " + case)


def test_fully_masked_rows_give_zero():
    gen = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2, 2, 4, 8, generator=gen) for _ in range(3))
    mask = torch.ones(2, 2, 4, 4, dtype=torch.bool)
    mask[0, 1, 2] = False
    mask[1, :, 0] = False
    fmask = torch.zeros(2, 2, 4, 4).masked_fill(~mask, float("-inf"))
    for m in (mask, fmask):
        got = fastattn.scaled_dot_product_attention(q, k, v, attn_mask=m)
        assert torch.isfinite(got).all()
        assert (got[0, 1, 2] == 0).all() and (got[1, :, 0] == 0).all()
        want = torch.nan_to_num(SDPA(q, k, v, attn_mask=m))
        assert_close(got, want, atol=2e-5, case=f"fully masked rows, mask {m.dtype}")
    w, lse = fastattn.attention_weights(q, k, v, attn_mask=mask)
    assert (w[0, 1, 2] == 0).all() and lse[0, 1, 2] == float("-inf")


@pytest.mark.parametrize(
    "qs,ks,vs",
    [
        ((5, 8), (7, 8), (7, 4)),  # 2-D
        ((3, 5, 8), (3, 7, 8), (3, 7, 4)),  # 3-D
        ((2, 3, 2, 5, 8), (2, 3, 2, 7, 8), (2, 3, 2, 7, 4)),  # 5-D
        ((2, 1, 5, 8), (1, 3, 7, 8), (1, 3, 7, 4)),  # batch and heads broadcast
        ((2, 3, 5, 8), (3, 7, 8), (3, 7, 4)),  # 4-D query, 3-D key/value
        ((4, 2, 3, 5, 8), (1, 3, 7, 8), (2, 1, 7, 4)),  # 5-D with broadcasting
    ],
)
def test_ranks_and_broadcasting_as_torch(qs, ks, vs):
    gen = torch.Generator().manual_seed(6)
    q, k, v = torch.randn(*qs, generator=gen), torch.randn(*ks, generator=gen), torch.randn(*vs, generator=gen)
    got = fastattn.scaled_dot_product_attention(q, k, v)
    assert_close(got, SDPA(q, k, v), atol=2e-5, case=f"seed 6 {qs} {ks} {vs}")
    mask = torch.rand(qs[-2], ks[-2], generator=gen) > 0.3
    got = fastattn.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert_close(got, torch.nan_to_num(SDPA(q, k, v, attn_mask=mask)), atol=2e-5, case=f"masked {qs}")


def test_gqa_and_mqa():
    gen = torch.Generator().manual_seed(7)
    q = torch.randn(2, 8, 6, 16, generator=gen)
    for hkv in (1, 2, 4, 8):
        k = torch.randn(2, hkv, 9, 16, generator=gen)
        v = torch.randn(2, hkv, 9, 16, generator=gen)
        for causal in (False, True):
            got = fastattn.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)
            want = SDPA(q, k, v, is_causal=causal, enable_gqa=True)
            assert_close(got, want, atol=2e-5, case=f"seed 7 gqa hkv={hkv} causal={causal}")
    # Different key and value head counts, each dividing the query's.
    k, v = torch.randn(2, 2, 9, 16, generator=gen), torch.randn(2, 1, 9, 16, generator=gen)
    got = fastattn.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    assert_close(got, SDPA(q, k, v, enable_gqa=True), atol=2e-5, case="gqa hk=2 hv=1")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_16_bit_inputs(dtype):
    gen = torch.Generator().manual_seed(8)
    q = torch.randn(2, 4, 10, 32, generator=gen).to(dtype)
    k = torch.randn(2, 2, 12, 32, generator=gen).to(dtype)
    v = torch.randn(2, 2, 12, 32, generator=gen).to(dtype)
    mask = (torch.randn(10, 12, generator=gen) * 0.5).to(dtype)
    for kw in ({}, {"is_causal": True}, {"attn_mask": mask}, {"attn_mask": mask.float()}):
        got = fastattn.scaled_dot_product_attention(q, k, v, enable_gqa=True, **kw)
        assert got.dtype == dtype
        # The reference: f32 attention on the same (rounded) inputs, rounded once.
        want = SDPA(q.float(), k.float(), v.float(), enable_gqa=True,
                    **{n: (x.float() if isinstance(x, torch.Tensor) else x) for n, x in kw.items()})
        ulp = 2**-8 if dtype == torch.bfloat16 else 2**-11
        assert_close(got, want, atol=1e-5, rtol=ulp, case=f"seed 8 {dtype} {sorted(kw)}")
    # numpy float16 too.
    got = fastattn.scaled_dot_product_attention(*(x.float().half().numpy() for x in (q, k, v)), enable_gqa=True)
    assert got.dtype == np.float16


def test_results_do_not_depend_on_threads():
    gen = torch.Generator().manual_seed(9)
    q, k, v = (torch.randn(1, 4, 256, 64, generator=gen) for _ in range(3))
    before = torch.get_num_threads()
    try:
        outs = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            outs.append(fastattn.scaled_dot_product_attention(q, k, v, is_causal=True))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
    old = fastattn.get_num_threads()
    fastattn.set_num_threads(1)
    assert fastattn.get_num_threads() == 1
    one = fastattn.scaled_dot_product_attention(q.numpy(), k.numpy(), v.numpy(), is_causal=True)
    fastattn.set_num_threads(max(old, 2))
    two = fastattn.scaled_dot_product_attention(q.numpy(), k.numpy(), v.numpy(), is_causal=True)
    fastattn.set_num_threads(old)
    assert np.array_equal(one, two) and np.array_equal(one, outs[0].numpy())


def test_concurrent_calls_from_python_threads():
    # The GIL is released during the compute: calls from several threads run at once and
    # each gets its own right answer.
    gen = torch.Generator().manual_seed(10)
    work = [tuple(torch.randn(1, 2, 64, 32, generator=gen) for _ in range(3)) for _ in range(4)]
    results = [None] * len(work)

    def run(i):
        for _ in range(5):
            results[i] = fastattn.scaled_dot_product_attention(*work[i], is_causal=True)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(work))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, (q, k, v) in enumerate(work):
        assert_close(results[i], SDPA(q, k, v, is_causal=True), atol=2e-5, case=f"thread {i}")


def test_output_is_fresh_and_inputs_untouched():
    gen = torch.Generator().manual_seed(11)
    q, k, v = (torch.randn(1, 2, 8, 16, generator=gen) for _ in range(3))
    copies = [x.clone() for x in (q, k, v)]
    out = fastattn.scaled_dot_product_attention(q, k, v)
    assert out.is_contiguous() and all(out.data_ptr() != x.data_ptr() for x in (q, k, v))
    assert all(torch.equal(a, b) for a, b in zip((q, k, v), copies))


def test_grad_inputs_give_a_node_with_a_backward():
    gen = torch.Generator().manual_seed(12)
    q = torch.randn(1, 2, 8, 16, generator=gen, requires_grad=True)
    k, v = (torch.randn(1, 2, 8, 16, generator=gen) for _ in range(2))
    out = fastattn.scaled_dot_product_attention(q, k, v)
    assert out.requires_grad and out.grad_fn is not None
    assert_close(out.detach(), SDPA(q.detach(), k, v), atol=2e-5, case="grad forward")
    out.sum().backward()  # gradients are checked in test_backward.py
    assert q.grad is not None and q.grad.shape == q.shape
    with torch.no_grad():
        assert fastattn.scaled_dot_product_attention(q, k, v).grad_fn is None
    # attention_weights has no backward: its node raises at backward().
    w, _ = fastattn.attention_weights(q, k, v)
    with pytest.raises(NotImplementedError, match="no backward"):
        w.sum().backward()


def test_attention_weights_and_lse():
    gen = torch.Generator().manual_seed(13)
    q = torch.randn(2, 4, 7, 16, generator=gen)
    k, v = torch.randn(2, 2, 9, 16, generator=gen), torch.randn(2, 2, 9, 8, generator=gen)
    mask = torch.rand(2, 1, 7, 9, generator=gen) > 0.2
    w, lse = fastattn.attention_weights(q, k, v, attn_mask=mask, enable_gqa=True, scale=0.3)
    assert w.shape == (2, 4, 7, 9) and lse.shape == (2, 4, 7)
    s = q @ k.repeat_interleave(2, 1).transpose(-1, -2) * 0.3
    s = s.masked_fill(~mask, float("-inf"))
    want_lse = torch.logsumexp(s, -1)
    want_w = torch.nan_to_num(torch.softmax(s, -1))
    assert_close(w, want_w, atol=1e-6, case="weights seed 13")
    finite = torch.isfinite(want_lse)
    assert_close(lse[finite], want_lse[finite], atol=1e-5, case="lse seed 13")
    assert (lse[~finite] == float("-inf")).all()
    # Rows are the query tokens, columns the keys they look at; causal rows are triangular.
    w, _ = fastattn.attention_weights(q[0, :1], q[0, :1], q[0, :1], is_causal=True)
    assert torch.equal(w[0].triu(1), torch.zeros(7, 7))
    assert_close(w.sum(-1), torch.ones(1, 7), atol=1e-6, case="rows sum to 1")
    wn, ln = fastattn.attention_weights(q.numpy(), k.numpy(), v.numpy(), enable_gqa=True)
    assert isinstance(wn, np.ndarray) and isinstance(ln, np.ndarray)


class _Sub(torch.Tensor):
    """A tensor subclass: read through its attributes, not the DLPack exchange table."""


def test_tensor_subclasses_and_parameters_read_the_same():
    gen = torch.Generator().manual_seed(14)
    q, k, v = (torch.randn(1, 2, 8, 16, generator=gen) for _ in range(3))
    want = fastattn.scaled_dot_product_attention(q, k, v, is_causal=True)
    got = fastattn.scaled_dot_product_attention(q.as_subclass(_Sub), k.as_subclass(_Sub), v, is_causal=True)
    assert torch.equal(torch.Tensor(got), want) if isinstance(got, _Sub) else torch.equal(got, want)
    p = torch.nn.Parameter(k.clone())
    with torch.no_grad():
        assert torch.equal(fastattn.scaled_dot_product_attention(q, p, v, is_causal=True), want)
    # Strided, bf16 and a transposed subclass view through both paths.
    qt = q.transpose(2, 3).contiguous().transpose(2, 3).bfloat16()
    a = fastattn.scaled_dot_product_attention(qt, k.bfloat16(), v.bfloat16())
    b = fastattn.scaled_dot_product_attention(qt.as_subclass(_Sub), k.bfloat16(), v.bfloat16())
    assert torch.equal(a, torch.Tensor(b) if isinstance(b, _Sub) else b)
