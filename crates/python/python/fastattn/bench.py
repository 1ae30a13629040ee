"""``python -m fastattn.bench``: fastattn against torch's SDPA, timed alternately.

The rows are the attention cases of the Rust bench's quick set (``cargo xtask bench``,
``xtask/src/suites.rs``: Q ``[1, Hq, Lq, D]``, K and V ``[1, Hkv, Lk, D]``, uniform values
in [-1, 1)). For each row, both implementations are sampled in turns (ours, torch, ours,
torch, ...) in this one process, so a change in the machine's speed hits both; each
sample is a run of back-to-back calls long enough to time (``--min-ms``), and the table
shows the median per call. ``ratio`` is torch's time over ours (> 1: fastattn is faster).

``--overhead`` measures what the binding adds to a call instead: the same problem timed
through ``fastattn.scaled_dot_product_attention`` (torch tensors and numpy arrays: views,
checks, output allocation, GIL release) and through the Rust call alone
(``_fastattn.time_forward``, views built once), alternately, at L = 64 and L = 2048 (H = 1,
D = 64); the median and the minimum of the samples (the minimum is the least disturbed by
other work on the machine).

``--latency`` times one call at a time, back to back, after idle gaps of 1, 10 and 50 ms
and right after a parallel torch op, against the back-to-back and the one-thread time
(``fastattn.bench_latency``).

``--e2e`` times ``generate`` end to end: ``"sdpa"`` with transformers' ``DynamicCache``
and with its ``StaticCache`` against ``fastattn.transformers.use`` with a ``FastattnCache``
(``fastattn.bench_e2e``).

``--serving`` times transformers' continuous batching (``generate_batch``) with
``"sdpa"`` against ``fastattn.transformers.use`` on a random-weight Llama-shaped model
(``fastattn.bench_serving``).

Threads: ``torch.set_num_threads(--threads)`` (default: torch's current count); fastattn
follows torch's count on torch tensors. ``OMP_WAIT_POLICY`` defaults to ``PASSIVE``, as in
the Rust bench, so torch's idle OpenMP threads do not spin during fastattn's samples;
except with ``--latency``, which measures what a real program sees and so leaves the
policy to the environment.
"""

import argparse
import os
import statistics
import sys
import time

# As the Rust bench's torch peer: torch's OpenMP threads sleep between its samples instead
# of spinning, so they do not take the cores from the fastattn samples that follow (read
# when torch loads, so only effective if torch is not imported yet). Not for --latency,
# which measures the runtime's default, as a real program has it.
if "--latency" not in sys.argv[1:]:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import fastattn  # noqa: E402

# (Hq, Hkv, Lq, Lk, D, causal): the quick attention rows of the Rust bench.
ROWS = [
    (8, 8, 512, 512, 64, False),
    (8, 8, 1024, 1024, 64, False),
    (8, 8, 2048, 2048, 64, False),
    (8, 8, 2048, 2048, 64, True),
    (8, 8, 1024, 1024, 128, False),
    (8, 2, 1024, 1024, 64, True),
    (32, 8, 1, 32768, 128, False),
]

DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}


def row_name(hq, hkv, lq, lk, d, causal):
    return f"{hq}x{hkv}x{lq}x{lk}x{d}{'c' if causal else ''}"


def flops(hq, hkv, lq, lk, d, causal):
    full = 4.0 * hq * lq * lk * d
    return full / 2 if causal else full


def inputs(hq, hkv, lq, lk, d, dtype):
    gen = torch.Generator().manual_seed(5)

    def uniform(*shape):
        return (torch.rand(*shape, generator=gen) * 2 - 1).to(dtype)

    return uniform(1, hq, lq, d), uniform(1, hkv, lk, d), uniform(1, hkv, lk, d)


def calls_for(fn, min_s):
    """Calls per sample so that one sample lasts about ``min_s`` seconds."""
    t0 = time.perf_counter()
    fn()
    one = max(time.perf_counter() - t0, 1e-7)
    return max(1, int(min_s / one))


def sample(fn, calls):
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls


def alternate(fns, rounds, min_s):
    """Median seconds per call of each function, sampled in turns."""
    calls = [calls_for(f, min_s) for f in fns]
    times = [[] for _ in fns]
    for _ in range(rounds):
        for i, f in enumerate(fns):
            times[i].append(sample(f, calls[i]))
    return [statistics.median(t) for t in times]


