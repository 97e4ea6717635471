"""Reading single images: every bad-input kind, RGB conversion, EXIF orientation, region decoding."""

from __future__ import annotations

import io

import numpy as np
import pytest
from helpers.layouts import photo, quadrants, write_bomb_png, write_exif_rotated, write_jpeg
from PIL import Image, ImageOps

from peft_vision_lora.data.images import (
    BadImageError,
    check_image,
    decode_region,
    decode_resized,
    describe,
    draft_scale,
    open_image,
    resize_box,
    source_key,
    to_rgb,
    upright_size,
)


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda p: p.write_bytes(b""), "not an image file"),
        (lambda p: p.write_text("hello, not a JPEG\n"), "not an image file"),
        (lambda p: write_bomb_png(p), "decompression-bomb"),
    ],
    ids=["zero-byte", "text-as-jpg", "bomb"],
)
def test_unreadable_files_raise_naming_the_file(tmp_path, make, reason):
    path = tmp_path / "bad.jpg"
    make(path)
    with pytest.raises(BadImageError, match=reason) as info:
        check_image(path)
    assert info.value.source == str(path)
    assert str(path) in str(info.value)


def test_truncated_jpeg_is_caught_by_the_scan(tmp_path):
    data = write_jpeg(tmp_path / "full.jpg", 256, 192).read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    check_image(tmp_path / "full.jpg")
    with pytest.raises(BadImageError, match="truncated"):
        check_image(tmp_path / "cut.jpg")


