#!/usr/bin/env python3
"""fastattn from Python: ``fa_sdpa`` on numpy arrays through ctypes, checked against numpy.

float32, float16 (numpy's own) and bfloat16 (``uint16`` arrays of the bits; numpy has no
bfloat16) arrays can be mixed freely for Q, K, V and the output.

Build the shared library, then run this script from anywhere::

    cargo build --release -p fastattn-capi
    python3 examples/python/sdpa_demo.py

The library is ``$FASTATTN_LIB`` if set, else the newest of ``target/release`` and
``target/debug`` under the repository root (``libfastattn_capi.so``, ``.dylib`` or
``fastattn_capi.dll``). Exits 0 when every check passes. Needs numpy.
"""

import ctypes
import math
import os
import pathlib
import sys

import numpy as np

FA_OK = 0
FA_ERR_NULL_POINTER = -1
FA_ERR_BAD_SHAPE = -2
FA_ERR_BAD_STRIDE = -3
FA_ERR_UNSUPPORTED_VARIANT = -4
FA_ERR_INVALID_ARGUMENT = -7

# fa_dtype
FA_DTYPE_F32 = 0
FA_DTYPE_F16 = 1
FA_DTYPE_BF16 = 2


class FaTensor(ctypes.Structure):
    """``fa_tensor``: a strided [B, H, L, D] view of float32, float16 or bfloat16 values."""

    _fields_ = [
        ("data", ctypes.c_void_p),
        ("dims", ctypes.c_size_t * 4),
        ("strides", ctypes.c_ssize_t * 4),  # ptrdiff_t, in elements
        ("dtype", ctypes.c_int32),  # fa_dtype; 0 (FA_DTYPE_F32) in a zero-filled struct
    ]


class FaSdpaOptions(ctypes.Structure):
    """``fa_sdpa_options``, field for field."""

    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("scale", ctypes.c_float),
        ("causal", ctypes.c_int32),
        ("mask", ctypes.POINTER(FaTensor)),
        ("kv_lengths", ctypes.POINTER(ctypes.c_int64)),
        ("window_left", ctypes.c_int64),
        ("window_right", ctypes.c_int64),
        ("softcap", ctypes.c_float),
        ("alibi_slopes", ctypes.POINTER(ctypes.c_float)),
        ("weights", ctypes.POINTER(FaTensor)),
        ("lse", ctypes.POINTER(ctypes.c_float)),
        ("sinks", ctypes.POINTER(ctypes.c_float)),  # ABI 4
        ("k_scale", ctypes.POINTER(FaTensor)),  # ABI 6: scales of an 8-bit K
        ("v_scale", ctypes.POINTER(FaTensor)),  # ABI 6: scales of an 8-bit V
    ]


def find_library():
    """``$FASTATTN_LIB``, else the newest build under target/ of the repository."""
    env = os.environ.get("FASTATTN_LIB")
    if env:
        return env
    root = pathlib.Path(__file__).resolve().parents[2]
    names = {"darwin": "libfastattn_capi.dylib", "win32": "fastattn_capi.dll"}
    name = names.get(sys.platform, "libfastattn_capi.so")
    found = [root / "target" / p / name for p in ("release", "debug")]
    found = [p for p in found if p.exists()]
    if not found:
        sys.exit(
            f"{name} not found under {root / 'target'}: run "
            "`cargo build --release -p fastattn-capi` or set FASTATTN_LIB"
        )
    return str(max(found, key=lambda p: p.stat().st_mtime))


def load(path):
    lib = ctypes.CDLL(path)
    t_ptr = ctypes.POINTER(FaTensor)
    lib.fa_sdpa.argtypes = [t_ptr, t_ptr, t_ptr, t_ptr, ctypes.POINTER(FaSdpaOptions)]
    lib.fa_sdpa.restype = ctypes.c_int
    lib.fa_sdpa_options_init.argtypes = [ctypes.POINTER(FaSdpaOptions), ctypes.c_size_t]
    lib.fa_sdpa_options_init.restype = ctypes.c_int
    lib.fa_abi_version.argtypes = []
    lib.fa_abi_version.restype = ctypes.c_uint32
    lib.fa_softmax.argtypes = [ctypes.POINTER(ctypes.c_float), ctypes.c_size_t, ctypes.c_size_t]
    lib.fa_softmax.restype = ctypes.c_int
    lib.fa_set_num_threads.argtypes = [ctypes.c_int]
    lib.fa_set_num_threads.restype = ctypes.c_int
    lib.fa_set_blocktime_us.argtypes = [ctypes.c_int64]
    lib.fa_set_blocktime_us.restype = ctypes.c_int
    lib.fa_blocktime_us.argtypes = []
    lib.fa_blocktime_us.restype = ctypes.c_int64
    lib.fa_set_variant.argtypes = [ctypes.c_char_p]
    lib.fa_set_variant.restype = ctypes.c_int
    for f in ("fa_version", "fa_variant_name", "fa_last_error"):
        getattr(lib, f).argtypes = []
        getattr(lib, f).restype = ctypes.c_char_p
    return lib


