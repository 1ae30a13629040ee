//! Cache block sizes for the five-loop GEMM, chosen at run time from the cache sizes.
//!
//! The loops (BLIS numbering) and what each block keeps in which cache:
//!
//! | loop | steps by | keeps resident |
//! |------|----------|----------------|
//! | 5 (jc) | `NC` columns of B and C | the packed `KC × NC` panel of B, in L3 |
//! | 4 (pc) | `KC` of the inner dimension | (the rank-`KC` update; C is read/written once per step) |
//! | 3 (ic) | `MC` rows of A and C | the packed `MC × KC` block of A, in L2 |
//! | 2 (jr) | `NR` columns | one `KC × NR` micro-panel of B, in L1 |
//! | 1 (ir) | `MR` rows | the `MR × NR` tile of C, in registers |
//!
//! The textbook rule fits a B micro-panel (`KC·NR·4` bytes) in about half of L1d. Measured
//! on the dev machine (Xeon, 48 KiB L1d, 2 MiB L2; `FASTATTN_GEMM_BLOCKS` sweeps, one
//! thread, n = 512 / 1024 / 2048) a deeper `KC` wins: the C tile (24 zmm of the 12×32
//! kernel) is loaded and stored once per depth block, and with KC = 192 that traffic, mostly
//! from L3 at n ≥ 1024, cost 10% (AVX-512: 143 / 135 / 132 GFLOP/s at MC 960, KC 192 against
//! 149 / 151 / 141 at MC 144, KC 512; AVX2 gains 1–3%). Going further, to one
//! depth block of 1024 (B micro-panel 128 KiB, MC 120) instead of two of 512, halves the C
//! traffic again: at n = 2048, AVX-512, best of 8 interleaved runs 158.6 against 153.0
//! GFLOP/s (medians +8%), at n = 1024 158.1 against 155.4, two threads at n = 1024 +4%,
//! AVX2 and 512×768×2304 unchanged; the kernel alone loses 1% at that depth. On a Zen 4
//! (32 KiB L1d, 1 MiB L2) the same holds: the 12×32 kernel at KC = 1024 (MC 60) against
//! the 680 an L1-based rule gave (MC 96), six interleaved runs, n = 1024 111.2 against 109.4
//! GFLOP/s (+1.6%), 512×768×2304 108.8 against 106.4, n = 512 and 2048 level. So `KC` is
//! 1024 wherever L2 holds at least 1 MiB; under that, the B micro-panel is about 8/3 of
//! L1d, at most 512 deep (to leave room for the A block; it streams from L2, helped by the
//! hardware prefetcher). The depth is split into equal blocks of at most `KC`; `MC` fills
//! about a quarter of L2 with the A block (96–240 rows measured within 2% of each other at
//! KC = 512); `NC` keeps the B panel within a share of L3, capped at 4080 columns
//! (smaller NC measured slower). For reference, BLIS uses MC = 144, KC = 256, NC = 4080 with a 6×16 AVX2 kernel
//! on Zen 3 (32 KiB L1d, 512 KiB L2). If the sizes cannot be read (non-Linux systems), the
//! defaults are 32 KiB / 512 KiB / 8 MiB, which are safe everywhere.

use std::sync::OnceLock;

/// Per-core cache capacities in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheSizes {
    /// L1 data cache.
    pub l1d: usize,
    /// Ways of the L1 data cache (its associativity).
    pub l1d_ways: usize,
    /// L2 cache (per core).
    pub l2: usize,
    /// Last-level cache (shared).
    pub l3: usize,
}

impl Default for CacheSizes {
    fn default() -> Self {
        CacheSizes {
            l1d: 32 << 10,
            l1d_ways: 8,
            l2: 512 << 10,
            l3: 8 << 20,
        }
    }
}

