"""Tests for the synthetic shapes dataset (mrcnn_ref.data.shapes)."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mrcnn_ref.data.masks import masks_to_boxes
from mrcnn_ref.data.shapes import CATEGORIES, MIN_AREA, ShapesDataset


def test_default_sizes_and_categories():
    assert len(ShapesDataset("train")) == 2000
    assert len(ShapesDataset("val")) == 200
    assert len(ShapesDataset("val", num_images=7)) == 7
    assert [c["id"] for c in CATEGORIES] == [1, 2, 3]
    assert [c["name"] for c in CATEGORIES] == ["square", "circle", "triangle"]


@settings(max_examples=25)
@given(i=st.integers(0, 10_000), size=st.sampled_from([32, 64, 96]), seed=st.integers(0, 5))
def test_sample_structure_and_invariants(i, size, seed):
    ds = ShapesDataset("train", num_images=10_001, image_size=size, seed=seed)
    s = ds[i]
    img, boxes, labels, masks = s["image"], s["boxes"], s["labels"], s["masks"]
    n = len(labels)
    assert img.shape == (size, size, 3) and img.dtype == np.uint8
    assert 1 <= n <= 4
    assert boxes.shape == (n, 4) and boxes.dtype == np.float32
    assert labels.dtype == np.int64 and set(labels.tolist()) <= {1, 2, 3}
    assert masks.shape == (n, size, size) and masks.dtype == bool
    assert s["image_id"] == i + 1
    # visible masks never overlap and are not tiny
    assert masks.sum(axis=0).max() <= 1
    assert (masks.sum(axis=(1, 2)) >= MIN_AREA).all()
    # boxes are tight around the visible masks, inside the image
    np.testing.assert_array_equal(boxes, masks_to_boxes(masks))
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= size).all()


def test_random_access_is_order_independent_and_deterministic():
    a = ShapesDataset("train", num_images=20, cache_size=0)
    b = ShapesDataset("train", num_images=20, cache_size=4)
    forward = [a[i] for i in range(20)]
    backward = [b[i] for i in reversed(range(20))][::-1]
    for x, y in zip(forward, backward):
        for k in ("image", "boxes", "labels", "masks"):
            np.testing.assert_array_equal(x[k], y[k])
    # a different seed gives different images
    c = ShapesDataset("train", num_images=20, seed=1)
    assert not np.array_equal(c[0]["image"], a[0]["image"])


def test_train_and_val_are_different():
    tr = ShapesDataset("train", num_images=30)
    va = ShapesDataset("val", num_images=30)
    train_imgs = {tr[i]["image"].tobytes() for i in range(30)}
    assert not any(va[i]["image"].tobytes() in train_imgs for i in range(30))


def test_masks_match_the_painted_colours():
    """Each visible mask is the set of pixels painted with that shape's colour (up to the noise)."""
    ds = ShapesDataset("val", num_images=10, noise_std=0.0)
    for i in range(10):
        s = ds[i]
        img = s["image"].astype(int)
        covered = s["masks"].any(axis=0)
        bg_vals = img[~covered]
        assert (bg_vals == bg_vals[0]).all()            # the background is one colour
        for m in s["masks"]:
            vals = img[m]
            assert (vals == vals[0]).all()              # one colour per visible instance
            assert np.abs(vals[0] - bg_vals[0]).sum() > 0


def test_cache_returns_copies():
    ds = ShapesDataset("train", num_images=3)
    s = ds[0]
    s["image"][:] = 0
    s["masks"][:] = False
    assert ds[0]["image"].any() and ds[0]["masks"].any()


def test_all_categories_and_counts_occur():
    ds = ShapesDataset("train", num_images=60)
    labels = np.concatenate([ds[i]["labels"] for i in range(60)])
    counts = [len(ds[i]["labels"]) for i in range(60)]
    assert set(labels.tolist()) == {1, 2, 3}
    assert set(counts) == {1, 2, 3, 4}


def test_occlusion_happens_and_is_removed_from_masks():
    """Somewhere in the data a later shape overlaps an earlier one; its mask is cut accordingly."""
    ds = ShapesDataset("train", num_images=200)
    found = False
    for i in range(200):
        m = ds[i]["masks"]
        if len(m) < 2:
            continue
        # a box of an earlier instance containing pixels of a later instance => occlusion
        b = masks_to_boxes(m).astype(int)
        for k in range(len(m) - 1):
            x1, y1, x2, y2 = b[k]
            if m[k + 1:, y1:y2, x1:x2].any():
                found = True
    assert found


def test_index_and_argument_errors():
    ds = ShapesDataset("val", num_images=5)
    assert ds[-1]["image_id"] == 5
    with pytest.raises(IndexError):
        ds[5]
    with pytest.raises(TypeError, match="index"):
        ds[1.0]
    with pytest.raises(ValueError, match="split"):
        ShapesDataset("test")
    with pytest.raises(ValueError, match="image_size"):
        ShapesDataset(image_size=8)
    with pytest.raises(TypeError, match="max_instances"):
        ShapesDataset(max_instances=2.5)


def test_to_coco():
    rle = pytest.importorskip("mrcnn_ref.data.rle")
    ds = ShapesDataset("val", num_images=4)
    coco = ds.to_coco()
    assert [im["id"] for im in coco["images"]] == [1, 2, 3, 4]
    assert coco["categories"] == CATEGORIES
    anns = coco["annotations"]
    assert len(anns) == sum(len(ds[i]["labels"]) for i in range(4))
    assert len({a["id"] for a in anns}) == len(anns)
    for a in anns:
        s = ds[a["image_id"] - 1]
        mask = rle.rle_decode(a["segmentation"])
        k = [j for j in range(len(s["masks"])) if np.array_equal(s["masks"][j], mask)]
        assert len(k) == 1
        assert a["category_id"] == s["labels"][k[0]]
        assert a["area"] == mask.sum() and a["iscrowd"] == 0
        x1, y1, x2, y2 = s["boxes"][k[0]]
        assert a["bbox"] == [x1, y1, x2 - x1, y2 - y1]
    assert len(ds.to_coco(indices=[2])["images"]) == 1


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_to_coco_is_readable_by_pycocotools():
    pytest.importorskip("mrcnn_ref.data.rle")
    coco_mod = pytest.importorskip("pycocotools.coco")
    ds = ShapesDataset("train", num_images=3, image_size=64)
    gt = coco_mod.COCO()
    gt.dataset = ds.to_coco()
    gt.createIndex()
    for i in range(3):
        s = ds[i]
        anns = gt.loadAnns(gt.getAnnIds(imgIds=[i + 1]))
        got = np.stack([gt.annToMask(a).astype(bool) for a in anns])
        np.testing.assert_array_equal(got, s["masks"])
        assert [a["category_id"] for a in anns] == s["labels"].tolist()
