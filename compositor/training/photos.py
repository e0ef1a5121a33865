"""Photo collections for training and held-out evaluation, split by photo into train, validation and test.

``--synthetic`` uses only photos that ship with packages, so training needs no download and no
data set we keep aside for evaluation:

* scikit-image's colour photographs (``skimage/data``) and matplotlib's sample photographs
  (``mpl-data/sample_data``), both installed by the default set-up;
* scikit-learn's two sample photographs (``sklearn/datasets/images``) and the raster images of
  Debian's ``plasma-workspace-wallpapers``, ``ukui-wallpapers``, ``lomiri-wallpapers`` (with the
  packages it depends on for its files), ``gnome-backgrounds`` and ``sway-backgrounds``: installed
  by ``scripts/setup-training.sh`` only, never by the default set-up. Debian's own file lists
  (``/var/lib/dpkg/info/<package>.list``) say which files belong to which package, so nothing
  else lying in the same folders is picked up.

A group is one scene (the variants of one wallpaper: sizes, dark and light versions); the split
is by group, so no scene is seen in two splits. Photos of people (``PEOPLE``) are foregrounds with
a real matte: the collections hold only two, the astronaut trains and Grace Hopper validates; the
people the reported numbers are measured on come from a collection held out entirely (``evaluation``).

``--data DIR`` uses a user's folder instead (see ``readers``).
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compositor.training.readers import DataError, load_image, read_photo_groups

log = logging.getLogger(__name__)

DPKG_INFO = Path("/var/lib/dpkg/info")
DEBIAN_PACKAGES = {
    "plasma-workspace-wallpapers": ("plasma-workspace-wallpapers",),
    "ukui-wallpapers": ("ukui-wallpapers",),
    # A metapackage: its photos are installed by the packages it depends on.
    "lomiri-wallpapers": ("lomiri-wallpapers", "lomiri-wallpapers-20.04", "lomiri-wallpapers-16.04"),
    "gnome-backgrounds": ("gnome-backgrounds",),
    "sway-backgrounds": ("sway-backgrounds",),
}
"""The Debian collections training may use, and the binary packages that hold each one's files."""
RASTER_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
SKIMAGE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "hubble_deep_field.jpg", "motorcycle_left.png|motorcycle_right.png")
"""scikit-image's colour photographs. A stereo pair is one group (one scene seen twice). Left out:
the gray photos, the microscopy and retina images, and the drawings (logo, colour wheel)."""
MATPLOTLIB_PHOTOS = ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png")
SKLEARN_PHOTOS = ("china.jpg", "flower.jpg")
PEOPLE = ("skimage/astronaut.png", "matplotlib/grace_hopper.jpg")
"""The groups that are photos of a person: foregrounds cut out with the published MODNet's matte."""
VALIDATION_PEOPLE = ("matplotlib/grace_hopper.jpg",)
"""People held out for checkpoint selection: the collections hold two, so one trains and one validates.
(The test split has no people: the reported numbers are measured on people from a held-out collection.)"""
HELD_OUT_EVERY = 5
"""One group in five goes to validation and one in five to test, chosen by a hash of its name."""


@dataclass(frozen=True)
class PhotoGroup:
    """Photos of one scene: ``name`` identifies it in the split and in logs; ``person``: a portrait."""

    name: str
    paths: tuple[Path, ...]
    person: bool = False


@dataclass(frozen=True)
class Splits:
    """Groups of each split: ``train`` to learn, ``validation`` to choose checkpoints, ``test`` to report."""

    train: list[PhotoGroup]
    validation: list[PhotoGroup]
    test: list[PhotoGroup]


def package_photo_groups() -> list[PhotoGroup]:
    """The photos of the Python packages: scikit-image, matplotlib, scikit-learn."""
    import matplotlib
    import skimage

    try:
        import sklearn.datasets
    except ImportError as error:
        raise DataError("--synthetic needs scikit-learn's sample photos (run scripts/setup-training.sh)") from error
    folders = {
        "skimage": Path(skimage.__file__).parent / "data",
        "matplotlib": Path(matplotlib.get_data_path()) / "sample_data",
        "sklearn": Path(sklearn.datasets.__file__).parent / "images",
    }
    groups = []
    for collection, entries in (("skimage", SKIMAGE_PHOTOS), ("matplotlib", MATPLOTLIB_PHOTOS), ("sklearn", SKLEARN_PHOTOS)):
        for entry in entries:
            names = entry.split("|")
            name = f"{collection}/{names[0]}"
            groups.append(PhotoGroup(name, tuple(folders[collection] / n for n in names), person=name in PEOPLE))
    missing = [str(p) for g in groups for p in g.paths if not p.is_file()]
    if missing:
        raise DataError(f"package photos missing: {', '.join(missing)}")
    return groups


