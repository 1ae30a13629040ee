"""Smoke test of ``python -m fastattn.bench --latency``: it runs on tiny shapes with two
rounds and prints its table (no timing assertions)."""

import os
import subprocess
import sys


def test_latency_mode_runs_and_prints_its_table():
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    cmd = [
        sys.executable,
        "-m",
        "fastattn.bench",
        "--latency",
        "--rounds",
        "2",
        "--threads",
        "2",
        "--latency-lk",
        "64",
        "--latency-l",
        "16",
        "--gaps",
        "1",
        "--busy-n",
        "64",
    ]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    # This mode leaves the OpenMP wait policy to the environment and says so.
    assert "OMP_WAIT_POLICY: unset" in text, text
    for word in ("decode-64", "prefill-16", "fastattn", "torch", "b2b", "1t", "gap1", "after-torch",
                 "1t-gap1", "1t-after-torch", "x 1t same"):
        assert word in text, f"{word!r} missing from:\n{text}"
    rows = [line for line in text.splitlines() if line.startswith(("decode-64", "prefill-16"))]
    # 2 cases x 2 implementations x (b2b, 1t, after-torch, 1t-after-torch, gap1, 1t-gap1)
    assert len(rows) == 24, text
