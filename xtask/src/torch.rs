//! PyTorch as a peer: `torch.mm` on the GEMM shapes and
//! `torch.nn.functional.scaled_dot_product_attention` on the attention shapes, timed in the
//! same rotation as everyone else.
//!
//! One helper process per bench run (`xtask/torch_peer.py`, embedded here and run with
//! `python -c`) reads a command per line on stdin and answers one line on stdout (the
//! protocol is in the script's docstring). A sample is `run CALLS`: the helper makes the
//! calls back to back and answers the seconds they took by its own clock, so the pipe's
//! round trip is not in the time. What is in it is what a torch user pays: the Python call
//! and torch's dispatch.
//!
//! **Which python**: `FASTATTN_PYTHON` if set, else `.venv/bin/python` at the workspace
//! root if present (`bash xtask/peers-venv.sh` makes one with torch), else `python3`.
//! Where it cannot start or cannot `import torch`, the run prints one line and goes on
//! without torch.
//!
//! **Threads**: `torch.set_num_threads(t)` before each thread count's rotation. The helper
//! runs with `OMP_WAIT_POLICY=PASSIVE`, so torch's OpenMP threads sleep instead of spinning
//! between its samples and leave the cores to the members sampled next (on a 2-core host a
//! spinning pool would otherwise slow every other implementation of the rotation). It costs
//! torch a thread wake-up per parallel region, which matters only for the smallest shapes.
//! The latency suite ([`crate::latency`]) starts its helper with [`TorchPeer::start_spinning`]
//! instead: `OMP_WAIT_POLICY` as the environment has it (normally unset, so torch's
//! threads spin a while after each op and then sleep, as in a real program).

use crate::Result;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

/// The helper script.
pub const SCRIPT: &str = include_str!("../torch_peer.py");

/// Environment variable naming the python to run the helper with.
pub const PYTHON_VAR: &str = "FASTATTN_PYTHON";

/// The python the helper runs with (see the [module docs](self)).
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os(PYTHON_VAR).filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let venv = crate::workspace_root().join(".venv/bin/python");
    if venv.exists() {
        venv
    } else {
        PathBuf::from("python3")
    }
}

/// What torch computes for a case, as the helper's setup command (`mm 64 64 64`,
/// `sdpa 8 2 1024 1024 64 1`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TorchOp {
    /// `torch.mm` of a row-major `m×k` and `k×n`.
    Mm {
        /// Rows of A and C.
        m: usize,
        /// Columns of A, rows of B.
        k: usize,
        /// Columns of B and C.
        n: usize,
    },
    /// SDPA on Q `[1, hq, lq, d]`, K and V `[1, hkv, lk, d]`.
    Sdpa {
        /// Query heads.
        hq: usize,
        /// Key/value heads (`enable_gqa` when it differs from `hq`).
        hkv: usize,
        /// Query length.
        lq: usize,
        /// Key length.
        lk: usize,
        /// Head dimension.
        d: usize,
        /// `is_causal`.
        causal: bool,
        /// Element type of Q, K, V and the output (f32, f16 or bf16).
        dtype: kernels::DType,
    },
    /// SDPA on a batch padded to its longest sequence: Q `[b, hq, l, d]`, K and V
    /// `[b, hkv, l, d]` (what a caller without variable-length attention runs on a batch
    /// of mixed lengths; with right padding and `is_causal` every real row is exact).
    SdpaPadded {
        /// Sequences.
        b: usize,
        /// Query heads.
        hq: usize,
        /// Key/value heads (`enable_gqa` when it differs from `hq`).
        hkv: usize,
        /// The longest sequence.
        l: usize,
        /// Head dimension.
        d: usize,
        /// `is_causal`.
        causal: bool,
        /// Element type of Q, K, V and the output.
        dtype: kernels::DType,
    },
    /// f32 SDPA's gradients through autograd, on the shapes of [`TorchOp::Sdpa`]: the
    /// backward alone (`torch.autograd.grad` of a kept forward graph) or, with `forward`,
    /// the forward and backward of a training step.
    SdpaGrad {
        /// Query heads.
        hq: usize,
        /// Key/value heads.
        hkv: usize,
        /// Query length.
        lq: usize,
        /// Key length.
        lk: usize,
        /// Head dimension.
        d: usize,
        /// `is_causal`.
        causal: bool,
        /// Time the forward too.
        forward: bool,
    },
}

