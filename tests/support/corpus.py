"""A corpus of good and bad image objects, each with the status the pipeline must give it."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

from fastsam_core.testing.synthetic import make_scene

#: Byte limit the corpus is meant to be labelled with (`big.jpg` is over it).
MAX_BYTES = 1_000_000


def _scene(seed: int, h: int = 160, w: int = 192) -> np.ndarray:
    img, _ = make_scene(np.random.default_rng(seed), h, w, n_shapes=(3, 5))
    return img


def _save(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height (8-bit RGB) with almost no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def exif_rotated_jpeg(rgb: np.ndarray) -> bytes:
    """JPEG stored as `rgb` with EXIF orientation 6 (viewers rotate it 90 degrees clockwise)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return _save(Image.fromarray(rgb), "JPEG", quality=95, exif=exif.tobytes())


def corpus() -> dict[str, tuple[bytes, str]]:
    """key -> (bytes, expected status). Keys include spaces, unicode and nested prefixes."""
    rgb = _scene(1)
    jpeg = _save(Image.fromarray(rgb), "JPEG", quality=95)
    sixteen = (rgb[..., 0].astype(np.uint16) * 257).astype(np.uint16)
    pal = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=32)
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    rgba[:20, :20, 3] = 0
    frames = [Image.fromarray(_scene(s)) for s in (2, 3, 4)]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    tiff = io.BytesIO()
    frames[0].save(tiff, "TIFF", save_all=True, append_images=frames[1:2])
    corrupt_png = bytearray(_save(Image.fromarray(rgb), "PNG"))
    corrupt_png[60:400] = bytes(340)  # zeroed IDAT data: the header reads, the pixels do not
    ppm = _save(Image.fromarray(rgb), "PPM")
    rng = np.random.default_rng(0)
    return {
        "good/plain scene.jpg": (jpeg, "ok"),
        "good/ünïcode/場面 1.png": (_save(Image.fromarray(_scene(5)), "PNG"), "ok"),
        "good/deep/a/b/c/scene.webp": (_save(Image.fromarray(_scene(6)), "WEBP", quality=95), "ok"),
        "good/scene.bmp": (_save(Image.fromarray(_scene(7)), "BMP"), "ok"),
        "modes/cmyk.jpg": (_save(Image.fromarray(rgb).convert("CMYK"), "JPEG", quality=95), "ok"),
        "modes/sixteen-bit.png": (_save(Image.fromarray(sixteen), "PNG"), "ok"),
        "modes/gray.png": (_save(Image.fromarray(rgb).convert("L"), "PNG"), "ok"),
        "modes/rgba.png": (_save(Image.fromarray(rgba), "PNG"), "ok"),
        "modes/palette.png": (_save(pal, "PNG"), "ok"),
        "modes/exif rotated.jpg": (exif_rotated_jpeg(_scene(8, 128, 224)), "ok"),
        "modes/animated.gif": (gif.getvalue(), "ok"),
        "modes/multipage.tiff": (tiff.getvalue(), "ok"),
        "bad/empty.jpg": (b"", "decode_error"),
        "bad/truncated.jpg": (jpeg[: len(jpeg) // 3], "decode_error"),
        "bad/corrupt.png": (bytes(corrupt_png), "decode_error"),
        "bad/text named.jpg": (b"this is a text file, not a photo\n" * 4, "unsupported"),
        "bad/portable pixmap.png": (ppm, "unsupported"),
        "bad/bomb 30000x30000.png": (png_claiming(30000, 30000), "too_large"),
        "bad/big.jpg": (jpeg[:2] + rng.integers(0, 256, MAX_BYTES + 10, np.uint8).tobytes(), "too_large"),
    }
