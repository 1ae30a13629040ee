//! Process-wide settings and introspection: threads, kernel variant, version, last error.

use crate::pool;
use crate::status::{fa_status, ffi_guard, last_error_ptr, FfiError, OK};
use kernels::Isa;
use std::ffi::{c_char, c_int, CStr};

/// Sets the number of threads later calls use, the calling thread included: `n > 0` uses
/// up to `n` (the library starts `n − 1` helper threads as calls need them); `n <= 0`
/// returns to the default (`RAYON_NUM_THREADS`, else one thread per CPU). Results do not
/// depend on the thread count. Returns `FA_OK`.
#[no_mangle]
pub extern "C" fn fa_set_num_threads(n: c_int) -> c_int {
    ffi_guard!("fa_set_num_threads", {
        pool::set_num_threads(i64::from(n))?;
        Ok(OK)
    })
}

/// The number of threads calls run on now (at least 1).
///
/// Calls run on the calling thread, joined by helper threads for their parallel parts; a
/// call never waits for a helper that has not started, so a call that comes while helpers
/// sleep costs at most its one-thread time plus one task. How long idle helpers stay awake
/// is the blocktime (`fa_set_blocktime_us`).
#[no_mangle]
pub extern "C" fn fa_num_threads() -> c_int {
    ffi_guard!("fa_num_threads", {
        Ok(c_int::try_from(pool::num_threads())
            .unwrap_or(c_int::MAX)
            .max(1))
    })
}

/// Sets the blocktime: how long a helper thread keeps looking for work after its last task
/// (yielding its CPU to any other runnable thread) before it sleeps, in microseconds, like
/// OpenMP's `KMP_BLOCKTIME`. `0` sleeps at once; a negative value never sleeps. The default
/// is 20 ms, or the environment variable `FASTATTN_BLOCKTIME` (milliseconds, or
/// `infinite`) read at the first parallel call. Process-wide; returns `FA_OK`.
#[no_mangle]
pub extern "C" fn fa_set_blocktime_us(us: i64) -> c_int {
    ffi_guard!("fa_set_blocktime_us", {
        pool::set_blocktime_us(us);
        Ok(OK)
    })
}

/// The blocktime now in effect, in microseconds; -1 for infinite (`fa_set_blocktime_us`).
#[no_mangle]
pub extern "C" fn fa_blocktime_us() -> i64 {
    ffi_guard!("fa_blocktime_us", { Ok(pool::blocktime_us()) })
}

/// Name of the kernel variant calls use now: `"scalar"`, `"portable"`, `"avx2"`,
/// `"avx512"` or `"neon"` (a static string). NULL if the environment variable
/// `FASTATTN_ISA` names a variant this CPU lacks (see `fa_last_error()`).
#[no_mangle]
pub extern "C" fn fa_variant_name() -> *const c_char {
    ffi_guard!("fa_variant_name", {
        Ok(kernels::current_isa()?.c_name().as_ptr())
    })
}

/// Forces the kernel variant of every later call of the process: `"scalar"`,
/// `"portable"`, `"avx2"`, `"avx512"` or `"neon"` (case-insensitive). NULL, `""` or
/// `"auto"` return to automatic choice (or to `FASTATTN_ISA` if that is set). Returns
/// `FA_OK`, or `FA_ERR_UNSUPPORTED_VARIANT` for an unknown name or a variant this CPU
/// cannot run (the setting is then unchanged).
///
/// # Safety
/// `name` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn fa_set_variant(name: *const c_char) -> c_int {
    ffi_guard!("fa_set_variant", {
        let choice = if name.is_null() {
            None
        } else {
            // SAFETY: non-NULL and NUL-terminated (caller contract).
            let raw = unsafe { CStr::from_ptr(name) };
            let s = raw.to_str().map_err(|_| {
                FfiError::new(
                    fa_status::FA_ERR_UNSUPPORTED_VARIANT,
                    format!("variant name {raw:?} is not UTF-8"),
                )
            })?;
            match s.trim() {
                "" | "auto" => None,
                s => Some(Isa::from_name(s)?),
            }
        };
        kernels::set_isa(choice)?;
        Ok(OK)
    })
}

/// The version of the C ABI this header and library describe: `fa_abi_version()` returns
/// it. It goes up whenever the header's declarations change: incompatibly (a struct
/// layout, a signature, a removed function, a changed meaning), or by additions (new
/// functions and types, fields appended to a struct with `struct_size`). Additions keep
/// programs built against the older header working with the newer library (a smaller
/// `struct_size` gives the new fields their defaults); the history below says which bumps
/// were additions.
///
/// History: 1, the first release; 2, `struct_size` and `*_init` functions for the option
/// and layer structs (replacing `fa_sdpa_options_default`), `fa_abi_version`; 3, 16-bit
/// element types (`fa_dtype`): `fa_tensor` holds `void *data` and a last field `dtype`
/// (0 = f32), `fa_mha_weights`' matrices are `const void *` of the new
/// `fa_mha_config.weight_dtype`, and `fa_kv_cache_new_typed`, `fa_kv_cache_bytes` and
/// `fa_kv_cache_dtype` were added; 4 (additions only: programs built against ABI 3 run
/// unchanged), serving attention: `fa_sdpa_options.sinks` appended, `fa_sdpa_varlen` with
/// `fa_varlen_seqs`, `fa_varlen_seqs_init` and `fa_index_dtype`, and `fa_paged_kv_write`; 5 (additions only),
/// `fa_set_blocktime_us` and `fa_blocktime_us`; 6 (additions only), 8-bit keys and
/// values: `fa_dtype` gains `FA_DTYPE_I8`, `FA_DTYPE_F8_E4M3` and `FA_DTYPE_F8_E5M2` (K and
/// V of `fa_sdpa` / `fa_sdpa_varlen`, caches of the new `fa_paged_kv_write_scaled`),
/// `fa_sdpa_options.k_scale` and `v_scale` appended.
pub const FA_ABI_VERSION: u32 = 6;

/// The ABI version the library was built with (`FA_ABI_VERSION` of its header). A program
/// can check at start-up that the library it loaded matches the header it was compiled
/// with: `fa_abi_version() == FA_ABI_VERSION`.
#[no_mangle]
pub extern "C" fn fa_abi_version() -> u32 {
    ffi_guard!("fa_abi_version", { Ok(FA_ABI_VERSION) })
}

/// The library version, e.g. `"0.1.0"` (a static string).
#[no_mangle]
pub extern "C" fn fa_version() -> *const c_char {
    ffi_guard!("fa_version", {
        Ok(concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast())
    })
}

/// The message of the last failure on the calling thread (`""` if none), e.g.
/// `"fa_sdpa: attention: shape mismatch: head dims differ: Q 8, K 4"`. Successful calls do
/// not clear it. The string stays valid until the next failing call on this thread.
#[no_mangle]
pub extern "C" fn fa_last_error() -> *const c_char {
    ffi_guard!("fa_last_error", { Ok(last_error_ptr()) })
}

/// Always returns `FA_ERR_INTERNAL`: it raises a Rust panic inside the library, which the
/// panic boundary catches. For bindings' tests that the boundary holds (nothing is
/// printed; `fa_last_error()` names the panic).
#[no_mangle]
pub extern "C" fn fa_test_panic_boundary() -> c_int {
    ffi_guard!("fa_test_panic_boundary", {
        // `resume_unwind` unwinds like a panic but skips the panic hook (no stderr noise).
        std::panic::resume_unwind(Box::new("deliberate panic from fa_test_panic_boundary"))
    })
}
