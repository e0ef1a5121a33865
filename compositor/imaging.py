"""Pre- and post-processing shared by every runtime: plain numpy (and Pillow for resizing).

The eager pipeline and the Triton ``preprocess``/``postprocess`` Python models import these
functions unchanged, so the runtimes differ only in how they run the networks.

Conventions: frames are uint8 NHWC (``[B, H, W, 3]``, alpha ``[B, H, W, 1]``) as clients send them;
network tensors are float32 NCHW in [0, 1] at the network resolution.

The output canvas is the source frame. The networks run at the deployment's aspect bucket nearest
the source's proportions (``compositor.contract.spec.Resolution``; one fixed size for an ``HxW``
resolution); full resolution comes from *residual upsampling*: the full-resolution linear composite plus the
upsampled difference the network made at network resolution, so edges keep the source's detail.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from compositor.errors import CompositorError
from compositor.atomic_files import atomic_path
from compositor.contract.spec import MAX_IMAGE_SIDE, Resolution, parse_resolution


class ImageError(CompositorError, ValueError):
    """An input image is unusable; the message names the input and the problem."""


class ImageNotFoundError(ImageError, FileNotFoundError):
    """An input image file does not exist (or is a folder)."""


# --- Validation ---------------------------------------------------------------------------------


def check_frames(frames: np.ndarray, name: str, channels: int = 3) -> np.ndarray:
    """Check a uint8 ``[B, H, W, channels]`` batch; returns it unchanged.

    Raises:
        ImageError: wrong dtype, rank, channel count, an empty dimension, or a side over the limit.
    """
    if not isinstance(frames, np.ndarray):
        raise ImageError(f"{name}: expected a numpy array, got {type(frames).__name__}")
    if frames.dtype != np.uint8:
        raise ImageError(f"{name}: expected uint8 pixels, got {frames.dtype}")
    if frames.ndim != 4:
        raise ImageError(f"{name}: expected shape [B, H, W, {channels}], got {list(frames.shape)}")
    if frames.shape[-1] != channels:
        kind = {1: "grayscale", 2: "grayscale+alpha", 3: "RGB", 4: "RGBA"}.get(frames.shape[-1], "unknown")
        raise ImageError(f"{name}: expected {channels} channel(s), got {frames.shape[-1]} ({kind})")
    if 0 in frames.shape:
        raise ImageError(f"{name}: image is empty (shape {list(frames.shape)})")
    height, width = frames.shape[1:3]
    if max(height, width) > MAX_IMAGE_SIDE:
        raise ImageError(f"{name}: {width}x{height} (width x height) exceeds the {MAX_IMAGE_SIDE}-pixel side limit")
    return frames


def check_inputs(source: np.ndarray, background: np.ndarray, alpha: np.ndarray | None = None) -> None:
    """Validate one request: RGB source and background batches, optional matching alpha."""
    check_frames(source, "source")
    check_frames(background, "background")
    if background.shape[0] != source.shape[0]:
        raise ImageError(f"background: batch {background.shape[0]} differs from source batch {source.shape[0]}")
    if alpha is not None:
        check_frames(alpha, "alpha", channels=1)
        if alpha.shape[:3] != source.shape[:3]:
            raise ImageError(
                f"alpha: size {alpha.shape[2]}x{alpha.shape[1]} (batch {alpha.shape[0]}) does not match "
                f"source {source.shape[2]}x{source.shape[1]} (batch {source.shape[0]}); sizes are width x height"
            )


# --- File I/O -----------------------------------------------------------------------------------


def read_image(path: str | Path, mode: str = "RGB") -> np.ndarray:
    """Read an image file as uint8 ``[H, W, 3]`` (``mode="RGB"``) or ``[H, W, 1]`` (``mode="L"``).

    No silent conversion: a grayscale photo or an RGBA file given as RGB is an error, since
    guessing (dropping transparency, inventing colour) would hide a mistake in the caller's data.
    """
    path = Path(path)
    if path.is_dir():
        raise ImageNotFoundError(f"{path}: is a folder, not an image file; give the path of one image")
    if not path.is_file():
        raise ImageNotFoundError(f"{path}: no such file")
    try:
        with Image.open(path) as image:
            image.load()
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ImageError(f"{path}: not a readable image ({error})") from None
    if image.width == 0 or image.height == 0:
        raise ImageError(f"{path}: image is empty ({image.width}x{image.height}, width x height)")
    if max(image.width, image.height) > MAX_IMAGE_SIDE:
        raise ImageError(f"{path}: {image.width}x{image.height} (width x height) exceeds the {MAX_IMAGE_SIDE}-pixel side limit")
    if mode == "RGB":
        if image.mode in ("RGB", "P", "YCbCr", "CMYK") and "transparency" not in image.info:
            return np.asarray(image.convert("RGB"))
        raise ImageError(f"{path}: expected an RGB image, got mode {image.mode} ({_describe_mode(image.mode)})")
    if mode == "L":
        if image.mode in ("L", "1"):
            return np.asarray(image.convert("L"))[..., None]
        raise ImageError(f"{path}: expected a single-channel (grayscale) alpha matte, got mode {image.mode}")
    raise ValueError(f"mode must be 'RGB' or 'L', got {mode!r}")


def _describe_mode(mode: str) -> str:
    return {"L": "grayscale", "LA": "grayscale with alpha", "RGBA": "RGB with alpha", "1": "black and white",
            "I": "32-bit integer", "I;16": "16-bit grayscale", "F": "floating point", "P": "palette with transparency"}.get(mode, "unsupported")


def write_image(path: str | Path, image: np.ndarray) -> Path:
    """Write a uint8 ``[H, W, 3]`` or ``[H, W, 1]`` image atomically (temporary file, then rename)."""
    path = Path(path)
    array = image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image
    with atomic_path(path) as temporary:
        Image.fromarray(array).save(temporary, format=Image.registered_extensions().get(path.suffix.lower(), "PNG"))
    return path


# --- Resizing -----------------------------------------------------------------------------------


def resize(image: np.ndarray, size: tuple[int, int], box: tuple[float, float, float, float] | None = None) -> np.ndarray:
    """Bilinear (antialiased when shrinking) resize of one ``[H, W, C]`` uint8 or float32 image.

    Args:
        size: (height, width) of the result.
        box: optional crop box (left, top, right, bottom) in source pixels, applied before scaling.
    """
    height, width = size
    if image.dtype == np.uint8 and image.shape[-1] in (1, 3):
        pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
        out = np.asarray(pil.resize((width, height), Image.BILINEAR, box=box))
        return out[..., None] if image.shape[-1] == 1 else out
    # Float images resize channel by channel in Pillow's 32-bit float mode.
    planes = [
        np.asarray(Image.fromarray(np.ascontiguousarray(image[..., c], dtype=np.float32)).resize((width, height), Image.BILINEAR, box=box))
        for c in range(image.shape[-1])
    ]
    return np.stack(planes, axis=-1)


def cover_box(image_size: tuple[int, int], target_size: tuple[int, int]) -> tuple[float, float, float, float]:
    """The centred crop of ``image_size`` with the aspect ratio of ``target_size`` (scale to cover)."""
    height, width = image_size
    target_height, target_width = target_size
    scale = max(target_height / height, target_width / width)
    crop_height, crop_width = target_height / scale, target_width / scale
    # Clamped: floating-point rounding can put an edge a hair outside the image (e.g. -3e-14),
    # which Pillow refuses.
    top, left = max(0.0, (height - crop_height) / 2), max(0.0, (width - crop_width) / 2)
    return (left, top, min(float(width), left + crop_width), min(float(height), top + crop_height))


def cover_resize(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Scale each frame of ``[B, H, W, C]`` to cover ``size`` (height, width) and centre-crop it."""
    box = cover_box(frames.shape[1:3], size)
    return np.stack([resize(frame, size, box=box) for frame in frames])


