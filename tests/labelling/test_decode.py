import io

import numpy as np
import pytest
from PIL import Image

from schemas.errors import ImageError
from tests.support import ROOT
from tests.support.corpus import corpus, png_claiming
from workers.labelling.decode import decode_image

CORPUS = corpus()


# bad/big.jpg is over the byte limit: the reader refuses it before decoding (tests/labelling/test_labeler.py).
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


_MAKE_PNG = """
import sys, numpy as np
from PIL import Image
w = h = 10000
a = np.empty((h, w, 4), np.uint8)
a[..., 0] = (np.arange(w) % 251).astype(np.uint8)[None, :]
a[..., 1] = (np.arange(h) % 241).astype(np.uint8)[:, None]
a[..., 2] = 90
a[..., 3] = (np.arange(w) % 256).astype(np.uint8)[None, :]
Image.fromarray(a, "RGBA").save(sys.argv[1], compress_level=1)
"""

_DECODE = """
import gc, json, sys
import numpy as np
from tests.support.memory import peak_rss_bytes
from workers.labelling.decode import decode_image
data = open(sys.argv[1], "rb").read()
gc.collect()
base = peak_rss_bytes(reset=True)
rgb = decode_image(data, "big.png", 100_000_000).rgb
peak = peak_rss_bytes()
x = np.arange(10000)
a = x % 256
expect_r = ((x % 251) * a + 255 * (255 - a) + 127) // 255
expect_b = (90 * a + 255 * (255 - a) + 127) // 255
rows_ok = all(
    (rgb[y, :, 0] == expect_r).all() and (rgb[y, :, 2] == expect_b).all()
    and (rgb[y, :, 1] == ((y % 241) * a + 255 * (255 - a) + 127) // 255).all()
    for y in (0, 4095, 4096, 9999)
)
print(json.dumps({"bytes": peak - base, "shape": list(rgb.shape), "rows_ok": bool(rows_ok)}))
"""


def test_a_100_megapixel_rgba_png_decodes_in_bounded_memory(tmp_path):
    """About 7.7 bytes per pixel (Pillow's RGBA + our RGB + strips); the uint16 composite took 30."""
    import json
    import os
    import subprocess
    import sys

    png = tmp_path / "big.png"
    subprocess.run([sys.executable, "-c", _MAKE_PNG, str(png)], check=True)
    root = str(ROOT)
    env = {**os.environ, "PYTHONPATH": root}
    done = subprocess.run(
        [sys.executable, "-c", _DECODE, str(png)], check=True, capture_output=True, text=True, env=env
    )
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["shape"] == [10000, 10000, 3] and got["rows_ok"]
    assert 3 * 1e8 <= got["bytes"] <= 8.5 * 1e8  # the RGB array at least; at most 8.5 bytes per pixel


def test_pillows_own_bomb_guard_does_not_override_max_pixels():
    data = png_claiming(20000, 10000)  # 200 MP: over Pillow's 2 x 89 MP refusal, under our limit below
    with pytest.raises(ImageError) as e:
        decode_image(data, "h", 250_000_000)
    assert e.value.kind == "decode_error"  # the header passed; the (absent) pixel data failed
    with pytest.raises(ImageError, match=r"20000x10000 = 200000000 pixels, over the limit of 199999999"):
        decode_image(data, "h", 199_999_999)


def test_decoding_reserves_pixels_from_a_hold():
    from workers.labelling.readahead import PixelBudget

    budget = PixelBudget(10**6)
    hold = budget.hold(0)
    img = decode_image(CORPUS["good/plain scene.jpg"][0], "x", 10**6, hold)
    assert hold.pixels == img.rgb.shape[0] * img.rgb.shape[1] == budget.used
    hold.release()
    hold.release()
    assert budget.used == 0


def test_a_draft_decodes_a_big_jpeg_at_a_fraction_of_its_size():
    big = np.zeros((1600, 2000, 3), np.uint8)
    big[:, :1000] = (200, 30, 40)
    buf = io.BytesIO()
    Image.fromarray(big).save(buf, "JPEG", quality=90)
    full = decode_image(buf.getvalue(), "big.jpg", 10**7).rgb
    small = decode_image(buf.getvalue(), "big.jpg", 10**7, draft=320).rgb
    assert full.shape == (1600, 2000, 3) and small.shape == (400, 500, 3)  # 1/4: the smallest not under 320 px
    assert np.abs(small[200, 100].astype(int) - (200, 30, 40)).max() < 12
    png = _png(big[:100, :100])
    assert decode_image(png, "p.png", 10**7, draft=32).rgb.shape == (100, 100, 3)  # only JPEG has drafts