fn parse_size(s: &str) -> Option<usize> {
    let s = s.trim();
    let (num, mul) = if let Some(n) = s.strip_suffix('K') {
        (n, 1 << 10)
    } else if let Some(n) = s.strip_suffix('M') {
        (n, 1 << 20)
    } else {
        (s, 1)
    };
    num.parse::<usize>().ok().map(|v| v * mul)
}

fn read_linux_caches() -> Option<CacheSizes> {
    let mut cs = CacheSizes::default();
    let mut found = false;
    for idx in 0..8 {
        let base = format!("/sys/devices/system/cpu/cpu0/cache/index{idx}");
        let Ok(level) = std::fs::read_to_string(format!("{base}/level")) else {
            continue;
        };
        let ty = std::fs::read_to_string(format!("{base}/type")).unwrap_or_default();
        let Some(size) = std::fs::read_to_string(format!("{base}/size"))
            .ok()
            .and_then(|s| parse_size(&s))
        else {
            continue;
        };
        match (level.trim(), ty.trim()) {
            ("1", "Data") | ("1", "Unified") => {
                cs.l1d = size;
                if let Some(w) = std::fs::read_to_string(format!("{base}/ways_of_associativity"))
                    .ok()
                    .and_then(|s| s.trim().parse::<usize>().ok())
                {
                    cs.l1d_ways = w;
                }
            }
            ("2", _) => cs.l2 = size,
            ("3", _) => cs.l3 = size,
            _ => continue,
        }
        found = true;
    }
    found.then_some(cs)
}

/// The cache sizes of this machine (read once; defaults if unreadable).
pub fn cache_sizes() -> CacheSizes {
    static CS: OnceLock<CacheSizes> = OnceLock::new();
    *CS.get_or_init(|| {
        let c = read_linux_caches().unwrap_or_default();
        // Guard against nonsense values (some VMs report 0 or absurd sizes).
        CacheSizes {
            l1d: c.l1d.clamp(16 << 10, 256 << 10),
            l1d_ways: c.l1d_ways.clamp(1, 64),
            l2: c.l2.clamp(128 << 10, 8 << 20),
            l3: c.l3.clamp(1 << 20, 512 << 20),
        }
    })
}

/// Block sizes of one GEMM variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSizes {
    /// Rows of A (and C) per packed block; a multiple of `mr`.
    pub mc: usize,
    /// Depth of one rank-k update.
    pub kc: usize,
    /// Columns of B (and C) per packed panel; a multiple of `nr`.
    pub nc: usize,
}

/// Derives block sizes for a microkernel of `mr × nr` from `caches`.
pub fn block_sizes_for(mr: usize, nr: usize, caches: CacheSizes) -> BlockSizes {
    // 1024 deep where L2 holds at least 1 MiB; elsewhere the B micro-panel (KC × NR f32)
    // about 8/3 of L1d, at most 512 deep (bench-tuned: a deep KC amortises the C tile's
    // load and store over more FMAs, and the micro-panel streams well from L2; see the
    // module docs).
    let kc = if caches.l2 >= 1 << 20 {
        1024
    } else {
        (caches.l1d * 8 / 3 / (nr * 4)).clamp(128, 512) / 8 * 8
    };
    // A block (MC × KC f32) in about a quarter of L2.
    let mc = (caches.l2 / 4 / (kc * 4)).clamp(mr, 960) / mr * mr;
    // B panel (KC × NC f32) in a quarter of L3, at most 4080 columns.
    let nc = (caches.l3 / 4 / (kc * 4)).clamp(nr, 4080) / nr * nr;
    BlockSizes { mc, kc, nc }
}

