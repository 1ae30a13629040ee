//! The per-thread scratch of a backward task, and its gather and packing helpers.

use crate::error::Result;
use crate::tensor::AnyRef;
use kernels::gemm::packed::PackedB;
use kernels::gemm::MatRef;
use kernels::Isa;
use std::cell::RefCell;

/// Per-thread scratch of one task.
pub(super) struct Ws {
    /// The group's Q and dO, dense f32 (`group·Lq × d`, `group·Lq × dv`), and per query
    /// tile both packed as GEMM B operands (rows × d, rows × dv).
    pub(super) q: Vec<f32>,
    pub(super) g: Vec<f32>,
    pub(super) q_packs: Vec<PackedB>,
    pub(super) g_packs: Vec<PackedB>,
    /// K block `kb × d` and V block `kb × dv` (dense f32), packed as Kᵀ, Vᵀ and K.
    pub(super) k: Vec<f32>,
    pub(super) v: Vec<f32>,
    pub(super) kt_pack: Option<PackedB>,
    pub(super) vt_pack: Option<PackedB>,
    pub(super) k_pack: Option<PackedB>,
    /// A K block's copy with unseen non-finite rows zeroed, and its pack.
    pub(super) k_fix: Vec<f32>,
    pub(super) k_fix_pack: Option<PackedB>,
    /// S, then P (`rows × BWD_KEY_BLOCK`); dP, then dS; the soft-cap derivative.
    pub(super) s: Vec<f32>,
    pub(super) dp: Vec<f32>,
    pub(super) cap: Vec<f32>,
    /// dK (unscaled) and dV of the current key block.
    pub(super) dk: Vec<f32>,
    pub(super) dv: Vec<f32>,
    pub(super) iv: Vec<(usize, usize)>,
    /// Per row group of the current tile: the keys of the block it computes.
    pub(super) lim: Vec<usize>,
}

impl Ws {
    fn new() -> Self {
        Ws {
            q: Vec::new(),
            g: Vec::new(),
            q_packs: Vec::new(),
            g_packs: Vec::new(),
            k: Vec::new(),
            v: Vec::new(),
            kt_pack: None,
            vt_pack: None,
            k_pack: None,
            k_fix: Vec::new(),
            k_fix_pack: None,
            s: Vec::new(),
            dp: Vec::new(),
            cap: Vec::new(),
            dk: Vec::new(),
            dv: Vec::new(),
            iv: Vec::new(),
            lim: Vec::new(),
        }
    }
}

thread_local! {
    static WS: RefCell<Vec<Ws>> = const { RefCell::new(Vec::new()) };
}

pub(super) fn with_ws<R>(f: impl FnOnce(&mut Ws) -> R) -> R {
    let mut ws = WS.with(|w| w.borrow_mut().pop()).unwrap_or_else(Ws::new);
    let r = f(&mut ws);
    WS.with(|w| {
        let mut w = w.borrow_mut();
        if w.len() < 4 {
            w.push(ws);
        }
    });
    r
}

/// Gathers rows `r0 .. r0 + n` of head `(b, h)` of `t` into `dst` (`n × cols`, dense f32).
#[allow(clippy::too_many_arguments)]
pub(super) fn gather_rows(
    isa: Isa,
    t: &AnyRef<'_>,
    b: usize,
    h: usize,
    r0: usize,
    n: usize,
    cols: usize,
    dst: &mut [f32],
) -> Result<()> {
    if cols == 0 {
        return Ok(());
    }
    let st = t.strides()[3];
    for r in 0..n {
        t.gather(
            isa,
            t.offset(b, h, r0 + r, 0),
            st,
            &mut dst[r * cols..(r + 1) * cols],
        )?;
    }
    Ok(())
}

/// `pack` (made for `isa` if missing or made for another variant) holding `m`.
pub(super) fn pack_into(slot: &mut Option<PackedB>, isa: Isa, m: MatRef<'_>) -> Result<()> {
    if slot.as_ref().is_none_or(|p| p.isa() != isa) {
        *slot = Some(PackedB::new(isa)?);
    }
    if let Some(p) = slot.as_mut() {
        p.pack(m)?;
    }
    Ok(())
}
