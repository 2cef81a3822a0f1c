"""Image bytes to an RGB uint8 array, or a classified failure.

Formats: JPEG (and MPO), PNG, WebP, BMP, TIFF, GIF; the first frame or page of multi-frame files.
EXIF orientation is applied, so pixel coordinates match what viewers show. Grayscale, 1-bit,
palette, CMYK, YCbCr and 16-bit images become RGB uint8 (16-bit keeps the high byte); images with
transparency are composited over white, as viewers show them, in uint8 a strip of rows at a time.
The pixel limit is checked on the header, before any pixel is decoded, so decompression bombs cost
nothing; Pillow's own bomb guard is replaced by that check, so `limits.max_pixels` alone decides.

Memory: the decoded image in Pillow plus the RGB array (about 7 bytes per pixel for RGBA, 6 for
RGB), and a `PixelHold` lets the caller bound how many pixels are decoded at once.

Failures raise `ImageError` with a `kind`:
    unsupported   not an image, or a format we do not read
    decode_error  a supported format that fails to decode (empty, truncated, corrupt)
    too_large     over the byte or pixel limit
(read_error, for objects that cannot be fetched, is raised by the reader, not here.)
"""

from __future__ import annotations

import io
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps

from schemas.errors import ImageError

if TYPE_CHECKING:
    from workers.labelling.readahead import PixelHold

#: Pixels per strip when compositing transparency (bounds the temporaries to ~30 MB).
_STRIP_PIXELS = 1 << 22

#: PIL format names we label.
SUPPORTED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "BMP", "DIB", "TIFF", "GIF"})


def _pil_open():
    """PIL's own `Image.open`.

    Importing ultralytics replaces `PIL.Image.open` with a wrapper that, on the first file PIL cannot
    identify, tries to pip-install pi-heif; a text file named .jpg must be an `unsupported` row, not
    an install attempt.
    """
    patched = sys.modules.get("ultralytics.utils.patches")
    return getattr(patched, "_image_open", Image.open) if patched is not None else Image.open


@dataclass(frozen=True)
class DecodedImage:
    """A decoded image.

    Attributes:
        rgb: (H, W, 3) uint8, C-contiguous, after EXIF orientation.
        frames: frames or pages in the file (only the first is decoded).
        format: PIL's format name ("JPEG", "PNG", ...).
    """

    rgb: np.ndarray
    frames: int
    format: str


def _to_rgb(im: Image.Image) -> np.ndarray:
    mode = im.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        a = np.asarray(im)
        if mode == "F":
            scale = 255.0 if float(np.nanmax(a, initial=0)) <= 1.0 else 1.0
            g = np.nan_to_num(a * scale).clip(0, 255).astype(np.uint8)
        else:  # 16-bit samples (I;16*, or I holding 16-bit data): keep the high byte
            g = (a.astype(np.int64).clip(0, 65535) >> 8).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(g[..., None], 3, axis=2))
    has_alpha = mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in im.info
    if has_alpha:
        return _over_white(im if mode == "RGBA" else im.convert("RGBA"))
    return np.ascontiguousarray(np.asarray(im if mode == "RGB" else im.convert("RGB")))


def _over_white(rgba: Image.Image) -> np.ndarray:
    """An RGBA image composited over white, (H, W, 3) uint8.

    Pillow's masked paste blends in uint8 with exact rounding, (c * a + 255 * (255 - a)) / 255,
    and a strip of rows at a time keeps the temporaries small.
    """
    w, h = rgba.size
    out = np.empty((h, w, 3), np.uint8)
    rows = max(1, _STRIP_PIXELS // max(w, 1))
    for y in range(0, h, rows):
        strip = rgba.crop((0, y, w, min(y + rows, h)))
        canvas = Image.new("RGB", strip.size, (255, 255, 255))
        canvas.paste(strip, mask=strip.getchannel("A"))
        out[y : y + strip.height] = np.asarray(canvas)
    return out


def decode_image(
    data: bytes, name: str, max_pixels: int, hold: PixelHold | None = None, draft: int | None = None
) -> DecodedImage:
    """Decode one image.

    Args:
        data: the object's bytes.
        name: the object's URI or key, used in error messages.
        max_pixels: refuse images with more than this many pixels (width x height).
        hold: reserves width x height pixels after the header is read and before decoding (it may
            wait); the caller releases it.
        draft: for previews: a JPEG may be decoded at 1/2, 1/4 or 1/8 scale, no smaller than this
            many pixels on its longer side (much less memory and time); other formats decode whole.

    Raises:
        ImageError: with kind unsupported, decode_error or too_large and a message naming `name`.
    """
    if not data:
        raise ImageError("decode_error", f"{name} is empty (0 bytes); re-upload the file")
    # Pillow refuses images over twice its own limit while opening them, before `max_pixels` can be
    # checked; the header check below replaces its guard.
    Image.MAX_IMAGE_PIXELS = None
    try:
        im = _pil_open()(io.BytesIO(data))
    except Image.UnidentifiedImageError:
        head = data[:16]
        raise ImageError(
            "unsupported",
            f"{name} is not an image in a supported format (starts with {head!r}); "
            "supported: JPEG, PNG, WebP, BMP, TIFF, GIF",
        ) from None
    except Exception as e:  # PIL raises many types for broken headers (even ImportError for plugins)
        raise ImageError("decode_error", f"{name}: cannot read the image header: {type(e).__name__}: {e}") from None
    with im:
        fmt = im.format or "?"
        if fmt not in SUPPORTED_FORMATS:
            raise ImageError(
                "unsupported",
                f"{name} is a {fmt} image, which is not supported; convert it to JPEG, PNG, WebP, BMP, TIFF or GIF",
            )
        w, h = im.size
        if w * h > max_pixels:
            raise ImageError(
                "too_large",
                f"{name} is {w}x{h} = {w * h} pixels, over the limit of {max_pixels} (limits.max_pixels); "
                "raise the limit if the image is genuine",
            )
        if w == 0 or h == 0:
            raise ImageError("decode_error", f"{name} has no pixels ({w}x{h})")
        frames = int(getattr(im, "n_frames", 1) or 1)
        if hold is not None:
            hold.take(w * h)
        try:
            if draft is not None and fmt in ("JPEG", "MPO"):
                im.draft("RGB", (draft, draft))
            im.load()
            ImageOps.exif_transpose(im, in_place=True)
            rgb = _to_rgb(im)
        except Exception as e:  # truncated data, corrupt chunks, bad EXIF, ...
            raise ImageError("decode_error", f"{name}: {fmt} data does not decode: {type(e).__name__}: {e}") from None
    return DecodedImage(rgb=rgb, frames=frames, format=fmt)
