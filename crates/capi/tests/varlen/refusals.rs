//! Bad input to `fa_sdpa_varlen`: each refusal gets its status code, and neither the output
//! nor the log-sum-exp nor any input is written.

use super::*;

/// A leaked copy of `v` (the refusal cases point the C structs at small arrays of their
/// own; a test process may keep them).
fn leak<T>(v: Vec<T>) -> *const T {
    Box::leak(v.into_boxed_slice()).as_ptr()
}

/// The arguments of one call, a refusal case changing one of them.
struct Args {
    q: fa_tensor,
    k: fa_tensor,
    v: fa_tensor,
    out: fa_tensor,
    seqs: fa_varlen_seqs,
    seqs_ptr: bool,
    opts: fa_sdpa_options,
}

type Change = fn(&mut Args);

fn cases() -> Vec<(&'static str, bool, fa_status, Change)> {
    // (what, paged, expected, change). The batch: lq [2, 0, 1], lk [3, 2, 5], pages of 2,
    // 4 entries per sequence, 9 pages; Hq 4, Hkv 2, D = Dv = 4.
    vec![
        (
            "cu_seqlens_q decreases",
            true,
            FA_ERR_INVALID_ARGUMENT,
            |a| a.seqs.cu_seqlens_q = leak(vec![0i32, 2, 1, 3]).cast(),
        ),
        (
            "cu_seqlens_q starts above 0",
            true,
            FA_ERR_INVALID_ARGUMENT,
            |a| a.seqs.cu_seqlens_q = leak(vec![1i32, 2, 2, 3]).cast(),
        ),
        (
            "cu_seqlens_q ends before Tq",
            true,
            FA_ERR_INVALID_ARGUMENT,
            |a| a.seqs.cu_seqlens_q = leak(vec![0i32, 2, 2, 2]).cast(),
        ),
        (
            "cu_seqlens_q ends past Tq",
            true,
            FA_ERR_INVALID_ARGUMENT,
            |a| a.seqs.cu_seqlens_q = leak(vec![0i32, 2, 2, 4]).cast(),
        ),
        (
            "cu_seqlens_k ends past Tk",
            false,
            FA_ERR_INVALID_ARGUMENT,
            |a| a.seqs.cu_seqlens_k = leak(vec![0i32, 3, 5, 11]).cast(),
        ),
        (
            "cu_seqlens_k ends before Tk",
            false,
            FA_ERR_INVALID_ARGUMENT,
            |a| a.seqs.cu_seqlens_k = leak(vec![0i32, 3, 5, 9]).cast(),
        ),
        (
            "cu_seqlens_k negative",
            false,
            FA_ERR_INVALID_ARGUMENT,
            |a| a.seqs.cu_seqlens_k = leak(vec![0i32, -1, 5, 10]).cast(),
        ),
        (
            "int64 cu_seqlens_k decreases",
            false,
            FA_ERR_INVALID_ARGUMENT,
            |a| {
                a.seqs.index_dtype = 1;
                a.seqs.cu_seqlens_q = leak(vec![0i64, 2, 2, 3]).cast();
                a.seqs.cu_seqlens_k = leak(vec![0i64, 6, 5, 10]).cast();
            },
        ),
        (
            "packed K/V without cu_seqlens_k",
            false,
            FA_ERR_INVALID_ARGUMENT,
            |a| a.seqs.cu_seqlens_k = null(),
        ),
        (
            "paged K/V without key counts",
            true,
            FA_ERR_INVALID_ARGUMENT,
            |a| a.seqs.cu_seqlens_k = null(),
        ),
        (
            "block index past the caches where read",
            true,
            FA_ERR_INVALID_ARGUMENT,
            |a| {
                let mut t = table_of(a);
                t[4] = 9;
                a.seqs.block_table = leak(t);
            },
        ),
        (
            "negative block index where read",
            true,
            FA_ERR_INVALID_ARGUMENT,
            |a| {
                let mut t = table_of(a);
                t[9] = -1; // sequence 2's second page
                a.seqs.block_table = leak(t);
            },
        ),
        (
            "seqused_k above the pages held",
            true,
            FA_ERR_INVALID_ARGUMENT,
            |a| a.seqs.seqused_k = leak(vec![3i32, 2, 9]).cast(),
        ),
        ("seqused_k negative", true, FA_ERR_INVALID_ARGUMENT, |a| {
            a.seqs.seqused_k = leak(vec![3i32, -1, 5]).cast()
        }),
        (
            "seqused_k above a packed sequence's keys",
            false,
            FA_ERR_INVALID_ARGUMENT,
            |a| a.seqs.seqused_k = leak(vec![4i32, 2, 5]).cast(),
        ),
        ("Hq not a multiple of Hkv", true, FA_ERR_BAD_SHAPE, |a| {
            a.q.dims[1] = 3;
            a.out.dims[1] = 3;
        }),
        ("K and V heads differ", true, FA_ERR_BAD_SHAPE, |a| {
            a.v.dims[2] = 1
        }),
        ("head dims differ", true, FA_ERR_BAD_SHAPE, |a| {
            a.k.dims[3] = 3
        }),
        ("caches of different pages", true, FA_ERR_BAD_SHAPE, |a| {
            a.v.dims[0] = 8
        }),
        ("output rows differ", true, FA_ERR_BAD_SHAPE, |a| {
            a.out.dims[2] = 2
        }),
        ("unknown dtype", true, FA_ERR_INVALID_ARGUMENT, |a| {
            a.k.dtype = 9
        }),
        ("unknown index dtype", true, FA_ERR_INVALID_ARGUMENT, |a| {
            a.seqs.index_dtype = 2
        }),
        ("uninitialised seqs", true, FA_ERR_INVALID_ARGUMENT, |a| {
            a.seqs.struct_size = 0
        }),
        ("NULL seqs", true, FA_ERR_NULL_POINTER, |a| {
            a.seqs_ptr = false
        }),
        ("NULL cu_seqlens_q", true, FA_ERR_NULL_POINTER, |a| {
            a.seqs.cu_seqlens_q = null()
        }),
        (
            "NULL block table with blocks",
            true,
            FA_ERR_NULL_POINTER,
            |a| a.seqs.block_table = null(),
        ),
        ("NULL k data", true, FA_ERR_NULL_POINTER, |a| {
            a.k.data = null_mut()
        }),
        ("NULL output data", false, FA_ERR_NULL_POINTER, |a| {
            a.out.data = null_mut()
        }),
        (
            "misaligned int64 offsets",
            true,
            FA_ERR_INVALID_ARGUMENT,
            |a| {
                a.seqs.index_dtype = 1;
                let p = leak(vec![0i64, 2, 2, 3, 0]).cast::<u8>();
                a.seqs.cu_seqlens_q = p.wrapping_add(4).cast();
            },
        ),
        ("a mask", true, FA_ERR_INVALID_ARGUMENT, |a| {
            a.opts.mask = leak(vec![fa_tensor::default()])
        }),
        ("key lengths", false, FA_ERR_INVALID_ARGUMENT, |a| {
            a.opts.kv_lengths = leak(vec![1i64, 1, 1])
        }),
        ("a weights output", true, FA_ERR_INVALID_ARGUMENT, |a| {
            a.opts.weights = leak(vec![fa_tensor::default()]).cast_mut()
        }),
        ("a NaN sink", true, FA_ERR_INVALID_ARGUMENT, |a| {
            a.opts.sinks = leak(vec![0.0, f32::NAN, 0.0, 0.0])
        }),
        ("a +inf sink", false, FA_ERR_INVALID_ARGUMENT, |a| {
            a.opts.sinks = leak(vec![0.0, 0.0, f32::INFINITY, 0.0])
        }),
        ("causal 2", true, FA_ERR_INVALID_ARGUMENT, |a| {
            a.opts.causal = 2
        }),
        ("output overlapping q", false, FA_ERR_BAD_STRIDE, |a| {
            a.out.data = a.q.data
        }),
        (
            "output overlapping the cache",
            true,
            FA_ERR_BAD_STRIDE,
            |a| a.out.data = a.k.data,
        ),
        ("lse overlapping the output", true, FA_ERR_BAD_STRIDE, |a| {
            a.opts.lse = a.out.data.cast()
        }),
        ("output aliasing itself", true, FA_ERR_BAD_STRIDE, |a| {
            a.out.strides[1] = 0
        }),
    ]
}

