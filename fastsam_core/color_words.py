"""A deterministic image/text embedder that understands colour words, and the palette it knows.

Images are described by the share of their pixels near each `PALETTE` colour, texts by the colour
words they contain, so "red" matches red shapes exactly. Tests use it to prove that selection picks
the right mask, and the offline demo labels synthetic shapes by colour, without CLIP weights.
No torch: it runs wherever numpy does.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

#: Named colours as RGB uint8 triples. Saturated, so they never look like a grey background.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 35, 35),
    "green": (35, 170, 60),
    "blue": (40, 70, 225),
    "yellow": (235, 215, 40),
    "orange": (245, 135, 25),
    "purple": (140, 50, 190),
    "cyan": (40, 200, 215),
}


def _unit(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(n > 0, n, 1)).astype(np.float32)


class ColorWordEmbedder:
    """Deterministic stand-in: images by the share of pixels of each `PALETTE` colour, texts by colour words.

    A pixel counts for a colour when it lies within `radius` (RGB distance) of it; other pixels
    (background, fill) count for nothing. A text's vector has a 1 for each colour word it contains.
    """

    name = "color-words"
    logit_scale = 10.0
    dim = len(PALETTE)

    def __init__(self, radius: float = 60.0):
        self.radius = radius
        self._colors = np.array(list(PALETTE.values()), np.float32)

    def embed_images(self, crops: Iterable[np.ndarray]) -> np.ndarray:
        """See `fastsam_core.embedders.Embedder.embed_images`."""
        rows = []
        cc = (self._colors.astype(np.float64) ** 2).sum(1)
        for c in crops:
            px = c.reshape(-1, 3).astype(np.float64)
            # Squared distances as |p|^2 - 2 p.c + |c|^2: one (N, 3) x (3, K) product instead of an (N, K, 3) array.
            d2 = (px * px).sum(1)[:, None] - 2 * (px @ self._colors.T.astype(np.float64)) + cc[None]
            best = d2.argmin(1)
            near = d2[np.arange(len(px)), best] <= self.radius**2
            rows.append(np.bincount(best[near], minlength=len(self._colors)))
        return _unit(np.array(rows, np.float32).reshape(len(rows), len(self._colors)))

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """See `fastsam_core.embedders.Embedder.embed_texts`."""
        names = list(PALETTE)
        out = np.zeros((len(texts), len(names)), np.float32)
        for i, t in enumerate(texts):
            words = t.lower().replace(",", " ").split()
            for j, n in enumerate(names):
                out[i, j] = float(n in words)
        return _unit(out)
