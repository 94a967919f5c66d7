"""Tests for mrcnn_ref.data.coco: a tiny COCO dataset written to tmp_path, and malformed variants."""
import copy
import json

import numpy as np
import pytest
from skimage import io

from mrcnn_ref.data.coco import CocoDataset
from mrcnn_ref.data.masks import masks_to_boxes
from mrcnn_ref.data.rle import rle_encode, rle_encode_uncompressed


def _write_images(d):
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[..., 0] = 200
    io.imsave(d / "a.png", rgb, check_contrast=False)
    grey = np.full((16, 12), 77, np.uint8)
    io.imsave(d / "b.png", grey, check_contrast=False)
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., 1] = 99
    rgba[..., 3] = 255
    io.imsave(d / "c.png", rgba, check_contrast=False)


def _dataset_dict():
    m_rle = np.zeros((20, 30), bool)
    m_rle[2:7, 20:26] = True                      # box (20, 2, 26, 7)
    m_unc = np.zeros((16, 12), bool)
    m_unc[3:9, 1:5] = True                        # box (1, 3, 5, 9)
    return {
        "images": [
            {"id": 10, "file_name": "a.png", "height": 20, "width": 30},
            {"id": 3, "file_name": "b.png", "height": 16, "width": 12},
            {"id": 7, "file_name": "c.png", "height": 10, "width": 10},   # no annotations
        ],
        "categories": [{"id": 5, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 9, "name": "owl"}],
        "annotations": [
            # polygon: the rectangle with corners (2, 3) and (12, 11) -> pixels cols 2..11, rows 3..10
            {"id": 1, "image_id": 10, "category_id": 5, "iscrowd": 0, "bbox": [2, 3, 10, 8],
             "segmentation": [[2, 3, 12, 3, 12, 11, 2, 11]], "area": 80},
            {"id": 2, "image_id": 10, "category_id": 2, "iscrowd": 0, "bbox": [20, 2, 6, 5],
             "segmentation": rle_encode(m_rle), "area": 30},
            {"id": 3, "image_id": 10, "category_id": 9, "iscrowd": 1, "bbox": [0, 12, 30, 8],
             "segmentation": rle_encode_uncompressed(np.pad(np.ones((8, 30), bool), ((12, 0), (0, 0)))),
             "area": 240},
            {"id": 4, "image_id": 3, "category_id": 9, "bbox": [1, 3, 4, 6],
             "segmentation": rle_encode_uncompressed(m_unc), "area": 24},
        ],
    }


@pytest.fixture
def coco_dir(tmp_path):
    _write_images(tmp_path)
    return tmp_path


def _write(tmp_path, data, name="instances.json"):
    p = tmp_path / name
    p.write_text(json.dumps(data))
    return p


def test_loads_all_segmentation_kinds(coco_dir):
    ds = CocoDataset(_write(coco_dir, _dataset_dict()), coco_dir)
    assert len(ds) == 3 and ds.image_ids == [3, 7, 10]
    assert ds.cat_id_to_label == {2: 1, 5: 2, 9: 3} and ds.label_to_cat_id == {1: 2, 2: 5, 3: 9}
    assert ds.num_classes == 4 and [c["name"] for c in ds.categories] == ["dog", "cat", "owl"]

    s = ds[2]                                     # image id 10: polygon + compressed RLE + crowd
    assert s["image_id"] == 10 and s["image"].shape == (20, 30, 3) and s["image"].dtype == np.uint8
    assert (s["image"][..., 0] == 200).all()
    assert s["labels"].tolist() == [2, 1]
    np.testing.assert_array_equal(s["boxes"], [[2, 3, 12, 11], [20, 2, 26, 7]])
    assert s["masks"].shape == (2, 20, 30) and s["masks"].dtype == bool
    assert s["masks"][0].sum() == 80 and s["masks"][1].sum() == 30
    np.testing.assert_array_equal(s["boxes"], masks_to_boxes(s["masks"]))
    np.testing.assert_array_equal(s["crowd_boxes"], [[0, 12, 30, 20]])

    g = ds[0]                                     # grey image, uncompressed RLE
    assert g["image"].shape == (16, 12, 3) and (g["image"] == 77).all()
    assert g["labels"].tolist() == [3]
    np.testing.assert_array_equal(g["boxes"], [[1, 3, 5, 9]])
    assert g["crowd_boxes"].shape == (0, 4)

    e = ds[1]                                     # RGBA, no annotations
    assert e["image"].shape == (10, 10, 3) and (e["image"][..., 1] == 99).all()
    assert e["boxes"].shape == (0, 4) and e["masks"].shape == (0, 10, 10)
    assert e["labels"].shape == (0,) and e["labels"].dtype == np.int64