/// The block table `a.seqs` points at (B = 3, 4 entries each), copied.
fn table_of(a: &Args) -> Vec<i32> {
    // SAFETY: the test's table has 12 entries.
    unsafe { std::slice::from_raw_parts(a.seqs.block_table, 12) }.to_vec()
}

#[test]
fn varlen_refuses_bad_input_with_its_code_and_writes_nothing() {
    let mut rng = StdRng::seed_from_u64(33);
    let b = Batch::new(&mut rng, (4, 2), (4, 4), &[2, 0, 1], &[3, 2, 5], 2);
    assert_eq!((b.blocks_per_seq, b.num_blocks), (4, 9));
    let idx = idx_of(&b);
    // The unchanged call succeeds.
    for paged in [false, true] {
        let mut out = vec![0.0f32; 3 * 4 * 4];
        let seqs = seqs_of(&b, &idx, false, paged);
        assert_eq!(call(&b, &seqs, &fa_sdpa_options::default(), &mut out), OK);
    }
    for (what, paged, want, change) in cases() {
        let mut out = vec![7.0f32; 3 * 4 * 4];
        let mut lse = vec![7.0f32; 4 * 3];
        let seqs = seqs_of(&b, &idx, false, paged);
        let (q, k, v, o) = tensors(&b, &seqs, &mut out);
        let mut opts = fa_sdpa_options::default();
        opts.lse = lse.as_mut_ptr();
        let mut a = Args {
            q,
            k,
            v,
            out: o,
            seqs,
            seqs_ptr: true,
            opts,
        };
        change(&mut a);
        let before = (b.q.clone(), b.kc.clone(), b.k.clone());
        let sp: *const fa_varlen_seqs = if a.seqs_ptr { &a.seqs } else { null() };
        // SAFETY: every view and array is live and of the extent it describes (the cases
        // only shrink views or point at arrays of the documented lengths); refused calls
        // write nothing.
        let rc = unsafe { fa_sdpa_varlen(&a.q, &a.k, &a.v, &mut a.out, sp, &a.opts) };
        assert_eq!(rc, code(want), "{what}: {}", last_error());
        assert!(
            last_error().starts_with("fa_sdpa_varlen: "),
            "{what}: {}",
            last_error()
        );
        assert!(
            out.iter().all(|&x| x == 7.0),
            "{what}: the output was written"
        );
        assert!(lse.iter().all(|&x| x == 7.0), "{what}: the lse was written");
        assert!(
            before == (b.q.clone(), b.kc.clone(), b.k.clone()),
            "{what}: an input was written"
        );
    }
}
