"""Tests for mrcnn_ref.data.transforms."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mrcnn_ref.data.masks import masks_to_boxes
from mrcnn_ref.data.shapes import ShapesDataset
from mrcnn_ref.data.transforms import MEAN, STD, hflip, random_hflip, to_model_input


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], np.ndarray):
            np.testing.assert_array_equal(a[k], b[k])
            assert a[k].dtype == b[k].dtype
        else:
            assert a[k] == b[k]


def test_hflip_hand_example():
    image = np.zeros((2, 5, 3), np.uint8)
    image[0, 1] = 200
    masks = np.zeros((1, 2, 5), bool)
    masks[0, 0, 1:3] = True                        # cols 1..2 -> box x 1..3
    s = {"image": image, "boxes": np.array([[1.0, 0.0, 3.0, 1.0]], np.float32),
         "labels": np.array([2]), "masks": masks, "image_id": 7,
         "crowd_boxes": np.array([[0.0, 0.0, 0.5, 2.0]])}
    f = hflip(s)
    assert f["image"][0, 3].tolist() == [200] * 3 and f["image"].sum() == 600
    np.testing.assert_array_equal(f["boxes"], [[2.0, 0.0, 4.0, 1.0]])
    np.testing.assert_array_equal(f["masks"][0, 0], [False, False, True, True, False])
    np.testing.assert_array_equal(f["crowd_boxes"], [[4.5, 0.0, 5.0, 2.0]])
    assert f["image_id"] == 7 and f["labels"].tolist() == [2]
    # the input is untouched
    assert s["image"][0, 1, 0] == 200 and s["boxes"][0, 0] == 1.0 and s["masks"][0, 0, 1]


@given(i=st.integers(0, 999), size=st.sampled_from([32, 48, 64]))
def test_hflip_twice_is_identity_and_boxes_follow_masks(i, size):
    s = ShapesDataset("train", num_images=1000, image_size=size, cache_size=0)[i]
    f = hflip(s)
    np.testing.assert_array_equal(f["boxes"], masks_to_boxes(f["masks"]))
    np.testing.assert_array_equal(f["image"], s["image"][:, ::-1])
    _assert_same(hflip(f), s)


def test_random_hflip_rate_and_determinism():
    s = ShapesDataset("val", num_images=1)[0]
    rng = np.random.default_rng(0)
    flips = [np.array_equal(random_hflip(s, rng)["image"], s["image"][:, ::-1]) for _ in range(400)]
    assert 150 < sum(flips) < 250
    rng = np.random.default_rng(0)
    assert all(np.array_equal(random_hflip(s, rng, p=1.0)["boxes"], hflip(s)["boxes"]) for _ in range(3))
    _assert_same(random_hflip(s, rng, p=0.0), s)
    a = [random_hflip(s, np.random.default_rng(5))["image"] for _ in range(2)]
    np.testing.assert_array_equal(*a)


def test_transform_errors():
    s = ShapesDataset("val", num_images=1)[0]
    with pytest.raises(TypeError, match="random_hflip: rng"):
        random_hflip(s, 0)
    with pytest.raises(ValueError, match="random_hflip: p"):
        random_hflip(s, np.random.default_rng(0), p=1.5)
    with pytest.raises(TypeError, match="hflip: sample"):
        hflip(s["image"])
    with pytest.raises(ValueError, match="width"):
        hflip({**s, "masks": s["masks"][:, :, :-1]})
    with pytest.raises(TypeError, match="to_model_input: dtype"):
        to_model_input(s, np.int32)
    with pytest.raises(ValueError, match="3 channels"):
        to_model_input(np.zeros((4, 4, 4), np.uint8))


def test_to_model_input_values(xp):
    img = np.array([[[0, 255, 128]]], np.uint8)               # (1, 1, 3)
    x = to_model_input({"image": img}, np.float64, xp=xp)
    assert x.shape == (3, 1, 1) and x.dtype == np.float64
    want = [(0 - 0.5) / 0.25, (1 - 0.5) / 0.25, (128 / 255 - 0.5) / 0.25]
    np.testing.assert_allclose(np.asarray(x.get() if hasattr(x, "get") else x)[:, 0, 0], want,
                               rtol=0, atol=1e-12)
    assert MEAN == (0.5,) * 3 and STD == (0.25,) * 3
    s = ShapesDataset("val", num_images=1)[0]
    y = to_model_input(s)
    assert y.shape == (3, 128, 128) and y.dtype == np.float32 and y.flags.c_contiguous
    assert -2 <= y.min() and y.max() <= 2
    grey = to_model_input(np.full((2, 3), 51, np.uint8))
    np.testing.assert_allclose(grey, np.full((3, 2, 3), (0.2 - 0.5) / 0.25), atol=1e-6)