def test_category_subset_and_to_coco(coco_dir):
    ds = CocoDataset(_write(coco_dir, _dataset_dict()), coco_dir, category_ids=[9, 5])
    assert ds.cat_id_to_label == {5: 1, 9: 2}
    assert ds[2]["labels"].tolist() == [1] and ds[0]["labels"].tolist() == [2]
    gt = ds.to_coco([2])
    assert [im["id"] for im in gt["images"]] == [10]
    assert sorted(a["id"] for a in gt["annotations"]) == [1, 3]
    assert [c["id"] for c in gt["categories"]] == [5, 9]
    with pytest.raises(ValueError, match="category_ids"):
        CocoDataset(_write(coco_dir, _dataset_dict()), coco_dir, category_ids=[4])


def _mutations():
    """(description, mutate(data), expected message fragment incl. the annotation id)."""
    def m(fn):
        return fn

    return [
        ("no annotations key", m(lambda d: d.pop("annotations")), "annotations"),
        ("no images key", m(lambda d: d.pop("images")), "images"),
        ("no categories key", m(lambda d: d.pop("categories")), "categories"),
        ("ann without bbox", m(lambda d: d["annotations"][1].pop("bbox")), "annotation id 2: missing key 'bbox'"),
        ("ann without segmentation", m(lambda d: d["annotations"][0].pop("segmentation")),
         "annotation id 1: missing key 'segmentation'"),
        ("ann without image_id", m(lambda d: d["annotations"][3].pop("image_id")), "annotation id 4: missing key"),
        ("ann without category_id", m(lambda d: d["annotations"][3].pop("category_id")), "annotation id 4: missing"),
        ("ann without id", m(lambda d: d["annotations"][3].pop("id")), "missing key 'id'"),
        ("box outside", m(lambda d: d["annotations"][1].__setitem__("bbox", [25, 2, 8, 5])),
         "annotation id 2: bbox .* outside"),
        ("box negative x", m(lambda d: d["annotations"][0].__setitem__("bbox", [-3, 3, 10, 8])),
         "annotation id 1: bbox .* outside"),
        ("box zero width", m(lambda d: d["annotations"][0].__setitem__("bbox", [2, 3, 0, 8])),
         "annotation id 1: bbox .* zero or negative"),
        ("box negative height", m(lambda d: d["annotations"][0].__setitem__("bbox", [2, 3, 4, -1])),
         "annotation id 1: bbox .* zero or negative"),
        ("polygon of 2 points", m(lambda d: d["annotations"][0].__setitem__("segmentation", [[2, 3, 12, 3]])),
         "annotation id 1: polygon 0"),
        ("empty polygon list", m(lambda d: d["annotations"][0].__setitem__("segmentation", [])),
         "annotation id 1: segmentation"),
        ("unknown category", m(lambda d: d["annotations"][1].__setitem__("category_id", 42)),
         "annotation id 2: category_id 42"),
        ("unknown image", m(lambda d: d["annotations"][3].__setitem__("image_id", 99)),
         "annotation id 4: image_id 99"),
        ("missing image file", m(lambda d: d["images"][1].__setitem__("file_name", "nope.png")),
         "image 3: image file .*nope.png.* not found"),
        ("RLE of the wrong size", m(lambda d: d["annotations"][1]["segmentation"].__setitem__("size", [30, 20])),
         "annotation id 2: RLE size"),
        ("duplicate annotation id", m(lambda d: d["annotations"][1].__setitem__("id", 1)),
         "annotation id 1: id appears twice"),
    ]


