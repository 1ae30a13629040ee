"""Bad input to the serving functions: a ValueError (TypeError for a wrong kind), and
nothing written."""

import numpy as np
import pytest
import torch

import fastattn


def packed(tq=6, tk=9, hq=4, hkv=2, d=8, dtype=torch.float32):
    gen = torch.Generator().manual_seed(40)
    return (
        torch.randn(tq, hq, d, generator=gen).to(dtype),
        torch.randn(tk, hkv, d, generator=gen).to(dtype),
        torch.randn(tk, hkv, d, generator=gen).to(dtype),
    )


@pytest.mark.parametrize(
    "cu_q, cu_k, why",
    [
        ([0, 4, 2, 6], [0, 3, 6, 9], "non-monotonic cu_seqlens_q"),
        ([0, 2, 4, 6], [0, 5, 3, 9], "non-monotonic cu_seqlens_k"),
        ([0, 2, 4, 5], [0, 3, 6, 9], "cu_seqlens_q ends before Tq"),
        ([0, 2, 4, 6], [0, 3, 6, 10], "cu_seqlens_k ends past Tk"),
        ([1, 2, 4, 6], [0, 3, 6, 9], "cu_seqlens_q starts past 0"),
        ([0, 2, 4, 6], [0, 3, 9], "cu_seqlens of different batches"),
        ([0, -2, 4, 6], [0, 3, 6, 9], "negative offset"),
    ],
)
def test_bad_cu_seqlens(cu_q, cu_k, why):
    q, k, v = packed()
    with pytest.raises(ValueError):
        fastattn.flash_attn_varlen_func(q, k, v, np.array(cu_q, np.int32), np.array(cu_k, np.int64), 4, 4)


def test_bad_shapes_and_options():
    q, k, v = packed()
    cu_q, cu_k = np.array([0, 6], np.int32), np.array([0, 9], np.int32)
    with pytest.raises(ValueError):  # heads that do not group
        fastattn.flash_attn_varlen_func(q[:, :3], k, v, cu_q, cu_k, 6, 9)
    with pytest.raises(ValueError):  # K and V heads differ
        fastattn.flash_attn_varlen_func(q, k, v[:, :1], cu_q, cu_k, 6, 9)
    with pytest.raises(ValueError):  # head dims differ
        fastattn.flash_attn_varlen_func(q[..., :4], k, v, cu_q, cu_k, 6, 9)
    with pytest.raises(ValueError):  # 4-D q
        fastattn.flash_attn_varlen_func(q[None], k, v, cu_q, cu_k, 6, 9)
    with pytest.raises(ValueError):
        fastattn.flash_attn_varlen_func(q, k, v, cu_q, cu_k, 6, 9, dropout_p=0.1)
    with pytest.raises(ValueError):  # sinks: one per query head
        fastattn.flash_attn_varlen_func(q, k, v, cu_q, cu_k, 6, 9, s_aux=torch.zeros(3))
    with pytest.raises(ValueError):  # float index arrays
        fastattn.flash_attn_varlen_func(q, k, v, np.array([0.0, 6.0]), cu_k, 6, 9)
    with pytest.raises(TypeError):  # bool is no attention input
        fastattn.flash_attn_varlen_func(q > 0, k, v, cu_q, cu_k, 6, 9)


def paged_setup():
    q, k, v = packed(tq=2, tk=8)
    kc = torch.randn(4, 4, 2, 8)
    vc = torch.randn(4, 4, 2, 8)
    return q, kc, vc


@pytest.mark.parametrize(
    "table, used, why",
    [
        ([[0, 5], [1, 2]], [8, 8], "block index out of range where read"),
        ([[0, -1], [1, 2]], [8, 8], "negative block where read"),
        ([[0, 3], [1, 2]], [9, 8], "seqused_k above the pages held"),
        ([[0, 3], [1, 2]], [-1, 8], "negative seqused_k"),
    ],
)
def test_bad_block_tables(table, used, why):
    q, kc, vc = paged_setup()
    cu_q = np.array([0, 1, 2], np.int32)
    with pytest.raises(ValueError):
        fastattn.flash_attn_varlen_func(
            q, kc, vc, cu_q, None, 1, 8, block_table=np.array(table, np.int32),
            seqused_k=np.array(used, np.int32),
        )
    # Padding past a sequence's last page is never read: -1 there is fine.
    fastattn.flash_attn_varlen_func(
        q, kc, vc, cu_q, None, 1, 8, block_table=np.array([[0, -1], [1, 2]], np.int32),
        seqused_k=np.array([4, 8], np.int32),
    )


def test_paged_kv_write_refuses_and_writes_nothing():
    k, v = torch.randn(3, 2, 8), torch.randn(3, 2, 8)
    kc, vc = torch.zeros(2, 4, 2, 8), torch.zeros(2, 4, 2, 8)
    bad = [
        ([0, 1, 8], "slot beyond the cache"),
        ([0, -2, 3], "slot below -1"),
        ([0, 1], "one slot short"),
    ]
    for slots, why in bad:
        with pytest.raises(ValueError):
            fastattn.paged_kv_write(k, v, kc, vc, np.array(slots, np.int64))
        assert (kc == 0).all() and (vc == 0).all(), why
    with pytest.raises(ValueError):  # heads differ
        fastattn.paged_kv_write(k[:, :1], v[:, :1], kc, vc, [0, 1, 2])
    with pytest.raises((ValueError, TypeError)):  # caches of two dtypes
        fastattn.paged_kv_write(k, v, kc, vc.bfloat16(), [0, 1, 2])
    both = torch.zeros(2, 2, 4, 2, 8)
    with pytest.raises(ValueError):  # the same memory twice (overlapping outputs)
        fastattn.paged_kv_write(k, v, both[0], both[0], [0, 1, 2])
    with pytest.raises(ValueError):  # a source inside a cache
        fastattn.paged_kv_write(kc[0, :3], v, kc, vc, [4, 5, 6])
    ro = np.zeros((2, 4, 2, 8), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError):
        fastattn.paged_kv_write(k.numpy(), v.numpy(), ro, np.zeros_like(ro), [0, 1, 2])
    assert (kc == 0).all() and (vc == 0).all() and (both == 0).all()


def test_kvcache_refuses_before_writing():
    gen = torch.Generator().manual_seed(41)
    q = torch.randn(2, 1, 4, 8, generator=gen)
    kc, vc = torch.zeros(2, 6, 2, 8), torch.zeros(2, 6, 2, 8)
    kn, vn = torch.ones(2, 1, 2, 8), torch.ones(2, 1, 2, 8)
    with pytest.raises(ValueError):  # the new row does not fit
        fastattn.flash_attn_with_kvcache(q, kc, vc, kn, vn, cache_seqlens=[3, 6])
    with pytest.raises(ValueError):  # q heads do not group over the cache's
        fastattn.flash_attn_with_kvcache(q[:, :, :3], kc, vc, kn, vn, cache_seqlens=[3, 4])
    with pytest.raises(ValueError):  # a page outside the cache where the row goes
        fastattn.flash_attn_with_kvcache(
            q, kc, vc, kn, vn, cache_seqlens=[3, 4], block_table=np.array([[0], [7]], np.int32)
        )
    assert (kc == 0).all() and (vc == 0).all()
