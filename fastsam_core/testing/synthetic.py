"""Synthetic scenes of coloured shapes with exact instance masks.

They serve three purposes: training data for the small offline model (`tools.train_tiny`),
ground truth for tests, and sample images for the offline demo. Everything is drawn with OpenCV
from a seeded `numpy.random.Generator`, so a seed always gives the same pixels.

Colours are the colour-word embedder's (`fastsam_core.color_words.PALETTE`), so that text prompts
such as "red" have a checkable answer.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from fastsam_core.color_words import PALETTE

SHAPE_KINDS = ("circle", "rectangle", "triangle", "ellipse", "star")
TEXTURES = ("solid", "stripes", "noise")


@dataclass(frozen=True)
class Shape:
    """One object in a scene.

    Attributes:
        kind: one of `SHAPE_KINDS`.
        color: a key of `PALETTE`.
        mask: (H, W) bool, the visible pixels (later shapes occlude earlier ones).
    """

    kind: str
    color: str
    mask: np.ndarray


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A low-saturation gradient with noise, (h, w, 3) uint8."""
    base = rng.uniform(70, 170)
    tint = rng.uniform(-12, 12, size=3)
    gy, gx = np.mgrid[0:h, 0:w].astype(np.float32)
    slope = rng.uniform(-0.25, 0.25, size=2)
    grad = (gy * slope[0] + gx * slope[1])[..., None] * (160.0 / max(h, w))
    noise = rng.normal(0, 6, size=(h, w, 1))
    img = base + tint + grad + noise
    return np.clip(img, 0, 255).astype(np.uint8)


def _shape_mask(rng: np.random.Generator, kind: str, h: int, w: int) -> np.ndarray:
    """A filled shape of a random size and place, (h, w) uint8 in {0, 1}."""
    m = np.zeros((h, w), np.uint8)
    s = min(h, w)
    r = rng.uniform(0.08, 0.22) * s
    cx, cy = rng.uniform(r, w - r), rng.uniform(r, h - r)
    if kind == "circle":
        cv2.circle(m, (round(cx), round(cy)), max(2, round(r)), 1, -1)
    elif kind == "ellipse":
        axes = (max(2, round(r)), max(2, round(r * rng.uniform(0.4, 0.8))))
        cv2.ellipse(m, (round(cx), round(cy)), axes, rng.uniform(0, 180), 0, 360, 1, -1)
    elif kind == "rectangle":
        a = rng.uniform(0, np.pi)
        hw, hh = r, r * rng.uniform(0.45, 1.0)
        corners = np.array([[-hw, -hh], [hw, -hh], [hw, hh], [-hw, hh]])
        rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        pts = corners @ rot.T + [cx, cy]
        cv2.fillPoly(m, [np.round(pts).astype(np.int32)], 1)
    elif kind == "triangle":
        a0 = rng.uniform(0, 2 * np.pi)
        ang = a0 + np.array([0, 2 * np.pi / 3, 4 * np.pi / 3]) + rng.uniform(-0.3, 0.3, 3)
        pts = np.stack([cx + r * np.cos(ang), cy + r * np.sin(ang)], 1)
        cv2.fillPoly(m, [np.round(pts).astype(np.int32)], 1)
    elif kind == "star":
        a0 = rng.uniform(0, 2 * np.pi)
        ang = a0 + np.arange(10) * np.pi / 5
        rad = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
        pts = np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], 1)
        cv2.fillPoly(m, [np.round(pts).astype(np.int32)], 1)
    else:
        raise ValueError(f"kind must be one of {SHAPE_KINDS}, but got {kind!r}")
    return m


def _paint(rng: np.random.Generator, img: np.ndarray, mask: np.ndarray, rgb: tuple[int, int, int]) -> None:
    """Paint `rgb` with a random texture into `img` (in place) where `mask` is set."""
    h, w = mask.shape
    color = np.clip(np.array(rgb, np.float32) + rng.uniform(-15, 15, 3), 0, 255)
    texture = TEXTURES[rng.integers(len(TEXTURES))]
    if texture == "solid":
        layer = np.broadcast_to(color, (h, w, 3))
    elif texture == "stripes":
        period = rng.integers(4, 10)
        gy, gx = np.mgrid[0:h, 0:w]
        on = ((gx + gy * rng.integers(0, 2)) // period) % 2 == 0
        layer = np.where(on[..., None], color, color * 0.72)
    else:
        layer = color + rng.normal(0, 14, size=(h, w, 1))
    sel = mask.astype(bool)
    img[sel] = np.clip(layer[sel], 0, 255).astype(np.uint8)


def make_scene(
    rng: np.random.Generator,
    height: int = 160,
    width: int = 160,
    n_shapes: tuple[int, int] = (1, 6),
    colors: tuple[str, ...] | None = None,
) -> tuple[np.ndarray, list[Shape]]:
    """Draw one scene.

    Args:
        rng: the random generator; a seed gives the same scene every time.
        height: image height in pixels.
        width: image width in pixels.
        n_shapes: inclusive range of the number of shapes drawn.
        colors: names from `PALETTE` to pick from; all of them when None.

    Returns:
        The (height, width, 3) RGB uint8 image and its shapes, in drawing order, with visible masks.
        Shapes that end up with fewer than 30 visible pixels are dropped from the list (and from the image).
    """
    names = tuple(colors or PALETTE)
    img = _background(rng, height, width)
    drawn: list[tuple[str, str, np.ndarray]] = []
    occupied = np.zeros((height, width), bool)
    for _ in range(int(rng.integers(n_shapes[0], n_shapes[1] + 1))):
        for _attempt in range(10):
            kind = SHAPE_KINDS[rng.integers(len(SHAPE_KINDS))]
            m = _shape_mask(rng, kind, height, width).astype(bool)
            # Limit overlap so that every object keeps most of itself visible.
            if m.sum() >= 30 and (m & occupied).sum() <= 0.25 * m.sum():
                break
        else:
            continue
        color = names[rng.integers(len(names))]
        _paint(rng, img, m, PALETTE[color])
        drawn = [(k, c, v & ~m) for k, c, v in drawn]
        drawn.append((kind, color, m))
        occupied |= m
    shapes = [Shape(k, c, v) for k, c, v in drawn if v.sum() >= 30]
    return img, shapes


def mask_to_polygon(mask: np.ndarray) -> np.ndarray | None:
    """The outline of the largest connected part of a (H, W) bool mask, as (K, 2) float (x, y) pixels, or None."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return None
    c = max(contours, key=cv2.contourArea)
    return c[:, 0, :].astype(np.float32) if len(c) >= 3 else None
