"""Shared fixtures of the fastattn Python tests.

Random data comes from seeded generators; the seed is in every failure message (the
``case`` strings). Shapes stay small so the whole run takes seconds.
"""

import numpy as np
import pytest
import torch



def assert_close(got, want, atol, rtol=0.0, case=""):
    """Max-abs comparison with the case label in the message."""
    got = torch.as_tensor(got).double()
    want = torch.as_tensor(want).double()
    assert got.shape == want.shape, f"{case}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    err = (got - want).abs()
    tol = atol + rtol * want.abs()
    bad = err > tol
    assert not bad.any(), (
        f"{case}: max abs error {err.max().item():.3g} > tolerance "
        f"(atol {atol}, rtol {rtol}) at {bad.nonzero()[0].tolist()}"
    )


@pytest.fixture
def rng():
    return np.random.default_rng(20)


def randn(gen, *shape, dtype=torch.float32):
    return torch.randn(*shape, generator=gen).to(dtype)
