//! `fa_sdpa_backward` called from Rust: its gradients equal `attention::sdpa_backward` bit
//! for bit (f32 and 16-bit inputs, causal, GQA, strided gradient views), and each refusal
//! has its status code, its message and writes nothing.

// Options are set field by field after their defaults, as a C caller does after
// `fa_sdpa_options_init`.
#![allow(clippy::field_reassign_with_default)]

use attention::{bf16, f16, DType, Element, SdpaOptions, TensorRef};
use fastattn_capi::fa_dtype::{FA_DTYPE_BF16, FA_DTYPE_F16, FA_DTYPE_F32};
use fastattn_capi::*;
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::ffi::{c_int, CStr};
use std::ptr::{null, null_mut};
use testutil::rand_vec;

const OK: c_int = fa_status::FA_OK as c_int;

fn code(s: fa_status) -> c_int {
    s as c_int
}

fn last_error() -> String {
    // SAFETY: fa_last_error returns a NUL-terminated string valid until the next failure on
    // this thread; it is copied at once.
    unsafe { CStr::from_ptr(fa_last_error()) }
        .to_string_lossy()
        .into_owned()
}

fn dense_strides(dims: [usize; 4]) -> [isize; 4] {
    let [_, h, l, d] = dims;
    [(h * l * d) as isize, (l * d) as isize, d as isize, 1]
}

/// `[B, L, H, D]` memory seen as `[B, H, L, D]`.
fn blhd_strides(dims: [usize; 4]) -> [isize; 4] {
    let [_, h, l, d] = dims;
    [(l * h * d) as isize, d as isize, (h * d) as isize, 1]
}

fn usize_strides(s: [isize; 4]) -> [usize; 4] {
    s.map(|x| x as usize)
}

/// Elements a view with these extents and (non-negative) strides reaches.
fn reach(dims: [usize; 4], strides: [isize; 4]) -> usize {
    1 + dims
        .iter()
        .zip(strides)
        .map(|(&d, s)| (d - 1) * s as usize)
        .sum::<usize>()
}

/// An `fa_tensor` over `data` of element type `T` (f32, f16 or bf16).
fn tensor<T: Element>(data: &mut [T], dims: [usize; 4], strides: [isize; 4]) -> fa_tensor {
    let dtype = match T::DTYPE {
        DType::F32 => FA_DTYPE_F32,
        DType::F16 => FA_DTYPE_F16,
        DType::BF16 => FA_DTYPE_BF16,
    };
    fa_tensor {
        data: data.as_mut_ptr().cast(),
        dims,
        strides,
        dtype: dtype as i32,
    }
}

/// The elements of a strided view, in `[B, H, L, D]` order.
fn gather(data: &[f32], dims: [usize; 4], strides: [isize; 4]) -> Vec<f32> {
    let s = usize_strides(strides);
    let mut out = Vec::new();
    for a in 0..dims[0] {
        for b in 0..dims[1] {
            for c in 0..dims[2] {
                for d in 0..dims[3] {
                    out.push(data[a * s[0] + b * s[1] + c * s[2] + d * s[3]]);
                }
            }
        }
    }
    out
}