def test_decompression_bomb_limit_is_pils_and_can_be_raised(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("L", (40, 30)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(BadImageError, match="40x30 pixels is over"), pytest.warns(Image.DecompressionBombWarning):
        open_image(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    assert open_image(path).size == (40, 30)


def test_only_plain_raster_formats_are_decoded(tmp_path):
    path = tmp_path / "vector.jpg"
    path.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n")
    with pytest.raises(BadImageError, match="not an image file"):  # EPS would run Ghostscript: never identified
        open_image(path)


def test_sources_of_every_kind_open(tmp_path):
    path = write_jpeg(tmp_path / "a.jpg", 20, 10)
    data = path.read_bytes()
    array = np.zeros((10, 20, 3), dtype=np.uint8)
    for source in (
        path,
        str(path),
        data,
        {"path": str(path), "bytes": None},
        {"path": None, "bytes": data},
        array,
        Image.open(path),
    ):
        assert open_image(source).size == (20, 10)
    assert describe({"path": None, "bytes": data}) == f"<{len(data)} bytes>"
    assert source_key({"path": str(path), "bytes": None}) == source_key(str(path))
    assert source_key(data) != source_key(b"other")


def test_to_rgb_composites_transparency_on_white_like_transformers():
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 255
    rgba[:2, :, 3] = 255
    rgba[2:, :, 3] = 128
    out = np.asarray(to_rgb(Image.fromarray(rgba, "RGBA")))
    assert out.dtype == np.uint8 and out.shape == (4, 4, 3)
    assert out[0, 0].tolist() == [255, 0, 0]
    assert out[3, 0].tolist() == [255, 127, 127]  # half-transparent red over white

    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    palette.paste(1, (0, 0, 4, 2))
    palette.info["transparency"] = 0
    out = np.asarray(to_rgb(palette))
    assert out[0, 0].tolist() == [10, 200, 30] and out[3, 3].tolist() == [255, 255, 255]


def test_to_rgb_scales_16_bit_grayscale_instead_of_clipping(tmp_path):
    levels = np.array([[0, 257 * 10, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(levels).save(tmp_path / "g16.png")
    image = Image.open(tmp_path / "g16.png")
    assert image.mode.startswith("I")
    out = np.asarray(to_rgb(image))
    assert out[0, :, 0].tolist() == [0, 10, 128, 255]
    assert (out[..., 0] == out[..., 2]).all()


def test_cmyk_jpeg_comes_out_rgb(tmp_path):
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    out = np.asarray(to_rgb(Image.open(tmp_path / "cmyk.jpg")))
    assert out.shape == (8, 8, 3)
    assert out[4, 4, 0] > 200 and out[4, 4, 1] < 60 and out[4, 4, 2] < 60


def test_exif_rotated_jpeg_comes_out_upright(tmp_path):
    upright = quadrants(60, 40)
    path = write_exif_rotated(tmp_path / "r.jpg", upright, orientation=6)
    stored = Image.open(path)
    assert stored.size == (40, 60)
    assert upright_size(stored) == (60, 40)
    out = np.asarray(decode_region(stored, (0, 0, 60, 40), (60, 40), Image.Resampling.BILINEAR))
    expected = np.asarray(upright)
    assert np.abs(out.astype(int) - expected).mean() < 6  # JPEG noise only: quadrants in place


@pytest.mark.parametrize("orientation", range(1, 9))
def test_region_decoding_matches_transpose_then_resize(orientation):
    raw = photo(50, 36, seed=orientation)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    raw.save(buffer, format="PNG", exif=exif)
    image = Image.open(io.BytesIO(buffer.getvalue()))
    upright = ImageOps.exif_transpose(Image.open(io.BytesIO(buffer.getvalue())))
    box = (3.0, 5.0, 3.0 + upright.width * 0.6, 5.0 + upright.height * 0.5)
    expected = np.asarray(upright.resize((20, 16), Image.Resampling.BICUBIC, box=box)).astype(int)
    out = decode_region(image, box, (20, 16), Image.Resampling.BICUBIC).astype(int)
    assert out.shape == (16, 20, 3)
    # Whole-pixel boxes (orientations 1-4 here) are resized by torch, which crops first: a level or two at the edges.
    assert np.abs(out - expected).max() <= 2 and np.abs(out - expected).mean() < 0.2


@pytest.mark.parametrize("orientation", range(1, 9))
def test_eval_decoding_is_exactly_transpose_resize_crop(orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    photo(50, 36, seed=orientation).save(buffer, format="PNG", exif=exif)
    upright = ImageOps.exif_transpose(Image.open(io.BytesIO(buffer.getvalue())))
    expected = np.asarray(upright.resize((30, 24), Image.Resampling.BICUBIC).crop((3, 2, 23, 18)))
    out = decode_resized(
        Image.open(io.BytesIO(buffer.getvalue())), (30, 24), Image.Resampling.BICUBIC, crop=(3, 2, 23, 18)
    )
    np.testing.assert_array_equal(np.asarray(out), expected)


def test_reduced_jpeg_decoding_stays_close_to_a_full_decode(tmp_path):
    path = write_jpeg(tmp_path / "big.jpg", 1024, 768)
    box = (100.0, 50.0, 900.0, 650.0)
    full = np.asarray(decode_region(Image.open(path), box, (224, 224), Image.Resampling.BICUBIC)).astype(int)
    drafted = Image.open(path)
    fast = np.asarray(decode_region(drafted, box, (224, 224), Image.Resampling.BICUBIC, reduce=True)).astype(int)
    assert drafted.size == (512, 384)  # decoded at 1/2 scale: the 800x600 box is still >= 224 px each way
    assert np.abs(fast - full).mean() < 2.0


@pytest.mark.parametrize("width, height", [(1024, 768), (1023, 767)], ids=["even", "odd"])
def test_draft_scale_is_the_smallest_that_keeps_the_output_resolution(tmp_path, width, height):
    path = write_jpeg(tmp_path / "big.jpg", width, height)
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(60):
        w, h = rng.integers(20, width + 1), rng.integers(20, height + 1)
        x0, y0 = rng.integers(0, width - w + 1), rng.integers(0, height - h + 1)
        box, size = (float(x0), float(y0), float(x0 + w), float(y0 + h)), (int(rng.integers(16, 225)), 112)
        image = Image.open(path)
        reduction = draft_scale(image, box, size)
        seen.add(reduction)
        # A reduced box keeps at least the output resolution, and the next scale would lose it (1/8 is the last).
        assert reduction == 1 or (w / reduction >= size[0] and h / reduction >= size[1])
        assert reduction == 8 or w / (2 * reduction) < size[0] or h / (2 * reduction) < size[1]
        image.load()  # the reduction is really applied by the decoder, odd sizes included
        assert image.size == (-(-width // reduction), -(-height // reduction))
    assert seen == {1, 2, 4}
    png = tmp_path / "big.png"
    Image.open(path).save(png)
    assert draft_scale(Image.open(png), (0, 0, width, height), (64, 64)) == 1  # DCT scaling is JPEG-only


@pytest.mark.parametrize("resample", [Image.Resampling.BILINEAR, Image.Resampling.BICUBIC])
@pytest.mark.parametrize(
    "box, size", [((7, 11, 407, 311), (96, 80)), ((3, 2, 40, 30), (64, 48))], ids=["downscale", "upscale"]
)
def test_resize_box_matches_pil(resample, box, size):
    image = photo(420, 320, seed=3)
    out = resize_box(image, box, size, resample).astype(int)
    cropped = np.asarray(image.crop(box).resize(size, resample)).astype(int)  # torch crops, then resizes
    assert out.shape == (size[1], size[0], 3)
    assert np.abs(out - cropped).max() <= 2 and np.abs(out - cropped).mean() < 0.05
    in_place = np.asarray(image.resize(size, resample, box=box)).astype(int)  # PIL reads past the box edges
    assert np.abs(out - in_place)[2:-2, 2:-2].max() <= 2
    # Fractional boxes and other filters are PIL's own resize.
    fractional = (7.5, 11.25, 400.5, 300.0)
    np.testing.assert_array_equal(
        resize_box(image, fractional, size, resample), np.asarray(image.resize(size, resample, box=fractional))
    )
    np.testing.assert_array_equal(
        resize_box(image, box, size, Image.Resampling.LANCZOS),
        np.asarray(image.resize(size, Image.Resampling.LANCZOS, box=box)),
    )


def test_one_pixel_image_decodes(tmp_path):
    Image.new("RGB", (1, 1), (10, 20, 30)).save(tmp_path / "p.png")
    out = np.asarray(decode_region(Image.open(tmp_path / "p.png"), (0, 0, 1, 1), (4, 4), Image.Resampling.BICUBIC))
    assert out.shape == (4, 4, 3) and out[2, 2].tolist() == [10, 20, 30]


def test_corrupt_data_found_while_decoding_raises_bad_image_error(tmp_path):
    data = write_jpeg(tmp_path / "a.jpg", 200, 160).read_bytes()
    image = open_image(data[: len(data) // 3])  # the header is intact, the scan data is not
    with pytest.raises(BadImageError, match="truncated"):
        decode_region(image, (0, 0, 200, 160), (32, 32), Image.Resampling.BILINEAR, source="a.jpg")
