"""Shared test configuration.

* hypothesis profiles: "ci" (default; derandomised so CI is reproducible) and "dev" (random).
* ``gpu`` marker: skipped unless CuPy with a CUDA device is importable.
* ``xp`` fixture: the array module selected by MRCNN_REF_BACKEND (numpy by default), so the same
  tests run on CuPy with ``MRCNN_REF_BACKEND=cupy pytest``.
* ``device`` fixture: parametrises a test over the backends — ``numpy``, ``emulated`` (CuPy's
  host/device rules on the CPU, so CI runs the device code path) and ``cupy`` where a GPU is;
  ``accelerator``: the same without ``numpy`` (tests that compare a device with NumPy).
  ``pytest --backend cupy`` (repeatable) runs only the named ones.
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


def pytest_addoption(parser):
    parser.addoption("--backend", action="append", default=[], metavar="NAME",
                     help="run the device-parametrised tests on these backends only "
                          "(numpy, emulated, cupy); default: all available")


class Device:
    """One backend for a test: ``name``, ``xp``, ``to(a)`` (host -> this backend) and ``host(a)``
    (back to NumPy), and ``is_array(a)`` (does ``a`` live here)."""

    def __init__(self, name):
        self.name = name
        self.xp = backend._module_for(name)
        self._type = backend._backend_for(name).array_type

    def to(self, a):
        return backend.to_device(a, self.name)

    def host(self, a):
        return backend.asnumpy(a)

    def is_array(self, a) -> bool:
        return isinstance(a, self._type)

    def __repr__(self):
        return self.name


def pytest_generate_tests(metafunc):
    wanted = metafunc.config.getoption("--backend") or backend.available_backends()
    if "device" in metafunc.fixturenames:
        metafunc.parametrize("device", [Device(n) for n in wanted], ids=list(wanted))
    if "accelerator" in metafunc.fixturenames:      # the device backends only (NumPy is the reference)
        names = [n for n in wanted if n != "numpy"]
        metafunc.parametrize("accelerator", [Device(n) for n in names], ids=names)


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
