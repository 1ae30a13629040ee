"""Bad input of every kind: a TypeError or ValueError carrying the reason, never a crash."""

import numpy as np
import pytest
import torch

import fastattn

sdpa = fastattn.scaled_dot_product_attention
flash = fastattn.flash_attn_func


def qkv(*shape, dtype=torch.float32):
    gen = torch.Generator().manual_seed(40)
    return tuple(torch.randn(*shape, generator=gen).to(dtype) for _ in range(3))


Q, K, V = qkv(1, 2, 4, 8)


@pytest.mark.parametrize(
    "args,kwargs,exc,match",
    [
        (([[1.0]], K, V), {}, TypeError, "query must be a torch.Tensor or a numpy.ndarray, got list"),
        ((Q, "k", V), {}, TypeError, "key must be"),
        ((Q, K, None), {}, TypeError, "value must be"),
        ((Q.double(), K.double(), V.double()), {}, TypeError, "float64"),
        ((Q.int(), K.int(), V.int()), {}, TypeError, "int32"),
        ((Q > 0, K > 0, V > 0), {}, TypeError, "bool is not supported"),
        ((Q, K.half(), V), {}, TypeError, "same dtype"),
        ((Q.numpy().astype(np.float64), K.numpy(), V.numpy()), {}, TypeError, "float64"),
        ((Q.numpy().astype(np.int64), K.numpy(), V.numpy()), {}, TypeError, "int64"),
        ((Q, K, V), {"attn_mask": torch.zeros(4, 4, dtype=torch.int32)}, TypeError, "int32"),
        ((Q, K, V), {"attn_mask": torch.zeros(4, 4, dtype=torch.float16)}, TypeError, "attn_mask must be bool, float32 or the query's dtype"),
        ((Q, K, V), {"attn_mask": [[True]]}, TypeError, "attn_mask must be"),
        ((Q, K, V), {"dropout_p": 0.1}, ValueError, "dropout_p must be 0.0"),
        ((Q, K, V), {"attn_mask": torch.ones(4, 4, dtype=torch.bool), "is_causal": True}, ValueError, "is_causal"),
        ((Q, K[..., :7], V), {}, ValueError, "different embedding sizes: 8 and 7"),
        ((Q, K, V[:, :, :3]), {}, ValueError, "different lengths: 4 and 3"),
        ((Q[0, 0, 0], K[0, 0, 0], V[0, 0, 0]), {}, ValueError, "at least 2-dimensional"),
        ((Q.expand(2, 2, 4, 8), K.expand(3, 2, 4, 8), V), {}, ValueError, "do not broadcast"),
        ((torch.randn(1, 4, 4, 8), K, V), {}, ValueError, "enable_gqa=True"),
        ((torch.randn(1, 3, 4, 8), K, V), {"enable_gqa": True}, ValueError, "must divide"),
        ((torch.randn(1, 8, 4, 8), torch.randn(1, 2, 4, 8), torch.randn(1, 4, 4, 8)), {"enable_gqa": True}, ValueError, "equal, or one of them 1"),
        ((Q, K, V), {"attn_mask": torch.ones(4, 5, dtype=torch.bool)}, ValueError, "does not broadcast to the attention scores"),
        ((Q, K, V), {"attn_mask": torch.ones(3, 1, 2, 4, 4, dtype=torch.bool)}, ValueError, "more than the inputs"),
        ((Q, K, V), {"attn_mask": torch.ones(2, 2, 4, 4, dtype=torch.bool)}, ValueError, "does not broadcast"),
        ((Q, K, V), {"scale": float("nan")}, ValueError, "attention: invalid option: scale must be finite"),
        ((Q, K, V), {"scale": float("inf")}, ValueError, "scale must be finite"),
        ((Q.to("meta"), K, V), {}, ValueError, "query is on meta; fastattn runs on the CPU"),
        ((Q.to_sparse(), K, V), {}, TypeError, "strided"),
    ],
)
def test_sdpa_refuses(args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        sdpa(*args, **kwargs)


QF, KF, VF = qkv(2, 5, 4, 8)  # [B, L, H, D]


@pytest.mark.parametrize(
    "args,kwargs,exc,match",
    [
        ((QF[0], KF[0], VF[0]), {}, ValueError, r"q must be 4-D \[batch, seqlen, heads, headdim\]"),
        ((QF, KF[:1], VF[:1]), {}, ValueError, "attention: shape mismatch: batch sizes differ"),
        ((QF, KF[..., :3, :], VF[..., :3, :]), {}, ValueError, "query heads \\(4\\) must be a multiple of key/value heads \\(3\\)"),
        ((QF, KF, VF), {"window_size": (-2, 0)}, ValueError, "window_size"),
        ((QF, KF, VF), {"window_size": (1, 2, 3)}, ValueError, "window_size"),
        ((QF, KF, VF), {"softcap": -1.0}, ValueError, "softcap must be finite"),
        ((QF, KF, VF), {"softcap": float("nan")}, ValueError, "softcap"),
        ((QF, KF, VF), {"alibi_slopes": [0.1, 0.2]}, ValueError, "alibi_slopes has 2 values, Hq is 4"),
        ((QF, KF, VF), {"alibi_slopes": [[0.1] * 4, [0.2] * 4, [0.3] * 4]}, ValueError, "alibi_slopes has 3 rows"),
        ((QF, KF, VF), {"alibi_slopes": [float("inf")] * 4}, ValueError, "finite"),
        ((QF, KF, VF), {"alibi_slopes": "abc"}, TypeError, "alibi_slopes"),
        ((QF, KF, VF), {"kv_lengths": [5]}, ValueError, "kv_lengths has 1 values"),
        ((QF, KF, VF), {"kv_lengths": [5, 6]}, ValueError, "kv_lengths value 6 exceeds Lk = 5"),
        ((QF, KF, VF), {"kv_lengths": [5, -1]}, ValueError, "negative"),
        ((QF, KF, VF), {"kv_lengths": ["a", 1]}, TypeError, "kv_lengths"),
        ((QF, KF, VF), {"attn_mask": torch.ones(1, 1, 1, 5, 5, dtype=torch.bool)}, ValueError, "at most 4 dimensions"),
        ((QF, KF, VF), {"attn_mask": torch.ones(5, 4, dtype=torch.bool)}, ValueError, "does not broadcast"),
        ((QF, KF, VF), {"softmax_scale": float("inf")}, ValueError, "scale must be finite"),
        ((QF, KF, VF), {"dropout_p": 0.1}, ValueError, "dropout_p must be 0.0"),
        ((QF, KF, VF), {"path": "fast"}, ValueError, "path must be"),
        ((QF, KF, VF), {"variant": "sse9"}, ValueError, "sse9"),
        ((QF, KF, VF, False, None, (-1, -1), 0.0, None, False, None, None), {}, TypeError, "positional"),
    ],
)
def test_flash_refuses(args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        flash(*args, **kwargs)


def test_other_entry_points_refuse():
    with pytest.raises(ValueError, match="n >= 1"):
        fastattn.set_num_threads(0)
    with pytest.raises(ValueError, match="n >= 1"):
        fastattn.set_num_threads(-3)
    with pytest.raises(TypeError):
        fastattn.set_num_threads("two")
    with pytest.raises(TypeError, match="query must be"):
        fastattn.attention_weights(1, 2, 3)
    with pytest.raises(ValueError, match="different lengths"):
        fastattn.attention_weights(Q, K, V[:, :, :2])


def test_odd_but_valid_inputs_work():
    # A bool mask whose bytes are not 0/1 (a reinterpreted uint8 tensor) reads as != 0.
    raw = torch.tensor([[0, 2, 255, 1]] * 4, dtype=torch.uint8)
    odd = raw.view(torch.bool)
    good = raw != 0
    a = sdpa(Q, K, V, attn_mask=odd)
    b = sdpa(Q, K, V, attn_mask=good)
    assert torch.equal(a, b)
    # numpy bool mask with a reinterpreted byte too.
    raw_np = np.array([[0, 7, 1, 1]] * 4, dtype=np.uint8)
    c = sdpa(Q.numpy(), K.numpy(), V.numpy(), attn_mask=raw_np.view(np.bool_))
    d = sdpa(Q.numpy(), K.numpy(), V.numpy(), attn_mask=raw_np != 0)
    assert np.array_equal(c, d)
    # Empty sizes.
    assert sdpa(Q[:, :, :0], K, V).shape == (1, 2, 0, 8)
    assert (sdpa(Q, K[:, :, :0], V[:, :, :0]) == 0).all()
    assert sdpa(Q[:0], K[:0], V[:0]).shape == (0, 2, 4, 8)
    # Byte-swapped numpy input is copied to native order.
    qb = Q.numpy().astype(">f4")
    assert np.allclose(sdpa(qb, K.numpy(), V.numpy()), sdpa(Q.numpy(), K.numpy(), V.numpy()))


def test_blocktime_round_trips_and_results_do_not_depend_on_it():
    before = fastattn.get_blocktime()
    q = torch.rand(1, 8, 64, 32)
    k = torch.rand(1, 4, 300, 32)
    v = torch.rand(1, 4, 300, 32)
    want = fastattn.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    try:
        for ms, got_ms in [(0, 0.0), (2.5, 2.5), (-1, float("inf")), (float("inf"), float("inf"))]:
            fastattn.set_blocktime(ms)
            assert fastattn.get_blocktime() == got_ms
            out = fastattn.scaled_dot_product_attention(q, k, v, enable_gqa=True)
            assert torch.equal(out, want)
        with pytest.raises(ValueError, match="nan"):
            fastattn.set_blocktime(float("nan"))
        with pytest.raises(TypeError):
            fastattn.set_blocktime("fast")
    finally:
        fastattn.set_blocktime(before)