@pytest.mark.parametrize("desc,mutate,msg", _mutations(), ids=[t[0] for t in _mutations()])
def test_malformed_files_fail_clearly(coco_dir, desc, mutate, msg):
    data = copy.deepcopy(_dataset_dict())
    mutate(data)
    path = _write(coco_dir, data, "bad.json")
    with pytest.raises(ValueError, match=msg) as info:
        CocoDataset(path, coco_dir)
    assert "bad.json" in str(info.value)          # the file is named


def test_box_tolerance_and_unreadable_inputs(coco_dir):
    data = _dataset_dict()
    data["annotations"][1]["bbox"] = [20.5, 2, 10.2, 5]   # 0.7 px past the right edge
    CocoDataset(_write(coco_dir, data), coco_dir)           # within the default 1 px tolerance
    with pytest.raises(ValueError, match="outside"):
        CocoDataset(_write(coco_dir, data), coco_dir, box_tolerance=0.5)
    with pytest.raises(ValueError, match="not found"):
        CocoDataset(coco_dir / "missing.json", coco_dir)
    (coco_dir / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="broken.json: not valid JSON"):
        CocoDataset(coco_dir / "broken.json", coco_dir)
    data = _dataset_dict()
    data["images"][2]["height"] = 11                          # JSON disagrees with the file
    ds = CocoDataset(_write(coco_dir, data), coco_dir)
    with pytest.raises(ValueError, match="image 7: .*c.png"):
        ds[1]
    with pytest.raises(IndexError):
        ds[3]


def test_shapes_to_coco_round_trip(tmp_path):
    """ShapesDataset exported as COCO (PNG files + JSON) reads back identically."""
    from mrcnn_ref.data.shapes import ShapesDataset

    shapes = ShapesDataset("val", num_images=3, image_size=64)
    gt = shapes.to_coco()
    for i, im in enumerate(gt["images"]):
        io.imsave(tmp_path / im["file_name"], shapes[i]["image"], check_contrast=False)
    ds = CocoDataset(_write(tmp_path, gt), tmp_path)
    for i in range(3):
        a, b = shapes[i], ds[i]
        for k in ("image", "boxes", "labels", "masks"):
            np.testing.assert_array_equal(a[k], b[k])
        assert a["image_id"] == b["image_id"]


# ----------------------------------------------------------------------------------------------
# compressed RLE strings are decoded when the JSON is loaded
# ----------------------------------------------------------------------------------------------
def _wrong_total_string():
    from mrcnn_ref.data.rle import counts_to_string

    return counts_to_string([100, 20, 479])        # 599 pixels for a 20 x 30 = 600 image


# 64 runs of 2**58 pixels plus 4: the int64 sum wraps around to 4 (a 2x2 mask). Before the runs
# were bounded, np.repeat was handed the huge runs and the process crashed (segfault).
WRAPPING_COUNTS = "4" + "P" * 11 + "8" + "P" * 11 + "8" + "0" * 62


