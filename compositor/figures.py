"""Pictures people look at instead of numbers: the side-by-side comparison strip."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from compositor.imaging import to_uint8

LABEL_HEIGHT = 22


def linear_paste(source: np.ndarray, alpha: np.ndarray, background_full: np.ndarray) -> np.ndarray:
    """The naive composite ``alpha * source + (1 - alpha) * background`` as uint8 ``[H, W, 3]``."""
    weight = alpha.astype(np.float32) / 255.0
    return to_uint8((weight * source + (1.0 - weight) * background_full) / 255.0)


def comparison_strip(panels: list[tuple[str, np.ndarray]], panel_height: int = 384) -> np.ndarray:
    """Label and place uint8 ``[H, W, 3]`` images side by side at a common height.

    Args:
        panels: (label, image) pairs, left to right.
        panel_height: the common height; smaller if any image is smaller (images are never enlarged).
    """
    height = min(panel_height, *(image.shape[0] for _, image in panels))
    tiles = []
    for label, image in panels:
        width = max(1, round(image.shape[1] * height / image.shape[0]))
        tile = Image.new("RGB", (width, height + LABEL_HEIGHT), "white")
        tile.paste(Image.fromarray(image).resize((width, height), Image.BILINEAR), (0, LABEL_HEIGHT))
        ImageDraw.Draw(tile).text((4, 4), label, fill="black")
        tiles.append(np.asarray(tile))
    gap = np.full((height + LABEL_HEIGHT, 4, 3), 255, np.uint8)
    strip = [tiles[0]]
    for tile in tiles[1:]:
        strip += [gap, tile]
    return np.concatenate(strip, axis=1)
