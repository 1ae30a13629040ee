//! Element types at the C boundary: the `fa_dtype` codes that `fa_tensor.dtype`,
//! `fa_mha_config.weight_dtype` and `fa_kv_cache_new_typed` take.
//!
//! The codes arrive as plain `int32_t` fields (a Rust enum holding a value C made up would
//! be undefined behaviour), are checked once here into [`fa_dtype`], and are matched once,
//! at the boundary, into the generic Rust call (`with_element!`).

use crate::status::{fa_status, FfiError, FfiResult};
use kernels::DType;

/// Element types of tensors (`fa_tensor.dtype`), layer weights
/// (`fa_mha_config.weight_dtype`) and KV caches (`fa_kv_cache_new_typed`). The fields
/// that hold one are `int32_t`, and 0 is f32, so a zero-filled struct keeps the meaning it
/// had before 16-bit types existed. A 16-bit value is passed as its bits (`uint16_t`
/// storage, 2-byte aligned); computation always accumulates in f32, and 16-bit outputs
/// are rounded to nearest, ties to even.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum fa_dtype {
    /// IEEE binary32 `float` (4 bytes).
    FA_DTYPE_F32 = 0,
    /// IEEE binary16 (half: 1 sign, 5 exponent, 10 fraction bits; numpy `float16`,
    /// `_Float16`), 2 bytes.
    FA_DTYPE_F16 = 1,
    /// bfloat16 (the upper half of an IEEE binary32: 1 sign, 8 exponent, 7 fraction
    /// bits; PyTorch `torch.bfloat16`), 2 bytes.
    FA_DTYPE_BF16 = 2,
}

impl fa_dtype {
    /// The C code of a kernels' element type.
    pub(crate) fn of(dtype: DType) -> fa_dtype {
        match dtype {
            DType::F32 => fa_dtype::FA_DTYPE_F32,
            DType::F16 => fa_dtype::FA_DTYPE_F16,
            DType::BF16 => fa_dtype::FA_DTYPE_BF16,
        }
    }

    /// The kernels' element type (the inverse of [`fa_dtype::of`], tested).
    pub(crate) fn dtype(self) -> DType {
        match self {
            fa_dtype::FA_DTYPE_F32 => DType::F32,
            fa_dtype::FA_DTYPE_F16 => DType::F16,
            fa_dtype::FA_DTYPE_BF16 => DType::BF16,
        }
    }

    /// The type with C code `code`, or `FA_ERR_INVALID_ARGUMENT` naming the field `what`
    /// and the value.
    pub(crate) fn from_code(code: i32, what: &str) -> FfiResult<fa_dtype> {
        let all = DType::ALL.map(fa_dtype::of);
        if let Some(&dt) = all.iter().find(|dt| dt.code() == code) {
            return Ok(dt);
        }
        let names: Vec<String> = all
            .iter()
            .map(|dt| format!("{} ({})", dt.c_name(), dt.code()))
            .collect();
        let (last, rest) = names.split_last().unwrap_or((&names[0], &[]));
        Err(FfiError::new(
            fa_status::FA_ERR_INVALID_ARGUMENT,
            format!(
                "{what} is {code}, not an fa_dtype: use {} or {last}",
                rest.join(", ")
            ),
        ))
    }

    /// Its C code (what the `int32_t` fields hold).
    pub(crate) fn code(self) -> i32 {
        self as i32
    }

    /// Bytes per element (also the alignment the data must have).
    pub(crate) fn size(self) -> usize {
        self.dtype().size()
    }

    /// Its name in C, e.g. `FA_DTYPE_BF16`.
    fn c_name(self) -> String {
        format!("FA_DTYPE_{}", self.dtype().name().to_ascii_uppercase())
    }

    /// Its short name and code for messages, e.g. `"bf16 (FA_DTYPE_BF16 = 2)"`.
    pub(crate) fn describe(self) -> String {
        format!("{} ({} = {})", self.dtype(), self.c_name(), self.code())
    }
}

/// `with_element!(dt, T => body)`: evaluates `body` with the type alias `T` naming the
/// Rust element type (`f32`, `f16` or `bf16`) of the [`fa_dtype`] `dt`: the one `match`
/// on a run-time type, at the boundary, in front of the generic call
/// ([`kernels::with_dtype!`]).
macro_rules! with_element {
    ($dt:expr, $T:ident => $body:expr) => {
        ::kernels::with_dtype!($crate::dtype::fa_dtype::dtype($dt), $T => $body)
    };
}
pub(crate) use with_element;

#[cfg(test)]
mod tests {
    use super::*;
    use kernels::Element;

    #[test]
    fn codes_round_trip_and_match_the_kernels_order() {
        for (i, kernel) in DType::ALL.into_iter().enumerate() {
            let dt = fa_dtype::from_code(i as i32, "x").unwrap();
            assert_eq!(dt, fa_dtype::of(kernel));
            assert_eq!(dt.code(), i as i32);
            assert_eq!(dt.dtype(), kernel);
            assert_eq!(with_element!(dt, T => <T as Element>::DTYPE), kernel);
            assert_eq!(kernel.size(), dt.size());
        }
        assert_eq!(
            fa_dtype::FA_DTYPE_BF16.describe(),
            "bf16 (FA_DTYPE_BF16 = 2)"
        );
        let e = fa_dtype::from_code(7, "q->dtype").unwrap_err();
        assert_eq!(
            e.message,
            "q->dtype is 7, not an fa_dtype: use FA_DTYPE_F32 (0), FA_DTYPE_F16 (1) \
             or FA_DTYPE_BF16 (2)"
        );
        for bad in [DType::ALL.len() as i32, -1, i32::MIN, i32::MAX] {
            let e = fa_dtype::from_code(bad, "q->dtype").unwrap_err();
            assert_eq!(e.code, fa_status::FA_ERR_INVALID_ARGUMENT);
            assert!(
                e.message.contains(&format!("q->dtype is {bad}")),
                "{}",
                e.message
            );
        }
    }
}