impl TorchOp {
    /// The helper's setup line.
    pub fn command(&self) -> String {
        match *self {
            TorchOp::Mm { m, k, n } => format!("mm {m} {k} {n}"),
            TorchOp::Sdpa {
                hq,
                hkv,
                lq,
                lk,
                d,
                causal,
                dtype,
            } => {
                let c = u8::from(causal);
                match dtype {
                    kernels::DType::F32 => format!("sdpa {hq} {hkv} {lq} {lk} {d} {c}"),
                    t => format!("sdpa {hq} {hkv} {lq} {lk} {d} {c} {t}"),
                }
            }
            TorchOp::SdpaPadded {
                b,
                hq,
                hkv,
                l,
                d,
                causal,
                dtype,
            } => format!(
                "sdpa_padded {b} {hq} {hkv} {l} {d} {} {dtype}",
                u8::from(causal)
            ),
            TorchOp::SdpaGrad {
                hq,
                hkv,
                lq,
                lk,
                d,
                causal,
                forward,
            } => {
                let cmd = if forward { "sdpa_train" } else { "sdpa_bwd" };
                format!("{cmd} {hq} {hkv} {lq} {lk} {d} {}", u8::from(causal))
            }
        }
    }

    /// The element type it computes in.
    pub fn dtype(&self) -> kernels::DType {
        match self {
            TorchOp::Mm { .. } | TorchOp::SdpaGrad { .. } => kernels::DType::F32,
            TorchOp::Sdpa { dtype, .. } | TorchOp::SdpaPadded { dtype, .. } => *dtype,
        }
    }
}

/// A running helper with torch imported.
pub struct TorchPeer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// `torch X.Y.Z` as the helper reported it.
    pub version: String,
    /// The python it runs with.
    pub python: PathBuf,
    threads: Option<usize>,
    op: Option<String>,
}

impl TorchPeer {
    /// Starts the helper with `python` and waits for it to import torch.
    ///
    /// # Errors
    /// The python cannot be started, or torch cannot be imported (the message says why,
    /// e.g. `No module named 'torch'`).
    pub fn start(python: PathBuf) -> Result<TorchPeer> {
        Self::start_with_env(python, &[], true)
    }

    /// [`TorchPeer::start`] without setting `OMP_WAIT_POLICY` (the helper inherits this
    /// process's value, normally none): torch's OpenMP threads keep the runtime's default,
    /// spinning a while after each parallel op before they sleep.
    ///
    /// # Errors
    /// As [`TorchPeer::start`].
    pub fn start_spinning(python: PathBuf) -> Result<TorchPeer> {
        Self::start_with_env(python, &[], false)
    }

