"""Temporal smoothing of a video's mattes: MODNet's one-frame-delay (OFD) rule, in plain numpy.

A matting network run frame by frame flickers: a pixel that is foreground in frames t-1 and t+1
drops to background in frame t alone (or the reverse). MODNet (Ke et al., "Is a Green Screen Really
Necessary for Real-Time Portrait Matting?", section on one-frame delay) fixes such a pixel from its
two neighbours, at the cost of one frame of latency:

    if |a[t-1] - a[t+1]| <= T  and  |a[t] - a[t-1]| > T  and  |a[t] - a[t+1]| > T:
        a[t] = (a[t-1] + a[t+1]) / 2

The neighbours are the network's own mattes (not smoothed ones), as in the paper. The first and last
frames have one neighbour only and stay as they are.

``DEFAULT_THRESHOLD``: MODNet's published code does not implement OFD (its video demo's README says
so), so there is no reference value to copy. 0.1 of full scale (about 26 of 255 levels) is far above
what resizing and video compression move a matte (a few levels), so a still subject is never
touched, and far below a real flicker (a pixel flipping between foreground and background moves by
about 1.0).

Example:
    >>> previous = np.full((1, 1, 1), 250, np.uint8); following = previous.copy()
    >>> one_frame_delay(previous, np.zeros_like(previous), following)[0, 0, 0]
    250
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

DEFAULT_THRESHOLD = 0.1
"""T as a fraction of full scale (1.0 = 255 for uint8 mattes); see the module docstring."""


def _full_scale(dtype: np.dtype) -> float:
    return float(np.iinfo(dtype).max) if np.issubdtype(dtype, np.integer) else 1.0


def flicker_mask(previous: np.ndarray, current: np.ndarray, following: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """Where the one-frame-delay rule applies: a boolean array of ``current``'s shape.

    Args:
        previous, current, following: mattes of frames t-1, t, t+1, same shape and dtype (uint8
            in 0..255 or floats in [0, 1]).
        threshold: T as a fraction of full scale, in [0, 1].

    Raises:
        ValueError: shapes or dtypes differ, or the threshold is outside [0, 1].
    """
    if not previous.shape == current.shape == following.shape:
        raise ValueError(f"mattes differ in shape: {previous.shape}, {current.shape}, {following.shape}")
    if not previous.dtype == current.dtype == following.dtype:
        raise ValueError(f"mattes differ in dtype: {previous.dtype}, {current.dtype}, {following.dtype}")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1] (a fraction of full scale), got {threshold}")
    limit = threshold * _full_scale(current.dtype)
    # Signed and wide enough for differences of uint8 values.
    a0, a1, a2 = (np.asarray(m, dtype=np.float64) for m in (previous, current, following))
    return (np.abs(a0 - a2) <= limit) & (np.abs(a1 - a0) > limit) & (np.abs(a1 - a2) > limit)


def one_frame_delay(previous: np.ndarray, current: np.ndarray, following: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """Frame t's matte with MODNet's rule applied; a new array, ``current`` is not changed.

    A flickering pixel takes the mean of its neighbours, rounded half up for integer mattes
    (``(a + b + 1) // 2``). See ``flicker_mask`` for the arguments.
    """
    mask = flicker_mask(previous, current, following, threshold)
    smoothed = current.copy()
    if np.issubdtype(current.dtype, np.integer):
        mean = (previous.astype(np.int64) + following.astype(np.int64) + 1) // 2
    else:
        mean = (previous + following) / 2
    smoothed[mask] = mean[mask].astype(current.dtype)
    return smoothed


def smooth_sequence(mattes: Iterable[np.ndarray], threshold: float = DEFAULT_THRESHOLD) -> Iterator[tuple[np.ndarray, int]]:
    """Apply the rule along a sequence, lazily, one frame behind its input.

    Yields:
        ``(matte, changed)`` per input frame, in order: the smoothed matte and how many of its
        values the rule changed (0 for the first and last frames).
    """
    window: list[np.ndarray] = []
    for matte in mattes:
        window.append(matte)
        if len(window) == 1:
            continue
        if len(window) == 2:
            yield window[0], 0
            continue
        previous, current, following = window
        smoothed = one_frame_delay(previous, current, following, threshold)
        yield smoothed, int(np.count_nonzero(smoothed != current))
        window.pop(0)
    if len(window) >= 2:
        yield window[-1], 0
    elif len(window) == 1:
        yield window[0], 0
