"""The emulated backend keeps CuPy's host/device rules, computes NumPy's numbers, and counts every
device->host transfer where it happens."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mrcnn_ref import backend
from mrcnn_ref.emulated import EmulatedArray, count_syncs, sync_total
from mrcnn_ref.emulated import xp as ex


def test_implicit_conversion_to_numpy_is_refused_like_cupy():
    a = ex.arange(4.0)
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.asarray(a)
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.testing.assert_allclose(a, np.arange(4.0))
    with pytest.raises(TypeError):
        np.arange(4.0)[a.astype(np.int64)]             # a host array indexed by a device array
    np.testing.assert_array_equal(a.get(), np.arange(4.0))   # the explicit way back


@pytest.mark.parametrize("op", [
    lambda a, h: a + h, lambda a, h: h * a, lambda a, h: ex.maximum(a, h),
    lambda a, h: ex.concatenate([a, h]), lambda a, h: np.add(a, h), lambda a, h: np.stack([a, h]),
    lambda a, h: ex.where(a > 0, h, a)])
def test_numpy_operands_are_refused(op):
    with pytest.raises(TypeError):
        op(ex.ones(3), np.ones(3))


def test_host_data_enters_only_through_asarray():
    h = np.arange(6).reshape(2, 3)
    a = ex.asarray(h)
    assert isinstance(a, EmulatedArray)
    h[0, 0] = 100                                      # a copy, not a view of host memory
    assert int(a[0, 0]) == 0
    assert backend.get_array_module(a) is ex
    with pytest.raises(TypeError, match="mixed"):
        backend.get_array_module(a, h)


def test_reductions_and_scalar_indexing_give_0d_device_arrays():
    a = ex.asarray(np.arange(6.0).reshape(2, 3))
    for r in (a.sum(), a.max(), ex.min(a), a[1, 2], ex.vdot(a.ravel(), a.ravel()), np.sum(a)):
        assert isinstance(r, EmulatedArray) and r.shape == ()


def test_every_read_is_counted_with_its_line():
    a = ex.asarray(np.array([0.0, 1.0, 2.0, 0.0]))
    start = sync_total()
    with count_syncs() as c:
        float(a[1]); int(a[2]); bool(a[1] > 0); a.item(1); a.tolist(); a.get()   # 6 reads
        ex.nonzero(a); ex.flatnonzero(a); a.nonzero(); ex.where(a > 0)          # 4: sizes read back
        a[a > 0]; b = a.copy(); b[a > 0] = 1.0                                  # 2: boolean masks
        ex.unique(a); ex.bincount(a.astype(np.int64)); backend.asnumpy(a)      # 3
        f"{a[0]:.2f}"                                                          # 1
        ex.where(a > 0, a, 0.0); a[ex.asarray(np.array([0, 2]))]; a + 1; a.sum()   # none
    assert c.total == 16 and sync_total() - start == 16
    assert all(site.startswith("tests/test_emulated.py:") for site in c.by_site)
    per_line = [n for _, n in sorted(c.by_site.items(), key=lambda kv: int(kv[0].split(":")[1]))]
    assert per_line == [6, 4, 2, 3, 1]


def test_add_at_accumulates_repeats_and_scatter_add_uses_it():
    t = ex.zeros(4)
    idx = ex.asarray(np.array([0, 2, 2, 3, 0]))
    backend.scatter_add(t, idx, ex.asarray(np.array([1.0, 2.0, 3.0, 4.0, 5.0])))
    np.testing.assert_array_equal(t.get(), [6.0, 0.0, 5.0, 4.0])
    with pytest.raises(TypeError, match="device array"):
        ex.add.at(np.zeros(4), idx, 1.0)   # the target must live on the device


def test_sort_is_stable_like_cupy_radix_sort():
    v = np.array([2, 1, 2, 1, 2, 0, 1] * 20)
    np.testing.assert_array_equal(ex.argsort(ex.asarray(v)).get(), np.argsort(v, kind="stable"))
    np.testing.assert_array_equal(backend.argsort_descending(ex.asarray(v)).get(),
                                  np.argsort(-v, kind="stable"))


def test_repeat_refuses_device_repeats():
    with pytest.raises(TypeError, match="repeats"):
        ex.repeat(ex.ones(3), ex.asarray(np.array([1, 2, 3])))


@given(seed=st.integers(0, 2**31 - 1), shape=st.sampled_from([(5,), (3, 4), (2, 3, 4)]))
def test_numbers_are_numpys(seed, shape):
    rng = np.random.default_rng(seed)
    h1, h2 = rng.standard_normal(shape), rng.standard_normal(shape)
    a1, a2 = ex.asarray(h1), ex.asarray(h2)
    pairs = [(a1 * a2 - a1 / (1 + abs(a2)), h1 * h2 - h1 / (1 + abs(h2))),
             (ex.exp(-a1 ** 2).sum(axis=-1), np.exp(-h1 ** 2).sum(axis=-1)),
             (ex.matmul(a1.reshape(-1, 1), a2.reshape(1, -1)), np.matmul(h1.reshape(-1, 1), h2.reshape(1, -1))),
             (ex.cumsum(a1[..., ::-1], axis=-1), np.cumsum(h1[..., ::-1], axis=-1)),
             (ex.einsum("...i,...i->...", a1, a2), np.einsum("...i,...i->...", h1, h2))]
    for a, h in pairs:
        assert isinstance(a, EmulatedArray)
        np.testing.assert_array_equal(a.get(), h)


def test_in_place_operators_keep_the_buffer():
    a = ex.zeros(3)
    b = a
    a += ex.ones(3)
    a *= 2.0
    assert b is a
    np.testing.assert_array_equal(b.get(), [2.0, 2.0, 2.0])


def test_backend_registry_names_and_moves():
    assert "emulated" in backend.available_backends()
    assert backend.backend_name(ex) == "emulated" and backend.backend_name(np) == "numpy"
    h = np.arange(3.0)
    d = backend.to_device(h, "emulated")
    assert backend.to_device(d, "emulated") is d
    np.testing.assert_array_equal(backend.to_device(d, "numpy"), h)
    with pytest.raises(ValueError, match="unknown backend"):
        backend.to_device(h, "tpu")


def test_operators_on_0d_arrays_and_reflected_shifts():
    z = ex.sum(ex.ones(3))
    for r in (-z, +z, abs(z), ~(z > 0), 1 << ex.asarray(np.array([1, 2])), 8 >> ex.asarray(np.array(1))):
        assert isinstance(r, EmulatedArray)
    assert float(-z) == -3.0
    np.testing.assert_array_equal((1 << ex.asarray(np.array([1, 2]))).get(), [2, 4])
