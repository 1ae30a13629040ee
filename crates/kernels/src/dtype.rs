//! Element types: f32 and the 16-bit storage types `half::f16` and `half::bf16`.
//!
//! Everything computes in f32. A 16-bit operand is converted where the kernels read it:
//! while it is packed for the GEMM microkernel ([`gemm::packed::PackedB`](crate::gemm::packed::PackedB),
//! [`gemm_with`](crate::gemm::gemm_with)), or in registers by the decode kernels
//! ([`gemv`](crate::gemv)). f16 → f32 and bf16 → f32 are exact; f32 → 16-bit rounds to the
//! nearest value, ties to even (NaN stays NaN, overflow gives ±inf), as the `half` crate
//! does: [`convert`](crate::convert) holds the vector conversions and their scalar twins.

pub use half::{bf16, f16};

/// The storage types, listed once: every type-erased enum and every run-time dispatch over
/// element types, in every crate, is generated from this list.
///
/// `for_each_dtype!(path::to::callback!{ args })` expands to
/// `path::to::callback!{ { args } …entries… }`, one entry per type, in the order of
/// [`DType::ALL`] (and of the C ABI's `fa_dtype` codes):
/// `$(#[$doc:meta])* $Variant:ident = $Type:ty, $name:literal;`. Most code does not call it
/// directly but one of the macros built on it: [`with_dtype!`](crate::with_dtype) (a
/// [`DType`] to its Rust type), [`dtype_enum!`](crate::dtype_enum) (an enum with one variant
/// per type over any container) and [`match_dtype!`](crate::match_dtype) (visiting such an
/// enum with the element type bound).
///
/// Adding a storage type: a line here, the type's [`Element`] impl (its conversions to and
/// from f32) and its conversion kernels; then the boundary enums (the C ABI's `fa_dtype`,
/// the Python binding's dtype names). The compiler points at the rest.
///
/// ```
/// macro_rules! names {
///     ({} $($(#[$doc:meta])* $V:ident = $T:ty, $name:literal;)*) => { [$($name),*] };
/// }
/// assert_eq!(fastattn_kernels::for_each_dtype!(names! {}), ["f32", "f16", "bf16"]);
/// ```
#[macro_export]
macro_rules! for_each_dtype {
    ($($cb:ident)::+ ! $args:tt) => {
        $($cb)::+ ! { $args
            /// IEEE binary32.
            F32 = f32, "f32";
            /// IEEE binary16 (`half::f16`): 5 exponent bits, 10 fraction bits.
            F16 = $crate::dtype::f16, "f16";
            /// bfloat16 (`half::bf16`): f32's 8 exponent bits, 7 fraction bits.
            BF16 = $crate::dtype::bf16, "bf16";
        }
    };
}