def to_bf16(x):
    """The bfloat16 bits (``uint16``) of ``x`` rounded to nearest, ties to even."""
    bits = np.ascontiguousarray(x, np.float32).view(np.uint32)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))) >> 16
    nan = np.isnan(x)
    rounded = np.where(nan, (bits >> 16) | np.uint32(0x40), rounded)
    return rounded.astype(np.uint16)


def from_bf16(b):
    """The float32 values of bfloat16 bits (``uint16``)."""
    return (np.ascontiguousarray(b, np.uint16).astype(np.uint32) << 16).view(np.float32)


def widen(a, bf16=False):
    """float32 values of a float32, float16 or (``bf16``) bfloat16-bits array."""
    return from_bf16(a) if bf16 else a.astype(np.float32)


def tensor(a, bf16=False):
    """An ``FaTensor`` viewing the numpy array ``a`` (any non-negative strides): float32,
    float16, or with ``bf16`` a ``uint16`` array of bfloat16 bits.

    The array must stay alive while the tensor is used."""
    assert a.ndim == 4
    if bf16:
        assert a.dtype == np.uint16
        dtype = FA_DTYPE_BF16
    else:
        dtype = {np.dtype(np.float32): FA_DTYPE_F32, np.dtype(np.float16): FA_DTYPE_F16}[a.dtype]
    t = FaTensor()
    t.data = a.ctypes.data
    t.dims[:] = a.shape
    t.strides[:] = [s // a.itemsize for s in a.strides]
    t.dtype = dtype
    return t


class FastAttn:
    """A small Pythonic wrapper over the C functions."""

    #: The C ABI version these ctypes declarations match (``FA_ABI_VERSION``).
    ABI_VERSION = 6

    def __init__(self, path):
        self.lib = load(path)
        got = self.lib.fa_abi_version()
        if got != self.ABI_VERSION:
            raise RuntimeError(f"{path} has C ABI {got}; this script speaks {self.ABI_VERSION}")

    def check(self, rc):
        if rc != FA_OK:
            raise RuntimeError(f"fastattn error {rc}: {self.lib.fa_last_error().decode()}")

    def sdpa(self, q, k, v, *, causal=False, mask=None, kv_lengths=None, scale=0.0,
             want_weights=False, want_lse=False, bf16=(), out_dtype="f32"):
        """Attention of [B, H, L, D] arrays; returns (out, weights, lse).

        Q, K and V are float32 or float16 arrays, or ``uint16`` bfloat16 bits for those
        named in ``bf16`` (e.g. ``bf16=("k", "v")``); ``out_dtype`` is ``"f32"``, ``"f16"``
        or ``"bf16"`` (then ``out`` holds bfloat16 bits). The mask, weights and
        log-sum-exp are float32."""
        b, hq, lq, _ = q.shape
        lk, dv = k.shape[2], v.shape[3]
        out_np = {"f32": np.float32, "f16": np.float16, "bf16": np.uint16}[out_dtype]
        out = np.empty((b, hq, lq, dv), out_np)
        opts = FaSdpaOptions()
        self.check(self.lib.fa_sdpa_options_init(ctypes.byref(opts), ctypes.sizeof(opts)))
        opts.scale = scale
        opts.causal = int(causal)
        keep = []  # keeps the ctypes objects the options point to alive
        if mask is not None:
            mt = tensor(mask)
            keep.append(mt)
            opts.mask = ctypes.pointer(mt)
        if kv_lengths is not None:
            lens = np.ascontiguousarray(kv_lengths, np.int64)
            keep.append(lens)
            opts.kv_lengths = lens.ctypes.data_as(ctypes.POINTER(ctypes.c_int64))
        weights = lse = None
        if want_weights:
            weights = np.empty((b, hq, lq, lk), np.float32)
            wt = tensor(weights)
            keep.append(wt)
            opts.weights = ctypes.pointer(wt)
        if want_lse:
            lse = np.empty((b, hq, lq), np.float32)
            opts.lse = lse.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        qt, kt, vt = tensor(q, "q" in bf16), tensor(k, "k" in bf16), tensor(v, "v" in bf16)
        ot = tensor(out, out_dtype == "bf16")
        self.check(self.lib.fa_sdpa(qt, kt, vt, ot, ctypes.byref(opts)))
        return out, weights, lse


def sdpa_ref(q, k, v, causal=False, mask=None, kv_lengths=None):
    """numpy reference in float64, with fastattn's semantics (bottom-right causal, GQA)."""
    q, k, v = (x.astype(np.float64) for x in (q, k, v))
    b, hq, lq, d = q.shape
    lk = k.shape[2]
    group = hq // k.shape[1]
    k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
    s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(d)
    if mask is not None:
        s = s + mask
    lens = kv_lengths if kv_lengths is not None else [lk] * b
    j = np.arange(lk)[None, :]
    for bi in range(b):
        pos = np.arange(lq)[:, None] + lens[bi] - lq
        visible = j < lens[bi]
        if causal:
            visible = visible & (j <= pos)
        s[bi] = np.where(visible, s[bi], -np.inf)
    m = s.max(axis=-1, keepdims=True)
    p = np.exp(s - np.where(np.isfinite(m), m, 0.0))
    total = p.sum(axis=-1, keepdims=True)
    w = np.divide(p, total, out=np.zeros_like(p), where=total > 0)
    with np.errstate(divide="ignore"):
        lse = np.where(total > 0, m + np.log(total), -np.inf)[..., 0]
    return w @ v, w, lse


def main():
    fa = FastAttn(find_library())
    lib = fa.lib
    print(f"fastattn {lib.fa_version().decode()}, kernels: {lib.fa_variant_name().decode()}")
    rng = np.random.default_rng(7)
    results = []

    def expect(ok, what):
        print(("ok   " if ok else "FAIL ") + what)
        results.append(bool(ok))

    b, hq, hkv, lq, lk, d, dv = 2, 8, 2, 7, 19, 32, 24
    # Q kept [B, L, H, D] as model code does, and passed as a [B, H, L, D] view (no copy).
    q = rng.standard_normal((b, lq, hq, d), dtype=np.float32).transpose(0, 2, 1, 3)
    k = rng.standard_normal((b, hkv, lk, d), dtype=np.float32)
    v = rng.standard_normal((b, hkv, lk, dv), dtype=np.float32)

    out, _, _ = fa.sdpa(q, k, v)
    want, _, _ = sdpa_ref(q, k, v)
    err = np.abs(out - want).max()
    expect(err < 1e-5, f"fa_sdpa defaults, GQA 8:2, [B, L, H, D] query view: max error {err:.2e}")

    out, w, lse = fa.sdpa(q, k, v, causal=True, want_weights=True, want_lse=True)
    want, want_w, want_lse = sdpa_ref(q, k, v, causal=True)
    err = max(np.abs(out - want).max(), np.abs(w - want_w).max(), np.abs(lse - want_lse).max())
    expect(err < 1e-4, f"fa_sdpa causal with weights and log-sum-exp: max error {err:.2e}")

    # An additive [1, 1, Lq, Lk] mask broadcast over batch and heads (stride 0), and padding.
    mask = np.broadcast_to(rng.standard_normal((1, 1, lq, lk), dtype=np.float32), (b, hq, lq, lk))
    lens = [lk, 11]
    out, _, _ = fa.sdpa(q, k, v, mask=mask, kv_lengths=lens)
    want, _, _ = sdpa_ref(q, k, v, mask=mask, kv_lengths=lens)
    err = np.abs(out - want).max()
    expect(err < 1e-5, f"fa_sdpa additive mask and key lengths: max error {err:.2e}")

    # 16-bit tensors: f32 Q, bf16 K and V, an f16 output; then f16 Q, K, V and a bf16
    # output with a mask. The reference runs on the widened (rounded) inputs; the output
    # may differ from it by the output type's rounding, at most half an ulp: 2^-11 (f16)
    # or 2^-8 (bf16) relative to the value.
    def close16(got, want, rel):
        return float((np.abs(got - want) / (1e-5 + rel * np.abs(want))).max())

    kb, vb = to_bf16(k), to_bf16(v)
    out, _, lse = fa.sdpa(q, kb, vb, causal=True, want_lse=True, bf16=("k", "v"),
                          out_dtype="f16")
    want, _, want_lse = sdpa_ref(q, from_bf16(kb), from_bf16(vb), causal=True)
    err = close16(widen(out), want, 2.0**-11)
    lse_err = np.abs(lse - want_lse).max()
    expect(out.dtype == np.float16 and err <= 1 and lse_err < 1e-4,
           f"fa_sdpa f32 q, bf16 k/v, f16 out: {err:.2f} of the tolerance, lse {lse_err:.1e}")
    qh, kh, vh = q.astype(np.float16), k.astype(np.float16), v.astype(np.float16)
    out, _, _ = fa.sdpa(qh, kh, vh, mask=mask, kv_lengths=lens, out_dtype="bf16")
    want, _, _ = sdpa_ref(widen(qh), widen(kh), widen(vh), mask=mask, kv_lengths=lens)
    err = close16(widen(out, bf16=True), want, 2.0**-8)
    expect(out.dtype == np.uint16 and err <= 1,
           f"fa_sdpa f16 q/k/v, bf16 out, mask: {err:.2f} of the tolerance")
    ties = to_bf16(np.float32([1.0, 1.00390625, 1.01171875])).tolist()
    expect(ties == [0x3F80, 0x3F80, 0x3F82], "bf16 conversion rounds to nearest even")
    # A 16-bit mask and a dtype that is not an fa_dtype are refused.
    try:
        fa.sdpa(q, k, v, mask=mask.astype(np.float16))
        expect(False, "a float16 mask is refused")
    except RuntimeError as e:
        expect(f"error {FA_ERR_INVALID_ARGUMENT}:" in str(e), f"a float16 mask is refused ({e})")
    qt, kt, vt = tensor(q), tensor(k), tensor(v)
    o = np.zeros((b, hq, lq, dv), np.float32)
    ot = tensor(o)
    kt.dtype = 99  # no fa_dtype (0-2 are floats, 3-5 the 8-bit K/V codes of ABI 6)
    rc = lib.fa_sdpa(qt, kt, vt, ot, None)
    msg = lib.fa_last_error().decode()
    expect(rc == FA_ERR_INVALID_ARGUMENT and "k->dtype is 99" in msg and not o.any(),
           f"an unknown dtype is refused ({msg})")

    x = rng.standard_normal((5, 33), dtype=np.float32) * 10
    y = x.copy()
    fa.check(lib.fa_softmax(y.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), 5, 33))
    e = np.exp(x - x.max(axis=1, keepdims=True))
    err = np.abs(y - e / e.sum(axis=1, keepdims=True)).max()
    expect(err < 1e-6, f"fa_softmax: max error {err:.2e}")

    # Errors come back as codes, with a message.
    bad_k = np.zeros((b, hkv, lk, d + 1), np.float32)
    try:
        fa.sdpa(q, bad_k, v)
        expect(False, "mismatched head dims are refused")
    except RuntimeError as e:
        expect(f"error {FA_ERR_BAD_SHAPE}:" in str(e), f"mismatched head dims are refused ({e})")
    rc = lib.fa_sdpa(None, None, None, None, None)
    expect(rc == FA_ERR_NULL_POINTER, "NULL tensors are refused")
    expect(lib.fa_set_variant(b"sse9") == FA_ERR_UNSUPPORTED_VARIANT, "unknown variant refused")
    expect(lib.fa_set_num_threads(2) == FA_OK, "fa_set_num_threads(2)")
    out, _, _ = fa.sdpa(q, k, v, causal=True)
    want, _, _ = sdpa_ref(q, k, v, causal=True)
    expect(np.abs(out - want).max() < 1e-5, "fa_sdpa on 2 threads")
    # Helpers that sleep as soon as a call ends: the next call wakes them and does not
    # wait for them.
    blocktime = lib.fa_blocktime_us()
    expect(lib.fa_set_blocktime_us(0) == FA_OK and lib.fa_blocktime_us() == 0, "blocktime 0")
    out, _, _ = fa.sdpa(q, k, v, causal=True)
    expect(np.abs(out - want).max() < 1e-5, "fa_sdpa with sleeping helpers")
    lib.fa_set_blocktime_us(blocktime)
    lib.fa_set_num_threads(0)

    failed = results.count(False)
    print(f"{len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
