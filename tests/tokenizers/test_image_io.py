"""Bad and unusual image inputs: every one becomes RGB uint8 or a MediaError naming the file."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from omniseq.tokenizers.base import MediaError
from omniseq.tokenizers.image_io import ImageIOConfig, load_image


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _bomb_png(side: int) -> bytes:
    """A valid PNG header declaring side x side pixels of grayscale; the data is tiny (one zlib stream)."""
    chunk = lambda kind, data: (  # noqa: E731
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    "mode, make",
    [
        ("L", lambda: Image.new("L", (20, 10), 128)),
        ("P", lambda: Image.new("RGB", (20, 10), (10, 200, 30)).convert("P")),
        ("RGBA", lambda: Image.new("RGBA", (20, 10), (255, 0, 0, 0))),
        ("LA", lambda: Image.new("LA", (20, 10), (50, 255))),
        ("I;16", lambda: Image.fromarray(np.full((10, 20), 65535, np.uint16))),
    ],
)
def test_modes_become_rgb_uint8(tmp_path, mode, make):
    path = tmp_path / f"{mode.replace(';', '')}.png"
    make().save(path)
    rgb = load_image(path, ImageIOConfig(size=8))
    assert rgb.shape == (8, 8, 3) and rgb.dtype == np.uint8


def test_transparent_pixels_take_the_background(tmp_path):
    path = tmp_path / "clear.png"
    Image.new("RGBA", (8, 8), (255, 0, 0, 0)).save(path)
    assert (load_image(path, ImageIOConfig(size=0, background=[0, 0, 255])) == [0, 0, 255]).all()


def test_sixteen_bit_png_keeps_its_range(tmp_path):
    # a ramp over the whole 16-bit range: scaled to 8 bits it keeps its levels; clipped it would be all 255
    path = tmp_path / "deep.png"
    ramp = np.array([[0, 256, 32768, 65535]], np.uint16).repeat(4, axis=0)
    Image.fromarray(ramp).save(path)
    with Image.open(path) as im:
        assert im.mode.startswith("I")
    rgb = load_image(path, ImageIOConfig(size=0))
    assert rgb.shape == (4, 4, 3)
    assert (rgb == rgb[..., :1]).all()  # gray
    assert np.abs(rgb[0, :, 0].astype(int) - [0, 1, 128, 255]).max() <= 1


def test_cmyk_jpeg(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (16, 12), (0, 255, 255, 0)).save(path, format="JPEG")
    rgb = load_image(path, ImageIOConfig(size=0))
    assert rgb.shape == (12, 16, 3)
    assert rgb[..., 0].mean() > 200 and rgb[..., 1].mean() < 60  # cyan-free, magenta+yellow: red


def test_resize_crop_and_stretch():
    a = np.zeros((40, 80, 3), np.uint8)
    a[:, 20:60] = 255  # the center square is white: a center crop keeps (almost) only it
    assert load_image(a, ImageIOConfig(size=16, resize="crop"))[:, 1:-1].min() > 250
    stretched = load_image(a, ImageIOConfig(size=16, resize="stretch"))
    assert stretched.shape == (16, 16, 3) and stretched[:, 0].max() < 10
    assert load_image(a, ImageIOConfig(size=16, resize="none")).shape == (40, 80, 3)


@pytest.mark.parametrize(
    "content, match",
    [
        (b"", "not a readable image"),
        (b"this is not an image at all", "not a readable image"),
        ("truncated", "truncated"),
    ],
)
def test_corrupt_files_name_the_file(tmp_path, content, match):
    path = tmp_path / "bad.png"
    if content == "truncated":
        noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
        content = _png_bytes(Image.fromarray(noise))[:500]
    path.write_bytes(content)
    with pytest.raises(MediaError, match=match) as e:
        load_image(path)
    assert str(path) in str(e.value)


def test_truncated_lazy_pil_image_names_its_file(tmp_path):
    path = tmp_path / "cut.png"
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    path.write_bytes(_png_bytes(Image.fromarray(noise))[:500])
    with pytest.raises(MediaError, match="cut.png"):
        load_image(Image.open(path))


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    # 2000 x 2000 = 4M pixels in ~100 bytes: over our max_pixels, but far below Pillow's own bomb limit
    # (~89M), so only our guard can refuse it (decoding the tiny data would fail as "truncated" instead)
    path = tmp_path / "bomb.png"
    path.write_bytes(_bomb_png(2000))
    with Image.open(path) as im:
        assert im.size == (2000, 2000) and 2000 * 2000 < Image.MAX_IMAGE_PIXELS
    with pytest.raises(MediaError, match=r"2000x2000 pixels exceeds max_pixels=1000000") as e:
        load_image(path, ImageIOConfig(max_pixels=1_000_000))
    assert "bomb.png" in str(e.value)


def test_zero_size_images_and_arrays():
    with pytest.raises(MediaError, match="zero-size"):
        load_image(Image.new("RGB", (0, 5)))
    with pytest.raises(MediaError, match="zero-size"):
        load_image(np.zeros((0, 4, 3), np.uint8))


def test_missing_file_and_bad_array_dtype(tmp_path):
    with pytest.raises(MediaError, match="not found"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(MediaError, match="dtype"):
        load_image(np.zeros((4, 4, 3), np.float32))


def test_exif_orientation_is_applied(tmp_path):
    # a phone photo stored landscape with "rotate 90" in its EXIF is shown (and must be coded) portrait
    img = Image.new("RGB", (40, 20), (255, 255, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 clockwise to display
    img.save(tmp_path / "photo.jpg", exif=exif)
    assert load_image(tmp_path / "photo.jpg", ImageIOConfig(size=0)).shape == (40, 20, 3)


def test_float_images_in_0_1_are_scaled_by_255_not_black(tmp_path):
    ramp = np.linspace(0, 1, 16 * 16, dtype=np.float32).reshape(16, 16)
    Image.fromarray(ramp).save(tmp_path / "ramp.tif")  # mode F, as scientific and ML tools write it
    for source in (Image.fromarray(ramp), tmp_path / "ramp.tif"):
        gray = load_image(source, ImageIOConfig(size=0))[..., 0]
        assert gray.min() == 0 and gray.max() == 255 and gray[8, 0] == round(ramp[8, 0] * 255)
    # a float image holding 0-255 is still taken as 0-255
    assert load_image(Image.fromarray(ramp * 200), ImageIOConfig(size=0))[..., 0].max() == 200
    ramp[3, 3] = np.nan
    with pytest.raises(MediaError, match="NaN or infinite"):
        load_image(Image.fromarray(ramp), ImageIOConfig(size=0))


def test_rgba_array_gives_the_pixels_of_the_same_rgba_file(tmp_path):
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (12, 10, 4), dtype=np.uint8)
    rgba[0, :, 3], rgba[1, :, 3] = 0, 255  # fully transparent and opaque rows beside the partial ones
    Image.fromarray(rgba).save(tmp_path / "pic.png")
    for background in ([255, 255, 255], [0, 40, 200]):
        cfg = ImageIOConfig(size=0, background=background)
        from_file = load_image(tmp_path / "pic.png", cfg)
        assert np.array_equal(load_image(rgba, cfg), from_file)
        assert (from_file[0] == background).all()  # composited, not the RGB the transparent pixels hold
