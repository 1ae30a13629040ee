"""Smoke test of ``python -m fastattn.bench --e2e``: a tiny model, one round, its table
(no timing assertions)."""

import subprocess
import sys

import pytest

pytest.importorskip("transformers")


def test_e2e_mode_runs_and_prints_its_table():
    cmd = [
        sys.executable, "-m", "fastattn.bench", "--e2e", "--e2e-model", "2x4x2x16",
        "--prompt-len", "32", "--new-tokens", "3", "--rounds", "1", "--cache-dtype", "bf16", "i8",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    rows = {line.split()[0]: line.split() for line in text.splitlines() if line.startswith(("sdpa", "fastattn"))}
    assert set(rows) == {"sdpa+dynamic", "sdpa+static", "fastattn[bf16]", "fastattn[i8]"}, text
    assert "cache bf16/i8 for fastattn" in text, text
    # Every row has its numbers, and each cache holds some bytes.
    for name, cols in rows.items():
        assert float(cols[-1]) > 0.0, f"{name}: {text}"