    /// [`TorchPeer::start`] with extra environment variables for the helper, and
    /// `OMP_WAIT_POLICY=PASSIVE` when `passive`.
    fn start_with_env(
        python: PathBuf,
        env: &[(&str, &std::path::Path)],
        passive: bool,
    ) -> Result<TorchPeer> {
        let mut cmd = Command::new(&python);
        if passive {
            cmd.env("OMP_WAIT_POLICY", "PASSIVE");
        }
        let mut child = cmd
            .envs(env.iter().copied())
            .arg("-c")
            .arg(SCRIPT)
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start: {e}"))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            return Err("no pipes to the helper".into());
        };
        let mut peer = TorchPeer {
            child,
            stdin,
            stdout: BufReader::new(stdout),
            version: String::new(),
            python,
            threads: None,
            op: None,
        };
        match peer.read_reply() {
            Ok(v) => {
                peer.version = v;
                Ok(peer)
            }
            Err(e) => Err(e), // `peer` drops: the child is reaped
        }
    }

    fn read_reply(&mut self) -> Result<String> {
        let mut line = String::new();
        let n = self
            .stdout
            .read_line(&mut line)
            .map_err(|e| format!("reading the helper: {e}"))?;
        if n == 0 {
            return Err("the helper exited".into());
        }
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("ok") {
            Ok(rest.trim().to_string())
        } else if let Some(rest) = line.strip_prefix("time ") {
            Ok(rest.trim().to_string())
        } else if let Some(rest) = line.strip_prefix("err ") {
            Err(rest.trim().to_string().into())
        } else {
            Err(format!("unexpected answer {line:?}").into())
        }
    }

    fn request(&mut self, line: &str) -> Result<String> {
        writeln!(self.stdin, "{line}")
            .and_then(|()| self.stdin.flush())
            .map_err(|e| format!("writing to the helper: {e}"))?;
        self.read_reply()
    }

    /// Builds `op`'s inputs in the helper (and runs it once).
    ///
    /// # Errors
    /// torch refuses the op (e.g. `enable_gqa` on a torch older than 2.5).
    pub fn prepare(&mut self, op: &TorchOp) -> Result<()> {
        let cmd = op.command();
        if self.op.as_deref() != Some(cmd.as_str()) {
            self.op = None;
            self.request(&cmd)?;
            self.op = Some(cmd);
        }
        Ok(())
    }

    /// `torch.set_num_threads(threads)` unless already set.
    ///
    /// # Errors
    /// The helper failed.
    pub fn set_threads(&mut self, threads: usize) -> Result<()> {
        if self.threads != Some(threads) {
            self.request(&format!("threads {threads}"))?;
            self.threads = Some(threads);
        }
        Ok(())
    }

    /// Seconds of `calls` back-to-back calls of `op` at `threads` threads.
    ///
    /// # Errors
    /// The helper failed or answered something that is not a time.
    pub fn sample(&mut self, op: &TorchOp, threads: usize, calls: u64) -> Result<f64> {
        self.prepare(op)?;
        self.set_threads(threads)?;
        let t = self.request(&format!("run {calls}"))?;
        parse_time(&t)
    }

    /// torch's own latency of `op` at `threads` threads, timed in the helper: one untimed
    /// call, then `calls` times an idle gap of `gap_ms` (0: none) and one timed call; the
    /// median of those calls, in seconds.
    ///
    /// # Errors
    /// The helper failed or answered something that is not a time.
    pub fn latency(
        &mut self,
        op: &TorchOp,
        threads: usize,
        gap_ms: u32,
        calls: u32,
    ) -> Result<f64> {
        self.prepare(op)?;
        self.set_threads(threads)?;
        let t = self.request(&format!("latency {gap_ms} {calls}"))?;
        parse_time(&t)
    }

    /// One `torch.mm` of two `n×n` f32 matrices at `threads` threads (torch's parallel
    /// work), returning when it is done.
    ///
    /// # Errors
    /// The helper failed.
    pub fn busy(&mut self, n: usize, threads: usize) -> Result<()> {
        self.set_threads(threads)?;
        self.request(&format!("busy {n}")).map(|_| ())
    }

    /// Keeps the inputs of up to `ops` prepared ops in the helper (instead of dropping
    /// them at every new op), so switching between a few cases rebuilds nothing.
    ///
    /// # Errors
    /// The helper failed.
    pub fn keep(&mut self, ops: usize) -> Result<()> {
        self.request(&format!("keep {ops}")).map(|_| ())
    }
}

fn parse_time(t: &str) -> Result<f64> {
    t.parse::<f64>()
        .map_err(|_| format!("the helper's time {t:?} is not a number").into())
}

