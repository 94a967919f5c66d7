"""Shared test configuration.

* hypothesis profiles: "ci" (default; derandomised so CI is reproducible) and "dev" (random).
* ``gpu`` marker: skipped unless CuPy with a CUDA device is importable.
* ``xp`` fixture: the array module selected by MRCNN_REF_BACKEND (numpy by default), so the same
  tests run on CuPy with ``MRCNN_REF_BACKEND=cupy pytest``.
"""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

from mrcnn_ref import backend

settings.register_profile(
    "ci", deadline=None, derandomize=True, max_examples=40,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "dev", deadline=None, max_examples=100,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_collection_modifyitems(config, items):
    if backend.cupy_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CuPy and a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture
def xp():
    """The default array module (numpy, or cupy when MRCNN_REF_BACKEND=cupy)."""
    return backend.get_backend()


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
