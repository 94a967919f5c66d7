import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mrcnn_ref import backend


def test_get_array_module_numpy_and_default():
    a = np.zeros(3)
    assert backend.get_array_module(a) is np
    assert backend.get_array_module(None, 1.0, a) is np
    assert backend.get_array_module() is backend.get_backend()


def test_asnumpy_roundtrip():
    a = np.arange(5.0)
    assert backend.asnumpy(a) is a
    np.testing.assert_array_equal(backend.asnumpy([1, 2]), np.array([1, 2]))


@pytest.mark.parametrize("shape,idx", [((7,), np.array([0, 3, 3, 6, 0, 0])),
                                       ((4, 3), (np.array([0, 0, 3]), np.array([1, 1, 2])))])
def test_scatter_add_accumulates_repeats(shape, idx):
    rng = np.random.default_rng(0)
    target = rng.standard_normal(shape)
    vals = rng.standard_normal(len(idx[0]) if isinstance(idx, tuple) else len(idx))
    expected = target.copy()
    for j in range(len(vals)):
        key = tuple(i[j] for i in idx) if isinstance(idx, tuple) else idx[j]
        expected[key] += vals[j]
    backend.scatter_add(target, idx, vals)
    np.testing.assert_allclose(target, expected, rtol=1e-12, atol=1e-12)


def test_unknown_backend_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown backend"):
        backend.set_backend("tensorflow")


def test_cupy_request_without_cupy_is_clear():
    if backend.cupy_available():
        pytest.skip("CuPy is available here")
    with pytest.raises(ValueError, match="CuPy"):
        backend.set_backend("cupy")
    assert backend.get_backend() is np


@pytest.mark.gpu
def test_cupy_module_detection():
    import cupy as cp

    a = cp.zeros(3)
    assert backend.get_array_module(a) is cp
    assert isinstance(backend.asnumpy(a), np.ndarray)
    with pytest.raises(TypeError, match="mixed"):
        backend.get_array_module(a, np.zeros(3))


def test_argsort_descending_keeps_ties_in_index_order():
    a = np.array([0.3, 0.9, 0.3, 0.9, 0.1, 0.3], np.float32)
    np.testing.assert_array_equal(backend.argsort_descending(a), [1, 3, 0, 2, 5, 4])
    assert backend.argsort_descending(np.zeros(0)).shape == (0,)


@given(st.integers(0, 2**31 - 1), st.integers(0, 300), st.integers(0, 320),
       st.sampled_from(["ties", "distinct", "nan", "inf"]))
def test_top_k_descending_is_the_prefix_of_the_full_stable_sort(seed, n, k, kind):
    """Against the full stable sort, with many ties (a few distinct values), distinct values,
    NaNs and infinities mixed in, for every k (including 0 and k > n)."""
    rng = np.random.default_rng(seed)
    a = (rng.integers(0, 5, n) if kind == "ties" else rng.standard_normal(n)).astype(np.float32)
    if n and kind == "nan":
        a[rng.integers(0, n, 3)] = np.nan
    if n and kind == "inf":
        a[rng.integers(0, n, 3)] = rng.choice([np.inf, -np.inf], 3)
    np.testing.assert_array_equal(backend.top_k_descending(a, k), backend.argsort_descending(a)[:k])
