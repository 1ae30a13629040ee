"""The fastattn::sdpa torch custom op (and its sdpa_fwd / sdpa_bwd): opcheck,
torch.compile, gradients."""

import shutil

import pytest
import torch
import torch.nn.functional as F

import fastattn.torch  # registers torch.ops.fastattn.sdpa
from conftest import assert_close

op = torch.ops.fastattn.sdpa
fwd = torch.ops.fastattn.sdpa_fwd
bwd = torch.ops.fastattn.sdpa_bwd


def cases():
    gen = torch.Generator().manual_seed(50)
    q = torch.randn(2, 4, 6, 16, generator=gen)
    k = torch.randn(2, 2, 9, 16, generator=gen)
    v = torch.randn(2, 2, 9, 8, generator=gen)
    mask = torch.rand(2, 1, 6, 9, generator=gen) > 0.3
    fmask = torch.randn(6, 9, generator=gen)
    return [
        ((q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)), {}),
        ((q, k, v), {"enable_gqa": True, "is_causal": True}),
        ((q, k, v), {"enable_gqa": True, "attn_mask": mask, "scale": 0.25}),
        ((q[0], k[0].repeat_interleave(2, 0), v[0].repeat_interleave(2, 0)), {"attn_mask": fmask}),
        ((q.bfloat16(), k.bfloat16(), v.bfloat16()), {"enable_gqa": True}),
    ]


def test_op_matches_torch_sdpa():
    for i, (args, kw) in enumerate(cases()):
        got = op(*args, **kw)
        want = F.scaled_dot_product_attention(*args, **kw)
        tol = 1e-2 if args[0].dtype == torch.bfloat16 else 2e-5
        assert_close(got, want, atol=tol, case=f"op case {i}")


def test_opcheck():
    for args, kw in cases():
        torch.library.opcheck(op, args, kw)
        torch.library.opcheck(fwd, args, kw)
    # With inputs that require grad: every test, the aot_dispatch ones (which run the
    # backward through sdpa_bwd) included.
    for i, (args, kw) in enumerate(cases()):
        args = tuple(x.clone().requires_grad_(True) for x in args)
        torch.library.opcheck(op, args, kw)
        torch.library.opcheck(fwd, args, kw)
        # The backward op on its own.
        with torch.no_grad():
            out, lse = fwd(*args, **kw)
        grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(52 + i)).to(out.dtype)
        plain = tuple(x.detach() for x in args)
        torch.library.opcheck(bwd, (grad, *plain, out, lse), kw)


def test_op_grads_match_torch_sdpa():
    for i, (args, kw) in enumerate(cases()):
        gen = torch.Generator().manual_seed(53 + i)
        ours = [x.detach().clone().requires_grad_(True) for x in args]
        ref = [x.detach().double().requires_grad_(True) for x in args]
        rkw = dict(kw)
        if "attn_mask" in rkw and rkw["attn_mask"].dtype != torch.bool:
            rkw["attn_mask"] = rkw["attn_mask"].double()
        out = op(*ours, **kw)
        g = torch.randn(out.shape, generator=gen)
        out.backward(g.to(out.dtype))
        F.scaled_dot_product_attention(*ref, **rkw).backward(g.double())
        tol = 3e-2 if args[0].dtype == torch.bfloat16 else 1e-4
        for name, a, b in zip("qkv", ours, ref):
            assert a.grad.dtype == a.dtype
            scale = max(1.0, b.grad.abs().max().item())
            assert_close(a.grad, b.grad, atol=tol * scale, case=f"op case {i} d{name} seed {53 + i}")


def test_op_lse_is_not_differentiable_and_mask_gets_no_grad():
    q, k, v = (x.clone().requires_grad_(True) for x in cases()[1][0])
    out, lse = fwd(q, k, v, enable_gqa=True)
    assert out.requires_grad and not lse.requires_grad
    mask = torch.zeros(6, 9, requires_grad=True)
    with pytest.raises(ValueError, match="attn_mask requires grad"):
        op(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), attn_mask=mask)
    with pytest.raises(ValueError, match="dropout_p must be 0.0"):
        op(q, k, v, dropout_p=0.1, enable_gqa=True)


