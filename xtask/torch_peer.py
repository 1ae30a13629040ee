"""PyTorch peer of `cargo xtask bench` (see xtask/src/torch.rs, which embeds this file).

Started once per bench run as a child process. It answers one line per command line read
on stdin, so the runner can time torch in the same rotation as its own implementations:

    threads N                       -> ok            torch.set_num_threads(N)
    mm M K N                        -> ok            C = A @ B, row-major f32 (torch.mm, out=)
    sdpa HQ HKV LQ LK D CAUSAL [DT] -> ok            F.scaled_dot_product_attention in DT
                                                     (f32, the default, bf16 or f16),
                                                     [1, H, L, D]; enable_gqa when HQ != HKV
    sdpa_padded B HQ HKV L D CAUSAL DT -> ok         SDPA in DT on [B, H, L, D] (a batch of
                                                     mixed lengths padded to its longest)
    sdpa_bwd HQ HKV LQ LK D CAUSAL  -> ok            f32 SDPA's backward alone:
                                                     torch.autograd.grad of a kept graph
    sdpa_train HQ HKV LQ LK D CAUSAL -> ok           f32 SDPA forward + backward
    run CALLS                       -> time SECONDS  CALLS back-to-back calls of the last
                                                     mm/sdpa, timed here (perf_counter)
    latency GAP_MS CALLS            -> time SECONDS  one untimed call of the last op, then
                                                     CALLS times: sleep GAP_MS (0: none) and
                                                     time one call; answers the median call
    busy N                          -> ok            one torch.mm of two N x N f32 matrices
                                                     (a parallel op; leaves the last op be)
    keep N                          -> ok            keep up to N prepared ops (default 0:
                                                     a new op drops the others' inputs)

Inputs are built once per distinct mm/sdpa line and kept: a case whose rotation holds two
torch rows (f32 and bf16) switches between them without rebuilding anything.
    quit                                             exits

A failure answers `err <message>` on one line. The first line it writes is
`ok torch <version>`, or `err <message>` (and it exits) when torch cannot be imported.

The throughput runner starts it with OMP_WAIT_POLICY=PASSIVE: OpenMP worker threads then sleep
between parallel regions instead of spinning, so they do not take CPU from the samples of
the other implementations that run between torch's samples. The latency suite starts it
without (its OpenMP threads spin after an op, as in a real program).
"""

import sys
import time


def reply(text):
    sys.stdout.write(text.replace("\n", " ") + "\n")
    sys.stdout.flush()


try:
    import torch
    import torch.nn.functional as F
except Exception as e:  # ImportError, or a broken install (missing shared libraries)
    reply("err %s" % (e,))
    sys.exit(0)

torch.set_grad_enabled(False)
reply("ok torch %s" % torch.__version__)


def uniform(gen, *shape):
    return torch.rand(*shape, generator=gen, dtype=torch.float32) * 2.0 - 1.0


DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}

OPS = ("mm", "sdpa", "sdpa_padded", "sdpa_bwd", "sdpa_train")


def grad_fn(gen, hq, hkv, lq, lk, d, causal, train):
    """A call computing SDPA's gradients (`train`: forward and backward)."""
    q = uniform(gen, 1, hq, lq, d).requires_grad_()
    k = uniform(gen, 1, hkv, lk, d).requires_grad_()
    v = uniform(gen, 1, hkv, lk, d).requires_grad_()
    g = uniform(gen, 1, hq, lq, d)
    kw = {"is_causal": bool(causal)}
    if hq != hkv:
        kw["enable_gqa"] = True
    if train:

        def f():
            with torch.enable_grad():
                out = F.scaled_dot_product_attention(q, k, v, **kw)
                return torch.autograd.grad(out, (q, k, v), g)

        return f
    with torch.enable_grad():
        out = F.scaled_dot_product_attention(q, k, v, **kw)

    def f():
        with torch.enable_grad():
            return torch.autograd.grad(out, (q, k, v), g, retain_graph=True)

    return f


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


