"""Autograd: fastattn's gradients against torch autograd in float64 on the same (rounded)
inputs, for scaled_dot_product_attention (torch's SDPA as the reference) and
flash_attn_func (a plain torch implementation of its semantics as the reference)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fastattn
from conftest import assert_close

sdpa = fastattn.scaled_dot_product_attention


def run(fn, inputs, grad_out=None, dtype=None):
    """``fn(*leaves)`` on fresh leaves made from ``inputs`` (cast to ``dtype`` if given), and
    its backward with ``grad_out`` (``sum()`` when None); returns (out, [grads])."""
    leaves = [x.detach().to(dtype or x.dtype).requires_grad_(True) for x in inputs]
    out = fn(*leaves)
    if grad_out is None:
        out.sum().backward()
    else:
        out.backward(grad_out.to(out.dtype))
    return out.detach(), [x.grad for x in leaves]


def check(case, ours, ref, inputs, gen, tol=1e-4, grad_out=True):
    """fastattn (``ours``, on ``inputs`` as given) against ``ref`` (float64 autograd on the
    same values): outputs and gradients within ``tol`` times their magnitude (at least 1);
    each gradient in its input's dtype and shape."""
    if grad_out:
        with torch.no_grad():
            shape = ref(*[x.double() for x in inputs]).shape
        g = torch.randn(*shape, generator=gen)
    else:
        g = None
    out, grads = run(ours, inputs, g)
    want_out, want = run(ref, inputs, None if g is None else g.double(), torch.float64)
    scale = max(1.0, want_out.abs().max().item())
    assert_close(out, want_out, atol=tol * scale, case=f"{case}: output")
    for name, x, got, w in zip("qkv", inputs, grads, want):
        assert got.dtype == x.dtype, f"{case}: d{name} is {got.dtype}, input {x.dtype}"
        assert got.shape == x.shape, f"{case}: d{name} is {tuple(got.shape)}, input {tuple(x.shape)}"
        scale = max(1.0, w.abs().max().item())
        assert_close(got, w, atol=tol * scale, case=f"{case}: d{name}")


def torch_ref(**kw):
    """torch's SDPA with these options; a float mask is cast along with the inputs."""
    mask = kw.pop("attn_mask", None)

    def f(q, k, v):
        m = mask
        if m is not None and m.dtype != torch.bool:
            m = m.to(q.dtype)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=m, **kw)

    return f


def ours_sdpa(**kw):
    return lambda q, k, v: sdpa(q, k, v, **kw)


def randn(gen, *shape):
    return torch.randn(*shape, generator=gen)


SDPA_CASES = [
    # (name, q shape, k shape, v shape, options)
    ("plain", (2, 3, 7, 16), (2, 3, 7, 16), (2, 3, 7, 8), {}),
    ("plain long", (1, 2, 150, 32), (1, 2, 170, 32), (1, 2, 170, 32), {}),
    ("scale", (1, 2, 9, 16), (1, 2, 12, 16), (1, 2, 12, 16), {"scale": 0.3}),
    ("causal square", (2, 2, 9, 16), (2, 2, 9, 16), (2, 2, 9, 16), {"is_causal": True}),
    ("causal Lq<Lk", (1, 2, 5, 16), (1, 2, 11, 16), (1, 2, 11, 8), {"is_causal": True}),
    ("causal Lq>Lk", (1, 2, 11, 16), (1, 2, 5, 16), (1, 2, 5, 8), {"is_causal": True}),
    ("causal long", (1, 1, 140, 16), (1, 1, 140, 16), (1, 1, 140, 16), {"is_causal": True}),
    ("gqa", (2, 6, 7, 16), (2, 2, 10, 16), (2, 2, 10, 16), {"enable_gqa": True}),
    ("gqa causal", (1, 4, 13, 8), (1, 1, 13, 8), (1, 1, 13, 8), {"enable_gqa": True, "is_causal": True}),
    ("shared K/V head", (2, 4, 6, 16), (2, 1, 8, 16), (2, 1, 8, 16), {}),
    ("shared Q head", (2, 1, 6, 16), (2, 3, 8, 16), (2, 3, 8, 16), {}),
    ("3-D", (3, 7, 16), (3, 9, 16), (3, 9, 8), {}),
    ("2-D causal", (7, 16), (7, 16), (7, 4), {"is_causal": True}),
    ("broadcast K/V batch", (2, 3, 5, 16), (1, 3, 8, 16), (1, 3, 8, 16), {}),
    ("K/V with fewer dims", (2, 3, 5, 16), (3, 8, 16), (3, 8, 16), {}),
    ("broadcast Q batch", (1, 2, 5, 16), (3, 2, 8, 16), (3, 2, 8, 16), {"is_causal": True}),
    ("5-D broadcast", (2, 1, 2, 5, 8), (1, 3, 2, 6, 8), (2, 3, 2, 6, 8), {}),
]


