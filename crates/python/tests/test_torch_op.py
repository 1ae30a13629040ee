"""The fastattn::sdpa torch custom op: opcheck, torch.compile, autograd registration."""

import shutil

import pytest
import torch
import torch.nn.functional as F

import fastattn.torch  # registers torch.ops.fastattn.sdpa
from conftest import assert_close

op = torch.ops.fastattn.sdpa


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
    # With inputs that require grad: the autograd registration is checked (its backward
    # raises, so the aot_dispatch tests, which run backward, are left out here).
    q, k, v = (x.clone().requires_grad_(True) for x in cases()[1][0])
    torch.library.opcheck(
        op, (q, k, v), {"enable_gqa": True},
        test_utils=("test_schema", "test_autograd_registration", "test_faketensor"),
    )


def test_backward_raises():
    q, k, v = (x.clone().requires_grad_(True) for x in cases()[0][0])
    out = op(q, k, v)
    with pytest.raises(NotImplementedError, match="no backward"):
        out.sum().backward()


def test_fake_kernel_shapes():
    with torch._subclasses.fake_tensor.FakeTensorMode():
        q = torch.empty(3, 4, 2, 5, 16)
        k = torch.empty(1, 2, 7, 16)
        v = torch.empty(4, 1, 7, 8)
        assert op(q, k, v, enable_gqa=True).shape == (3, 4, 2, 5, 8)
        assert op(torch.empty(5, 16), torch.empty(7, 16), torch.empty(7, 3)).shape == (5, 3)


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
