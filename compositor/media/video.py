"""Video files in and out with PyAV: RGB frames decoded lazily, H.264 written atomically, audio copied.

PyAV (FFmpeg's libraries, bundled in its wheel) rather than imageio-ffmpeg (a pipe to an ffmpeg
process): decoding and encoding stay in this process, frame by frame; each frame keeps its exact
presentation time in the stream's time base (no rounding through a float frame rate); and the audio
stream's packets can be copied into the output unchanged (remuxed, not re-encoded).

Example:
    >>> info = probe("in.mp4")                                   # doctest: +SKIP
    >>> with VideoWriter("out.mp4", info, audio_from="in.mp4") as writer:  # doctest: +SKIP
    ...     for frame in read_frames("in.mp4"):
    ...         writer.write(frame.image, frame.pts)
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from compositor.atomic_files import atomic_path
from compositor.errors import CompositorError

log = logging.getLogger(__name__)

CONTAINERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".avi": "avi"}
"""Output suffixes and the FFmpeg muxer each one means."""
VIDEO_SUFFIXES = frozenset(CONTAINERS) | {".webm", ".mpg", ".mpeg", ".ts", ".wmv", ".flv"}
"""Suffixes read as video (by FFmpeg); anything else is an image."""
CODECS = ("libx264", "mpeg4")
"""Encoders in order of preference: H.264 where PyAV's FFmpeg has it, else MPEG-4 part 2."""


class VideoError(CompositorError, ValueError):
    """A video cannot be read or written; the message names the file."""


def is_video(path: str | Path) -> bool:
    """Whether ``path`` names a video file, by its suffix."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


@dataclass(frozen=True)
class VideoInfo:
    """What a video's output must keep: size, rate, time base; and whether there is audio to copy.

    Attributes:
        width, height: frame size in pixels.
        frame_rate: the stream's average frame rate (frames per second, exact).
        time_base: the unit of the stream's timestamps (seconds).
        frames: the frame count the container states (0 when it does not).
        has_audio: whether the file has an audio stream.
    """

    width: int
    height: int
    frame_rate: Fraction
    time_base: Fraction
    frames: int
    has_audio: bool


@dataclass(frozen=True)
class DecodedFrame:
    """One decoded frame: uint8 RGB ``[H, W, 3]`` and its presentation time in the stream's
    ``VideoInfo.time_base`` units."""

    index: int
    image: np.ndarray
    pts: int | None


def _open(path: Path):
    import av

    path = Path(path)
    if not path.is_file():
        raise VideoError(f"{path}: no such file")
    try:
        container = av.open(str(path))
    except av.FFmpegError as error:
        raise VideoError(f"{path}: not a readable video ({error})") from None
    if not container.streams.video:
        container.close()
        raise VideoError(f"{path}: has no video stream")
    return container


def probe(path: str | Path) -> VideoInfo:
    """Size, frame rate, time base, frame count and audio presence of a video file."""
    with _open(Path(path)) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.base_rate or stream.guessed_rate
        if not rate:
            raise VideoError(f"{path}: the video stream states no frame rate")
        return VideoInfo(
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            frame_rate=Fraction(rate),
            time_base=Fraction(stream.time_base),
            frames=int(stream.frames or 0),
            has_audio=bool(container.streams.audio),
        )


def read_frames(path: str | Path) -> Iterator[DecodedFrame]:
    """Decode the first video stream lazily, one RGB frame at a time, in presentation order."""
    import av

    path = Path(path)
    container = _open(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            for index, frame in enumerate(container.decode(stream)):
                yield DecodedFrame(index, frame.to_ndarray(format="rgb24"), frame.pts)
        except av.FFmpegError as error:
            raise VideoError(f"{path}: decoding failed ({error})") from None
    finally:
        container.close()


def looped_images(path: str | Path) -> Iterator[np.ndarray]:
    """A video's RGB frames without end: from the start again after the last one.

    A background clip is usually shorter than the footage; looping keeps it moving (holding its
    last frame would freeze it for the rest of the video).
    """
    while True:
        count = 0
        for frame in read_frames(path):
            count += 1
            yield frame.image
        if count == 0:
            raise VideoError(f"{path}: has no frames")


def choose_codec() -> str:
    """The first encoder of ``CODECS`` that PyAV's FFmpeg provides."""
    import av

    for name in CODECS:
        if name in av.codecs_available:
            try:
                av.codec.Codec(name, "w")
            except (av.FFmpegError, ValueError):
                continue
            return name
    raise VideoError(f"none of the encoders {', '.join(CODECS)} is in PyAV's FFmpeg build")