@pytest.mark.parametrize("name,qs,ks,vs,kw", SDPA_CASES, ids=[c[0] for c in SDPA_CASES])
def test_sdpa_grads_match_torch(name, qs, ks, vs, kw):
    gen = torch.Generator().manual_seed(70)
    q, k, v = randn(gen, *qs), randn(gen, *ks), randn(gen, *vs)
    check(f"{name} seed 70", ours_sdpa(**kw), torch_ref(**kw), (q, k, v), gen)


@pytest.mark.parametrize("qs,ks,vs", [
    ((1, 1, 0, 8), (1, 1, 5, 8), (1, 1, 5, 8)),  # no queries
    ((1, 1, 3, 8), (1, 1, 0, 8), (1, 1, 0, 8)),  # no keys: output 0, gradients 0
    ((0, 2, 3, 8), (0, 2, 4, 8), (0, 2, 4, 8)),  # empty batch
    ((1, 2, 3, 0), (1, 2, 4, 0), (1, 2, 4, 5)),  # E = 0
    ((1, 2, 3, 8), (1, 2, 4, 8), (1, 2, 4, 0)),  # Ev = 0
])
def test_sdpa_grads_of_empty_shapes(qs, ks, vs):
    gen = torch.Generator().manual_seed(87)
    q, k, v = (randn(gen, *s).requires_grad_(True) for s in (qs, ks, vs))
    sdpa(q, k, v, is_causal=True).sum().backward()
    for x in (q, k, v):
        assert x.grad.shape == x.shape and x.grad.dtype == x.dtype
        assert torch.isfinite(x.grad).all()
        if qs[-2] == 0 or ks[-2] == 0:  # nothing attends: no gradient anywhere
            assert (x.grad == 0).all()


def test_sdpa_grads_of_a_sum_loss():
    # out.sum(): the output gradient is an expanded tensor (all strides 0).
    gen = torch.Generator().manual_seed(71)
    q, k, v = randn(gen, 2, 2, 6, 16), randn(gen, 2, 2, 9, 16), randn(gen, 2, 2, 9, 16)
    check("sum loss seed 71", ours_sdpa(is_causal=True), torch_ref(is_causal=True), (q, k, v), gen,
          grad_out=False)


def test_sdpa_grads_with_masks():
    gen = torch.Generator().manual_seed(72)
    q, k, v = randn(gen, 2, 4, 7, 16), randn(gen, 2, 2, 9, 16), randn(gen, 2, 2, 9, 8)
    bool_mask = torch.rand(2, 1, 7, 9, generator=gen) > 0.4
    bool_mask[..., 0] = True  # no fully masked row (torch gives NaN there)
    check("bool mask seed 72", ours_sdpa(attn_mask=bool_mask, enable_gqa=True),
          torch_ref(attn_mask=bool_mask, enable_gqa=True), (q, k, v), gen)
    float_mask = torch.randn(7, 9, generator=gen)
    check("float mask seed 72", ours_sdpa(attn_mask=float_mask, enable_gqa=True),
          torch_ref(attn_mask=float_mask, enable_gqa=True), (q, k, v), gen)
    holes = torch.randn(2, 4, 7, 9, generator=gen)
    holes[torch.rand(2, 4, 7, 9, generator=gen) > 0.7] = float("-inf")
    holes[..., 3] = 0.0
    check("float mask with -inf seed 72", ours_sdpa(attn_mask=holes, enable_gqa=True),
          torch_ref(attn_mask=holes, enable_gqa=True), (q, k, v), gen)
    padding = torch.rand(2, 1, 1, 9, generator=gen) > 0.3
    padding[..., 0] = True
    check("padding mask seed 72", ours_sdpa(attn_mask=padding, enable_gqa=True, scale=0.2),
          torch_ref(attn_mask=padding, enable_gqa=True, scale=0.2), (q, k, v), gen)


