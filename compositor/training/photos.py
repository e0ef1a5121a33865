"""Photo collections for training and held-out evaluation, split by photo.

``--synthetic`` uses only photos that ship with packages the project installs, so training needs
no download and no data set we keep aside for evaluation:

* scikit-image's colour photographs (``skimage/data``);
* matplotlib's sample photographs (``mpl-data/sample_data``);
* Debian's ``plasma-workspace-wallpapers`` (``/usr/share/wallpapers``; installed by
  ``scripts/setup-training.sh``, never by the default set-up), the largest file of each wallpaper.

``--data DIR`` uses a user's folder instead (see ``readers``). Photos are grouped (a group is one
scene: a foreground and its complete background may come from two photos of one group) and split
into train and validation *by group*, so no scene is seen in both.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compositor.training.readers import DataError, find_images, load_image, read_photo_groups

log = logging.getLogger(__name__)

WALLPAPER_ROOT = Path("/usr/share/wallpapers")
SKIMAGE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "hubble_deep_field.jpg", "motorcycle_left.png|motorcycle_right.png")
"""scikit-image's colour photographs. A stereo pair is one group (one scene seen twice). Left out:
the gray photos, the microscopy and retina images, and the drawings (logo, colour wheel)."""
MATPLOTLIB_PHOTOS = ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png")
VALIDATION_EVERY = 5
"""One group in five goes to validation (held out), chosen by a hash of its name, not by chance."""


@dataclass(frozen=True)
class PhotoGroup:
    """Photos of one scene (same tone): ``name`` identifies it in the split and in logs."""

    name: str
    paths: tuple[Path, ...]


def synthetic_groups() -> list[PhotoGroup]:
    """The package-shipped photo groups. Raises ``DataError`` naming what is missing."""
    import matplotlib
    import skimage

    skimage_dir = Path(skimage.__file__).parent / "data"
    matplotlib_dir = Path(matplotlib.get_data_path()) / "sample_data"
    groups = []
    for entry in SKIMAGE_PHOTOS:
        names = entry.split("|")
        groups.append(PhotoGroup(f"skimage/{names[0]}", tuple(skimage_dir / n for n in names)))
    groups += [PhotoGroup(f"matplotlib/{name}", (matplotlib_dir / name,)) for name in MATPLOTLIB_PHOTOS]
    missing = [str(p) for g in groups for p in g.paths if not p.is_file()]
    if missing:
        raise DataError(f"package photos missing: {', '.join(missing)}")
    wallpapers = wallpaper_groups()
    if not wallpapers:
        raise DataError(
            f"no wallpapers under {WALLPAPER_ROOT}: --synthetic needs Debian's plasma-workspace-wallpapers "
            "(run scripts/setup-training.sh)"
        )
    return groups + wallpapers


def wallpaper_groups(root: Path | None = None) -> list[PhotoGroup]:
    """One group per wallpaper: the largest of its image files (the others are the same picture)."""
    groups = []
    for folder in sorted((root or WALLPAPER_ROOT).glob("*/contents/images")):
        images = find_images(folder)
        if images:
            largest = max(images, key=lambda p: p.stat().st_size)
            groups.append(PhotoGroup(f"wallpaper/{folder.parent.parent.name}", (largest,)))
    return groups


def folder_groups(root: Path) -> list[PhotoGroup]:
    """Photo groups of a user's folder (``readers.read_photo_groups``), named by their first photo."""
    return [PhotoGroup(str(paths[0].relative_to(root)), tuple(paths)) for paths in read_photo_groups(root)]


def split_groups(groups: list[PhotoGroup]) -> tuple[list[PhotoGroup], list[PhotoGroup]]:
    """(train, validation): groups ordered by a hash of their name, every ``VALIDATION_EVERY``-th held out.

    A hash of the names, not a seeded shuffle: the split depends on which groups there are, never on
    the order they were listed in, the machine or a seed. (Adding groups can move others across.)
    """
    if len(groups) < 2:
        raise DataError(f"need at least 2 photo groups to split into train and validation, got {len(groups)}")
    ordered = sorted(groups, key=lambda g: hashlib.sha1(g.name.encode()).hexdigest())
    validation = ordered[::VALIDATION_EVERY]
    train = [g for g in ordered if g not in validation]
    return sorted(train, key=lambda g: g.name), sorted(validation, key=lambda g: g.name)


def load_groups(groups: list[PhotoGroup], short_side: int) -> list[list[np.ndarray]]:
    """Pixels of every group, each photo downscaled so its short side is ``short_side`` (never upscaled)."""
    loaded = [[load_image(path, short_side=short_side, mode="RGB") for path in group.paths] for group in groups]
    log.info("loaded %d photo groups (%d photos) at short side %d", len(groups), sum(map(len, loaded)), short_side)
    return loaded

