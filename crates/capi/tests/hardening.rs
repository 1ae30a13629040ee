//! Hardening of the C ABI (docs/HARDENING.md): the catalogue rows that the crate's other
//! tests (`abi.rs`, `mha.rs`, `settings.rs`) do not already cover, no leaks over
//! create/use/free cycles of the handles (counted by this binary's allocator), calls from
//! many threads while another thread changes the thread count, and `FASTATTN_ISA` naming a
//! variant the CPU lacks.
//!
//! Tests that need a process of their own (the leak count, the environment variable) run
//! this binary again with `FASTATTN_HARDENING_CHILD` naming the test.

// Options are set field by field after their defaults, as a C caller does after
// `fa_sdpa_options_init`.
#![allow(clippy::field_reassign_with_default)]

use fastattn_capi::*;
use std::alloc::{GlobalAlloc, Layout, System};
use std::ffi::{c_int, CStr};
use std::ptr::{null, null_mut};
use std::sync::atomic::{AtomicI64, Ordering};

/// Counts the bytes live in this process (allocated minus freed).
struct Counting;

static LIVE: AtomicI64 = AtomicI64::new(0);

// SAFETY: every method forwards to `System` with the caller's arguments unchanged and only
// adds bookkeeping; `System` upholds the GlobalAlloc contract.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as i64, Ordering::Relaxed);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as i64, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded contract.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size() as i64, Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded contract.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const OK: c_int = fa_status::FA_OK as c_int;
const CHILD_ENV: &str = "FASTATTN_HARDENING_CHILD";

fn code(s: fa_status) -> c_int {
    s as c_int
}

fn last_error() -> String {
    // SAFETY: a NUL-terminated string valid until the next failure on this thread; copied
    // at once.
    unsafe { CStr::from_ptr(fa_last_error()) }
        .to_string_lossy()
        .into_owned()
}

fn seq(len: usize, f: f32) -> Vec<f32> {
    (0..len).map(|i| ((i as f32 + 1.0) * f).sin()).collect()
}

fn dense(dims: [usize; 4]) -> [isize; 4] {
    let [_, h, l, d] = dims;
    [(h * l * d) as isize, (l * d) as isize, d as isize, 1]
}

fn tensor(data: &mut [f32], dims: [usize; 4]) -> fa_tensor {
    fa_tensor {
        data: data.as_mut_ptr().cast(),
        dims,
        strides: dense(dims),
        dtype: 0,
    }
}

/// Whether this process is the child run for `test`.
fn is_child(test: &str) -> bool {
    std::env::var(CHILD_ENV).is_ok_and(|v| v == test)
}

