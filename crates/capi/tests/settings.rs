//! Process-wide settings (threads, kernel variant), in their own test binary because they
//! change what every other call of the process does.

use fastattn_capi::*;
use std::ffi::{c_int, CStr};

fn variant() -> String {
    let p = fa_variant_name();
    assert!(!p.is_null());
    // SAFETY: a static NUL-terminated string.
    unsafe { CStr::from_ptr(p) }.to_str().unwrap().to_string()
}

/// fa_sdpa on a fixed problem; returns the output.
fn attention() -> Vec<f32> {
    let dims = [2, 4, 9, 8];
    let mut x: Vec<f32> = (0..2 * 4 * 9 * 8)
        .map(|i| ((i * 37) % 23) as f32 / 23.0 - 0.5)
        .collect();
    let mut out = vec![0.0f32; x.len()];
    let strides = [288, 72, 8, 1];
    let t = fa_tensor {
        data: x.as_mut_ptr().cast(),
        dims,
        strides,
        dtype: 0,
    };
    let mut o = fa_tensor {
        data: out.as_mut_ptr().cast(),
        dims,
        strides,
        dtype: 0,
    };
    let opts = fa_sdpa_options {
        causal: 1,
        ..fa_sdpa_options::default()
    };
    // SAFETY: dense views of live buffers; `out` is distinct from `x`.
    let rc = unsafe { fa_sdpa(&t, &t, &t, &mut o, &opts) };
    assert_eq!(rc, 0);
    out
}

#[test]
fn threads_and_variants_change_nothing_but_speed() {
    let auto = variant();
    let base = attention();

    assert_eq!(fa_set_num_threads(3), 0);
    assert_eq!(fa_num_threads(), 3);
    let threaded = attention();
    assert_eq!(fa_set_num_threads(0), 0);
    assert!(fa_num_threads() >= 1);
    for (a, b) in base.iter().zip(&threaded) {
        assert!((a - b).abs() < 1e-6);
    }

    for isa in kernels::Isa::available() {
        let name = std::ffi::CString::new(isa.name()).unwrap();
        // SAFETY: a NUL-terminated string.
        assert_eq!(unsafe { fa_set_variant(name.as_ptr()) }, 0, "{isa}");
        assert_eq!(variant(), isa.name());
        for (a, b) in base.iter().zip(&attention()) {
            assert!((a - b).abs() < 1e-5, "{isa}");
        }
    }
    // Unknown and unsupported names are refused and change nothing.
    let before = variant();
    // SAFETY: a NUL-terminated string.
    let rc = unsafe { fa_set_variant(c"sse9".as_ptr()) };
    assert_eq!(rc, fa_status::FA_ERR_UNSUPPORTED_VARIANT as c_int);
    for isa in kernels::Isa::ALL.into_iter().filter(|i| !i.is_supported()) {
        let name = std::ffi::CString::new(isa.name()).unwrap();
        // SAFETY: a NUL-terminated string.
        let rc = unsafe { fa_set_variant(name.as_ptr()) };
        assert_eq!(rc, fa_status::FA_ERR_UNSUPPORTED_VARIANT as c_int, "{isa}");
    }
    assert_eq!(variant(), before);
    // NULL and "auto" return to the automatic choice.
    // SAFETY: NULL is allowed.
    assert_eq!(unsafe { fa_set_variant(std::ptr::null()) }, 0);
    assert_eq!(variant(), auto);
    // SAFETY: a NUL-terminated string.
    assert_eq!(unsafe { fa_set_variant(c"auto".as_ptr()) }, 0);
    assert_eq!(variant(), auto);
}