class VideoWriter:
    """Writes RGB frames to a video file, atomically, at the source's timing, with its audio copied.

    Frames go into a temporary file next to ``path``; ``close()`` after a successful block renames it
    onto ``path``, and a failure removes it, so a failed run leaves no half-written video (and any
    earlier ``path`` untouched).

    yuv420p (what players expect) needs even sides: an odd width or height is padded by one
    repeated edge pixel, with a warning.

    Args:
        path: output file; its suffix picks the container (``CONTAINERS``).
        info: the source's ``VideoInfo`` (size, frame rate, time base).
        audio_from: a file whose first audio stream is copied packet by packet, or None.
        codec: encoder name (default ``choose_codec()``).
    """

    def __init__(self, path: str | Path, info: VideoInfo, audio_from: str | Path | None = None, codec: str | None = None) -> None:
        import av

        self.path = Path(path)
        container_format = CONTAINERS.get(self.path.suffix.lower())
        if container_format is None:
            raise VideoError(f"{self.path}: unknown video suffix; use one of {', '.join(sorted(CONTAINERS))}")
        self.info = info
        self.codec = codec or choose_codec()
        self.width, self.height = info.width + info.width % 2, info.height + info.height % 2
        if (self.width, self.height) != (info.width, info.height):
            log.warning("%s: %dx%d (width x height) is padded to %dx%d: yuv420p video needs even sides",
                        self.path, info.width, info.height, self.width, self.height)
        # The file is written under a temporary name next to ``path`` and renamed onto it by close().
        self._target = contextlib.ExitStack()
        self._temporary = self._target.enter_context(atomic_path(self.path))
        self._closed = False
        self.frames_written = 0
        try:
            self._container = av.open(str(self._temporary), "w", format=container_format)
            self._video = self._container.add_stream(self.codec, rate=info.frame_rate)
            self._video.width, self._video.height = self.width, self.height
            self._video.pix_fmt = "yuv420p"
            self._video.time_base = info.time_base
            self._video.codec_context.time_base = info.time_base
            self._audio_input = None
            self._audio_packets: Iterator | None = None
            self._pending_audio = None
            if audio_from is not None:
                self._open_audio(Path(audio_from))
        except BaseException:
            self._discard()
            raise

    def _open_audio(self, path: Path) -> None:
        import av

        source = av.open(str(path))
        if not source.streams.audio:
            source.close()
            return
        self._audio_input = source
        in_audio = source.streams.audio[0]
        self._audio = self._container.add_stream_from_template(in_audio)
        self._audio_time_base = Fraction(in_audio.time_base)
        # Packets with no timestamp are the demuxer's end-of-stream markers: nothing to copy.
        self._audio_packets = (p for p in source.demux(in_audio) if p.dts is not None and p.size > 0)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            self.close()
        else:
            self._discard()

    def write(self, image: np.ndarray, pts: int | None = None) -> None:
        """Encode one uint8 RGB ``[H, W, 3]`` frame (or ``[H, W, 1]`` grey) at ``pts`` (the source's timestamp).

        Without ``pts`` the frame is placed at its index times the frame duration.
        """
        import av

        if image.ndim == 3 and image.shape[-1] == 1:
            image = np.repeat(image, 3, axis=-1)
        if image.shape != (self.info.height, self.info.width, 3):
            raise VideoError(f"{self.path}: frame of shape {list(image.shape)} does not match the video's "
                             f"{self.info.width}x{self.info.height} (width x height)")
        if (self.width, self.height) != (self.info.width, self.info.height):
            image = np.pad(image, ((0, self.height - self.info.height), (0, self.width - self.info.width), (0, 0)), mode="edge")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        if pts is None:
            pts = round(self.frames_written / (self.info.frame_rate * self.info.time_base))
        frame.pts = pts
        frame.time_base = self.info.time_base
        self._copy_audio_until(pts * self.info.time_base)
        for packet in self._video.encode(frame):
            self._container.mux(packet)
        self.frames_written += 1

    def _copy_audio_until(self, seconds: Fraction | None) -> None:
        """Copy the audio packets that start before ``seconds`` (all of them for None), so the
        streams interleave in the file as they play."""
        if self._audio_packets is None:
            return
        while True:
            packet = self._pending_audio or next(self._audio_packets, None)
            self._pending_audio = None
            if packet is None:
                self._audio_packets = None
                return
            if seconds is not None and packet.dts * self._audio_time_base > seconds:
                self._pending_audio = packet
                return
            packet.stream = self._audio
            self._container.mux(packet)

    def close(self) -> Path:
        """Flush the encoder, copy the rest of the audio, and move the file into place; returns ``path``."""
        if self._closed:
            return self.path
        try:
            for packet in self._video.encode():
                self._container.mux(packet)
            self._copy_audio_until(None)
            self._container.close()
            self._close_audio_input()
            self._target.close()  # atomic_path: into place, with a plain open()'s permissions
        except BaseException:
            self._discard()
            raise
        self._closed = True
        return self.path

    def _close_audio_input(self) -> None:
        if self._audio_input is not None:
            self._audio_input.close()
            self._audio_input = None

    def _discard(self) -> None:
        """Drop the partial output (a failed run leaves nothing behind)."""
        if self._closed:
            return
        self._closed = True
        container = getattr(self, "_container", None)
        if container is not None:
            try:
                container.close()
            except Exception:  # noqa: BLE001 - the file is deleted anyway; the first error is what matters
                pass
        self._close_audio_input()
        discarded = VideoError(f"{self.path}: not written")
        self._target.__exit__(VideoError, discarded, None)  # atomic_path removes the temporary file