impl Drop for TorchPeer {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit").and_then(|()| self.stdin.flush());
        // It exits on `quit` (or at end of input); kill it if it is stuck in a call.
        for _ in 0..50 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_become_setup_commands() {
        assert_eq!(TorchOp::Mm { m: 1, k: 2, n: 3 }.command(), "mm 1 2 3");
        let op = TorchOp::Sdpa {
            hq: 8,
            hkv: 2,
            lq: 16,
            lk: 32,
            d: 64,
            causal: true,
            dtype: kernels::DType::F32,
        };
        assert_eq!(op.command(), "sdpa 8 2 16 32 64 1");
        let bf = TorchOp::Sdpa {
            hq: 8,
            hkv: 2,
            lq: 16,
            lk: 32,
            d: 64,
            causal: true,
            dtype: kernels::DType::BF16,
        };
        assert_eq!(bf.command(), "sdpa 8 2 16 32 64 1 bf16");
        assert_eq!(bf.dtype(), kernels::DType::BF16);
        let grad = |forward| TorchOp::SdpaGrad {
            hq: 8,
            hkv: 2,
            lq: 16,
            lk: 32,
            d: 64,
            causal: false,
            forward,
        };
        assert_eq!(grad(false).command(), "sdpa_bwd 8 2 16 32 64 0");
        assert_eq!(grad(true).command(), "sdpa_train 8 2 16 32 64 0");
    }

    #[test]
    fn a_missing_python_is_an_error_not_a_panic() {
        let err = TorchPeer::start(PathBuf::from("/nonexistent/python3"))
            .err()
            .expect("cannot start")
            .to_string();
        assert!(err.contains("cannot start"), "{err}");
    }

    /// Uses a fake `torch` module that fails to import, so the test means the same
    /// whether or not torch is installed. Skipped where no `python3` runs at all.
    #[test]
    fn torch_that_cannot_be_imported_is_reported_in_one_line() {
        let dir = std::env::temp_dir().join(format!("xtask-faketorch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("torch.py"),
            "raise ImportError(\"No module named 'torch'\")\n",
        )
        .unwrap();
        let ok = Command::new("python3")
            .arg("-c")
            .arg("pass")
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("skipped: no python3");
            return;
        }
        // The script puts nothing before the import, so PYTHONPATH wins over a real torch.
        let r = TorchPeer::start_with_env(PathBuf::from("python3"), &[("PYTHONPATH", &dir)], true);
        let err = r.err().expect("the fake torch fails").to_string();
        assert!(err.contains("No module named 'torch'"), "{err}");
        assert!(!err.contains('\n'), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Runs only where the chosen python imports torch (never in CI, which has none).
    #[test]
    fn torch_answers_times_where_installed() {
        let Ok(mut peer) = TorchPeer::start(python()) else {
            eprintln!("skipped: torch not importable by {}", python().display());
            return;
        };
        assert!(peer.version.starts_with("torch "), "{}", peer.version);
        let mm = TorchOp::Mm { m: 8, k: 5, n: 3 };
        assert!(peer.sample(&mm, 1, 3).unwrap() > 0.0);
        let gqa = TorchOp::Sdpa {
            hq: 4,
            hkv: 2,
            lq: 7,
            lk: 7,
            d: 16,
            causal: true,
            dtype: kernels::DType::BF16,
        };
        match peer.sample(&gqa, 2, 2) {
            Ok(t) => assert!(t > 0.0),
            Err(e) => assert!(e.to_string().contains("enable_gqa"), "{e}"),
        }
        for forward in [false, true] {
            let op = TorchOp::SdpaGrad {
                hq: 2,
                hkv: 2,
                lq: 9,
                lk: 9,
                d: 8,
                causal: true,
                forward,
            };
            assert!(peer.sample(&op, 1, 2).unwrap() > 0.0);
        }
        assert!(peer.latency(&mm, 1, 0, 3).unwrap() > 0.0);
        assert!(peer.latency(&mm, 2, 1, 1).unwrap() > 0.0);
        peer.busy(16, 2).unwrap();
        peer.keep(4).unwrap();
        // A refused command leaves the helper usable.
        assert!(peer.request("bogus").is_err());
        assert!(peer.sample(&mm, 1, 1).unwrap() > 0.0);
    }
}