def compare(args):
    dtype = DTYPES[args.dtype]
    rows = [r for r in ROWS if not args.rows or row_name(*r) in args.rows]
    print(
        f"fastattn {fastattn.__version__} ({fastattn.kernel_variant()}) vs torch {torch.__version__}, "
        f"{args.dtype}, {torch.get_num_threads()} threads, {args.rounds} alternating rounds"
    )
    print(f"{'case':<22} {'fastattn ms':>12} {'GFLOP/s':>9} {'torch ms':>10} {'GFLOP/s':>9} {'ratio':>7}")
    for r in rows:
        hq, hkv, lq, lk, d, causal = r
        q, k, v = inputs(hq, hkv, lq, lk, d, dtype)
        gqa = hq != hkv
        ours = lambda: fastattn.scaled_dot_product_attention(
            q, k, v, is_causal=causal, enable_gqa=gqa
        )
        theirs = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=gqa)
        t_ours, t_torch = alternate([ours, theirs], args.rounds, args.min_ms / 1e3)
        fl = flops(*r)
        print(
            f"{row_name(*r):<22} {t_ours * 1e3:>12.3f} {fl / t_ours / 1e9:>9.1f} "
            f"{t_torch * 1e3:>10.3f} {fl / t_torch / 1e9:>9.1f} {t_torch / t_ours:>7.2f}"
        )


def overhead(args):
    print(
        f"binding overhead: fastattn.scaled_dot_product_attention vs the Rust call alone, "
        f"{torch.get_num_threads()} threads, {args.rounds} alternating rounds (median and min per call)"
    )
    print(f"{'case':<18} {'input':<6} {'stat':<6} {'rust us':>10} {'binding us':>11} {'added us':>9} {'ratio':>7}")
    for lq in (64, 2048):
        q, k, v = inputs(1, 1, lq, lq, 64, torch.float32)
        for kind in ("torch", "numpy"):
            if kind == "numpy":
                q, k, v = q.numpy(), k.numpy(), v.numpy()
            call = fastattn._fastattn.Call.torch()
            time_forward = fastattn._fastattn.time_forward
            rust_calls = calls_for(lambda: time_forward(call, q, k, v, None, 1), args.min_ms / 1e3)

            def rust():
                return time_forward(call, q, k, v, None, rust_calls) / rust_calls

            binding_calls = calls_for(lambda: fastattn.scaled_dot_product_attention(q, k, v), args.min_ms / 1e3)

            def binding():
                return sample(lambda: fastattn.scaled_dot_product_attention(q, k, v), binding_calls)

            rs, bs = [], []
            for _ in range(args.rounds):
                rs.append(rust())
                bs.append(binding())
            for stat in (statistics.median, min):
                r, b = stat(rs), stat(bs)
                print(
                    f"{'1x1x%dx%dx64' % (lq, lq):<18} {kind:<6} {stat.__name__:<6} {r * 1e6:>10.2f} "
                    f"{b * 1e6:>11.2f} {(b - r) * 1e6:>9.2f} {b / r:>7.3f}"
                )


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m fastattn.bench", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="alternating rounds per row (default 7; 5 with --serving and --e2e, 11 with --latency)",
    )
    p.add_argument("--min-ms", type=float, default=100.0, help="length of one sample in ms (default 100)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="f32", help="element type (default f32)")
    p.add_argument("--rows", nargs="*", help="only these rows, e.g. 8x8x2048x2048x64c")
    p.add_argument("--overhead", action="store_true", help="measure the binding's per-call overhead")
    from fastattn import bench_e2e, bench_latency, bench_serving

    bench_serving.add_arguments(p)
    bench_latency.add_arguments(p)
    bench_e2e.add_arguments(p)
    args = p.parse_args(argv)
    if args.rounds is None:
        args.rounds = 5 if args.serving or args.e2e else 11 if args.latency else 7
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    if args.serving:
        bench_serving.run(args)
    elif args.e2e:
        bench_e2e.run(args)
    elif args.latency:
        bench_latency.run(args)
    elif args.overhead:
        overhead(args)
    else:
        compare(args)


if __name__ == "__main__":
    main()