/// Runs `test` alone in a child process with `envs`; fails if it fails.
fn run_child(test: &str, envs: &[(&str, &str)]) {
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args([test, "--exact", "--test-threads=1", "--nocapture"])
        .env(CHILD_ENV, test);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("the test binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "child {test} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// ------------------------------------------------------------------ catalogue rows

#[test]
fn fa_sgemm_refuses_null_misaligned_overflowing_and_overlapping_arguments() {
    use fa_status::*;
    let a = seq(16, 0.3);
    let b = seq(16, 0.7);
    let mut c = vec![5.0f32; 32];
    let cp = c.as_mut_ptr();
    // (what, m, k, n, alpha, a, rsa, csa, b, rsb, csb, c, rsc, csc, expected)
    type Args = (
        &'static str,
        [usize; 3],
        f32,
        *const f32,
        [isize; 2],
        *const f32,
        [isize; 2],
        *mut f32,
        [isize; 2],
        fa_status,
    );
    // SAFETY: (pointer arithmetic) one element or one byte into live buffers.
    let (a_mis, c_mis) = unsafe {
        (
            a.as_ptr().cast::<u8>().add(1).cast::<f32>(),
            cp.cast::<u8>().add(2).cast::<f32>(),
        )
    };
    // SAFETY: 8 elements into `c`, whose 32 elements cover the 4×4 views below.
    let c_mid = unsafe { cp.add(8) };
    let cases: [Args; 9] = [
        (
            "NULL A",
            [4, 4, 4],
            1.0,
            null(),
            [4, 1],
            b.as_ptr(),
            [4, 1],
            cp,
            [4, 1],
            FA_ERR_NULL_POINTER,
        ),
        (
            "NULL B",
            [4, 4, 4],
            1.0,
            a.as_ptr(),
            [4, 1],
            null(),
            [4, 1],
            cp,
            [4, 1],
            FA_ERR_NULL_POINTER,
        ),
        (
            "NULL C",
            [4, 4, 4],
            1.0,
            a.as_ptr(),
            [4, 1],
            b.as_ptr(),
            [4, 1],
            null_mut(),
            [4, 1],
            FA_ERR_NULL_POINTER,
        ),
        (
            "misaligned A",
            [4, 4, 4],
            1.0,
            a_mis,
            [4, 1],
            b.as_ptr(),
            [4, 1],
            cp,
            [4, 1],
            FA_ERR_INVALID_ARGUMENT,
        ),
        (
            "misaligned C",
            [4, 4, 4],
            1.0,
            a.as_ptr(),
            [4, 1],
            b.as_ptr(),
            [4, 1],
            c_mis,
            [4, 1],
            FA_ERR_INVALID_ARGUMENT,
        ),
        (
            "A extent overflows",
            [4, 4, 4],
            1.0,
            a.as_ptr(),
            [isize::MAX / 2, 1],
            b.as_ptr(),
            [4, 1],
            cp,
            [4, 1],
            FA_ERR_BAD_SHAPE,
        ),
        (
            "C extent overflows",
            [4, 4, 4],
            1.0,
            a.as_ptr(),
            [4, 1],
            b.as_ptr(),
            [4, 1],
            cp,
            [isize::MIN / 2, 1],
            FA_ERR_BAD_SHAPE,
        ),
        (
            "C overlaps B",
            [4, 4, 4],
            1.0,
            a.as_ptr(),
            [4, 1],
            c_mid,
            [4, 1],
            cp,
            [4, 1],
            FA_ERR_BAD_STRIDE,
        ),
        (
            "C aliases itself",
            [4, 4, 4],
            1.0,
            a.as_ptr(),
            [4, 1],
            b.as_ptr(),
            [4, 1],
            cp,
            [2, 1],
            FA_ERR_BAD_STRIDE,
        ),
    ];
    for (what, [m, k, n], alpha, ap, [rsa, csa], bp, [rsb, csb], cptr, [rsc, csc], want) in cases {
        // SAFETY: every case is refused before any access (the valid-looking views lie
        // inside live buffers anyway).
        let rc = unsafe {
            fa_sgemm(
                m, k, n, alpha, ap, rsa, csa, bp, rsb, csb, 0.0, cptr, rsc, csc,
            )
        };
        assert_eq!(rc, code(want), "{what}: {}", last_error());
        assert!(last_error().starts_with("fa_sgemm: "), "{what}");
        assert!(c.iter().all(|&x| x == 5.0), "{what}: C written");
    }
    // alpha = 0 or k = 0: A and B are not read and may be NULL; C = beta·C.
    // SAFETY: C is a live 4×4 row-major view; A and B are not accessed.
    let rc = unsafe { fa_sgemm(4, 4, 4, 0.0, null(), 4, 1, null(), 4, 1, 0.5, cp, 4, 1) };
    assert_eq!(rc, OK, "{}", last_error());
    assert!(c[..16].iter().all(|&x| x == 2.5) && c[16..].iter().all(|&x| x == 5.0));
}

/// Was a bug until 687114a (the GEMM driver read a row-broadcast A as a packed panel).
#[test]
fn fa_sgemm_with_a_broadcast_row_of_a_matches_naive() {
    // A = one row [1, 2, 3] for all 32 rows; padded with NaN so the misread stays in bounds.
    let mut a = vec![f32::NAN; 3 + 64 * 3];
    a[..3].copy_from_slice(&[1.0, 2.0, 3.0]);
    let b = [1.0f32; 3];
    let mut c = [0.0f32; 32];
    // SAFETY: A's view (stride 0, 1) reads a[0..3]; B is 3×1; C is 32×1.
    let rc = unsafe {
        fa_sgemm(
            32,
            3,
            1,
            1.0,
            a.as_ptr(),
            0,
            1,
            b.as_ptr(),
            1,
            1,
            0.0,
            c.as_mut_ptr(),
            1,
            1,
        )
    };
    assert_eq!(rc, OK, "{}", last_error());
    assert_eq!(c, [6.0; 32]);
}

#[test]
fn fa_sdpa_refuses_bad_masks_slopes_weights_and_option_arrays() {
    use fa_status::*;
    let dims = [1, 2, 3, 4];
    let (mut q, mut out) = (seq(24, 0.3), vec![9.0f32; 24]);
    let qt = tensor(&mut q, dims);
    let run = |o: &fa_sdpa_options, out: &mut [f32]| {
        let mut ot = tensor(out, dims);
        // SAFETY: live dense tensors; the option arrays are live or refused before use.
        unsafe { fa_sdpa(&qt, &qt, &qt, &mut ot, o) }
    };
    // A mask whose Lk is wrong (an AttnError::Option in Rust).
    let mut m = vec![0.0f32; 3 * 5];
    let mt = fa_tensor {
        data: m.as_mut_ptr().cast(),
        dims: [1, 1, 3, 5],
        strides: [0, 0, 5, 1],
        dtype: 0,
    };
    let mut o = fa_sdpa_options::default();
    o.mask = &mt;
    assert_eq!(
        run(&o, &mut out),
        code(FA_ERR_INVALID_ARGUMENT),
        "{}",
        last_error()
    );
    // A mask with NULL data.
    let mt_null = fa_tensor {
        data: null_mut(),
        dims: [1, 1, 3, 3],
        strides: [0, 0, 3, 1],
        dtype: 0,
    };
    o.mask = &mt_null;
    assert_eq!(run(&o, &mut out), code(FA_ERR_NULL_POINTER));
    // A mask may broadcast with zero strides; other tensors may not (abi.rs covers that).
    let mut m_ok = vec![0.0f32; 3];
    let mt_bcast = fa_tensor {
        data: m_ok.as_mut_ptr().cast(),
        dims: [1, 2, 3, 3],
        strides: [0, 0, 0, 1],
        dtype: 0,
    };
    o.mask = &mt_bcast;
    assert_eq!(run(&o, &mut out), OK, "{}", last_error());
    out.fill(9.0);
    // Non-finite ALiBi slopes.
    let slopes = [0.5f32, f32::NAN];
    let mut o = fa_sdpa_options::default();
    o.alibi_slopes = slopes.as_ptr();
    assert_eq!(run(&o, &mut out), code(FA_ERR_INVALID_ARGUMENT));
    // Weights of the wrong shape.
    let mut w = vec![0.0f32; 2 * 3 * 4];
    let mut wt = tensor(&mut w, [1, 2, 3, 4]);
    let mut o = fa_sdpa_options::default();
    o.weights = &mut wt;
    assert_eq!(
        run(&o, &mut out),
        code(FA_ERR_BAD_SHAPE),
        "{}",
        last_error()
    );
    // A window that does not fit in size_t is impossible (i64); i64::MAX is accepted.
    let mut o = fa_sdpa_options::default();
    o.window_left = i64::MAX;
    assert_eq!(run(&o, &mut out), OK, "{}", last_error());
    out.fill(9.0);
    // Nothing was written by the refused calls.
    let mut o = fa_sdpa_options::default();
    o.softcap = f32::INFINITY;
    assert_eq!(run(&o, &mut out), code(FA_ERR_INVALID_ARGUMENT));
    assert!(out.iter().all(|&x| x == 9.0));
}

#[test]
fn kv_cache_full_is_cache_full_and_leaves_the_cache_unchanged() {
    use fa_status::*;
    let cfg = fa_mha_config {
        struct_size: std::mem::size_of::<fa_mha_config>(),
        d_model: 8,
        n_heads: 2,
        n_kv_heads: 1,
        head_dim: 0,
        rope: 1,
        rope_base: 0.0,
        weight_dtype: 0,
    };
    let mut layer = null_mut();
    let mut cache = null_mut();
    let x = seq(3 * 8, 0.2);
    let mut y = vec![0.0f32; 3 * 8];
    let mut o = fa_sdpa_options::default();
    o.causal = 1;
    // SAFETY: valid config, handles from the library, buffers of 3·8 floats.
    unsafe {
        assert_eq!(fa_mha_new_random(&cfg, 1, 5, &mut layer), OK);
        assert_eq!(fa_kv_cache_new(layer, 1, 4, &mut cache), OK);
        let rc = fa_mha_forward_cached(layer, cache, x.as_ptr(), 1, 3, y.as_mut_ptr(), &o);
        assert_eq!(rc, OK, "{}", last_error());
        let rc = fa_mha_forward_cached(layer, cache, x.as_ptr(), 1, 2, y.as_mut_ptr(), &o);
        assert_eq!(rc, code(FA_ERR_CACHE_FULL), "{}", last_error());
        assert!(last_error().contains("KV cache full"), "{}", last_error());
        assert_eq!(
            (fa_kv_cache_len(cache), fa_kv_cache_capacity(cache)),
            (3, 4)
        );
        // One more token still fits.
        let rc = fa_mha_forward_cached(layer, cache, x.as_ptr(), 1, 1, y.as_mut_ptr(), &o);
        assert_eq!(rc, OK, "{}", last_error());
        assert_eq!(
            fa_kv_cache_truncate(null_mut(), 0),
            code(FA_ERR_NULL_POINTER)
        );
        let rc = fa_mha_forward_cached(layer, null_mut(), x.as_ptr(), 1, 1, y.as_mut_ptr(), &o);
        assert_eq!(rc, code(FA_ERR_NULL_POINTER));
        fa_kv_cache_free(cache);
        fa_mha_free(layer);
    }
}

#[test]
fn fastattn_isa_naming_a_missing_variant_makes_calls_fail_not_crash() {
    let test = "fastattn_isa_naming_a_missing_variant_makes_calls_fail_not_crash";
    if !is_child(test) {
        let missing = kernels::Isa::ALL
            .into_iter()
            .find(|i| !i.is_supported())
            .expect("neon is never supported");
        run_child(test, &[("FASTATTN_ISA", missing.name())]);
        run_child(test, &[("FASTATTN_ISA", "sse9")]);
        return;
    }
    use fa_status::*;
    assert!(fa_variant_name().is_null());
    assert!(!last_error().is_empty());
    let x = seq(16, 0.4);
    let mut c = vec![0.0f32; 16];
    // SAFETY: 4×4 row-major views of live buffers.
    let rc = unsafe {
        fa_sgemm(
            4,
            4,
            4,
            1.0,
            x.as_ptr(),
            4,
            1,
            x.as_ptr(),
            4,
            1,
            0.0,
            c.as_mut_ptr(),
            4,
            1,
        )
    };
    assert_eq!(rc, code(FA_ERR_UNSUPPORTED_VARIANT), "{}", last_error());
    // SAFETY: 16 live floats.
    let rc = unsafe { fa_softmax(c.as_mut_ptr(), 4, 4) };
    assert_eq!(rc, code(FA_ERR_UNSUPPORTED_VARIANT));
    let mut q = x.clone();
    let qt = tensor(&mut q, [1, 1, 4, 4]);
    let mut ot = tensor(&mut c, [1, 1, 4, 4]);
    // SAFETY: live dense tensors.
    let rc = unsafe { fa_sdpa(&qt, &qt, &qt, &mut ot, null()) };
    assert_eq!(rc, code(FA_ERR_UNSUPPORTED_VARIANT));
    // fa_set_variant overrides the environment.
    // SAFETY: a NUL-terminated string.
    assert_eq!(unsafe { fa_set_variant(c"scalar".as_ptr()) }, OK);
    // SAFETY: as above.
    let rc = unsafe { fa_sdpa(&qt, &qt, &qt, &mut ot, null()) };
    assert_eq!(rc, OK, "{}", last_error());
}

// ------------------------------------------------------------------ leaks

/// One create/use/free cycle of every handle, with failing calls in between.
fn handle_cycle(seed: u64) {
    let cfg = fa_mha_config {
        struct_size: std::mem::size_of::<fa_mha_config>(),
        d_model: 16,
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 0,
        rope: 1,
        rope_base: 0.0,
        weight_dtype: 0,
    };
    let (b, l) = (2, 5);
    let x = seq(b * l * 16, 0.1 + seed as f32 * 1e-3);
    let mut y = vec![0.0f32; b * l * 16];
    let mut o = fa_sdpa_options::default();
    o.causal = 1;
    let w = seq(16 * 16, 0.05);
    let weights = fa_mha_weights {
        struct_size: std::mem::size_of::<fa_mha_weights>(),
        wq: w.as_ptr().cast(),
        wk: w.as_ptr().cast(),
        wv: w.as_ptr().cast(),
        wo: w.as_ptr().cast(),
        bq: null(),
        bk: null(),
        bv: null(),
        bo: w.as_ptr(),
        layout: 1,
    };
    let cfg_mha = fa_mha_config {
        struct_size: std::mem::size_of::<fa_mha_config>(),
        n_kv_heads: 4,
        ..cfg
    };
    // SAFETY: valid configs and weights (16·16 floats cover every matrix of the MHA config),
    // handles from the library freed once, buffers of b·l·16 floats.
    unsafe {
        let mut layer = null_mut();
        assert_eq!(fa_mha_new_random(&cfg, 1, seed, &mut layer), OK);
        let mut layer2 = null_mut();
        assert_eq!(
            fa_mha_new(&cfg_mha, &weights, &mut layer2),
            OK,
            "{}",
            last_error()
        );
        let mut cache = null_mut();
        assert_eq!(fa_kv_cache_new(layer, b, 2 * l, &mut cache), OK);
        // 16-bit weights and a 16-bit cache.
        let cfg16 = fa_mha_config {
            weight_dtype: fa_dtype::FA_DTYPE_BF16 as i32,
            ..cfg
        };
        let mut layer16 = null_mut();
        assert_eq!(fa_mha_new_random(&cfg16, 1, seed, &mut layer16), OK);
        let mut cache16 = null_mut();
        let rc = fa_kv_cache_new_typed(layer16, b, l, fa_dtype::FA_DTYPE_F16 as i32, &mut cache16);
        assert_eq!(rc, OK, "{}", last_error());
        let rc = fa_mha_forward_cached(layer16, cache16, x.as_ptr(), b, l, y.as_mut_ptr(), &o);
        assert_eq!(rc, OK, "{}", last_error());
        let rc = fa_mha_forward_cached(layer16, cache16, x.as_ptr(), b, 1, y.as_mut_ptr(), &o);
        assert_eq!(rc, code(fa_status::FA_ERR_CACHE_FULL));
        assert_eq!(
            fa_mha_forward(layer, x.as_ptr(), b, l, y.as_mut_ptr(), &o),
            OK
        );
        assert_eq!(
            fa_mha_forward(layer2, x.as_ptr(), b, l, y.as_mut_ptr(), &o),
            OK
        );
        let rc = fa_mha_forward_cached(layer, cache, x.as_ptr(), b, l, y.as_mut_ptr(), &o);
        assert_eq!(rc, OK);
        // Refusals on the way: cache full, y overlapping x, a bad option.
        let x_long = seq(b * (l + 1) * 16, 0.3);
        let mut y_long = vec![0.0f32; b * (l + 1) * 16];
        let rc = fa_mha_forward_cached(
            layer,
            cache,
            x_long.as_ptr(),
            b,
            l + 1,
            y_long.as_mut_ptr(),
            &o,
        );
        assert_eq!(rc, code(fa_status::FA_ERR_CACHE_FULL), "{}", last_error());
        let rc = fa_mha_forward(layer, x.as_ptr(), b, l, x.as_ptr().cast_mut(), &o);
        assert_eq!(rc, code(fa_status::FA_ERR_BAD_STRIDE));
        let mut bad = o;
        bad.causal = 3;
        let rc = fa_mha_forward(layer, x.as_ptr(), b, l, y.as_mut_ptr(), &bad);
        assert_eq!(rc, code(fa_status::FA_ERR_INVALID_ARGUMENT));
        assert_eq!(fa_kv_cache_truncate(cache, 0), OK);
        // Failing constructors leave nothing behind.
        let mut none = null_mut();
        let huge = fa_mha_config {
            struct_size: std::mem::size_of::<fa_mha_config>(),
            d_model: 1 << 30,
            head_dim: 1 << 29,
            ..cfg
        };
        assert_eq!(
            fa_mha_new_random(&huge, 0, 1, &mut none),
            code(fa_status::FA_ERR_ALLOC)
        );
        let mut no_cache = null_mut();
        assert_eq!(
            fa_kv_cache_new(layer, 1 << 26, 1 << 28, &mut no_cache),
            code(fa_status::FA_ERR_ALLOC)
        );
        let rc = fa_kv_cache_new_typed(layer, 1 << 26, 1 << 28, 2, &mut no_cache);
        assert_eq!(rc, code(fa_status::FA_ERR_ALLOC));
        let rc = fa_kv_cache_new_typed(layer, 1, 1, 3, &mut no_cache);
        assert_eq!(rc, code(fa_status::FA_ERR_INVALID_ARGUMENT));
        assert!(none.is_null() && no_cache.is_null());
        fa_kv_cache_free(cache16);
        fa_mha_free(layer16);
        fa_kv_cache_free(cache);
        fa_mha_free(layer2);
        fa_mha_free(layer);
    }
}

#[test]
fn create_use_free_cycles_of_the_handles_leak_nothing() {
    let test = "create_use_free_cycles_of_the_handles_leak_nothing";
    if !is_child(test) {
        // Alone in a process of its own, so that no other test allocates meanwhile.
        run_child(test, &[]);
        return;
    }
    // One thread: every call then runs on this thread alone, so the per-thread scratch
    // buffers (kept for reuse, not leaks) warm up on it instead of on whichever rayon
    // worker takes a task first. fa_set_num_threads returns once its pool's thread runs,
    // so that thread's start-up is not counted either.
    assert_eq!(fa_set_num_threads(1), OK);
    // Warm up the per-thread scratch buffers, the last-error string and the thread pool.
    for s in 0..3 {
        handle_cycle(s);
    }
    let before = LIVE.load(Ordering::SeqCst);
    let cycles = 40;
    for s in 0..cycles {
        handle_cycle(s);
    }
    let grown = LIVE.load(Ordering::SeqCst) - before;
    println!("live bytes after {cycles} cycles: {grown:+}");
    // One leaked layer alone would be > 8 KiB per cycle; allow a little for allocator-level
    // caches that warm up late (none were seen: the growth measured is 0).
    assert!(
        grown.abs() < 4096,
        "{grown} bytes more live after {cycles} create/use/free cycles"
    );
}

// ------------------------------------------------------------------ concurrency

#[test]
fn calls_from_many_threads_while_the_thread_count_changes_give_identical_bits() {
    let dims = [1, 4, 40, 16];
    let n: usize = dims.iter().product();
    let x = seq(n, 0.3);
    let a = seq(96 * 80, 0.11);
    let sdpa = |x: &[f32]| -> Vec<f32> {
        let mut q = x.to_vec();
        let mut out = vec![0.0f32; n];
        let qt = tensor(&mut q, dims);
        let mut ot = tensor(&mut out, dims);
        let mut o = fa_sdpa_options::default();
        o.causal = 1;
        // SAFETY: live dense tensors.
        let rc = unsafe { fa_sdpa(&qt, &qt, &qt, &mut ot, &o) };
        assert_eq!(rc, OK, "{}", last_error());
        out
    };
    let gemm = |a: &[f32]| -> Vec<f32> {
        let mut c = vec![0.0f32; 96 * 96];
        // SAFETY: A 96×80 row-major, B = Aᵀ (80×96), C 96×96, all live.
        let rc = unsafe {
            fa_sgemm(
                96,
                80,
                96,
                1.0,
                a.as_ptr(),
                80,
                1,
                a.as_ptr(),
                1,
                80,
                0.0,
                c.as_mut_ptr(),
                96,
                1,
            )
        };
        assert_eq!(rc, OK, "{}", last_error());
        c
    };
    let (want_s, want_g) = (sdpa(&x), gemm(&a));
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            for i in 0..30 {
                assert_eq!(fa_set_num_threads(1 + i % 3), OK);
                std::thread::yield_now();
                if stop.load(Ordering::Relaxed) {
                    break;
                }
            }
            assert_eq!(fa_set_num_threads(0), OK);
        });
        let workers: Vec<_> = (0..6)
            .map(|t| {
                let (x, a, want_s, want_g) = (&x, &a, &want_s, &want_g);
                let (sdpa, gemm) = (&sdpa, &gemm);
                s.spawn(move || {
                    for i in 0..15 {
                        if (t + i) % 2 == 0 {
                            assert!(sdpa(x) == *want_s, "thread {t} iter {i}: fa_sdpa");
                        } else {
                            assert!(gemm(a) == *want_g, "thread {t} iter {i}: fa_sgemm");
                        }
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        stop.store(true, Ordering::Relaxed);
    });
}
