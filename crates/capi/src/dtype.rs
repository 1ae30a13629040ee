//! Element types at the C boundary: the `fa_dtype` codes that `fa_tensor.dtype`,
//! `fa_mha_config.weight_dtype` and `fa_kv_cache_new_typed` take.
//!
//! The codes arrive as plain `int32_t` fields (a Rust enum holding a value C made up would
//! be undefined behaviour), are checked once here into [`fa_dtype`], and are matched once,
//! at the boundary, into the generic Rust call (`with_element!`).

use crate::status::{fa_status, FfiError, FfiResult};
use kernels::quant::QuantType;
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
    /// 8-bit signed integer codes (`int8_t`), 1 byte: a value is `code * scale`. Accepted
    /// only for K and V of `fa_sdpa` and `fa_sdpa_varlen` (with `fa_sdpa_options.k_scale`
    /// / `v_scale`) and for the caches of `fa_paged_kv_write_scaled`; refused elsewhere
    /// with `FA_ERR_INVALID_ARGUMENT`. Added in ABI 6.
    FA_DTYPE_I8 = 3,
    /// 8-bit float codes e4m3fn (1 sign, 4 exponent, 3 fraction bits, bias 7, no
    /// infinities, largest finite 448; PyTorch `torch.float8_e4m3fn`), 1 byte: a value is
    /// `decode(code) * scale`. Accepted where `FA_DTYPE_I8` is. Added in ABI 6.
    FA_DTYPE_F8_E4M3 = 4,
    /// 8-bit float codes e5m2 (1 sign, 5 exponent, 2 fraction bits, bias 15, IEEE-style
    /// infinities and NaNs; PyTorch `torch.float8_e5m2`), 1 byte: a value is
    /// `decode(code) * scale`. Accepted where `FA_DTYPE_I8` is. Added in ABI 6.
    FA_DTYPE_F8_E5M2 = 5,
}

/// The 8-bit codes, in `fa_dtype` order.
const EIGHT_BIT: [fa_dtype; 3] = [
    fa_dtype::FA_DTYPE_I8,
    fa_dtype::FA_DTYPE_F8_E4M3,
    fa_dtype::FA_DTYPE_F8_E5M2,
];

impl fa_dtype {
    /// The C code of a kernels' element type.
    pub(crate) fn of(dtype: DType) -> fa_dtype {
        match dtype {
            DType::F32 => fa_dtype::FA_DTYPE_F32,
            DType::F16 => fa_dtype::FA_DTYPE_F16,
            DType::BF16 => fa_dtype::FA_DTYPE_BF16,
        }
    }

    /// The kernels' element type (the inverse of [`fa_dtype::of`], tested) of a float
    /// type. An 8-bit type never gets here: [`fa_dtype::from_code`] refuses it, and only
    /// [`fa_dtype::from_code_8bit`] (K, V and paged caches, which dispatch on
    /// [`fa_dtype::quant`] first) lets one through.
    pub(crate) fn dtype(self) -> DType {
        match self {
            fa_dtype::FA_DTYPE_F32 => DType::F32,
            fa_dtype::FA_DTYPE_F16 => DType::F16,
            fa_dtype::FA_DTYPE_BF16 => DType::BF16,
            q => panic!("{q:?} reached a path for float types only"),
        }
    }

    /// The 8-bit code type, or `None` for a float type.
    pub(crate) fn quant(self) -> Option<QuantType> {
        match self {
            fa_dtype::FA_DTYPE_I8 => Some(QuantType::I8),
            fa_dtype::FA_DTYPE_F8_E4M3 => Some(QuantType::F8E4M3),
            fa_dtype::FA_DTYPE_F8_E5M2 => Some(QuantType::F8E5M2),
            _ => None,
        }
    }

    /// The float type with C code `code`, or `FA_ERR_INVALID_ARGUMENT` naming the field
    /// `what` and the value (an 8-bit code is refused with a message saying where 8-bit
    /// types are accepted).
    pub(crate) fn from_code(code: i32, what: &str) -> FfiResult<fa_dtype> {
        if let Some(&q) = EIGHT_BIT.iter().find(|dt| dt.code() == code) {
            return Err(FfiError::new(
                fa_status::FA_ERR_INVALID_ARGUMENT,
                format!(
                    "{what} is {code} ({}), an 8-bit type: not supported here (8-bit types \
                     are accepted only for k and v of fa_sdpa and fa_sdpa_varlen and the \
                     caches of fa_paged_kv_write_scaled)",
                    q.c_name()
                ),
            ));
        }
        Self::float_from_code(code, what)
    }