def test_sdpa_fully_masked_rows_get_zero_gradients():
    gen = torch.Generator().manual_seed(73)
    q, k, v = (randn(gen, 1, 2, 5, 8).requires_grad_(True) for _ in range(3))
    mask = torch.ones(1, 1, 5, 5, dtype=torch.bool)
    mask[..., 2, :] = False  # query 2 sees nothing: output 0, no gradient through it
    out = sdpa(q, k, v, attn_mask=mask)
    assert (out[:, :, 2] == 0).all()
    g = torch.zeros_like(out)
    g[:, :, 2] = 1.0
    out.backward(g)
    assert (q.grad == 0).all() and (k.grad == 0).all() and (v.grad == 0).all()


def test_sdpa_grads_of_non_contiguous_inputs():
    # [B, L, H, D] memory seen as [B, H, L, D], and a non-contiguous output gradient.
    gen = torch.Generator().manual_seed(74)
    q, k, v = randn(gen, 2, 7, 3, 16), randn(gen, 2, 10, 3, 16), randn(gen, 2, 10, 3, 8)

    def t(f):
        return lambda q, k, v: f(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)

    check("blhd views seed 74", t(ours_sdpa(is_causal=True)), t(torch_ref(is_causal=True)), (q, k, v), gen)
    # Gapped strides: every other element of a wider tensor.
    qw, kw_, vw = randn(gen, 1, 2, 6, 32), randn(gen, 1, 2, 8, 32), randn(gen, 1, 2, 8, 32)

    def gap(f):
        return lambda q, k, v: f(q[..., ::2], k[..., ::2], v[..., ::2])

    check("gapped strides seed 74", gap(ours_sdpa()), gap(torch_ref()), (qw, kw_, vw), gen)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_sdpa_16_bit_grads_come_back_in_the_input_dtype(dtype):
    gen = torch.Generator().manual_seed(75)
    q = randn(gen, 2, 4, 9, 16).to(dtype)
    k, v = randn(gen, 2, 2, 12, 16).to(dtype), randn(gen, 2, 2, 12, 16).to(dtype)
    # The reference sees the rounded values; the tolerance covers fastattn's 16-bit output
    # (O rounded before D = rowsum(dO * O)) and the gradients' final rounding.
    tol = 2e-2 if dtype == torch.bfloat16 else 4e-3
    check(f"{dtype} gqa causal seed 75", ours_sdpa(enable_gqa=True, is_causal=True),
          torch_ref(enable_gqa=True, is_causal=True), (q, k, v), gen, tol=tol)
    mask = torch.randn(9, 12, generator=gen).to(dtype)
    check(f"{dtype} mask seed 75", ours_sdpa(enable_gqa=True, attn_mask=mask),
          torch_ref(enable_gqa=True, attn_mask=mask), (q, k, v), gen, tol=tol)


def test_sdpa_grads_only_for_inputs_that_require_them():
    gen = torch.Generator().manual_seed(76)
    q, k = randn(gen, 1, 2, 6, 8), randn(gen, 1, 2, 6, 8).requires_grad_(True)
    v = randn(gen, 1, 2, 6, 8)
    sdpa(q, k, v, is_causal=True).sum().backward()
    kk = k.detach().double().requires_grad_(True)
    F.scaled_dot_product_attention(q.double(), kk, v.double(), is_causal=True).sum().backward()
    assert q.grad is None and v.grad is None
    assert_close(k.grad, kk.grad, atol=1e-5, case="only dK seed 76")