def test_fake_kernel_shapes():
    with torch._subclasses.fake_tensor.FakeTensorMode():
        q = torch.empty(3, 4, 2, 5, 16)
        k = torch.empty(1, 2, 7, 16)
        v = torch.empty(4, 1, 7, 8)
        assert op(q, k, v, enable_gqa=True).shape == (3, 4, 2, 5, 8)
        assert op(torch.empty(5, 16), torch.empty(7, 16), torch.empty(7, 3)).shape == (5, 3)
        out, lse = fwd(q, k, v, enable_gqa=True)
        assert out.shape == (3, 4, 2, 5, 8) and lse.shape == (3, 4, 2, 5) and lse.dtype == torch.float32
        dq, dk, dv = bwd(out, q, k, v, out, lse, enable_gqa=True)
        assert (dq.shape, dk.shape, dv.shape) == (q.shape, k.shape, v.shape)


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph(backend):
    if backend == "inductor" and not (shutil.which("g++") or shutil.which("c++")):
        pytest.skip("skipped: inductor needs a C++ compiler")
    torch._dynamo.reset()

    def layer(x, wq, k, v):
        q = (x @ wq).view(1, 6, 4, 16).transpose(1, 2)
        return op(q, k, v, is_causal=True, enable_gqa=True).transpose(1, 2).reshape(1, 6, 64)

    gen = torch.Generator().manual_seed(51)
    x, wq = torch.randn(1, 6, 32, generator=gen), torch.randn(32, 64, generator=gen)
    k, v = torch.randn(1, 2, 6, 16, generator=gen), torch.randn(1, 2, 6, 16, generator=gen)
    compiled = torch.compile(layer, backend=backend, fullgraph=True)
    assert_close(compiled(x, wq, k, v), layer(x, wq, k, v), atol=1e-5, case=f"compile {backend}")


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_torch_compile_backward(backend):
    if backend == "inductor" and not (shutil.which("g++") or shutil.which("c++")):
        pytest.skip("skipped: inductor needs a C++ compiler")
    torch._dynamo.reset()

    def layer(attn, x, wq, k, v):
        q = (x @ wq).view(1, 6, 4, 16).transpose(1, 2)
        return attn(q, k, v, is_causal=True, enable_gqa=True).transpose(1, 2).reshape(1, 6, 64)

    gen = torch.Generator().manual_seed(54)
    inputs = [torch.randn(1, 6, 32, generator=gen), torch.randn(32, 64, generator=gen),
              torch.randn(1, 2, 6, 16, generator=gen), torch.randn(1, 2, 6, 16, generator=gen)]
    compiled = torch.compile(lambda *a: layer(op, *a), backend=backend, fullgraph=True)
    ours = [x.clone().requires_grad_(True) for x in inputs]
    ref = [x.clone().requires_grad_(True) for x in inputs]
    compiled(*ours).square().sum().backward()
    layer(F.scaled_dot_product_attention, *ref).square().sum().backward()
    for i, (a, b) in enumerate(zip(ours, ref)):
        scale = max(1.0, b.grad.abs().max().item())
        assert_close(a.grad, b.grad, atol=1e-4 * scale, case=f"compile {backend} grad {i} seed 54")


def test_opcheck_attention_op_with_each_rule():
    # fastattn::attention, the op every differentiable call goes through: FlashAttention-2
    # rules with every option, torch rules with the transformers extras, and the weights.
    from fastattn.torch import spec

    attn = torch.ops.fastattn.attention
    gen = torch.Generator().manual_seed(55)
    q = torch.randn(2, 6, 4, 16, generator=gen)  # [B, L, H, D]
    k = torch.randn(2, 9, 2, 16, generator=gen)
    v = torch.randn(2, 9, 2, 8, generator=gen)
    mask = torch.rand(2, 1, 6, 9, generator=gen) > 0.2
    mask[..., 0] = True
    flash = spec(
        "flash", returns="out_lse", causal=True, window_size=(5, 0), softcap=2.0,
        alibi_slopes=[[0.1] * 4, [0.2] * 4], kv_lengths=[9, 7],
    )
    ext = spec("torch", returns="out_lse", enable_gqa=True, softcap=2.5, blhd=True, strict_mask=False)
    cases = [
        ((q, k, v, None, flash), True),
        ((q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), mask, ext), True),
        ((q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), None,
          spec("torch", returns="weights_lse", enable_gqa=True)), False),
    ]
    for args, differentiable in cases:
        torch.library.opcheck(attn, args)
        if differentiable:
            grads = tuple(x.clone().requires_grad_(True) for x in args[:3])
            torch.library.opcheck(attn, (*grads, *args[3:]))
    out, lse = attn(*cases[1][0])
    assert out.shape == (2, 6, 4, 8) and lse.shape == (2, 4, 6)
    with pytest.raises(ValueError, match="window_size"):
        spec("flash", window_size=(-2, 0))
