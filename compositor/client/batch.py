"""A folder of portraits through a compositing server: each item succeeds or fails on its own.

Images are read lazily, one request ahead of the pool's window, so memory stays bounded by
``max_in_flight`` whatever the folder's size. An item that cannot be read, has no background of
its name, or is rejected by the server is reported with its name and reason and leaves no output;
the others go on. Each success is written as ``OUT/<stem>/{alpha,blended,harmonized}.png``, the
folder appearing at once when all three files are complete.

Example:
    >>> with CompositorPool("localhost:8001") as pool:                     # doctest: +SKIP
    ...     summary = composite_folder(pool, folder_items(Path("in"), Path("beach.jpg")), Path("out"))
    >>> print(summary.line())                                              # doctest: +SKIP
    12 composited, 1 failed, in 3.2 s (3.75 images/s)
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from compositor import imaging
from compositor.client.pool import CompositeRequest, CompositorPool
from compositor.errors import CompositorError
from compositor.atomic_files import current_umask
from compositor.media.folders import FolderItem

log = logging.getLogger(__name__)

OUTPUT_FILES = ("alpha.png", "blended.png", "harmonized.png")
"""Per item. No comparison strip: it costs more than the composite on CPU and is a figure for a
person looking at one result, not for a batch."""


@dataclass
class FolderSummary:
    """What a folder run did: successes, failures ``(file name, reason)`` in order, and wall time."""

    composited: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    def line(self) -> str:
        """``N composited, M failed, in T s (X images/s)``; the rate counts successes."""
        rate = len(self.composited) / self.seconds if self.seconds > 0 else 0.0
        return f"{len(self.composited)} composited, {len(self.failed)} failed, in {self.seconds:.1f} s ({rate:.2f} images/s)"


def _reason(error: BaseException, path: Path | None) -> str:
    """The error's message without a leading ``<path>: `` (the item's name is printed in front)."""
    text = str(error)
    if path is not None:
        for prefix in (f"{path}: ", f"{path.name}: "):
            if text.startswith(prefix):
                return text[len(prefix):]
    return text


def composite_folder(
    pool: CompositorPool,
    items: list[FolderItem],
    out_dir: Path,
    background: np.ndarray | None = None,
    on_failure: Callable[[str, str], None] | None = None,
    on_done: Callable[[], None] | None = None,
) -> FolderSummary:
    """Composite every item through ``pool`` and write the outputs of each success.

    Args:
        pool: the server connection(s).
        items: from ``compositor.media.folders.folder_items``.
        out_dir: where ``<stem>/`` folders are written (created if missing).
        background: the one background for every item, already read; None to read each item's own.
        on_failure: called with ``(file name, reason)`` as each item fails (e.g. to print it).
        on_done: called once per item, success or failure (e.g. to advance a progress bar).

    Returns:
        The summary; it never raises for an item's own failure.
    """
    summary = FolderSummary()
    started = time.perf_counter()
    by_key = {item.source.name: item for item in items}

    def fail(item: FolderItem, reason: str) -> None:
        summary.failed.append((item.source.name, reason))
        if on_failure is not None:
            on_failure(item.source.name, reason)
        if on_done is not None:
            on_done()

    def requests() -> Iterator[CompositeRequest]:
        for item in items:
            if item.problem is not None:
                fail(item, item.problem)
                continue
            reading = item.source
            try:
                source = imaging.read_image(item.source)
                if background is not None:
                    item_background = background
                else:
                    reading = item.background
                    item_background = imaging.read_image(item.background)
                alpha = None
                if item.alpha is not None:
                    reading = item.alpha
                    alpha = imaging.read_image(item.alpha, mode="L")
                reading = None
                imaging.check_inputs(source[None], item_background[None], None if alpha is None else alpha[None])
            except CompositorError as error:
                # A file of another item's (a background or matte) keeps its own name in the reason.
                shown = _reason(error, item.source) if reading == item.source else str(error)
                fail(item, shown)
                continue
            yield CompositeRequest(item.source.name, source, item_background, alpha)

    out_dir.mkdir(parents=True, exist_ok=True)
    for outcome in pool.map(requests()):
        item = by_key[outcome.key]
        if outcome.error is not None:
            fail(item, _reason(outcome.error, item.source))
            continue
        try:
            write_item(out_dir / item.name, outcome.result)
        except OSError as error:
            fail(item, f"cannot write its outputs ({error})")
            continue
        summary.composited.append(item.source.name)
        if on_done is not None:
            on_done()
    summary.seconds = time.perf_counter() - started
    return summary


def write_item(folder: Path, result) -> Path:
    """Write ``alpha.png``, ``blended.png``, ``harmonized.png`` into ``folder`` all at once.

    The files are written into a temporary folder beside it, which is then renamed onto
    ``folder``; a failure on the way leaves no trace, and an earlier result there is replaced whole.
    """
    parent = folder.parent
    parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".partial", dir=parent))
    previous = None
    try:
        for name in OUTPUT_FILES:
            imaging.write_image(temporary / name, getattr(result, Path(name).stem))
        # mkdtemp makes the folder private (0700); give it the permissions a plain mkdir would.
        os.chmod(temporary, 0o777 & ~current_umask())
        if folder.exists():
            previous = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".old", dir=parent))
            os.replace(folder, previous / folder.name)
        os.replace(temporary, folder)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
        if previous is not None:
            shutil.rmtree(previous, ignore_errors=True)
    return folder