/// Whether `rows` rows of f32, `stride` elements apart, read together (a microkernel's A
/// rows in place) crowd one L1 set beyond half its ways. Row `i`'s current cache line is
/// `i·stride·4 / 64` lines past row 0's, so the rows fall into `sets / gcd(step, sets)`
/// distinct sets (`step` = that line distance mod the set count), evenly. Beyond half the
/// ways, the rows and the B micro-panel streaming through the same sets evict each other,
/// and the GEMM packs A instead of reading it in place.
///
/// Measured on the dev machine (48 KiB, 12-way L1d: 64 sets; n = 512 / 1024 / 2048 row
/// strides are 2 / 4 / 8 KiB, one thread, interleaved runs): AVX-512's 12 rows at 2 KiB
/// (6 a set) in place beat packing by 1.8% (two threads 1.2%), at 4 KiB (12 a set) the two
/// tie, at 8 KiB packing wins by 2.8%; AVX2's 6 rows (at most 6 a set) in place win by
/// 2.8% at 2 KiB, tie at 4 KiB, win by 0.8% at 8 KiB.
///
/// ```
/// use fastattn_kernels::gemm::params::{rows_crowd_l1, CacheSizes};
/// let xeon = CacheSizes { l1d: 48 << 10, l1d_ways: 12, ..CacheSizes::default() };
/// assert!(!rows_crowd_l1(512, 12, &xeon)); // 2 KiB: 6 rows a set of 12 ways
/// assert!(rows_crowd_l1(1024, 12, &xeon)); // 4 KiB: all 12 in one set
/// assert!(!rows_crowd_l1(1024, 6, &xeon));
/// ```
pub fn rows_crowd_l1(stride: usize, rows: usize, caches: &CacheSizes) -> bool {
    let ways = caches.l1d_ways.max(1);
    let sets = (caches.l1d / (64 * ways)).max(1);
    let step = (stride.saturating_mul(4) / 64) % sets;
    let distinct = if step == 0 { 1 } else { sets / gcd(step, sets) };
    rows.div_ceil(distinct.clamp(1, rows.max(1))) > ways / 2
}

fn gcd(mut a: usize, mut b: usize) -> usize {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crowding_counts_rows_per_l1_set() {
        let xeon = CacheSizes {
            l1d: 48 << 10,
            l1d_ways: 12,
            ..CacheSizes::default()
        };
        // 64 sets of 12 ways: strides in floats.
        assert!(!rows_crowd_l1(512, 12, &xeon)); // 2 KiB: 2 sets, 6 rows each
        assert!(rows_crowd_l1(1024, 12, &xeon)); // 4 KiB: 1 set
        assert!(rows_crowd_l1(2048, 12, &xeon));
        assert!(rows_crowd_l1(1024, 7, &xeon));
        assert!(!rows_crowd_l1(1024, 6, &xeon));
        assert!(!rows_crowd_l1(768, 12, &xeon)); // 3 KiB: 4 sets
        assert!(!rows_crowd_l1(700, 12, &xeon));
        assert!(!rows_crowd_l1(1040, 12, &xeon)); // 65 lines: one set further per row
                                                  // Zen 3 / defaults: 32 KiB, 8 ways (64 sets).
        let zen = CacheSizes::default();
        assert!(rows_crowd_l1(1024, 6, &zen));
        assert!(rows_crowd_l1(512, 12, &zen));
        assert!(!rows_crowd_l1(512, 6, &zen)); // 3 a set of 8 ways
        assert!(!rows_crowd_l1(4096, 1, &zen));
        assert!(!rows_crowd_l1(0, 0, &zen));
    }

    #[test]
    fn parses_sysfs_sizes() {
        assert_eq!(parse_size("48K\n"), Some(48 << 10));
        assert_eq!(parse_size("2M"), Some(2 << 20));
        assert_eq!(parse_size("x"), None);
    }

    #[test]
    fn block_sizes_are_multiples_of_the_tile() {
        for (mr, nr) in [(6, 16), (12, 32), (4, 4)] {
            let b = block_sizes_for(mr, nr, cache_sizes());
            assert!(b.mc.is_multiple_of(mr) && b.mc >= mr);
            assert!(b.nc.is_multiple_of(nr) && b.nc >= nr);
            assert!(b.kc >= 128 && b.kc <= 1024);
        }
    }
}
