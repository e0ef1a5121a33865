"""A video through a compositing server: frames pipelined in order, optional temporal smoothing.

Frames are decoded lazily and handed to ``CompositorPool.map``, which keeps ``max_in_flight``
requests outstanding and answers in order, so memory is bounded by that window whatever the video's
length. Each answer's chosen output (``harmonized`` by default) is encoded at the source frame's own
timestamp; the audio is copied (``compositor.media.video.VideoWriter``). Any failed frame stops
the run and leaves no output file: a video with a hole is not a result.

Temporal smoothing (MODNet's one-frame delay, ``compositor.media.temporal_smoothing``) needs frame t+1's matte
before frame t is final: the ``composite`` ensemble returns each frame's matte; when the rule
changes any pixel of frame t's, frame t is asked again through ``composite_with_alpha`` with the
smoothed matte (so blending and harmonization use it), in the same pipelined stream; a frame whose
matte did not change keeps its first answer.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compositor.client.pool import CompositeRequest, CompositorPool
from compositor.errors import CompositorError
from compositor.media.video import VideoInfo, VideoWriter, looped_images, probe, read_frames
from compositor.media.temporal_smoothing import one_frame_delay

log = logging.getLogger(__name__)

VIDEO_OUTPUTS = ("harmonized", "blended", "alpha")
"""What the output video shows: the product (default), the blend before harmonization, or the matte."""


class FrameFailedError(CompositorError, RuntimeError):
    """A frame could not be composited; the run stops and writes no video."""


@dataclass
class VideoSummary:
    """What a video run did."""

    path: Path
    frames: int
    seconds: float
    smoothing: bool = False
    rerequested: int = 0
    smoothed_pixels: int = 0

    def line(self) -> str:
        """``N frames in T s (X frames/s)``, and what temporal smoothing did when it was on."""
        rate = self.frames / self.seconds if self.seconds > 0 else 0.0
        text = f"{self.frames} frames in {self.seconds:.1f} s ({rate:.2f} frames/s)"
        if self.smoothing:
            text += f"; temporal smoothing changed {self.smoothed_pixels} matte pixels and re-requested {self.rerequested} frames"
        return text


@dataclass
class _Frame:
    """A frame between its first answer and its write."""

    index: int
    pts: int | None
    source: np.ndarray
    background: np.ndarray
    result: object = None  # CompositeResult once final
    first: object = None  # the first answer (composite), kept until frame t+1's matte is in


def composite_video(
    pool: CompositorPool,
    source_path: Path,
    background: np.ndarray | Path,
    out_path: Path,
    output: str = "harmonized",
    smoothing_threshold: float | None = None,
    on_frame: Callable[[], None] | None = None,
    info: VideoInfo | None = None,
) -> VideoSummary:
    """Composite every frame of ``source_path`` onto ``background`` and write ``out_path``.

    Args:
        pool: the server connection(s).
        source_path: the footage.
        background: one RGB image for every frame, or a video file whose frame i goes behind
            source frame i (looped when shorter).
        out_path: the video to write (suffix picks the container); written only on success.
        output: which ensemble output becomes the video (``VIDEO_OUTPUTS``).
        smoothing_threshold: apply MODNet's one-frame-delay rule with this T (fraction of full
            scale); None for no smoothing.
        on_frame: called once per frame written (e.g. to advance a progress bar).
        info: ``probe(source_path)`` when the caller has it already (the source is probed once).

    Raises:
        FrameFailedError: a frame failed (its index and the reason); nothing is written.
        compositor.media.video.VideoError: the source cannot be read or the output written.
    """
    if output not in VIDEO_OUTPUTS:
        raise ValueError(f"output must be one of {', '.join(VIDEO_OUTPUTS)}, got {output!r}")
    info = info if info is not None else probe(source_path)
    backgrounds: Iterator[np.ndarray] | None = None
    if isinstance(background, Path):
        backgrounds = looped_images(background)
    started = time.perf_counter()
    redo: deque[CompositeRequest] = deque()  # re-requests from the consumer, sent before the next frame
    frames: dict[int, _Frame] = {}

    def requests() -> Iterator[CompositeRequest]:
        for decoded in read_frames(source_path):
            while redo:
                yield redo.popleft()
            frame_background = next(backgrounds) if backgrounds is not None else background
            frames[decoded.index] = _Frame(decoded.index, decoded.pts, decoded.image, frame_background)
            yield CompositeRequest(("frame", decoded.index), decoded.image, frame_background)
        while redo:
            yield redo.popleft()

    summary = VideoSummary(out_path, 0, 0.0, smoothing=smoothing_threshold is not None)
    mattes: dict[int, np.ndarray] = {}  # first-answer mattes of the frames a decision still needs
    next_to_write = 0
    with VideoWriter(out_path, info, audio_from=source_path if info.has_audio else None) as writer:

        def flush() -> None:
            nonlocal next_to_write
            while next_to_write in frames and frames[next_to_write].result is not None:
                frame = frames.pop(next_to_write)
                writer.write(getattr(frame.result, output), frame.pts)
                summary.frames += 1
                next_to_write += 1
                if on_frame is not None:
                    on_frame()

        def decide(index: int) -> None:
            """Make frame ``index`` final: its first answer, or a re-request with the smoothed matte.

            Called once its successor's first answer is in (or when it is the last frame). The
            neighbours are the network's own mattes, as in MODNet, not smoothed ones.
            """
            frame = frames[index]
            before, after = mattes.pop(index - 1, None), mattes.get(index + 1)
            first, frame.first = frame.first, None
            if before is None or after is None:
                frame.result = first
                return
            smoothed = one_frame_delay(before, mattes[index], after, smoothing_threshold)
            changed = int(np.count_nonzero(smoothed != mattes[index]))
            if not changed:
                frame.result = first
                return
            summary.rerequested += 1
            summary.smoothed_pixels += changed
            redo.append(CompositeRequest(("smoothed", index), frame.source, frame.background, smoothed))

        def handle(outcome) -> None:
            kind, index = outcome.key
            if outcome.error is not None:
                raise FrameFailedError(f"frame {index} of {source_path}: {outcome.error}") from outcome.error
            if kind == "smoothed":
                frames[index].result = outcome.result
            elif smoothing_threshold is None:
                frames[index].result = outcome.result
            else:
                frames[index].first = outcome.result
                mattes[index] = outcome.result.alpha
                if index >= 1:
                    decide(index - 1)
            flush()

        for outcome in pool.map(requests()):
            handle(outcome)
        if smoothing_threshold is not None and frames:
            decide(max(frames))  # the last frame: no successor, it stays as it is
        # Re-requests made after the frames ran out (the last frames' predecessors) go in a short
        # second stream.
        if redo:
            tail = list(redo)
            redo.clear()
            for outcome in pool.map(iter(tail)):
                handle(outcome)
        flush()
        if frames:
            raise FrameFailedError(f"{source_path}: frames {sorted(frames)} got no answer")
        if summary.frames == 0:
            raise FrameFailedError(f"{source_path}: has no video frames")
    if backgrounds is not None:
        backgrounds.close()  # closes the background video's decoder now, not at garbage collection
    summary.seconds = time.perf_counter() - started
    return summary
