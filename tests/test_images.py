"""One image loader for every command: every format and pixel type gives the same (H, W, 3) uint8
picture, bad files are one-line errors naming them, large images are refused or shrunk."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from skimage import io

from mrcnn_ref.data.images import check_size, fit_size, read_image, to_rgb_uint8

RGB = np.random.default_rng(0).integers(0, 256, (20, 30, 3)).astype(np.uint8)


@pytest.mark.parametrize("name,make", [
    ("rgb8.png", lambda: RGB),
    ("rgb16.tif", lambda: RGB.astype(np.uint16) * 257),                 # the same picture in 16 bits
    ("rgba.png", lambda: np.dstack([RGB, np.full(RGB.shape[:2], 7, np.uint8)])),
    ("rgbf.tif", lambda: RGB.astype(np.float32) / 255),
])
def test_every_pixel_type_gives_the_same_picture(tmp_path, name, make):
    path = tmp_path / name
    io.imsave(path, make(), check_contrast=False)
    np.testing.assert_array_equal(read_image(path), RGB)


def test_grey_and_palette_images(tmp_path):
    grey = RGB[:, :, 0]
    io.imsave(tmp_path / "g.png", grey, check_contrast=False)
    np.testing.assert_array_equal(read_image(tmp_path / "g.png"), np.dstack([grey] * 3))
    io.imsave(tmp_path / "g16.png", grey.astype(np.uint16) * 257, check_contrast=False)
    np.testing.assert_array_equal(read_image(tmp_path / "g16.png"), np.dstack([grey] * 3))
    im = Image.fromarray((grey % 3).astype(np.uint8), mode="P")
    im.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 759)
    im.save(tmp_path / "p.png")
    out = read_image(tmp_path / "p.png")
    np.testing.assert_array_equal(out[grey % 3 == 1], np.tile([0, 255, 0], ((grey % 3 == 1).sum(), 1)))


def _text_file(path):
    path.write_text("not a picture")
    return path


@pytest.mark.parametrize("make,needle", [
    (lambda p: io.imsave(p / "nan.tif", np.where(RGB == 0, np.nan, RGB / 255.0).astype(np.float32),
                         check_contrast=False) or p / "nan.tif", "NaN or infinite"),
    (lambda p: io.imsave(p / "big.tif", (RGB * 2.0).astype(np.float32), check_contrast=False)
     or p / "big.tif", "expected \\[0, 1\\]"),
    (lambda p: _text_file(p / "notes.png"), "cannot be read as an image"),
    (lambda p: p, "is a directory"),
    (lambda p: p / "missing.png", "does not exist"),
])
def test_bad_files_are_one_line_errors_naming_them(tmp_path, make, needle):
    path = make(tmp_path)
    with pytest.raises(ValueError, match=needle) as e:
        read_image(path)
    msg = str(e.value)
    assert str(path) in msg and "\n" not in msg and "plugin" not in msg


@given(h=st.integers(1, 60), w=st.integers(1, 60), limit=st.integers(8, 64))
def test_size_limit_refuses_or_shrinks_with_the_factors_back(h, w, limit):
    img = np.zeros((h, w, 3), np.uint8)
    small, (fy, fx) = fit_size(img, limit)
    assert max(small.shape[:2]) <= limit and small.dtype == np.uint8
    assert small.shape[0] * fy == pytest.approx(h) and small.shape[1] * fx == pytest.approx(w)
    if max(h, w) <= limit:
        assert small is img and check_size(img, limit) is img
    else:
        with pytest.raises(ValueError, match="raise it with --max-image-side"):
            check_size(img, limit)


def test_arrays_of_other_types_are_refused():
    with pytest.raises(ValueError, match="pixel type int64"):
        to_rgb_uint8(np.zeros((4, 4), np.int64))
    with pytest.raises(ValueError, match="grey, RGB or RGBA"):
        to_rgb_uint8(np.zeros((4, 4, 5), np.uint8))