    /// Any type with C code `code`, 8-bit ones included (K and V of attention, paged
    /// caches): the caller dispatches on [`fa_dtype::quant`] before any float-only path.
    pub(crate) fn from_code_8bit(code: i32, what: &str) -> FfiResult<fa_dtype> {
        match EIGHT_BIT.iter().find(|dt| dt.code() == code) {
            Some(&q) => Ok(q),
            None => Self::float_from_code(code, what).map_err(|mut e| {
                e.message = format!(
                    "{}, or an 8-bit type: FA_DTYPE_I8 (3), FA_DTYPE_F8_E4M3 (4) or \
                     FA_DTYPE_F8_E5M2 (5)",
                    e.message
                );
                e
            }),
        }
    }

    fn float_from_code(code: i32, what: &str) -> FfiResult<fa_dtype> {
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
        match self.quant() {
            Some(_) => 1,
            None => self.dtype().size(),
        }
    }

    /// Its short name: `f32`, `f16`, `bf16`, `i8`, `f8e4m3` or `f8e5m2`.
    fn short_name(self) -> &'static str {
        match self {
            fa_dtype::FA_DTYPE_I8 => "i8",
            fa_dtype::FA_DTYPE_F8_E4M3 => "f8e4m3",
            fa_dtype::FA_DTYPE_F8_E5M2 => "f8e5m2",
            dt => dt.dtype().name(),
        }
    }

    /// Its name in C, e.g. `FA_DTYPE_BF16`.
    fn c_name(self) -> String {
        match self {
            fa_dtype::FA_DTYPE_I8 => "FA_DTYPE_I8".into(),
            fa_dtype::FA_DTYPE_F8_E4M3 => "FA_DTYPE_F8_E4M3".into(),
            fa_dtype::FA_DTYPE_F8_E5M2 => "FA_DTYPE_F8_E5M2".into(),
            dt => format!("FA_DTYPE_{}", dt.short_name().to_ascii_uppercase()),
        }
    }

    /// Its short name and code for messages, e.g. `"bf16 (FA_DTYPE_BF16 = 2)"`.
    pub(crate) fn describe(self) -> String {
        format!(
            "{} ({} = {})",
            self.short_name(),
            self.c_name(),
            self.code()
        )
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

/// `with_code!(q, C => body)`: evaluates `body` with the type alias `C` naming the Rust
/// code type (`i8`, `F8E4M3` or `F8E5M2`) of the `QuantType` `q`.
macro_rules! with_code {
    ($q:expr, $C:ident => $body:expr) => {
        match $q {
            ::kernels::quant::QuantType::I8 => {
                type $C = i8;
                $body
            }
            ::kernels::quant::QuantType::F8E4M3 => {
                type $C = ::kernels::quant::F8E4M3;
                $body
            }
            ::kernels::quant::QuantType::F8E5M2 => {
                type $C = ::kernels::quant::F8E5M2;
                $body
            }
        }
    };
}
pub(crate) use with_code;

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
        for (i, q) in EIGHT_BIT.into_iter().enumerate() {
            let c = DType::ALL.len() as i32 + i as i32;
            assert_eq!(fa_dtype::from_code_8bit(c, "k->dtype").unwrap(), q);
            assert_eq!(q.size(), 1);
            assert!(q.quant().is_some());
            let e = fa_dtype::from_code(c, "out->dtype").unwrap_err();
            assert!(e.message.contains("8-bit"), "{}", e.message);
        }
        assert_eq!(
            fa_dtype::FA_DTYPE_F8_E4M3.describe(),
            "f8e4m3 (FA_DTYPE_F8_E4M3 = 4)"
        );
        for bad in [DType::ALL.len() as i32 + 3, -1, i32::MIN, i32::MAX] {
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
