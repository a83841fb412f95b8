"""Shared test configuration: deterministic seeds and a hypothesis profile for fast runs."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, settings

# Tensor-building strategies are slower than hypothesis expects; the run time is bounded by
# each test's own ``max_examples`` instead of a per-example deadline.
settings.register_profile(
    "autoq", deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.load_profile("autoq")


@pytest.fixture(autouse=True)
def _seed() -> None:
    """Every test starts from the same random state, so failures reproduce."""
    torch.manual_seed(0)


@pytest.fixture
def single_thread():
    """Run a test on one intra-op thread (restored afterwards).

    The tensors in these tests are small: with two threads on a shared two-core machine,
    thread synchronisation under contention costs more than the parallelism gains.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