@pytest.mark.parametrize("counts,why", [
    ("0123\x7f", "outside the RLE alphabet"),                 # not RLE characters
    ("é5", "outside the RLE alphabet"),                       # not even ASCII
    ("5a", "ends in the middle of a number"),                 # 'a' has the "more" bit, nothing follows
    ("", "sum to 0"),                                         # no runs at all
    (_wrong_total_string(), "sum to 599 .* 600 pixels"),      # decodes, to the wrong total
    ("0" + "o" * 13 + "0", "too long"),                        # a run of more than 60 bits
    (WRAPPING_COUNTS, "sum to 18446744073709551620"),        # huge runs whose int64 sum wraps
])
def test_bad_rle_strings_fail_at_load_naming_the_annotation(coco_dir, counts, why):
    data = _dataset_dict()
    data["annotations"][1]["segmentation"] = {"size": [20, 30], "counts": counts}
    with pytest.raises(ValueError, match=f"bad.json: annotation id 2: RLE counts do not decode.*{why}") as e:
        CocoDataset(_write(coco_dir, data, "bad.json"), coco_dir)       # no image is read
    assert "\n" not in str(e.value)


def test_wrapping_rle_string_is_an_error_not_a_crash():
    from mrcnn_ref.data.rle import counts_from_string, rle_area, rle_decode

    rle = {"size": [2, 2], "counts": WRAPPING_COUNTS}
    runs = counts_from_string(WRAPPING_COUNTS)
    assert runs[0] == 4 and (runs[1:] == 2 ** 58).all() and int(runs.sum()) == 4   # int64 wraps
    for fn in (rle_decode, rle_area):
        with pytest.raises(ValueError, match="sum to 18446744073709551620 but size 2x2"):
            fn(rle)
    with pytest.raises(ValueError, match="sum to"):       # the same as uncompressed counts
        rle_decode({"size": [2, 2], "counts": [4] + [2 ** 58] * 64})
    with pytest.raises(TypeError, match="str or bytes"):
        counts_from_string(10 ** 9)                       # was bytes(10**9): a gigabyte of zeros
    with pytest.raises(ValueError, match=r"rle\['size'\]"):
        rle_decode({"size": [float("inf"), 2], "counts": []})     # was OverflowError


def test_rle_strings_that_decode_load_and_match_pycocotools(coco_dir):
    mask_util = pytest.importorskip("pycocotools.mask")
    m = np.zeros((20, 30), np.uint8)
    m[3:9, 4:12] = 1
    m[15:, 25:] = 1
    data = _dataset_dict()
    data["annotations"][1]["segmentation"] = {
        "size": [20, 30], "counts": mask_util.encode(np.asfortranarray(m))["counts"].decode()}
    data["annotations"][1]["bbox"] = [4, 3, 26, 17]
    ds = CocoDataset(_write(coco_dir, data), coco_dir)
    np.testing.assert_array_equal(ds[2]["masks"][1], m.astype(bool))


# ----------------------------------------------------------------------------------------------
# area: computed when the file has none (COCO evaluation needs it), checked when it has one
# ----------------------------------------------------------------------------------------------
def test_missing_area_is_computed_the_coco_way(coco_dir):
    mask_util = pytest.importorskip("pycocotools.mask")
    data = _dataset_dict()
    for a in data["annotations"]:
        del a["area"]
    data["annotations"][0]["segmentation"] = [[2, 3, 12, 3, 12, 11, 2, 11], [0, 0, 1.5, 0, 0, 1]]
    ds = CocoDataset(_write(coco_dir, data), coco_dir)
    areas = {a["id"]: a["area"] for a in ds.to_coco()["annotations"]}
    assert areas[1] == 80 + 0.75                  # polygons: geometric (shoelace) area, summed
    for i in (2, 3, 4):                           # RLE, compressed or not: the pixel count
        seg = data["annotations"][i - 1]["segmentation"]
        h, w = seg["size"]
        rle = (mask_util.frPyObjects(seg, h, w) if isinstance(seg["counts"], list)
               else {"size": seg["size"], "counts": seg["counts"].encode()})
        assert areas[i] == int(mask_util.area(rle)) and isinstance(areas[i], int)
    assert "area" not in json.loads((coco_dir / "instances.json").read_text())["annotations"][0]


