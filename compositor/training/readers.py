"""Readers for the dataset layouts users bring to train the compositing networks.

The blending and harmonization U-Nets (after Xing et al., ACM MM 2022) are trained from three
kinds of data. Each reader below walks one layout and returns *paths* only, so that a data
loader can decide when (and in which worker) to decode pixels; :func:`load_image` is the one
small helper that does decode. Every structural problem raises :class:`DataError`, whose
message names the folder or file at fault, because "KeyError: 'a0001'" twenty minutes into a
training run is no help to anybody.

Photo groups (PPR10K-style, Liang et al. CVPR 2021): a group holds photos of one scene or
shoot, which share a tone::

    photos/
    ├── wedding_2019/        one group: every image in this subfolder
    │   ├── IMG_0001.jpg
    │   └── IMG_0002.jpg
    ├── beach/               another group
    │   └── DSC_4410.png
    └── loose.jpg            images directly in the root: a group of one each

PPR10K's own flat naming, "<group>_<index>.<ext>", is grouped by the prefix when *every*
image in a folder follows it (the root or any subfolder, e.g. PPR10K's ``train/source``)::

    source/
    ├── 0_0.tif   ┐ group 0
    ├── 0_1.tif   ┘
    ├── 1_0.tif   ┐ group 1
    └── 1_1.tif   ┘

Matting set (image + alpha matte with matching file stems; extensions may differ)::

    matting/
    ├── image/
    │   ├── a.jpg
    │   └── b.jpg
    └── alpha/
        ├── a.png
        └── b.png

iHarmony4 (Cong et al., DoveNet, CVPR 2020): any of the four subsets, each with its own
train/test list files naming composites::

    iHarmony4/
    ├── HAdobe5k/
    │   ├── composite_images/   a0001_1_1.jpg   <real>_<maskid>_<k>.jpg
    │   ├── masks/              a0001_1.png     <real>_<maskid>.png
    │   ├── real_images/        a0001.jpg       <real>.jpg
    │   ├── HAdobe5k_train.txt  one composite file name per line
    │   └── HAdobe5k_test.txt
    ├── HCOCO/
    ├── HFlickr/
    └── Hday2night/

The root may also be a single subset folder (``iHarmony4/HCOCO``). The root-level
``IHD_train.txt``/``IHD_test.txt`` of the release are not read: they list the same composites
with a ``<Subset>/composite_images/`` prefix. A list line carrying such a prefix is accepted
too (only its file name is used). The name-to-path mapping follows the DoveNet and iDIH data
loaders: the last two ``_``-separated fields of the composite stem are the mask id and the
composite index, so real-image names that contain ``_`` still resolve.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from compositor.errors import CompositorError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")

IHARMONY4_SUBSETS = ("HAdobe5k", "HCOCO", "HFlickr", "Hday2night")
IHARMONY4_SPLITS = ("train", "test")
_HARMONY_FOLDERS = ("composite_images", "masks", "real_images")

# How many offending names an error message lists: enough to spot the pattern (a renamed
# folder, a wrong extension) without burying the message under thousands of lines.
_MAX_REPORTED = 5

_PPR10K_STEM = re.compile(r"^(\d+)_(\d+)$")

# Pillow's 16-bit greyscale modes; converting them straight to "L" clips everything above 255
# to white instead of rescaling, which would turn a 16-bit alpha matte into a hard mask.
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


class DataError(CompositorError, ValueError):
    """A dataset folder or file is missing, empty, or not in the expected layout."""


@dataclass(frozen=True)
class HarmonyTriplet:
    """One iHarmony4 sample.

    Attributes:
        composite: The composite image (foreground colour-transferred, the network input).
        mask: The foreground mask of the composite.
        real: The real, harmonious image (the training target).
    """

    composite: Path
    mask: Path
    real: Path


# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------


def _require_dir(folder: Path, what: str = "folder") -> Path:
    folder = Path(folder)
    if not folder.is_dir():
        problem = "does not exist" if not folder.exists() else "is not a directory"
        raise DataError(f"{what} {folder} {problem}")
    return folder


def _is_hidden(path: Path) -> bool:
    # Covers macOS "._IMG_0001.jpg" resource forks, which carry an image suffix but no image.
    return path.name.startswith(".")


def _is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not _is_hidden(path) and path.is_file()


def _sample(names: Iterable[str]) -> str:
    names = sorted(names)
    shown = ", ".join(names[:_MAX_REPORTED])
    more = len(names) - _MAX_REPORTED
    return f"{shown} (and {more} more)" if more > 0 else shown


def find_images(folder: Path) -> list[Path]:
    """List the image files directly inside a folder (not recursive).

    Args:
        folder: The folder to list.

    Returns:
        Files whose suffix (case-insensitively) is in :data:`IMAGE_SUFFIXES`, sorted by name.
        Hidden files (names starting with ".") are skipped. May be empty.

    Raises:
        DataError: If ``folder`` does not exist or is not a directory.
    """
    folder = _require_dir(folder)
    return sorted((p for p in folder.iterdir() if _is_image_file(p)), key=lambda p: p.name)


def _index_by_stem(folder: Path, images: list[Path]) -> dict[str, Path]:
    by_stem: dict[str, Path] = {}
    clashes: list[str] = []
    for image in images:
        if image.stem in by_stem:
            clashes.append(f"{by_stem[image.stem].name}/{image.name}")
        by_stem[image.stem] = image
    if clashes:
        # Two files for one stem (a.jpg and a.png) leave the pairing ambiguous; guessing would
        # silently train on the wrong matte.
        raise DataError(f"{folder} holds several images with the same stem: {_sample(clashes)}")
    return by_stem


# --------------------------------------------------------------------------------------------
# Photo groups
# --------------------------------------------------------------------------------------------


def _ppr10k_groups(images: list[Path]) -> list[list[Path]] | None:
    """Group PPR10K-named images by prefix, or return None if any image is named otherwise."""
    keyed = []
    for image in images:
        match = _PPR10K_STEM.match(image.stem)
        if match is None:
            return None
        keyed.append(((int(match[1]), int(match[2]), image.name), image))
    groups: dict[int, list[Path]] = {}
    # Numeric order, so that group 10 follows group 9 rather than group 1.
    for (group, _, _), image in sorted(keyed, key=lambda item: item[0]):
        groups.setdefault(group, []).append(image)
    return [groups[key] for key in sorted(groups)]


def read_photo_groups(root: Path) -> list[list[Path]]:
    """Read photos grouped by scene or shoot (PPR10K-style).

    Each subfolder of ``root`` that holds images is one group; images directly in ``root`` are
    each a group of one. A folder (the root or a subfolder) in which every image is named
    ``<group>_<index>.<ext>`` (PPR10K's flat naming) is instead split into one group per
    ``<group>`` prefix. Subfolders are not searched recursively; hidden ones are skipped.

    Args:
        root: The dataset folder.

    Returns:
        Non-empty groups of image paths. Order is deterministic: the root's own images first,
        then subfolders by name; PPR10K groups by numeric prefix, their images by numeric index;
        otherwise images by name.

    Raises:
        DataError: If ``root`` is not a directory or no images are found in it or its subfolders.
    """
    root = _require_dir(root, "photo folder")
    groups: list[list[Path]] = []

    loose = find_images(root)
    if loose:
        ppr10k = _ppr10k_groups(loose)
        groups.extend(ppr10k if ppr10k is not None else [[image] for image in loose])

    subfolders = sorted(
        (p for p in root.iterdir() if p.is_dir() and not _is_hidden(p)), key=lambda p: p.name
    )
    for folder in subfolders:
        images = find_images(folder)
        if not images:
            logger.debug("skipping %s: no images directly inside", folder)
            continue
        ppr10k = _ppr10k_groups(images)
        groups.extend(ppr10k if ppr10k is not None else [images])

    if not groups:
        raise DataError(
            f"photo folder {root} holds no images (looked for {', '.join(IMAGE_SUFFIXES)} "
            "directly inside it and in its subfolders)"
        )
    total = sum(map(len, groups))
    logger.info("read %d photo groups (%d images) from %s", len(groups), total, root)
    return groups


# --------------------------------------------------------------------------------------------
# Matting set
# --------------------------------------------------------------------------------------------


def _images_of_nonempty_dir(folder: Path, what: str) -> list[Path]:
    _require_dir(folder, what)
    images = find_images(folder)
    if not images:
        raise DataError(f"{what} {folder} holds no images")
    return images


def read_matting_set(root: Path) -> list[tuple[Path, Path]]:
    """Read image/alpha pairs from ``root/image`` and ``root/alpha``.

    Files are paired by stem, so extensions may differ (``image/a.jpg`` with ``alpha/a.png``).

    Args:
        root: The folder holding ``image/`` and ``alpha/``.

    Returns:
        ``(image, alpha)`` pairs sorted by stem.

    Raises:
        DataError: If either folder is missing or empty, if a folder holds two files with one
            stem, or if any stem lacks its partner (up to five unmatched stems are named for
            each side).
    """
    root = _require_dir(root, "matting folder")
    image_dir, alpha_dir = root / "image", root / "alpha"
    images = _index_by_stem(image_dir, _images_of_nonempty_dir(image_dir, "image folder"))
    alphas = _index_by_stem(alpha_dir, _images_of_nonempty_dir(alpha_dir, "alpha folder"))

    problems = []
    no_alpha, no_image = images.keys() - alphas.keys(), alphas.keys() - images.keys()
    if no_alpha:
        problems.append(
            f"{len(no_alpha)} image(s) without an alpha in {alpha_dir}: {_sample(no_alpha)}"
        )
    if no_image:
        problems.append(
            f"{len(no_image)} alpha(s) without an image in {image_dir}: {_sample(no_image)}"
        )
    if problems:
        raise DataError(f"unmatched stems in matting folder {root}: " + "; ".join(problems))

    return [(images[stem], alphas[stem]) for stem in sorted(images)]


# --------------------------------------------------------------------------------------------
# iHarmony4
# --------------------------------------------------------------------------------------------


def _is_harmony_subset(folder: Path) -> bool:
    return all((folder / name).is_dir() for name in _HARMONY_FOLDERS)


def _is_single_subset_root(root: Path) -> bool:
    return _is_harmony_subset(root) and any(root.glob("*_train.txt"))


def _list_file(subset: Path, split: str) -> Path:
    expected = subset / f"{subset.name}_{split}.txt"
    if expected.is_file():
        return expected
    # A single subset copied under another name ("ihd_coco/") keeps its "HCOCO_train.txt";
    # accept the one list file for the split when there is exactly one.
    candidates = sorted(subset.glob(f"*_{split}.txt"))
    if len(candidates) == 1:
        return candidates[0]
    found = f" (found {_sample(p.name for p in candidates)})" if candidates else ""
    raise DataError(f"missing list file {expected} for the {split!r} split{found}")


def _read_list(list_file: Path) -> list[str]:
    try:
        lines = list_file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read list file {list_file}: {error}") from error
    # Lines from IHD_train.txt carry "<Subset>/composite_images/"; keep only the file name.
    names = [line.strip().replace("\\", "/").rsplit("/", 1)[-1] for line in lines]
    names = [name for name in names if name]
    if not names:
        raise DataError(f"list file {list_file} names no composite images")
    return names


def _file_names(folder: Path) -> set[str]:
    # One directory listing instead of a stat per file: HCOCO has ~38k training composites, and
    # on network file systems per-file existence checks dominate the start-up time.
    with os.scandir(folder) as entries:
        return {entry.name for entry in entries}


def _read_harmony_subset(subset: Path, split: str) -> list[HarmonyTriplet]:
    if not _is_harmony_subset(subset):
        missing = [name for name in _HARMONY_FOLDERS if not (subset / name).is_dir()]
        raise DataError(f"iHarmony4 subset {subset} lacks folder(s): {', '.join(missing)}")
    list_file = _list_file(subset, split)
    folders = {name: subset / name for name in _HARMONY_FOLDERS}
    present = {name: _file_names(folder) for name, folder in folders.items()}

    triplets, problems = [], []
    for name in _read_list(list_file):
        fields = Path(name).stem.rsplit("_", 2)
        if len(fields) != 3 or not all(fields):
            problems.append(f"{name}: not named <real>_<maskid>_<k>")
            continue
        real_stem, mask_id, _ = fields
        wanted = {
            "composite_images": name,
            "masks": f"{real_stem}_{mask_id}.png",
            "real_images": f"{real_stem}.jpg",
        }
        missing = [folders[key] / file for key, file in wanted.items() if file not in present[key]]
        if missing:
            problems.append(f"{name}: missing {', '.join(map(str, missing))}")
            continue
        triplets.append(
            HarmonyTriplet(
                composite=folders["composite_images"] / wanted["composite_images"],
                mask=folders["masks"] / wanted["masks"],
                real=folders["real_images"] / wanted["real_images"],
            )
        )

    if problems:
        # Check every line before failing, so one run reports the extent of the damage.
        shown = "\n  ".join(problems[:_MAX_REPORTED])
        more = len(problems) - _MAX_REPORTED
        raise DataError(
            f"{len(problems)} composite(s) listed in {list_file} cannot be resolved:\n  {shown}"
            + (f"\n  ... and {more} more" if more > 0 else "")
        )
    return triplets


def _harmony_subsets(root: Path) -> list[Path]:
    if _is_harmony_subset(root):
        return [root]
    subsets = [root / name for name in sorted(IHARMONY4_SUBSETS) if (root / name).is_dir()]
    if not subsets:
        raise DataError(
            f"{root} is not an iHarmony4 folder: it holds none of the subsets "
            f"{', '.join(IHARMONY4_SUBSETS)} and no composite_images/, masks/, real_images/"
        )
    return subsets


def read_iharmony4(root: Path, split: str = "train") -> list[HarmonyTriplet]:
    """Read iHarmony4 composite/mask/real triplets for one split.

    Args:
        root: The iHarmony4 folder holding subset folders (HAdobe5k, HCOCO, HFlickr,
            Hday2night; any may be absent), or a single subset folder.
        split: ``"train"`` or ``"test"``.

    Returns:
        Triplets in list-file order within each subset, subsets in sorted name order.

    Raises:
        ValueError: If ``split`` is not ``"train"`` or ``"test"``.
        DataError: If ``root`` holds no subset, a subset lacks a folder or its list file, a
            list file is empty, or a listed composite, its mask or its real image is missing
            (up to five such composites are named, with the missing paths).
    """
    if split not in IHARMONY4_SPLITS:
        raise ValueError(f"split must be one of {IHARMONY4_SPLITS}, got {split!r}")
    root = _require_dir(root, "iHarmony4 folder")
    triplets = [t for subset in _harmony_subsets(root) for t in _read_harmony_subset(subset, split)]
    logger.info("read %d iHarmony4 %s triplets from %s", len(triplets), split, root)
    return triplets


# --------------------------------------------------------------------------------------------
# Layout detection and pixel loading
# --------------------------------------------------------------------------------------------


def detect_layout(root: Path) -> str:
    """Tell which reader fits a dataset folder.

    Args:
        root: The dataset folder.

    Returns:
        ``"iharmony4"`` if ``root`` holds an iHarmony4 subset folder with ``composite_images/``
        or is itself a subset (``composite_images/``, ``masks/``, ``real_images/`` and a
        ``*_train.txt``); ``"matting"`` if it holds both ``image/`` and ``alpha/``; otherwise
        ``"photos"``. Only the structure is checked; the matching reader validates contents.

    Raises:
        DataError: If ``root`` is not a directory.
    """
    root = _require_dir(root, "dataset folder")
    if any((root / name / "composite_images").is_dir() for name in IHARMONY4_SUBSETS):
        return "iharmony4"
    if _is_single_subset_root(root):
        return "iharmony4"
    if (root / "image").is_dir() and (root / "alpha").is_dir():
        return "matting"
    return "photos"


def _to_eight_bit(image: Image.Image) -> Image.Image:
    if image.mode not in _SIXTEEN_BIT_MODES:
        return image
    values = np.clip(np.asarray(image, dtype=np.int64), 0, 65535)
    return Image.fromarray((values >> 8).astype(np.uint8), mode="L")


def _downscaled_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    scale = short_side / min(width, height)
    # Set the short side exactly (rounding could land one pixel off) and round the long side.
    if width <= height:
        return short_side, max(1, round(height * scale))
    return max(1, round(width * scale)), short_side


def load_image(path: Path, short_side: int | None = None, mode: str = "RGB") -> np.ndarray:
    """Decode an image file into a uint8 array, optionally downscaled.

    Args:
        path: The image file.
        short_side: If given and smaller than the image's shorter side, resize (Pillow LANCZOS,
            aspect ratio kept) so that ``min(H, W) == short_side``. Images are never upscaled.
        mode: ``"RGB"`` for an ``H x W x 3`` array or ``"L"`` for an ``H x W`` greyscale array
            (alpha mattes, masks). Alpha channels are dropped; 16-bit greyscale is rescaled to
            8 bits rather than clipped. EXIF orientation is not applied.

    Returns:
        A writable ``uint8`` array.

    Raises:
        ValueError: If ``mode`` is not ``"RGB"`` or ``"L"`` or ``short_side`` is not positive.
        DataError: If the file is missing or cannot be decoded.
    """
    if mode not in ("RGB", "L"):
        raise ValueError(f"mode must be 'RGB' or 'L', got {mode!r}")
    if short_side is not None and short_side < 1:
        raise ValueError(f"short_side must be positive, got {short_side}")
    path = Path(path)
    try:
        with Image.open(path) as opened:
            image = _to_eight_bit(opened).convert(mode)
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        # UnidentifiedImageError and truncated files are OSErrors; some corrupt files raise
        # ValueError from the decoder instead.
        raise DataError(f"cannot read image {path}: {error}") from error
    if short_side is not None and min(image.size) > short_side:
        size = _downscaled_size(*image.size, short_side)
        image = image.resize(size, Image.Resampling.LANCZOS)
    return np.array(image, dtype=np.uint8)
