//! The case model: a benchmark [`Case`] (its work, its [`Bound`], a setup building its
//! inputs) and its implementations ([`Impl`]: a variant of ours or a peer, one call each).

use crate::peers::PEERS;
use crate::torch::TorchOp;
use kernels::Isa;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Which resource limits a case, and so what its result is a percentage of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// Arithmetic: reported as % of the measured FMA peak (`pct_peak`).
    Compute,
    /// Memory traffic: reported as % of the measured bandwidth (`pct_peak` is null).
    Memory,
    /// Neither: a working set that fits in cache, with no measured ceiling to compare
    /// against (no cache bandwidth is measured). GB/s only; `pct_peak` is null.
    Cache,
}

/// One call of an implementation on the case's inputs. The argument is the thread count of
/// the rayon pool the call runs in (for peers that take a thread count themselves).
pub type RunFn = Box<dyn FnMut(usize) + Send>;

/// A self-timed implementation: `(threads, calls)` performs `calls` calls and returns the
/// seconds they took by its own clock (NaN when it failed).
pub type TimedFn = Box<dyn FnMut(usize, u64) -> f64 + Send>;

/// One implementation of a case: a kernel variant or a peer, with its inputs captured.
pub struct Impl {
    /// Name in reports: the ISA's short name (`avx2`) or the peer's (`matrixmultiply`).
    pub name: String,
    /// The variant, for ours; `None` for a peer (compared with the best ISA's peak).
    pub isa: Option<Isa>,
    /// `Some(t)`: this implementation can only run with `t` threads (see
    /// [`crate::peers::matrixmultiply_threads`]); it is skipped at every other thread count.
    pub fixed_threads: Option<usize>,
    /// `false`: too slow for the quick run; runs with `--full`, or when `--variant` names it.
    pub quick: bool,
    /// Performs one call.
    pub run: RunFn,
    /// `Some`: the implementation times itself (the torch helper); `run` is then unused by
    /// the runner.
    pub timed: Option<TimedFn>,
    /// Bytes one call moves, when not the case's (16-bit inputs move fewer).
    pub bytes: Option<f64>,
}

impl Impl {
    /// Our kernel variant `isa`.
    pub fn ours(isa: Isa, run: impl FnMut(usize) + Send + 'static) -> Impl {
        Impl {
            name: isa.name().to_string(),
            isa: Some(isa),
            fixed_threads: None,
            quick: true,
            run: Box::new(run),
            timed: None,
            bytes: None,
        }
    }

    /// Our variant `isa` computing on `dtype` storage, named `avx2-bf16`: it moves `bytes`
    /// per call. `--variant avx2` selects it too.
    pub fn ours_dtype(
        isa: Isa,
        dtype: kernels::DType,
        bytes: f64,
        run: impl FnMut(usize) + Send + 'static,
    ) -> Impl {
        let mut imp = Impl::ours(isa, run);
        imp.name = format!("{}-{dtype}", isa.name());
        imp.bytes = Some(bytes);
        imp
    }

    /// A peer named `name` (one of [`PEERS`]).
    pub fn peer(name: &str, run: impl FnMut(usize) + Send + 'static) -> Impl {
        debug_assert!(PEERS.contains(&name), "register {name} in PEERS");
        Impl {
            name: name.to_string(),
            isa: None,
            fixed_threads: None,
            quick: true,
            run: Box::new(run),
            timed: None,
            bytes: None,
        }
    }

    /// A peer that times itself: `timed(threads, calls)` returns the seconds of `calls`
    /// calls (see [`TimedFn`]).
    pub fn self_timed(name: &str, timed: impl FnMut(usize, u64) -> f64 + Send + 'static) -> Impl {
        let timed: Arc<Mutex<dyn FnMut(usize, u64) -> f64 + Send>> = Arc::new(Mutex::new(timed));
        let t2 = timed.clone();
        let mut imp = Impl::peer(name, move |threads| {
            (t2.lock().expect("not poisoned"))(threads, 1);
        });
        imp.timed = Some(Box::new(move |threads, calls| {
            (timed.lock().expect("not poisoned"))(threads, calls)
        }));
        imp
    }

    /// Seconds of `calls` back-to-back calls at `threads` threads, in `pool` (rayon-based
    /// implementations) or by the implementation's own clock ([`Impl::timed`]).
    pub fn sample(&mut self, threads: usize, calls: u64, pool: &rayon::ThreadPool) -> f64 {
        if let Some(timed) = self.timed.as_mut() {
            return timed(threads, calls);
        }
        let run = &mut self.run;
        pool.install(move || {
            let t0 = Instant::now();
            for _ in 0..calls {
                run(threads);
            }
            t0.elapsed().as_secs_f64()
        })
    }

    /// Runs only with `threads` threads.
    pub fn at_threads(mut self, threads: usize) -> Impl {
        self.fixed_threads = Some(threads);
        self
    }

    /// Skipped in the quick run when `slow` is true.
    pub fn slow_if(mut self, slow: bool) -> Impl {
        self.quick = !slow;
        self
    }
}

/// Builds a case's inputs and implementations; called only when the case is selected.
pub type SetupFn = Box<dyn Fn() -> Vec<Impl>>;

/// One benchmark case.
pub struct Case {
    /// Suite name (`gemm`).
    pub suite: &'static str,
    /// Case name inside the suite (`512`, `64x64x256`); `suite/name` is its id.
    pub name: String,
    /// Human-readable shape (`m=512 k=512 n=512`).
    pub shape: String,
    /// Floating-point operations of one call (a multiply-add counts 2).
    pub flops: f64,
    /// Bytes one call must move at least (inputs read once, outputs written once).
    pub bytes: f64,
    /// What limits it.
    pub bound: Bound,
    /// Runs only with `--full` (or when a filter names its id exactly).
    pub full_only: bool,
    /// Builds inputs and implementations.
    pub setup: SetupFn,
    /// What the torch peer runs for this case (one row per op: `torch` for f32, `torch-bf16`
    /// …); empty: torch has no row here.
    pub torch: Vec<TorchOp>,
}

impl Case {
    /// A quick case.
    pub fn new(
        suite: &'static str,
        name: impl Into<String>,
        shape: impl Into<String>,
        flops: f64,
        bytes: f64,
        bound: Bound,
        setup: impl Fn() -> Vec<Impl> + 'static,
    ) -> Case {
        Case {
            suite,
            name: name.into(),
            shape: shape.into(),
            flops,
            bytes,
            bound,
            full_only: false,
            setup: Box::new(setup),
            torch: Vec::new(),
        }
    }

    /// Adds a torch row computing `op`.
    pub fn with_torch(mut self, op: TorchOp) -> Case {
        self.torch.push(op);
        self
    }

    /// Marks the case as `--full` only.
    pub fn full_only(mut self) -> Case {
        self.full_only = true;
        self
    }

    /// `suite/name`.
    pub fn id(&self) -> String {
        format!("{}/{}", self.suite, self.name)
    }
}