def test_file_without_area_evaluates_like_pycocotools(coco_dir):
    """The evaluation (ours and pycocotools') needs 'area' for the small/medium/large split."""
    pytest.importorskip("pycocotools")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from mrcnn_ref.evaluate import coco_evaluate

    data = _dataset_dict()
    for a in data["annotations"]:
        del a["area"]
    ds = CocoDataset(_write(coco_dir, data), coco_dir)
    gt = ds.to_coco()
    results = [{"image_id": 10, "category_id": 5, "bbox": [2, 3, 10, 8], "score": 0.9},
               {"image_id": 10, "category_id": 2, "bbox": [19, 2, 7, 6], "score": 0.8},
               {"image_id": 3, "category_id": 9, "bbox": [0, 0, 4, 4], "score": 0.7}]
    ours = coco_evaluate(gt, results, "bbox")
    coco_gt = COCO()
    coco_gt.dataset = copy.deepcopy(gt)
    coco_gt.createIndex()
    ev = COCOeval(coco_gt, coco_gt.loadRes(copy.deepcopy(results)), "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    np.testing.assert_allclose([ours["AP"], ours["AP50"], ours["APs"], ours["APm"], ours["APl"]],
                               [ev.stats[0], ev.stats[1], ev.stats[3], ev.stats[4], ev.stats[5]])


@pytest.mark.parametrize("area", [float("nan"), float("inf"), -1, "80", None, [80], True])
def test_bad_area_fails_at_load(coco_dir, area):
    data = _dataset_dict()
    data["annotations"][0]["area"] = area
    with pytest.raises(ValueError, match="bad.json: annotation id 1: area must be a finite number >= 0"):
        CocoDataset(_write(coco_dir, data, "bad.json"), coco_dir)


@pytest.mark.parametrize("mutate,msg", [
    (lambda d: d["annotations"][0].__setitem__("id", [1]), "annotation id \\[1\\]: id must be an integer"),
    (lambda d: d["annotations"][0].__setitem__("image_id", [10]), "annotation id 1: image_id must be an integer"),
    (lambda d: d["annotations"][0].__setitem__("category_id", True), "annotation id 1: category_id must be"),
    (lambda d: d["annotations"][1]["segmentation"].__setitem__("size", 20), "annotation id 2: RLE size 20"),
    (lambda d: d["categories"][0].pop("name"), "category 5: needs a 'name'"),
    (lambda d: d["images"][0].__setitem__("file_name", ["a.png"]), "image 10: file_name must be"),
])
def test_ids_names_and_sizes_of_the_wrong_type_fail_clearly(coco_dir, mutate, msg):
    data = _dataset_dict()
    mutate(data)
    with pytest.raises(ValueError, match=f"bad.json: {msg}"):
        CocoDataset(_write(coco_dir, data, "bad.json"), coco_dir)


# ----------------------------------------------------------------------------------------------
# check_categories: a trained model's categories against the data's
# ----------------------------------------------------------------------------------------------
def test_check_categories_accepts_the_training_datasets_own(coco_dir):
    from mrcnn_ref.train import _categories

    ds = CocoDataset(_write(coco_dir, _dataset_dict()), coco_dir)
    ds.check_categories(_categories(ds))                      # what a checkpoint stores
    sub = CocoDataset(_write(coco_dir, _dataset_dict()), coco_dir, category_ids=[9, 5])
    sub.check_categories(_categories(sub))
    assert ds.check_categories(list(reversed(_categories(ds)))) is None     # order does not matter


