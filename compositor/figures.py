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


def edge_window(alpha: np.ndarray, window: int) -> tuple[int, int]:
    """(top, left) of the ``window`` x ``window`` square holding the most soft-edge matte pixels.

    That is where blending differs from a linear paste, so it is the place to zoom in on.
    """
    height, width = alpha.shape[:2]
    window = min(window, height, width)
    edge = ((alpha[..., 0] > 0) & (alpha[..., 0] < 255)).astype(np.int64)
    # Summed-area table: the edge count of every window in one pass.
    table = np.pad(edge.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    counts = table[window:, window:] - table[:-window, window:] - table[window:, :-window] + table[:-window, :-window]
    top, left = np.unravel_index(int(np.argmax(counts)), counts.shape)
    return int(top), int(left)


def edge_zoom_strip(alpha: np.ndarray, panels: list[tuple[str, np.ndarray]], window: int = 96, zoom: int = 4) -> np.ndarray:
    """The same edge window of every panel, enlarged ``zoom`` times (nearest neighbour, pixels shown as they are)."""
    top, left = edge_window(alpha, window)
    size = min(window, *alpha.shape[:2])
    zoomed = []
    for label, image in panels:
        crop = image[top : top + size, left : left + size]
        enlarged = np.asarray(Image.fromarray(crop).resize((size * zoom, size * zoom), Image.NEAREST))
        zoomed.append((f"{label}, x{zoom} at the matte's edge", enlarged))
    return comparison_strip(zoomed, panel_height=size * zoom)


def stack_rows(rows: list[np.ndarray], gap: int = 6) -> np.ndarray:
    """Stack uint8 images vertically on white, left-aligned."""
    width = max(row.shape[1] for row in rows)
    padded = [np.pad(row, ((0, gap), (0, width - row.shape[1]), (0, 0)), constant_values=255) for row in rows]
    return np.concatenate(padded, axis=0)[:-gap]


def harmony_check_strip(photo: np.ndarray, harmonized: np.ndarray, gain: int = 4, panel_height: int = 384) -> np.ndarray:
    """The harmonizer on an input that is already harmonious: the source photo over itself, with its own matte.

    A harmonizer must first do no harm: this row shows the photo, what the harmonizer made of it and
    their difference enlarged ``gain`` times (black: left alone), with the PSNR between the two.

    Args:
        photo: the source photo, uint8 ``[H, W, 3]`` (the composite of the person over their own scene).
        harmonized: the harmonizer's output for it, uint8 ``[H, W, 3]``.
    """
    error = photo.astype(np.float32) - harmonized.astype(np.float32)
    mse = float(np.mean(error**2)) / 255.0**2
    psnr_db = 10 * np.log10(1.0 / max(mse, 1e-10))
    difference = np.clip(np.abs(error) * gain, 0, 255).astype(np.uint8)
    return comparison_strip(
        [
            ("already harmonious: the photo itself", photo),
            (f"harmonized ({psnr_db:.1f} dB to it)", harmonized),
            (f"difference x{gain}", difference),
        ],
        panel_height=panel_height,
    )