def package_files(package: str, info: Path | None = None) -> list[Path]:
    """The raster images Debian's file list says ``package`` installed (none if not installed)."""
    info = info or DPKG_INFO
    lists = [info / f"{package}.list", *sorted(info.glob(f"{package}:*.list"))]
    files = []
    for listing in lists:
        if listing.is_file():
            files += [Path(line) for line in listing.read_text().splitlines() if line.lower().endswith(RASTER_SUFFIXES)]
    return sorted(p for p in set(files) if p.is_file() and "screenshot" not in p.name)


def scene_key(path: Path) -> str:
    """The scene a wallpaper file shows: its KDE package folder, or its name without size, dark/light
    and orientation variants (``Sway_Wallpaper_Blue_1366x768`` and ``adwaita-d`` are one scene each)."""
    if "contents" in path.parts:
        return path.parts[path.parts.index("contents") - 1]
    stem = re.sub(r"(_\d+x\d+)?(_Portrait)?$", "", path.stem)
    return re.sub(r"-[dl]$", "", stem)


def debian_groups(info: Path | None = None) -> list[PhotoGroup]:
    """One group per scene of the Debian collections; of a scene's files the largest per variant
    folder (sizes of one picture are the same photo)."""
    groups = []
    for collection, packages in DEBIAN_PACKAGES.items():
        scenes: dict[str, dict[tuple[Path, str], Path]] = {}
        for package in packages:
            for path in package_files(package, info):
                variant = (path.parent, "dark" if re.search(r"-d$", path.stem) else "")
                variants = scenes.setdefault(scene_key(path), {})
                if variant not in variants or path.stat().st_size > variants[variant].stat().st_size:
                    variants[variant] = path
        groups += [PhotoGroup(f"{collection}/{scene}", tuple(sorted(variants.values()))) for scene, variants in sorted(scenes.items())]
    return groups


def synthetic_groups(info: Path | None = None) -> list[PhotoGroup]:
    """Every photo group training may use. Raises ``DataError`` naming what is missing."""
    debian = debian_groups(info)
    found = {g.name.split("/")[0] for g in debian}
    missing = [name for name in DEBIAN_PACKAGES if name not in found]
    if missing:
        raise DataError(f"--synthetic needs Debian's {', '.join(missing)} (run scripts/setup-training.sh)")
    return package_photo_groups() + debian


def folder_groups(root: Path) -> list[PhotoGroup]:
    """Photo groups of a user's folder (``readers.read_photo_groups``), named by their first photo."""
    return [PhotoGroup(str(paths[0].relative_to(root)), tuple(paths)) for paths in read_photo_groups(root)]


def split_groups(groups: list[PhotoGroup]) -> Splits:
    """Train, validation and test: groups ordered by a hash of their name, every ``HELD_OUT_EVERY``-th
    to validation, the one two places later to test; photos of people train, but ``VALIDATION_PEOPLE``
    validate (checkpoints are chosen on a person never trained on).

    A hash of the names, not a seeded shuffle: the split depends on which groups there are, never on
    the order they were listed in, the machine or a seed. (Adding groups can move others across.)
    """
    if len(groups) < 3:
        raise DataError(f"need at least 3 photo groups to split into train, validation and test, got {len(groups)}")
    ordered = sorted((g for g in groups if not g.person), key=lambda g: hashlib.sha1(g.name.encode()).hexdigest())
    validation = ordered[::HELD_OUT_EVERY] + [g for g in groups if g.name in VALIDATION_PEOPLE]
    test = ordered[2::HELD_OUT_EVERY]
    train = [g for g in groups if g not in validation and g not in test]

    def by_name(split):
        return sorted(split, key=lambda g: g.name)

    return Splits(by_name(train), by_name(validation), by_name(test))


def load_groups(groups: list[PhotoGroup], short_side: int) -> list[list[np.ndarray]]:
    """Pixels of every group, each photo downscaled so its short side is ``short_side`` (never upscaled)."""
    loaded = [[load_image(path, short_side=short_side, mode="RGB") for path in group.paths] for group in groups]
    log.info("loaded %d photo groups (%d photos) at short side %d", len(groups), sum(map(len, loaded)), short_side)
    return loaded