/// `with_dtype!(dtype, T => body)`: `body` with the type alias `T` naming the Rust element
/// type of the [`DType`] `dtype`; one `match` over the types, each arm compiled for its
/// type (what a run-time type code becomes at a boundary, in front of a generic call).
///
/// ```
/// use fastattn_kernels::{with_dtype, DType};
/// let bytes = with_dtype!(DType::BF16, T => std::mem::size_of::<T>());
/// assert_eq!(bytes, 2);
/// ```
#[macro_export]
macro_rules! with_dtype {
    ($dtype:expr, $T:ident => $body:expr) => {
        $crate::for_each_dtype!($crate::__with_dtype_arms! { $dtype, $T, $body })
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __with_dtype_arms {
    ({ $dtype:expr, $T:ident, $body:expr }
     $($(#[$doc:meta])* $V:ident = $ty:ty, $name:literal;)*) => {
        match $dtype {
            $($crate::dtype::DType::$V => {
                #[allow(dead_code)]
                type $T = $ty;
                $body
            })*
        }
    };
}

/// Declares an enum with one variant per storage type, each holding a container of that
/// type: `_` in the container stands for the element type (`Vec<_>`, `&'a [_]`,
/// `TensorRef<'a, _>`, `[_; 4]`; not inside parentheses).
///
/// ```
/// fastattn_kernels::dtype_enum! {
///     /// Owned values of any element type.
///     #[derive(Debug, Clone)]
///     pub enum Values { Vec<_> }
/// }
/// use fastattn_kernels::{dtype::DTypeEnum, match_dtype, bf16, DType, Element};
/// let v = Values::from_typed(vec![bf16::from_f32(1.5); 3]);
/// assert_eq!(v.dtype(), DType::BF16);
/// let sum: f32 = match_dtype!(&v, Values(x) => x.iter().map(|e| e.to_f32()).sum());
/// assert_eq!(sum, 4.5);
/// ```
///
/// The variants are named as [`DType`]'s (`F32(Vec<f32>)`, `F16(Vec<f16>)`, …). The enum
/// gets an inherent `dtype()` and implements [`DTypeEnum`] (typed construction,
/// `from_typed`). Variants that hold no element type (a `bool` mask, say) may follow the
/// braces: `pub enum Data<'a> { &'a [_] }, Bool(&'a [bool])`; such an enum has no
/// `dtype()`. Lifetime parameters are allowed, type parameters not.
#[macro_export]
macro_rules! dtype_enum {
    ($(#[$m:meta])* $vis:vis enum $E:ident $(<$($lt:lifetime),*>)? { $($c:tt)* }
     $(, $($(#[$xm:meta])* $xv:ident($xt:ty)),+ $(,)?)?) => {
        $crate::for_each_dtype!($crate::__dtype_enum! {
            ($(#[$m])*) ($vis) $E ($($($lt),*)?) ($($c)*)
            ($($($(#[$xm])* $xv($xt)),+)?)
        });
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __dtype_enum {
    // No extra variant: a `dtype()` too.
    ({ ($($m:tt)*) ($vis:vis) $E:ident ($($lt:lifetime),*) $c:tt () }
     $($(#[$doc:meta])* $V:ident = $ty:ty, $name:literal;)*) => {
        $crate::__dtype_enum! { @enum ($($m)*) ($vis) $E ($($lt),*) $c () $($V $ty, $name;)* }
        impl<$($lt),*> $E<$($lt),*> {
            /// The element type.
            #[allow(dead_code)]
            $vis fn dtype(&self) -> $crate::dtype::DType {
                match self {
                    $($E::$V(_) => $crate::dtype::DType::$V,)*
                }
            }
        }
    };
    ({ ($($m:tt)*) ($vis:vis) $E:ident ($($lt:lifetime),*) $c:tt $x:tt }
     $($(#[$doc:meta])* $V:ident = $ty:ty, $name:literal;)*) => {
        $crate::__dtype_enum! { @enum ($($m)*) ($vis) $E ($($lt),*) $c $x $($V $ty, $name;)* }
    };
    (@enum ($($m:tt)*) ($vis:vis) $E:ident ($($lt:lifetime),*) $c:tt
     ($($(#[$xm:meta])* $xv:ident($xt:ty)),*) $($V:ident $ty:ty, $name:literal;)*) => {
        $($m)*
        $vis enum $E<$($lt),*> {
            $(
                #[doc = concat!("Elements of type `", $name, "`.")]
                $V($crate::__dtype_subst!($ty; $c)),
            )*
            $($(#[$xm])* $xv($xt),)*
        }
        impl<$($lt),*> $crate::dtype::DTypeEnum for $E<$($lt),*> {
            type Of<T: $crate::dtype::Element> = $crate::__dtype_subst!(T; $c);
            $(
                fn $V(x: Self::Of<$ty>) -> Self {
                    $E::$V(x)
                }
            )*
        }
    };
}

/// The container tokens with each `_` replaced by the type: at the top level (`Vec<_>`,
/// `&'a [_]`'s `&'a`), in a slice `[_]` or an array `[_; N]`; not inside parentheses.
#[doc(hidden)]
#[macro_export]
macro_rules! __dtype_subst {
    ($T:ty; ($($c:tt)*)) => { $crate::__dtype_subst!(@ $T; []; $($c)*) };
    (@ $T:ty; [$($o:tt)*]; ) => { $($o)* };
    (@ $T:ty; [$($o:tt)*]; _ $($r:tt)*) => { $crate::__dtype_subst!(@ $T; [$($o)* $T]; $($r)*) };
    (@ $T:ty; [$($o:tt)*]; [_; $($n:tt)*] $($r:tt)*) => {
        $crate::__dtype_subst!(@ $T; [$($o)* [$T; $($n)*]]; $($r)*)
    };
    (@ $T:ty; [$($o:tt)*]; [$($i:tt)*] $($r:tt)*) => {
        $crate::__dtype_subst!(@ $T; [$($o)* [$crate::__dtype_subst!($T; ($($i)*))]]; $($r)*)
    };
    (@ $T:ty; [$($o:tt)*]; $t:tt $($r:tt)*) => { $crate::__dtype_subst!(@ $T; [$($o)* $t]; $($r)*) };
}

/// `match_dtype!(value, Enum(x) => body)`: visits a [`dtype_enum!`](crate::dtype_enum),
/// running `body` with `x` bound to the container in each variant; one arm per type,
/// each compiled for its type. `Enum(x): T => body` also names the element type `T` in
/// `body`. Arms for an enum's extra variants follow: `…, Data::Bool(b) => other`.
///
/// ```
/// use fastattn_kernels::{dtype::Slice, match_dtype, Element};
/// let s = Slice::F16(&[fastattn_kernels::f16::ONE; 4]);
/// let bytes = match_dtype!(s, Slice(x): T => x.len() * std::mem::size_of::<T>());
/// assert_eq!(bytes, 8);
/// ```
#[macro_export]
macro_rules! match_dtype {
    ($value:expr, $($E:ident)::+ ($x:pat) : $T:ident => $body:expr $(, $($extra:tt)*)?) => {
        $crate::for_each_dtype!($crate::__match_dtype_arms! {
            $value, [$($E)::+], ($x), $T, ($body), [$($($extra)*)?]
        })
    };
    ($value:expr, $($E:ident)::+ ($x:pat) => $body:expr $(, $($extra:tt)*)?) => {
        $crate::match_dtype!($value, $($E)::+ ($x): __DTypeElem => $body $(, $($extra)*)?)
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __match_dtype_arms {
    ({ $value:expr, $p:tt, ($x:pat), $T:ident, ($body:expr), [$($extra:tt)*] }
     $($(#[$doc:meta])* $V:ident = $ty:ty, $name:literal;)*) => {
        $crate::__match_dtype_arms!(@ ($value) $p ($x) $T ($body) [$($extra)*] [] $($V $ty;)*)
    };
    (@ ($value:expr) $p:tt ($x:pat) $T:ident ($body:expr) [$($extra:tt)*] [$($arms:tt)*]) => {
        match $value {
            $($arms)*
            $($extra)*
        }
    };
    (@ ($value:expr) [$($p:tt)*] ($x:pat) $T:ident ($body:expr) [$($extra:tt)*] [$($arms:tt)*]
     $V:ident $ty:ty; $($rest:tt)*) => {
        $crate::__match_dtype_arms!(@ ($value) [$($p)*] ($x) $T ($body) [$($extra)*] [
            $($arms)*
            $($p)*::$V($x) => {
                #[allow(dead_code)]
                type $T = $ty;
                $body
            }
        ] $($rest)*)
    };
}

macro_rules! define_dtype {
    ({} $($(#[$doc:meta])* $V:ident = $ty:ty, $name:literal;)*) => {
        /// The element type of a tensor or matrix, for run-time checks and the C ABI (one
        /// variant per line of [`for_each_dtype!`](crate::for_each_dtype); match on it
        /// through [`with_dtype!`](crate::with_dtype)).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum DType {
            $($(#[$doc])* $V,)*
        }

        impl DType {
            /// Every type, in the order of the C ABI's `fa_dtype` codes.
            pub const ALL: [DType; [$($name),*].len()] = [$(DType::$V),*];

            /// Its short name (`f32`, `f16`, `bf16`).
            ///
            /// ```
            /// assert_eq!(fastattn_kernels::DType::BF16.name(), "bf16");
            /// ```
            pub fn name(self) -> &'static str {
                match self {
                    $(DType::$V => $name,)*
                }
            }
        }

        mod sealed {
            use super::{DType, DTypeEnum, Element};
            /// What each storage type is in the list: its tag and its variant of every
            /// [`DTypeEnum`].
            pub trait Sealed {
                const TAG: DType;
                fn wrap<E: DTypeEnum>(x: E::Of<Self>) -> E
                where
                    Self: Element;
            }
            $(impl Sealed for $ty {
                const TAG: DType = DType::$V;
                #[inline(always)]
                fn wrap<E: DTypeEnum>(x: E::Of<Self>) -> E {
                    E::$V(x)
                }
            })*
        }

        /// An enum with one variant per storage type, each holding a container of its type
        /// ([`Self::Of`]); declare one with [`dtype_enum!`](crate::dtype_enum).
        pub trait DTypeEnum: Sized {
            /// The container of elements of type `T` that each variant holds.
            type Of<T: Element>;
            $(
                #[allow(non_snake_case)]
                #[doc(hidden)]
                fn $V(x: Self::Of<$ty>) -> Self;
            )*
            /// `x` in the variant of its element type `T`.
            #[inline(always)]
            fn from_typed<T: Element>(x: Self::Of<T>) -> Self {
                <T as sealed::Sealed>::wrap(x)
            }
        }
    };
}
for_each_dtype!(define_dtype! {});

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        with_dtype!(self, T => std::mem::size_of::<T>())
    }

    /// Parses a short name (case-insensitive; `float32`, `half`, `float16` and `bfloat16`
    /// are accepted too).
    pub fn from_name(name: &str) -> Option<DType> {
        match name.trim().to_ascii_lowercase().as_str() {
            "float32" | "float" => Some(DType::F32),
            "float16" | "half" | "fp16" => Some(DType::F16),
            "bfloat16" => Some(DType::BF16),
            short => DType::ALL.into_iter().find(|d| d.name() == short),
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

dtype_enum! {
    /// A slice of any element type (what the type-erased, non-generic code paths take).
    #[derive(Debug, Clone, Copy)]
    pub enum Slice<'a> { &'a [_] }
}

impl<'a> Slice<'a> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match_dtype!(self, Slice(s) => s.len())
    }
    /// Whether it holds no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Element `i` as f32 (exact). Panics when out of range. A convenience: code that
    /// reads rows dispatches once ([`match_dtype!`](crate::match_dtype)) and converts
    /// the row in one generic call.
    #[inline]
    pub fn get_f32(&self, i: usize) -> f32 {
        match_dtype!(self, Slice(s) => s[i].to_f32())
    }
    /// The elements from `i` on (empty past the end).
    pub fn tail(&self, i: usize) -> Slice<'a> {
        match_dtype!(*self, Slice(s): T => Slice::from_typed::<T>(s.get(i..).unwrap_or(&[])))
    }
}

dtype_enum! {
    /// A mutable slice of any element type.
    #[derive(Debug)]
    pub enum SliceMut<'a> { &'a mut [_] }
}

impl SliceMut<'_> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match_dtype!(self, SliceMut(s) => s.len())
    }
    /// Whether it holds no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An element type the kernels read and write: `f32`, [`f16`](struct@f16) or [`bf16`] (sealed:
/// the types of [`for_each_dtype!`](crate::for_each_dtype)). Every bit pattern of a
/// storage type is a valid value (the C and Python boundaries read caller memory as it).
///
/// ```
/// use fastattn_kernels::{bf16, Element};
/// assert_eq!(bf16::from_f32(1.0 + 1.0 / 256.0).to_f32(), 1.0); // ties to even
/// assert_eq!(<bf16 as Element>::DTYPE, fastattn_kernels::DType::BF16);
/// ```
pub trait Element:
    sealed::Sealed + RowElem + Copy + Default + PartialEq + Send + Sync + std::fmt::Debug + 'static
{
    /// The run-time tag of the type.
    const DTYPE: DType = <Self as sealed::Sealed>::TAG;
    /// The value as f32 (exact for all three types).
    fn to_f32(self) -> f32;
    /// `x` rounded to the nearest value of the type, ties to even.
    fn from_f32(x: f32) -> Self;
    /// The slice, type-erased.
    fn slice(data: &[Self]) -> Slice<'_> {
        Slice::from_typed(data)
    }
    /// The mutable slice, type-erased.
    fn slice_mut(data: &mut [Self]) -> SliceMut<'_> {
        SliceMut::from_typed(data)
    }
}

impl Element for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        x
    }
}

impl Element for f16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        f16::from_f32(x)
    }
}

impl Element for bf16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        bf16::from_f32(x)
    }
}

/// What a decode kernel's row holds: an [`Element`] or an 8-bit
/// [`Code`](crate::quant::Code) (implementation detail of the kernels' generic bodies; sealed
/// through both traits).
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowType {
    F32,
    F16,
    BF16,
    I8,
    F8E4M3,
    F8E5M2,
}

/// A type the decode kernels read rows of: the [`Element`]s and the 8-bit
/// [`Code`](crate::quant::Code)s (implementation detail; every impl is in this crate).
#[doc(hidden)]
pub trait RowElem: Copy + Send + Sync + 'static {
    /// What the rows hold.
    const ROW: RowType;
    /// The power of two the decode kernels' loads divide the values by (256 for e4m3,
    /// whose fast widening gives `code / 256`; 1 for every other type): the kernels fold it
    /// into the rows' scales, which is exact.
    const RAW_SCALE: f32 = if matches!(Self::ROW, RowType::F8E4M3) {
        256.0
    } else {
        1.0
    };
    /// The value as f32 (exact; a code's value before its scale).
    fn value(self) -> f32;
    /// The value as the decode kernels load it: `value / RAW_SCALE` (exact).
    #[inline(always)]
    fn raw(self) -> f32 {
        self.value() * (1.0 / Self::RAW_SCALE)
    }
}

macro_rules! row_elem {
    ($($t:ty => $v:ident, |$x:ident| $e:expr;)*) => {$(
        impl RowElem for $t {
            const ROW: RowType = RowType::$v;
            #[inline(always)]
            fn value(self) -> f32 {
                let $x = self;
                $e
            }
        }
    )*};
}
row_elem! {
    f32 => F32, |x| x;
    f16 => F16, |x| x.to_f32();
    bf16 => BF16, |x| x.to_f32();
    i8 => I8, |x| f32::from(x);
    crate::quant::F8E4M3 => F8E4M3, |x| x.to_f32();
    crate::quant::F8E5M2 => F8E5M2, |x| x.to_f32();
}

/// Whether every value of `x` is finite: `v − v` is 0 for a finite `v` and NaN for a NaN
/// or an infinity, and the eight running sums vectorise (no branch per value).
///
/// ```
/// assert!(fastattn_kernels::dtype::all_finite(&[1.0, -2.0, 0.0]));
/// assert!(!fastattn_kernels::dtype::all_finite(&[1.0, f32::INFINITY]));
/// ```
// `v - v` is the point: 0 for finite values, NaN otherwise.
#[allow(clippy::eq_op)]
pub fn all_finite(x: &[f32]) -> bool {
    let mut acc = [0.0f32; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += v - v;
        }
    }
    let tail: f32 = chunks.remainder().iter().map(|&v| v - v).sum();
    acc.iter().sum::<f32>() + tail == 0.0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The list's entries, as values.
    macro_rules! entries {
        ({} $($(#[$doc:meta])* $V:ident = $ty:ty, $name:literal;)*) => {
            [$((DType::$V, $name, std::mem::size_of::<$ty>(), <$ty as Element>::DTYPE)),*]
        };
    }

    dtype_enum! {
        #[derive(Debug, Clone, PartialEq)]
        enum Values { Vec<_> }
    }

    dtype_enum! {
        #[derive(Debug, Clone, Copy)]
        enum Pair { [_; 2] }
    }

    dtype_enum! {
        #[derive(Debug, Clone, Copy)]
        enum WithMask<'a> { &'a [_] }, Bool(&'a [bool])
    }

    #[test]
    fn every_dtype_round_trips_through_the_macros() {
        let list = for_each_dtype!(entries! {});
        assert_eq!(list.len(), DType::ALL.len());
        for (i, (d, name, size, tag)) in list.into_iter().enumerate() {
            assert_eq!(DType::ALL[i], d);
            assert_eq!(tag, d);
            assert_eq!(d.name(), name);
            assert_eq!(d.to_string(), name);
            assert_eq!(DType::from_name(name), Some(d));
            assert_eq!(DType::from_name(&name.to_uppercase()), Some(d));
            assert_eq!(d.size(), size);
            assert_eq!(with_dtype!(d, T => T::DTYPE), d);
            assert_eq!(with_dtype!(d, T => std::mem::size_of::<T>()), size);

            // Typed construction lands in the type's variant, and visiting binds the type.
            let mut v = with_dtype!(d, T => Values::from_typed(vec![T::from_f32(1.5); 3]));
            assert_eq!(v.dtype(), d);
            let seen = match_dtype!(&v, Values(x): T => (T::DTYPE, x.len(), x[2].to_f32()));
            assert_eq!(seen, (d, 3, 1.5));
            let s = match_dtype!(&v, Values(x) => Slice::from_typed(&x[..]));
            assert_eq!((s.dtype(), s.len(), s.get_f32(1)), (d, 3, 1.5));
            assert_eq!(
                (s.tail(1).dtype(), s.tail(1).len(), s.tail(9).len()),
                (d, 2, 0)
            );
            let w = match_dtype!(s, Slice(x) => WithMask::from_typed(x));
            let len = match_dtype!(w, WithMask(x) => x.len(), WithMask::Bool(b) => b.len());
            assert_eq!(len, 3);
            let m = match_dtype!(&mut v, Values(x) => SliceMut::from_typed(&mut x[..]));
            assert_eq!((m.dtype(), m.len()), (d, 3));
            let p = with_dtype!(d, T => Pair::from_typed([T::from_f32(2.0); 2]));
            assert_eq!(p.dtype(), d);
            assert_eq!(match_dtype!(p, Pair(x) => x[1].to_f32()), 2.0);
        }
        let bools = WithMask::Bool(&[true]);
        assert_eq!(
            match_dtype!(bools, WithMask(x) => x.len(), WithMask::Bool(_) => 7),
            7
        );
    }

    #[test]
    fn element_slices_are_their_types_variants() {
        assert!(matches!(f32::slice(&[1.0]), Slice::F32(_)));
        assert!(matches!(f16::slice(&[f16::ONE]), Slice::F16(_)));
        assert!(matches!(
            bf16::slice_mut(&mut [bf16::ONE]),
            SliceMut::BF16(_)
        ));
    }
}
