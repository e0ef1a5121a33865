"""Folders of images: list the sources and match each with its background (and matte) by file stem.

Nothing is read here: an item is a set of paths, or the reason it cannot be made (no background of
that name, two files of the same name). Reading an image is the caller's job, per item, so a corrupt
file fails its own item only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class FolderItem:
    """One source image and what goes with it.

    Attributes:
        name: the source's file stem; also the name of its output folder.
        source: the source image file.
        background: its background file (the single one, or the one of the same stem), or None
            when ``problem`` says why there is none.
        alpha: its matte file when a matte folder was given, else None.
        problem: why this item cannot be composited (it is reported and skipped), or None.
    """

    name: str
    source: Path
    background: Path | None
    alpha: Path | None = None
    problem: str | None = None


def list_files(folder: Path) -> list[Path]:
    """The regular, non-hidden files of ``folder`` (not recursive), sorted by name.

    Every such file counts, whatever its suffix: a file that is not an image fails as its own item
    with that reason, rather than being skipped without a word.
    """
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def _by_stem(files: list[Path]) -> dict[str, list[Path]]:
    stems: dict[str, list[Path]] = {}
    for path in files:
        stems.setdefault(path.stem, []).append(path)
    return stems


def _match(index: dict[str, list[Path]], name: str, what: str, folder: Path) -> tuple[Path | None, str | None]:
    """The one file of ``index`` named ``name``, or None and why not (none, or several)."""
    found = index.get(name, [])
    if len(found) == 1:
        return found[0], None
    if not found:
        return None, f"no {what} named {name}.* in {folder}"
    return None, f"{len(found)} {what}s named {name}.* in {folder} ({', '.join(p.name for p in found)}); keep one"


def folder_items(source_dir: Path, background: Path, alpha_dir: Path | None = None) -> list[FolderItem]:
    """One item per file of ``source_dir``, in name order.

    Args:
        source_dir: folder of source images.
        background: one background file for every source, or a folder whose files are matched to
            the sources by stem (``portrait.jpg`` with ``portrait.png``).
        alpha_dir: optional folder of mattes, matched by stem; a source without one is a failed
            item (it is not silently given MODNet's matte instead).
    """
    backgrounds = _by_stem(list_files(background)) if background.is_dir() else None
    mattes = _by_stem(list_files(alpha_dir)) if alpha_dir is not None else None
    sources = list_files(source_dir)
    source_stems = _by_stem(sources)
    items = []
    for path in sources:
        name = path.stem
        problem = None
        chosen_background: Path | None = background
        chosen_alpha: Path | None = None
        if len(source_stems[name]) > 1:
            others = ", ".join(p.name for p in source_stems[name] if p != path)
            problem = f"another source has the same name ({others}); outputs go to a folder named after the stem, so rename one"
        if backgrounds is not None:
            chosen_background, missing = _match(backgrounds, name, "background", background)
            problem = problem or missing
        if mattes is not None:
            chosen_alpha, missing = _match(mattes, name, "matte", alpha_dir)
            problem = problem or missing
        items.append(FolderItem(name, path, chosen_background, chosen_alpha, problem))
    return items