fn = None
prepared = {}
keep = 0
busy_inputs = {}
for line in sys.stdin:
    parts = line.split()
    if not parts:
        continue
    cmd, args = parts[0], parts[1:]
    key = " ".join(parts)
    if cmd in OPS and key in prepared:
        fn = prepared[key]
        reply("ok")
        continue
    if cmd in OPS and len(prepared) >= keep:
        prepared.clear()  # a new case: drop the previous case's inputs
    try:
        if cmd == "threads":
            torch.set_num_threads(int(args[0]))
            reply("ok")
        elif cmd == "mm":
            m, k, n = (int(x) for x in args[:3])
            gen = torch.Generator().manual_seed(1)
            a, b = uniform(gen, m, k), uniform(gen, k, n)
            c = torch.empty(m, n, dtype=torch.float32)
            fn = lambda a=a, b=b, c=c: torch.mm(a, b, out=c)
            fn()
            prepared[key] = fn
            reply("ok")
        elif cmd == "sdpa":
            hq, hkv, lq, lk, d, causal = (int(x) for x in args[:6])
            dt = DTYPES[args[6] if len(args) > 6 else "f32"]
            gen = torch.Generator().manual_seed(5)
            q = uniform(gen, 1, hq, lq, d).to(dt)
            k, v = uniform(gen, 1, hkv, lk, d).to(dt), uniform(gen, 1, hkv, lk, d).to(dt)
            kw = {"is_causal": bool(causal)}
            if hq != hkv:
                kw["enable_gqa"] = True  # TypeError on torch < 2.5: reported as err
            fn = None
            f = lambda q=q, k=k, v=v, kw=kw: F.scaled_dot_product_attention(q, k, v, **kw)
            f()
            fn = f
            prepared[key] = fn
            reply("ok")
        elif cmd == "sdpa_padded":
            b, hq, hkv, l, d, causal = (int(x) for x in args[:6])
            dt = DTYPES[args[6]]
            gen = torch.Generator().manual_seed(5)
            q = uniform(gen, b, hq, l, d).to(dt)
            k, v = uniform(gen, b, hkv, l, d).to(dt), uniform(gen, b, hkv, l, d).to(dt)
            kw = {"is_causal": bool(causal)}
            if hq != hkv:
                kw["enable_gqa"] = True
            fn = None
            f = lambda q=q, k=k, v=v, kw=kw: F.scaled_dot_product_attention(q, k, v, **kw)
            f()
            fn = f
            prepared[key] = fn
            reply("ok")
        elif cmd in ("sdpa_bwd", "sdpa_train"):
            hq, hkv, lq, lk, d, causal = (int(x) for x in args[:6])
            gen = torch.Generator().manual_seed(5)
            fn = None
            f = grad_fn(gen, hq, hkv, lq, lk, d, causal, cmd == "sdpa_train")
            f()
            fn = f
            prepared[key] = fn
            reply("ok")
        elif cmd == "run":
            if fn is None:
                raise RuntimeError("run before a successful mm/sdpa")
            calls = int(args[0])
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            reply("time %r" % (time.perf_counter() - t0))
        elif cmd == "latency":
            if fn is None:
                raise RuntimeError("latency before a successful mm/sdpa")
            gap, calls = float(args[0]) / 1e3, int(args[1])
            fn()
            times = []
            for _ in range(calls):
                if gap > 0:
                    time.sleep(gap)
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            reply("time %r" % median(times))
        elif cmd == "busy":
            n = int(args[0])
            if n not in busy_inputs:
                gen = torch.Generator().manual_seed(3)
                busy_inputs.clear()
                busy_inputs[n] = (uniform(gen, n, n), uniform(gen, n, n), torch.empty(n, n))
            a, b, c = busy_inputs[n]
            torch.mm(a, b, out=c)
            reply("ok")
        elif cmd == "keep":
            keep = int(args[0])
            reply("ok")
        elif cmd == "quit":
            break
        else:
            reply("err unknown command %r" % cmd)
    except Exception as e:
        reply("err %s: %s" % (type(e).__name__, e))