@pytest.mark.parametrize("change,msg", [
    (lambda cats: cats[:2], r"category id\(s\) \[9\] \('owl'\) are not known to the model"),
    (lambda cats: cats + [{"label": 4, "id": 11, "name": "bat"}],
     r"the model has 4 categories, the dataset 3; model category id\(s\) \[11\] are not in the dataset$"),
    (lambda cats: [{**c, "name": "kitten"} if c["id"] == 5 else c for c in cats],
     "category id 5 is 'cat' in the dataset but 'kitten' in the model"),
    (lambda cats: [{**c, "label": {1: 2, 2: 1}.get(c["label"], c["label"])} for c in cats],
     "category id 2 \\('dog'\\) is label 1 in the dataset but label 2 in the model"),
    (lambda cats: [{**c, "id": c["id"] + 100} for c in cats], "are not known to the model"),
])
def test_check_categories_names_the_mismatch(coco_dir, change, msg):
    from mrcnn_ref.train import _categories

    ds = CocoDataset(_write(coco_dir, _dataset_dict()), coco_dir)
    with pytest.raises(ValueError, match=msg) as e:
        ds.check_categories(change(_categories(ds)))
    assert "instances.json: the model's categories do not match the dataset's" in str(e.value)
    assert "\n" not in str(e.value)


def test_check_categories_hints_at_category_ids_for_a_superset(coco_dir):
    from mrcnn_ref.train import _categories

    model_ds = CocoDataset(_write(coco_dir, _dataset_dict()), coco_dir, category_ids=[2, 5])
    full = CocoDataset(_write(coco_dir, _dataset_dict()), coco_dir)
    with pytest.raises(ValueError, match=r"id\(s\) \[9\] \('owl'\) are not known to the model, which has 2 "
                                         r"categories \(ids \[2, 5\]\), the dataset 3; to evaluate on the "
                                         r"model's categories only, load the data with category_ids=\[2, 5\]$"):
        full.check_categories(_categories(model_ds))
    CocoDataset(_write(coco_dir, _dataset_dict()), coco_dir,
                category_ids=[c["id"] for c in _categories(model_ds)]).check_categories(_categories(model_ds))


@pytest.mark.parametrize("bad,error", [
    (None, TypeError), ({"label": 1}, TypeError), ([{"label": 1, "id": 2}], ValueError),
    ([{"label": "1", "id": 2, "name": "dog"}], ValueError), (["dog"], ValueError),
    ([{"label": 1, "id": 2, "name": "dog"}, {"label": 2, "id": 2, "name": "dog"}], ValueError),
])
def test_check_categories_refuses_malformed_lists(coco_dir, bad, error):
    ds = CocoDataset(_write(coco_dir, _dataset_dict()), coco_dir)
    with pytest.raises(error, match="check_categories"):
        ds.check_categories(bad)


def test_train_refuses_coco_images_larger_than_the_limit(tmp_path):
    """A COCO image beyond --max-image-side is refused when the annotations load, before training."""
    import json as _json

    from skimage import io as _io

    from mrcnn_ref.cli import main

    img = np.zeros((300, 200, 3), np.uint8)
    img[50:150, 40:120] = 200
    (tmp_path / "imgs").mkdir()
    _io.imsave(tmp_path / "imgs" / "a.png", img, check_contrast=False)
    ann = {"images": [{"id": 1, "file_name": "a.png", "height": 300, "width": 200}],
           "categories": [{"id": 1, "name": "box"}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [40, 50, 80, 100],
                            "area": 8000, "iscrowd": 0,
                            "segmentation": [[40, 50, 120, 50, 120, 150, 40, 150]]}]}
    (tmp_path / "ann.json").write_text(_json.dumps(ann))
    cfg = tmp_path / "cfg.json"
    cfg.write_text(_json.dumps({"preset": "tiny", "model": {"num_classes": 2},
                                "train": {"dataset": "coco", "coco_annotations": str(tmp_path / "ann.json"),
                                          "coco_images": str(tmp_path / "imgs"), "iterations": 1}}))
    out = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--out", str(out), "--no-progress",
                 "--max-image-side", "256"]) == 2
    assert not out.exists()
    assert main(["train", "--config", str(cfg), "--out", str(out), "--no-progress"]) == 2   # 4 x 64
    assert main(["train", "--config", str(cfg), "--out", str(out), "--no-progress",
                 "--max-image-side", "300"]) == 0
