import io

import numpy as np
import pytest
from PIL import Image

from tests.corpus import corpus, png_claiming
from workers.decode import ImageError, decode_image

CORPUS = corpus()


# bad/big.jpg is over the byte limit: the reader refuses it before decoding (tests/test_labeler.py).
@pytest.mark.parametrize("key", sorted(k for k in CORPUS if k != "bad/big.jpg"))
def test_corpus_kinds(key):
    data, expected = CORPUS[key]
    if expected == "ok":
        img = decode_image(data, key, 100_000_000)
        assert img.rgb.dtype == np.uint8 and img.rgb.ndim == 3 and img.rgb.shape[2] == 3
        assert img.rgb.flags.c_contiguous
    else:
        with pytest.raises(ImageError) as e:
            decode_image(data, key, 100_000_000)
        assert e.value.kind == expected
        assert key in str(e.value)


def _png(arr, mode=None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, "PNG") if mode else Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def test_sixteen_bit_keeps_the_high_byte():
    a = (np.arange(40 * 50, dtype=np.uint32).reshape(40, 50) * 30 % 65536).astype(np.uint16)
    got = decode_image(_png(a), "x", 10**6).rgb
    np.testing.assert_array_equal(got[..., 0], (a >> 8).astype(np.uint8))
    np.testing.assert_array_equal(got[..., 0], got[..., 2])


def test_grayscale_and_palette_are_exact():
    rng = np.random.default_rng(0)
    g = rng.integers(0, 256, (30, 40), np.uint8)
    np.testing.assert_array_equal(decode_image(_png(g), "g", 10**6).rgb, np.repeat(g[..., None], 3, 2))
    rgb = rng.integers(0, 256, (30, 40, 3), np.uint8)
    pal = Image.fromarray(rgb).quantize(16)
    buf = io.BytesIO()
    pal.save(buf, "PNG")
    np.testing.assert_array_equal(decode_image(buf.getvalue(), "p", 10**6).rgb, np.asarray(pal.convert("RGB")))


def test_transparency_is_composited_over_white():
    a = np.zeros((4, 4, 4), np.uint8)
    a[..., 0] = 200  # red channel everywhere
    a[0, 0, 3], a[0, 1, 3], a[0, 2, 3] = 0, 255, 128
    got = decode_image(_png(a), "a", 100).rgb
    assert tuple(got[0, 0]) == (255, 255, 255)  # fully transparent: white
    assert tuple(got[0, 1]) == (200, 0, 0)  # opaque: unchanged
    assert tuple(got[0, 2]) == (round((200 * 128 + 255 * 127) / 255), 127, 127)


def test_exif_orientation_is_applied():
    data, _ = CORPUS["modes/exif rotated.jpg"]
    stored = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    got = decode_image(data, "r", 10**6).rgb
    assert stored.shape[:2] == (128, 224) and got.shape[:2] == (224, 128)
    np.testing.assert_array_equal(got, np.rot90(stored, k=-1))  # orientation 6: 90 degrees clockwise


def test_first_frame_of_multi_frame_files():
    for key, n in (("modes/animated.gif", 3), ("modes/multipage.tiff", 2)):
        img = decode_image(CORPUS[key][0], key, 10**6)
        assert img.frames == n
        first = Image.open(io.BytesIO(CORPUS[key][0]))
        np.testing.assert_array_equal(img.rgb, np.asarray(first.convert("RGB")))


def test_cmyk_becomes_rgb():
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[:, :8] = (220, 30, 40)
    buf = io.BytesIO()
    Image.fromarray(rgb).convert("CMYK").save(buf, "JPEG", quality=100)
    got = decode_image(buf.getvalue(), "c", 10**6).rgb.astype(int)
    assert np.abs(got[4, 2] - (220, 30, 40)).max() < 12 and np.abs(got[4, 12]).max() < 12


@pytest.mark.parametrize("limit, ok", [(2500, True), (2499, False)])
def test_pixel_limit_is_checked_on_the_header(limit, ok):
    data = png_claiming(50, 50)  # header only: decoding it would fail, so ok means "passed the limit"
    with pytest.raises(ImageError) as e:
        decode_image(data, "h", limit)
    assert e.value.kind == ("decode_error" if ok else "too_large")
    if not ok:
        assert "50x50" in str(e.value) and "limits.max_pixels" in str(e.value)