def test_sdpa_refuses_a_mask_that_requires_grad():
    gen = torch.Generator().manual_seed(77)
    q, k, v = (randn(gen, 1, 2, 4, 8).requires_grad_(True) for _ in range(3))
    mask = torch.zeros(4, 4, requires_grad=True)
    with pytest.raises(ValueError, match="attn_mask requires grad"):
        sdpa(q, k, v, attn_mask=mask)
    with pytest.raises(ValueError, match="attn_mask requires grad"):
        sdpa(q.detach(), k.detach(), v.detach(), attn_mask=mask)
    sdpa(q, k, v, attn_mask=mask.detach()).sum().backward()  # a constant mask is fine


def test_sdpa_backward_is_not_differentiable_twice():
    gen = torch.Generator().manual_seed(78)
    q, k, v = (randn(gen, 1, 1, 4, 8).requires_grad_(True) for _ in range(3))
    out = sdpa(q, k, v)
    (gq,) = torch.autograd.grad(out.sum(), q, create_graph=True)
    with pytest.raises(RuntimeError, match="no double backward"):
        gq.sum().backward()


def test_sdpa_backward_on_several_threads_is_deterministic():
    gen = torch.Generator().manual_seed(79)
    q, k, v = randn(gen, 2, 4, 200, 32), randn(gen, 2, 4, 260, 32), randn(gen, 2, 4, 260, 32)
    g = randn(gen, 2, 4, 200, 32)
    before = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            results.append(run(ours_sdpa(), (q, k, v), g)[1])
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*results):
        assert torch.equal(a, b)


# flash_attn_func: the reference implements its semantics in float64.