def to_network(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 ``[B, H, W, C]`` -> float32 ``[B, C, h, w]`` in [0, 1] at the network size ``(h, w)``."""
    resized = np.stack([resize(frame, size) for frame in frames]) if frames.shape[1:3] != tuple(size) else frames
    return np.ascontiguousarray(resized.transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(255.0)


def upsample(tensor: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """float32 ``[B, C, h, w]`` -> float32 ``[B, H, W, C]`` at ``size`` (bilinear)."""
    return np.stack([resize(np.ascontiguousarray(item.transpose(1, 2, 0)), size) for item in tensor])


def to_uint8(image: np.ndarray) -> np.ndarray:
    """[0, 1] floats -> uint8, rounding to nearest."""
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


# --- The two pipeline stages ------------------------------------------------------------------


@dataclass
class Prepared:
    """What ``preprocess`` hands to the networks and on to ``postprocess``.

    Attributes:
        source: float32 ``[B, 3, h, w]``, the source at its bucket (MODNet's ``image`` too).
        background: float32 ``[B, 3, h, w]``, the cover-resized background at the same bucket.
        background_full: uint8 ``[B, H, W, 3]``, the background cover-resized to the source canvas.
        alpha: float32 ``[B, 1, h, w]`` from a client-supplied matte, else None (MODNet predicts it).
    """

    source: np.ndarray
    background: np.ndarray
    background_full: np.ndarray
    alpha: np.ndarray | None = None


def preprocess(
    source: np.ndarray,
    background: np.ndarray,
    resolution: Resolution | str | int | tuple[int, int],
    alpha: np.ndarray | None = None,
) -> Prepared:
    """Validate a request and bring it to the network bucket nearest the source's proportions.

    Args:
        source: uint8 ``[B, H, W, 3]``; defines the output canvas and, by its aspect ratio, the
            bucket (``Resolution.bucket_for``) that source, background and matte are resized to.
        background: uint8 ``[B, Hb, Wb, 3]`` of any size; cover-resized to the source canvas first,
            so it keeps its proportions and lines up with the source in every bucket.
        resolution: the deployment's ``Resolution`` (or anything ``spec.parse_resolution`` takes).
        alpha: optional uint8 ``[B, H, W, 1]`` matte that replaces MODNet's.
    """
    check_inputs(source, background, alpha)
    size = parse_resolution(resolution).bucket_for(*source.shape[1:3])
    background_full = cover_resize(background, source.shape[1:3])
    return Prepared(
        source=to_network(source, size),
        background=to_network(background_full, size),
        background_full=background_full,
        alpha=None if alpha is None else to_network(alpha, size),
    )


def postprocess(
    source: np.ndarray,
    background_full: np.ndarray,
    network_source: np.ndarray,
    network_background: np.ndarray,
    network_alpha: np.ndarray,
    network_refined_alpha: np.ndarray,
    network_blended: np.ndarray,
    network_harmonized: np.ndarray,
    alpha: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Residual upsampling of the network outputs (at any bucket) to the source canvas.

    Full-resolution outputs are the full-resolution linear composite plus the upsampled residual
    each network added at network resolution; so a network that changes nothing (e.g. an untrained
    one) gives exactly linear blending at full resolution, with all the source's detail.

    The matte goes the same way: the full-resolution matte is the given one (MODNet's upsampled, or
    the client's as it is) plus the upsampled correction blending made to it near its edge
    (``network_refined_alpha - network_alpha``), so every output uses the matte blending used.

    Args:
        source, background_full: uint8 ``[B, H, W, 3]`` (the canvas and the cover-resized background).
        network_*: float32 NCHW tensors at network resolution (``network_alpha`` is the matte given
            to blending, ``network_refined_alpha`` the one blending composited with).
        alpha: the client's uint8 ``[B, H, W, 1]`` matte, if any: the full-resolution matte to correct.

    Returns:
        ``alpha`` uint8 ``[B, H, W, 1]`` (the matte used), ``blended`` and ``harmonized`` uint8 ``[B, H, W, 3]``.
    """
    size = source.shape[1:3]
    if alpha is None:
        # Resizing is linear: upsample(alpha) + upsample(refined - alpha) is upsample(refined).
        full_alpha = np.clip(upsample(network_refined_alpha, size), 0.0, 1.0)
    else:
        correction = upsample(network_refined_alpha - network_alpha, size)
        full_alpha = np.clip(alpha.astype(np.float32) / np.float32(255.0) + correction, 0.0, 1.0)
    full_linear = full_alpha * (source / np.float32(255.0)) + (1.0 - full_alpha) * (background_full / np.float32(255.0))
    network_linear = network_refined_alpha * network_source + (1.0 - network_refined_alpha) * network_background
    blended = full_linear + upsample(network_blended - network_linear, size)
    # Resizing is linear, so upsampling harmonized - linear equals the blended residual plus the
    # harmonization residual, in one resize instead of two.
    harmonized = full_linear + upsample(network_harmonized - network_linear, size)
    return {
        "alpha": to_uint8(full_alpha),
        "blended": to_uint8(blended),
        "harmonized": to_uint8(harmonized),
    }