/// Marks the elements of `data` that a strided view reaches.
fn reached(len: usize, dims: [usize; 4], strides: [isize; 4]) -> Vec<bool> {
    let s = usize_strides(strides);
    let mut hit = vec![false; len];
    for a in 0..dims[0] {
        for b in 0..dims[1] {
            for c in 0..dims[2] {
                for d in 0..dims[3] {
                    hit[a * s[0] + b * s[1] + c * s[2] + d * s[3]] = true;
                }
            }
        }
    }
    hit
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

const SENTINEL: f32 = 42.0;

/// A gradient view with its strides, over a sentinel-filled buffer.
struct Grad {
    buf: Vec<f32>,
    dims: [usize; 4],
    strides: [isize; 4],
}

impl Grad {
    fn new(dims: [usize; 4], strides: [isize; 4]) -> Grad {
        Grad {
            buf: vec![SENTINEL; reach(dims, strides)],
            dims,
            strides,
        }
    }

    fn view(&mut self) -> fa_tensor {
        tensor(&mut self.buf, self.dims, self.strides)
    }

    /// The gradient in `[B, H, L, D]` order, after checking that the elements outside the
    /// view kept their sentinel.
    fn values(&self, label: &str) -> Vec<f32> {
        let hit = reached(self.buf.len(), self.dims, self.strides);
        for (i, (&x, h)) in self.buf.iter().zip(hit).enumerate() {
            assert!(
                h || x == SENTINEL,
                "{label}: element {i} outside the view written"
            );
        }
        gather(&self.buf, self.dims, self.strides)
    }
}

/// One backward case: Q in the `[B, L, H, D]` layout, K, V, O and dO dense, of the element
/// types `Q`, `KV` (K and V), `O` and `G` (dO); the gradients in padded or permuted views.
/// The forward runs through `fa_sdpa` (giving O and the LSE), the gradients through
/// `fa_sdpa_backward` with the forward's options struct (its `lse` pointer still set), and
/// they must equal `attention::sdpa_backward` on the same data bit for bit.
fn backward_case<Q: Element, KV: Element, O: Element, G: Element>(
    seed: u64,
    [b, hq, hkv, lq, lk, d, dv]: [usize; 7],
    c_opts: impl FnOnce(&mut fa_sdpa_options),
    rust_opts: SdpaOptions<'_>,
) {
    let label = format!(
        "q {:?}, k/v {:?}, out {:?}, grad_out {:?}, dims {:?} (seed {seed})",
        Q::DTYPE,
        KV::DTYPE,
        O::DTYPE,
        G::DTYPE,
        [b, hq, hkv, lq, lk, d, dv]
    );
    let mut rng = StdRng::seed_from_u64(seed);
    let (qd, kd, vd, od) = (
        [b, hq, lq, d],
        [b, hkv, lk, d],
        [b, hkv, lk, dv],
        [b, hq, lq, dv],
    );
    let mut q: Vec<Q> = rand_vec(&mut rng, b * hq * lq * d)
        .into_iter()
        .map(Q::from_f32)
        .collect();
    let mut k: Vec<KV> = rand_vec(&mut rng, b * hkv * lk * d)
        .into_iter()
        .map(KV::from_f32)
        .collect();
    let mut v: Vec<KV> = rand_vec(&mut rng, b * hkv * lk * dv)
        .into_iter()
        .map(KV::from_f32)
        .collect();
    let mut d_o: Vec<G> = rand_vec(&mut rng, b * hq * lq * dv)
        .into_iter()
        .map(G::from_f32)
        .collect();
    let mut o: Vec<O> = vec![O::from_f32(f32::NAN); b * hq * lq * dv];
    let mut lse = vec![f32::NAN; b * hq * lq];
    let q_strides = blhd_strides(qd);

    let mut opts = fa_sdpa_options::default();
    c_opts(&mut opts);
    opts.lse = lse.as_mut_ptr();
    let (tq, tk, tv) = (
        tensor(&mut q, qd, q_strides),
        tensor(&mut k, kd, dense_strides(kd)),
        tensor(&mut v, vd, dense_strides(vd)),
    );
    let mut to = tensor(&mut o, od, dense_strides(od));
    // SAFETY: every tensor describes a live buffer of its type and size; the outputs are
    // distinct from each other and the inputs.
    let rc = unsafe { fa_sdpa(&tq, &tk, &tv, &mut to, &opts) };
    assert_eq!(rc, OK, "{label}: forward: {}", last_error());

    // dQ in Q's [B, L, H, D] layout, dK with padded rows, dV with the L and D axes swapped.
    let mut gq = Grad::new(qd, q_strides);
    let mut gk = Grad::new(
        kd,
        [
            (hkv * lk * (d + 3)) as isize,
            (lk * (d + 3)) as isize,
            (d + 3) as isize,
            1,
        ],
    );
    let mut gv = Grad::new(
        vd,
        [(hkv * lk * dv) as isize, (lk * dv) as isize, 1, lk as isize],
    );
    let tgo = tensor(&mut d_o, od, dense_strides(od));
    let (mut tgq, mut tgk, mut tgv) = (gq.view(), gk.view(), gv.view());
    // SAFETY: as above; the gradients are distinct f32 buffers of their views' reach;
    // `lse` holds B*Hq*Lq floats (and `opts.lse`, pointing at it, is not accessed).
    let rc = unsafe {
        fa_sdpa_backward(
            &tq,
            &tk,
            &tv,
            &to,
            &tgo,
            lse.as_ptr(),
            lse.len(),
            &mut tgq,
            &mut tgk,
            &mut tgv,
            &opts,
        )
    };
    assert_eq!(rc, OK, "{label}: backward: {}", last_error());

    let want = attention::sdpa_backward(
        TensorRef::new(&q, qd, usize_strides(q_strides)).unwrap(),
        TensorRef::contiguous(&k, kd).unwrap(),
        TensorRef::contiguous(&v, vd).unwrap(),
        TensorRef::contiguous(&o, od).unwrap(),
        TensorRef::contiguous(&d_o, od).unwrap(),
        &lse,
        &rust_opts,
    )
    .unwrap();
    for (name, got, want) in [
        ("grad_q", gq.values(&label), &want.dq),
        ("grad_k", gk.values(&label), &want.dk),
        ("grad_v", gv.values(&label), &want.dv),
    ] {
        assert_eq!(bits(&got), bits(want), "{label}: {name}");
        assert!(
            got.iter().all(|x| x.is_finite()) && got.iter().any(|&x| x != 0.0),
            "{label}: {name} is degenerate"
        );
    }
}

#[test]
fn backward_f32_equals_sdpa_backward_bit_for_bit() {
    // Two key blocks (Lk > BWD_KEY_BLOCK), GQA (2 query heads per K/V head), odd sizes.
    let dims = [2, 4, 2, 37, 150, 24, 13];
    let lens_c = [150i64, 101];
    let lens = [150usize, 101];
    let slopes = [0.5f32, 0.25, 0.125, 0.0625];
    backward_case::<f32, f32, f32, f32>(
        2101,
        dims,
        |o| {
            o.causal = 1;
            o.kv_lengths = lens_c.as_ptr();
            o.softcap = 5.0;
            o.alibi_slopes = slopes.as_ptr();
        },
        SdpaOptions::new()
            .with_causal(true)
            .with_kv_lengths(Some(&lens))
            .with_softcap(Some(5.0))
            .with_alibi_slopes(Some(&slopes)),
    );
    // Causal MQA (3 query heads on one K/V head); MQA with a window and an explicit scale.
    backward_case::<f32, f32, f32, f32>(
        2102,
        [1, 3, 1, 9, 9, 8, 8],
        |o| o.causal = 1,
        SdpaOptions::new().with_causal(true),
    );
    backward_case::<f32, f32, f32, f32>(
        2103,
        [1, 6, 1, 20, 33, 16, 5],
        |o| {
            o.window_left = 7;
            o.window_right = 2;
            o.scale = 0.3;
        },
        SdpaOptions::new()
            .with_window_left(Some(7))
            .with_window_right(Some(2))
            .with_scale(Some(0.3)),
    );
}

#[test]
fn backward_bf16_inputs_equal_sdpa_backward_bit_for_bit() {
    let dims = [2, 4, 2, 21, 140, 16, 12];
    // bf16 Q, K, V and output (as a bf16 model stores them), f32 output gradient.
    backward_case::<bf16, bf16, bf16, f32>(
        2111,
        dims,
        |o| o.causal = 1,
        SdpaOptions::new().with_causal(true),
    );
    // Every 16-bit input, an f16 output gradient.
    backward_case::<bf16, bf16, bf16, f16>(
        2112,
        dims,
        |o| o.causal = 1,
        SdpaOptions::new().with_causal(true),
    );
    // A mix: f16 Q, bf16 K and V, f32 output, bf16 output gradient.
    backward_case::<f16, bf16, f32, bf16>(
        2113,
        [1, 4, 1, 7, 30, 8, 8],
        |o| o.causal = 1,
        SdpaOptions::new().with_causal(true),
    );
}

/// A small valid call: B 1, Hq 2, Hkv 1, Lq 3, Lk 5, D 4, Dv 2 (every extent distinct
/// enough that a swapped one is a shape error).
struct Fixture {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    o: Vec<f32>,
    d_o: Vec<f32>,
    /// The 6 LSE values, then room a gradient may be pointed into.
    lse: Vec<f32>,
    gq: Vec<f32>,
    gk: Vec<f32>,
    gv: Vec<f32>,
}

const QD: [usize; 4] = [1, 2, 3, 4];
const KD: [usize; 4] = [1, 1, 5, 4];
const VD: [usize; 4] = [1, 1, 5, 2];
const OD: [usize; 4] = [1, 2, 3, 2];
const ROWS: usize = 6;

/// The arguments of one call, to break one at a time.
struct Args {
    q: fa_tensor,
    k: fa_tensor,
    v: fa_tensor,
    o: fa_tensor,
    d_o: fa_tensor,
    lse: *const f32,
    lse_len: usize,
    gq: fa_tensor,
    gk: fa_tensor,
    gv: fa_tensor,
    opts: fa_sdpa_options,
    /// Pass NULL for this argument (by name).
    null: &'static str,
}

impl Fixture {
    fn new() -> Fixture {
        let mut rng = StdRng::seed_from_u64(2120);
        let mut f = Fixture {
            q: rand_vec(&mut rng, 24),
            k: rand_vec(&mut rng, 20),
            v: rand_vec(&mut rng, 10),
            o: vec![0.0; 12],
            d_o: rand_vec(&mut rng, 12),
            lse: vec![0.0; 30],
            gq: vec![SENTINEL; 24],
            gk: vec![SENTINEL; 20],
            gv: vec![SENTINEL; 10],
        };
        let mut opts = fa_sdpa_options::default();
        opts.causal = 1;
        opts.lse = f.lse.as_mut_ptr();
        let (q, k, v) = (
            tensor(&mut f.q, QD, dense_strides(QD)),
            tensor(&mut f.k, KD, dense_strides(KD)),
            tensor(&mut f.v, VD, dense_strides(VD)),
        );
        let mut o = tensor(&mut f.o, OD, dense_strides(OD));
        // SAFETY: live dense buffers of their views' sizes; `lse` has room for 6 floats.
        let rc = unsafe { fa_sdpa(&q, &k, &v, &mut o, &opts) };
        assert_eq!(rc, OK, "{}", last_error());
        f
    }

    fn args(&mut self) -> Args {
        let mut opts = fa_sdpa_options::default();
        opts.causal = 1;
        Args {
            q: tensor(&mut self.q, QD, dense_strides(QD)),
            k: tensor(&mut self.k, KD, dense_strides(KD)),
            v: tensor(&mut self.v, VD, dense_strides(VD)),
            o: tensor(&mut self.o, OD, dense_strides(OD)),
            d_o: tensor(&mut self.d_o, OD, dense_strides(OD)),
            lse: self.lse.as_ptr(),
            lse_len: ROWS,
            gq: tensor(&mut self.gq, QD, dense_strides(QD)),
            gk: tensor(&mut self.gk, KD, dense_strides(KD)),
            gv: tensor(&mut self.gv, VD, dense_strides(VD)),
            opts,
            null: "",
        }
    }

    /// Runs fa_sdpa_backward with the arguments after `edit`; checks the code, and on a
    /// refusal that nothing was written and the message starts with the function's name
    /// and contains `needle`.
    fn expect(&mut self, want: fa_status, what: &str, needle: &str, edit: impl FnOnce(&mut Args)) {
        self.gq.fill(SENTINEL);
        self.gk.fill(SENTINEL);
        self.gv.fill(SENTINEL);
        let mut a = self.args();
        edit(&mut a);
        let n = a.null;
        let p = |name: &str, t: &fa_tensor| -> *const fa_tensor {
            if n == name {
                null()
            } else {
                t
            }
        };
        let pm = |name: &str, t: &mut fa_tensor| -> *mut fa_tensor {
            if n == name {
                null_mut()
            } else {
                t
            }
        };
        let opts: *const fa_sdpa_options = if n == "opts" { null() } else { &a.opts };
        // SAFETY: the views describe live buffers, or are broken in ways the checks refuse
        // before any access.
        let rc = unsafe {
            fa_sdpa_backward(
                p("q", &a.q),
                p("k", &a.k),
                p("v", &a.v),
                p("out", &a.o),
                p("grad_out", &a.d_o),
                a.lse,
                a.lse_len,
                pm("grad_q", &mut a.gq),
                pm("grad_k", &mut a.gk),
                pm("grad_v", &mut a.gv),
                opts,
            )
        };
        assert_eq!(rc, code(want), "{what}: {}", last_error());
        if want != fa_status::FA_OK {
            let untouched = |g: &[f32]| g.iter().all(|&x| x == SENTINEL);
            assert!(
                untouched(&self.gq) && untouched(&self.gk) && untouched(&self.gv),
                "{what}: a gradient was written"
            );
            let msg = last_error();
            assert!(msg.starts_with("fa_sdpa_backward: "), "{what}: {msg}");
            assert!(msg.contains(needle), "{what}: {msg:?} lacks {needle:?}");
        }
    }
}

#[test]
fn backward_refuses_null_pointers() {
    use fa_status::*;
    let mut f = Fixture::new();
    f.expect(FA_OK, "valid", "", |_| {});
    // NULL options are the defaults (here: not causal, unlike the forward; still valid).
    f.expect(FA_OK, "NULL opts", "", |a| a.null = "opts");

    // SAFETY: NULL tensors are refused before any access.
    let rc = unsafe {
        fa_sdpa_backward(
            null(),
            null(),
            null(),
            null(),
            null(),
            null(),
            0,
            null_mut(),
            null_mut(),
            null_mut(),
            null(),
        )
    };
    assert_eq!(rc, code(FA_ERR_NULL_POINTER));
    for name in [
        "q", "k", "v", "out", "grad_out", "grad_q", "grad_k", "grad_v",
    ] {
        f.expect(
            FA_ERR_NULL_POINTER,
            &format!("NULL {name}"),
            &format!("{name} is NULL"),
            |a| a.null = name,
        );
    }
    f.expect(FA_ERR_NULL_POINTER, "NULL lse", "lse is NULL", |a| {
        a.lse = null()
    });
    f.expect(
        FA_ERR_NULL_POINTER,
        "NULL grad_v->data",
        "grad_v->data is NULL",
        |a| a.gv.data = null_mut(),
    );
    f.expect(
        FA_ERR_NULL_POINTER,
        "NULL k->data",
        "k->data is NULL",
        |a| a.k.data = null_mut(),
    );
    let lens = [5i64];
    f.expect(FA_OK, "key lengths", "", |a| {
        a.opts.kv_lengths = lens.as_ptr()
    });
}

#[test]
fn backward_gradients_must_be_f32() {
    use fa_status::*;
    let mut f = Fixture::new();
    f.expect(
        FA_ERR_INVALID_ARGUMENT,
        "bf16 grad_k",
        "grad_k->dtype is bf16 (FA_DTYPE_BF16 = 2); a gradient must be f32",
        |a| a.gk.dtype = FA_DTYPE_BF16 as i32,
    );
    f.expect(
        FA_ERR_INVALID_ARGUMENT,
        "f16 grad_q",
        "grad_q->dtype is f16",
        |a| a.gq.dtype = FA_DTYPE_F16 as i32,
    );
    f.expect(
        FA_ERR_INVALID_ARGUMENT,
        "unknown grad_v dtype",
        "grad_v->dtype is 7, not an fa_dtype",
        |a| a.gv.dtype = 7,
    );
    f.expect(
        FA_ERR_INVALID_ARGUMENT,
        "unknown grad_out dtype",
        "grad_out->dtype is -1",
        |a| a.d_o.dtype = -1,
    );
    // A 16-bit input is fine (the f32 data read as bf16: other values, a valid call).
    f.expect(FA_OK, "bf16 grad_out", "", |a| {
        a.d_o.dtype = FA_DTYPE_BF16 as i32
    });
}

#[test]
fn backward_refuses_wrong_shapes_and_lse_lengths() {
    use fa_status::*;
    let mut f = Fixture::new();
    f.expect(FA_ERR_BAD_SHAPE, "grad_q of K's shape", "dQ is", |a| {
        a.gq.dims = [1, 1, 5, 4]
    });
    f.expect(FA_ERR_BAD_SHAPE, "grad_k one key short", "dK is", |a| {
        a.gk.dims = [1, 1, 4, 4]
    });
    f.expect(FA_ERR_BAD_SHAPE, "grad_v of head dim 1", "dV is", |a| {
        a.gv.dims = [1, 1, 5, 1];
        a.gv.strides = [5, 5, 1, 1];
    });
    f.expect(
        FA_ERR_BAD_SHAPE,
        "grad_out one query short",
        "output gradient is",
        |a| a.d_o.dims = [1, 2, 2, 2],
    );
    f.expect(FA_ERR_BAD_SHAPE, "out of one head", "output is", |a| {
        a.o.dims = [1, 1, 3, 2]
    });
    f.expect(FA_ERR_BAD_SHAPE, "K of another head dim", "", |a| {
        a.k.dims = [1, 1, 5, 3];
        a.gk.dims = [1, 1, 5, 3];
    });
    f.expect(FA_ERR_BAD_SHAPE, "V of fewer keys", "", |a| {
        a.v.dims = [1, 1, 4, 2];
        a.gv.dims = [1, 1, 4, 2];
    });
    for len in [0, ROWS - 1, ROWS + 1, usize::MAX] {
        f.expect(
            FA_ERR_BAD_SHAPE,
            &format!("lse_len {len}"),
            &format!("lse_len is {len}; the log-sum-exp of Q [1, 2, 3, 4] holds B*Hq*Lq = 6"),
            |a| a.lse_len = len,
        );
    }
    // Extents whose product overflows (the views are empty, so no memory is reached).
    f.expect(FA_ERR_BAD_SHAPE, "B*Hq*Lq overflows", "overflows", |a| {
        a.q.dims = [usize::MAX, 2, 2, 0];
    });
}

#[test]
fn backward_refuses_overlapping_aliasing_and_misaligned_gradients() {
    use fa_status::*;
    let mut f = Fixture::new();
    let gq = f.gq.as_mut_ptr();
    f.expect(
        FA_ERR_BAD_STRIDE,
        "grad_k inside grad_q",
        "output grad_k overlaps grad_q in memory",
        // SAFETY: 4 floats into grad_q's 24: grad_k's 20 floats stay inside it.
        |a| a.gk.data = unsafe { gq.add(4) }.cast(),
    );
    let v = f.v.as_mut_ptr();
    f.expect(
        FA_ERR_BAD_STRIDE,
        "grad_v over v",
        "output grad_v overlaps v in memory",
        |a| a.gv.data = v.cast(),
    );
    let d_o = f.d_o.as_mut_ptr();
    f.expect(
        FA_ERR_BAD_STRIDE,
        "grad_v over grad_out",
        "output grad_v overlaps grad_out in memory",
        |a| a.gv.data = d_o.cast(),
    );
    let lse = f.lse.as_mut_ptr();
    f.expect(
        FA_ERR_BAD_STRIDE,
        "grad_q over lse",
        "output grad_q overlaps lse in memory",
        // SAFETY: 2 floats into the 30-float lse buffer: grad_q's 24 floats stay inside it.
        |a| a.gq.data = unsafe { lse.add(2) }.cast(),
    );
    // An option array in a gradient's memory.
    // grad_k's 20 floats, seen as a [1, 1, 3, 5] mask (15 floats).
    let mask = fa_tensor {
        data: f.gk.as_mut_ptr().cast(),
        dims: [1, 1, 3, 5],
        strides: [0, 0, 5, 1],
        dtype: FA_DTYPE_F32 as i32,
    };
    f.expect(
        FA_ERR_BAD_STRIDE,
        "mask over grad_k",
        "output grad_k overlaps opts->mask in memory",
        |a| a.opts.mask = &mask,
    );
    f.expect(
        FA_ERR_BAD_STRIDE,
        "self-aliasing grad_k",
        "aliases itself",
        |a| a.gk.strides = [20, 20, 2, 1],
    );
    f.expect(
        FA_ERR_BAD_STRIDE,
        "negative grad_q stride",
        "stride 2 is -4",
        |a| a.gq.strides[2] = -4,
    );
    f.expect(
        FA_ERR_BAD_STRIDE,
        "zero grad_v stride",
        "stride 2 is 0",
        |a| a.gv.strides[2] = 0,
    );
    f.expect(
        FA_ERR_INVALID_ARGUMENT,
        "misaligned grad_q",
        "grad_q->data is not aligned to 4 bytes",
        |a| a.gq.data = gq.cast::<u8>().wrapping_add(2).cast(),
    );
    f.expect(
        FA_ERR_INVALID_ARGUMENT,
        "misaligned lse",
        "lse is not aligned",
        |a| a.lse = lse.cast::<u8>().wrapping_add(1).cast_const().cast(),
    );
    // Inputs may share memory: out and grad_out in one buffer.
    let o = f.o.as_mut_ptr();
    f.expect(FA_OK, "out and grad_out sharing memory", "", |a| {
        a.d_o.data = o.cast()
    });
}

#[test]
fn backward_refuses_bad_options_and_ignores_the_forward_outputs() {
    use fa_status::*;
    let mut f = Fixture::new();
    f.expect(
        FA_ERR_INVALID_ARGUMENT,
        "causal 2",
        "opts->causal is 2",
        |a| a.opts.causal = 2,
    );
    f.expect(
        FA_ERR_INVALID_ARGUMENT,
        "zeroed options",
        "fa_sdpa_options_init",
        |a| a.opts.struct_size = 0,
    );
    let long = [6i64];
    f.expect(FA_ERR_INVALID_ARGUMENT, "key length above Lk", "", |a| {
        a.opts.kv_lengths = long.as_ptr()
    });
    f.expect(FA_ERR_INVALID_ARGUMENT, "NaN scale", "", |a| {
        a.opts.scale = f32::NAN
    });
    // `opts->weights` and `opts->lse` are the forward's outputs: never read here, even
    // when they point at garbage.
    let mut bogus = fa_tensor {
        dtype: 99,
        ..fa_tensor::default()
    };
    f.expect(FA_OK, "forward outputs in the options", "", |a| {
        a.opts.weights = &mut bogus;
        a.opts.lse = std::ptr::dangling_mut();
    });
}

#[test]
fn backward_accepts_empty_views() {
    // B = 0: every view empty, NULL data, no LSE.
    let dims = [0, 2, 3, 4];
    let empty = fa_tensor {
        dims,
        strides: dense_strides(dims),
        ..fa_tensor::default()
    };
    let (mut gq, mut gk, mut gv) = (empty, empty, empty);
    // SAFETY: empty views are never accessed.
    let rc = unsafe {
        fa_sdpa_backward(
            &empty,
            &empty,
            &empty,
            &empty,
            &empty,
            null(),
            0,
            &mut gq,
            &mut gk,
            &mut gv,
            null(),
        )
    };
    assert_eq!(rc, OK, "{}", last_error());

    // Lq = 0: no query sees any key, so dK and dV are zero (and written).
    let (qd, kd) = ([1, 2, 0, 4], [1, 1, 5, 4]);
    let mut k = vec![0.5f32; 20];
    let mut gk = vec![SENTINEL; 20];
    let mut gv = vec![SENTINEL; 20];
    let q = fa_tensor {
        dims: qd,
        strides: [8, 4, 4, 1],
        ..fa_tensor::default()
    };
    let tk = tensor(&mut k, kd, dense_strides(kd));
    let (mut tgq, mut tgk, mut tgv) = (
        q,
        tensor(&mut gk, kd, dense_strides(kd)),
        tensor(&mut gv, kd, dense_strides(kd)),
    );
    // SAFETY: K and the two gradients are live buffers of 20 floats; the rest are empty.
    let rc = unsafe {
        fa_sdpa_backward(
            &q,
            &tk,
            &tk,
            &q,
            &q,
            null(),
            0,
            &mut tgq,
            &mut tgk,
            &mut tgv,
            null(),
        )
    };
    assert_eq!(rc, OK, "{}", last_error());
    assert!(gk.iter().chain(&gv).all(|&x| x == 0.0), "dK, dV not zeroed");
}