def flash_ref(causal=False, scale=None, window=(-1, -1), softcap=0.0, alibi=None,
              kv_lengths=None, mask=None):
    """``flash_attn_func``'s output from [B, L, H, D] inputs with torch ops (bottom-right
    alignment; a row with no visible key gives 0 and no gradient)."""

    def f(q, k, v):
        b, lq, hq, d = q.shape
        lk, hkv = k.shape[1], k.shape[2]
        qh = q.transpose(1, 2)
        kh = k.transpose(1, 2).repeat_interleave(hq // hkv, 1)
        vh = v.transpose(1, 2).repeat_interleave(hq // hkv, 1)
        s = qh @ kh.transpose(-1, -2) * (scale if scale is not None else d ** -0.5)
        if softcap:
            s = softcap * torch.tanh(s / softcap)
        n = torch.tensor(kv_lengths if kv_lengths is not None else [lk] * b).view(b, 1, 1, 1)
        pos = torch.arange(lq).view(1, 1, lq, 1) + n - lq
        j = torch.arange(lk).view(1, 1, 1, lk)
        if alibi is not None:
            slopes = torch.as_tensor(alibi, dtype=s.dtype)
            slopes = slopes.view(1, hq, 1, 1) if slopes.dim() == 1 else slopes.view(b, hq, 1, 1)
            s = s - slopes * (pos - j).abs()
        visible = (j < n).expand(b, hq, lq, lk)
        if mask is not None:
            if mask.dtype == torch.bool:
                visible = visible & mask
            else:
                s = s + mask.to(s.dtype)
        if causal:
            visible = visible & (j <= pos)
        if window[0] >= 0:
            visible = visible & (j >= pos - window[0])
        if window[1] >= 0:
            visible = visible & (j <= pos + window[1])
        any_key = visible.any(-1, keepdim=True)
        s = s.masked_fill(~visible, float("-inf")).masked_fill(~any_key, 0.0)
        p = torch.softmax(s, -1) * any_key
        return (p @ vh).transpose(1, 2)

    return f


FLASH_CASES = [
    # (name, B, Lq, Lk, Hq, Hkv, D, Dv, options)
    ("plain", 2, 7, 7, 2, 2, 16, 16, {}),
    ("causal Lq<Lk gqa", 2, 5, 12, 4, 2, 16, 8, {"causal": True}),
    ("causal Lq>Lk (empty rows)", 1, 9, 6, 2, 1, 16, 16, {"causal": True}),
    ("causal long", 1, 150, 200, 2, 2, 32, 32, {"causal": True}),
    ("window", 2, 10, 14, 2, 2, 16, 16, {"window_size": (3, 1)}),
    ("causal window", 1, 12, 12, 4, 1, 8, 8, {"causal": True, "window_size": (2, 0)}),
    ("softcap", 2, 8, 11, 2, 2, 16, 16, {"softcap": 2.0, "softmax_scale": 0.8}),
    ("alibi", 2, 6, 9, 4, 2, 16, 16, {"alibi_slopes": [0.5, 0.25, 0.125, 0.0625], "causal": True}),
    ("alibi per batch", 2, 6, 9, 2, 2, 16, 16, {"alibi_slopes": [[0.3, 0.1], [0.7, 0.02]]}),
    ("kv_lengths", 3, 4, 12, 2, 2, 16, 16, {"kv_lengths": [12, 7, 4], "causal": True}),
    ("kv_lengths alibi per batch", 2, 3, 10, 2, 1, 8, 8,
     {"kv_lengths": [10, 5], "alibi_slopes": [[0.3, 0.1], [0.7, 0.02]], "softcap": 3.0}),
]


def flash_opts_to_ref(kw):
    return dict(
        causal=kw.get("causal", False), scale=kw.get("softmax_scale"),
        window=kw.get("window_size", (-1, -1)), softcap=kw.get("softcap", 0.0),
        alibi=kw.get("alibi_slopes"), kv_lengths=kw.get("kv_lengths"), mask=kw.get("attn_mask"),
    )


@pytest.mark.parametrize("name,b,lq,lk,hq,hkv,d,dv,kw", FLASH_CASES, ids=[c[0] for c in FLASH_CASES])
def test_flash_grads_match_reference(name, b, lq, lk, hq, hkv, d, dv, kw):
    gen = torch.Generator().manual_seed(80)
    q, k, v = randn(gen, b, lq, hq, d), randn(gen, b, lk, hkv, d), randn(gen, b, lk, hkv, dv)
    if "softcap" in kw:
        q = q * 3  # scores large enough for the cap to bend them
    ours = lambda q, k, v: fastattn.flash_attn_func(q, k, v, **kw)  # noqa: E731
    check(f"flash {name} seed 80", ours, flash_ref(**flash_opts_to_ref(kw)), (q, k, v), gen)


def test_flash_grads_with_masks_and_strides():
    gen = torch.Generator().manual_seed(81)
    q, k, v = randn(gen, 2, 7, 4, 16), randn(gen, 2, 9, 2, 16), randn(gen, 2, 9, 2, 8)
    mask = torch.rand(2, 1, 7, 9, generator=gen) > 0.4
    kw = {"attn_mask": mask, "causal": True}
    check("flash bool mask seed 81", lambda q, k, v: fastattn.flash_attn_func(q, k, v, **kw),
          flash_ref(**flash_opts_to_ref(kw)), (q, k, v), gen)
    fmask = torch.randn(7, 9, generator=gen)
    kw = {"attn_mask": fmask, "window_size": (4, 4)}
    check("flash float mask seed 81", lambda q, k, v: fastattn.flash_attn_func(q, k, v, **kw),
          flash_ref(**flash_opts_to_ref(kw)), (q, k, v), gen)
    # [B, H, L, D] memory seen as [B, L, H, D].
    qt, kt, vt = (x.transpose(1, 2).contiguous() for x in (q, k, v))

    def t(f):
        return lambda q, k, v: f(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))

    kw = {"causal": True, "softcap": 4.0}
    check("flash bhld views seed 81", t(lambda q, k, v: fastattn.flash_attn_func(q, k, v, **kw)),
          t(flash_ref(**flash_opts_to_ref(kw))), (qt, kt, vt), gen)


def test_flash_16_bit_and_mixed_dtypes():
    gen = torch.Generator().manual_seed(82)
    q, k, v = randn(gen, 2, 6, 4, 16), randn(gen, 2, 10, 2, 16), randn(gen, 2, 10, 2, 16)
    kw = {"causal": True, "window_size": (5, -1)}
    ours = lambda q, k, v: fastattn.flash_attn_func(q, k, v, **kw)  # noqa: E731
    check("flash bf16 seed 82", ours, flash_ref(**flash_opts_to_ref(kw)),
          tuple(x.bfloat16() for x in (q, k, v)), gen, tol=2e-2)
    check("flash f32 q, f16 k/v seed 82", ours, flash_ref(**flash_opts_to_ref(kw)),
          (q, k.half(), v.half()), gen, tol=4e-3)


def test_flash_lse_output_has_no_gradient():
    gen = torch.Generator().manual_seed(83)
    q, k, v = (randn(gen, 1, 5, 2, 8).requires_grad_(True) for _ in range(3))
    out, lse = fastattn.flash_attn_func(q, k, v, causal=True, return_lse=True)
    assert out.requires_grad and not lse.requires_grad
    want = fastattn.flash_attn_func(q.detach(), k.detach(), v.detach(), causal=True)
    assert torch.equal(out.detach(), want)
    (out.sum() + lse.sum()).backward()  # lse contributes nothing
    q2, k2, v2 = (x.detach().clone().requires_grad_(True) for x in (q, k, v))
    fastattn.flash_attn_func(q2, k2, v2, causal=True).sum().backward()
    assert torch.equal(q.grad, q2.grad) and torch.equal(k.grad, k2.grad)


def test_flash_refuses_slopes_or_mask_that_require_grad():
    gen = torch.Generator().manual_seed(84)
    q, k, v = (randn(gen, 1, 4, 2, 8).requires_grad_(True) for _ in range(3))
    with pytest.raises(ValueError, match="alibi_slopes requires grad"):
        fastattn.flash_attn_func(q, k, v, alibi_slopes=torch.ones(2, requires_grad=True))
    with pytest.raises(ValueError, match="attn_mask requires grad"):
        fastattn.flash_attn_func(q, k, v, attn_mask=torch.zeros(4, 4, requires_grad=True))
    # A slopes tensor that does not require grad is taken as is.
    fastattn.flash_attn_func(q, k, v, alibi_slopes=torch.ones(2)).sum().backward()
    assert q.grad is not None


def test_private_backward_entries_refuse_bad_input():
    gen = torch.Generator().manual_seed(85)
    q, k, v = (randn(gen, 1, 2, 4, 8) for _ in range(3))
    Call = fastattn._fastattn.Call
    call = Call.torch(returns="out_lse")
    out, lse = fastattn._fastattn.forward(call, q, k, v)
    g = torch.ones_like(out)

    def bwd(g, q, k, v, out, lse, call=call, mask=None):
        return fastattn._fastattn.backward(call, q, k, v, mask, out, lse, g)

    dq, dk, dv = bwd(g, q, k, v, out, lse)
    assert dq.dtype == torch.float32 and dq.shape == q.shape
    with pytest.raises(ValueError, match="grad_out has shape"):
        bwd(g[..., :4], q, k, v, out, lse)
    with pytest.raises(ValueError, match="out has shape"):
        bwd(g, q, k, v, out[:, :1], lse)
    with pytest.raises(ValueError, match="lse must be a contiguous"):
        bwd(g, q, k, v, out, lse[..., :2])
    with pytest.raises(ValueError, match="lse must be a contiguous"):
        bwd(g, q, k, v, out, lse.transpose(1, 2).contiguous().transpose(1, 2))
    with pytest.raises(TypeError, match="lse must be float32"):
        bwd(g, q, k, v, out, lse.half())
    with pytest.raises(TypeError, match="bool"):
        bwd(g > 0, q, k, v, out, lse)
    with pytest.raises(ValueError, match="different embedding sizes"):
        bwd(g, q, k[..., :4], v, out, lse)
    with pytest.raises(TypeError, match="grad_out must be"):
        bwd("g", q, k, v, out, lse)
    with pytest.raises(ValueError, match="returns must be"):
        Call.torch(returns="lse")
    fq, fk, fv = (randn(gen, 1, 4, 2, 8) for _ in range(3))
    fout, flse = fastattn.flash_attn_func(fq, fk, fv, return_lse=True)
    fg = torch.ones_like(fout)
    assert bwd(fg, fq, fk, fv, fout, flse, call=Call.flash())[0].shape == fq.shape
    with pytest.raises(ValueError, match="kv_lengths"):
        bwd(fg, fq, fk, fv, fout, flse, call=Call.flash(kv_lengths=[1, 2]))
    with pytest.raises(ValueError, match="alibi_slopes"):
        bwd(fg, fq, fk, fv, fout, flse, call=Call.flash(alibi_slopes=[1.0]))
    # numpy works too (the binding takes either kind).
    nq, nk, nv = (x.numpy() for x in (q, k, v))
    nout, nlse = fastattn._fastattn.forward(call, nq, nk, nv)
    ndq = bwd(np.ones_like(nout), nq, nk, nv, nout, nlse)[0]
    assert isinstance(ndq, np.ndarray)
    assert_close(torch.from_numpy(ndq), dq, atol=1e-6, case="numpy backward seed 85")


def test_transformers_entry_grads_with_softcap_and_blhd_output():
    # sdpa_ext (what fastattn.transformers calls): soft-cap, GQA, and the [B, Lq, H, D]
    # output, whose gradient arrives in that layout.
    gen = torch.Generator().manual_seed(86)
    q = randn(gen, 2, 4, 7, 16) * 3
    k, v = randn(gen, 2, 2, 9, 16), randn(gen, 2, 2, 9, 8)
    mask = torch.rand(2, 1, 7, 9, generator=gen) > 0.3
    mask[..., 0] = True
    cap = 2.5

    def ours(q, k, v):
        return fastattn._functions.sdpa_ext(q, k, v, mask, enable_gqa=True, softcap=cap, blhd=True)

    def ref(q, k, v):
        kh, vh = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
        s = q @ kh.transpose(-1, -2) * 16 ** -0.5
        s = (cap * torch.tanh(s / cap)).masked_fill(~mask, float("-inf"))
        return (torch.softmax(s, -1) @ vh).transpose(1, 2)

    check("transformers entry softcap seed 86", ours, ref, (q, k, v), gen)
    out = ours(*(x.requires_grad_(True) for x in (q, k, v)))
    assert out.shape == (2, 7, 4, 8) and out.is_contiguous()


def test_every_differentiable_call_shares_one_autograd_mechanism():
    # Eager calls and the torch op record the same node: the backward registered on the
    # fastattn::attention op (fastattn.torch).
    import fastattn.torch  # noqa: F401  (registers torch.ops.fastattn.sdpa)

    gen = torch.Generator().manual_seed(87)
    q = randn(gen, 1, 4, 2, 8).requires_grad_(True)
    k, v = randn(gen, 1, 4, 2, 8), randn(gen, 1, 4, 2, 8)
    nodes = {
        "sdpa": sdpa(q, k, v),
        "flash": fastattn.flash_attn_func(q, k, v),
        "weights": fastattn.attention_weights(q, k, v)[0],
        "ext": fastattn._functions.sdpa_ext(q, k, v, blhd=True),
        "op": torch.ops.fastattn.sdpa(q, k, v),
    }
    for name, out in nodes.items():
        assert "fastattn_attention" in type(out.grad_fn).__name__, (name, out.grad_fn)
