"""MODNet's one-frame-delay rule on small mattes, with expectations worked out by hand."""

import numpy as np
import pytest

from compositor.media.temporal_smoothing import DEFAULT_THRESHOLD, flicker_mask, one_frame_delay, smooth_sequence


def frames(*values, dtype=np.uint8):
    """One 1x4 matte per argument, each a list of 4 values."""
    return [np.array(v, dtype=dtype).reshape(1, 4, 1) for v in values]


def test_a_pixel_that_jumps_away_from_two_agreeing_neighbours_takes_their_mean():
    # Pixel 0: neighbours 200 and 210 agree (10 <= 25.5), current 0 differs from both: mean 205.
    # Pixel 1: neighbours 0 and 255 disagree: kept.
    # Pixel 2: current 120 is within T (25.5) of 100 on one side: kept.
    # Pixel 3: neighbours 11 and 10 agree, current 255: mean (11 + 10 + 1) // 2 = 11 (half up).
    previous, current, following = frames([200, 0, 100, 11], [0, 128, 120, 255], [210, 255, 100, 10])
    smoothed = one_frame_delay(previous, current, following)
    assert smoothed[0, :, 0].tolist() == [205, 128, 120, 11]
    assert current[0, :, 0].tolist() == [0, 128, 120, 255]  # the input is left alone


def test_the_threshold_is_a_fraction_of_full_scale_and_the_comparisons_are_as_stated():
    # Neighbours differ by exactly T*255 = 51 (<= T: agree); current is 52 above the larger one.
    previous, current, following = frames([100, 100, 100, 100], [203, 202, 100, 100], [151, 151, 100, 100])
    assert flicker_mask(previous, current, following, threshold=0.2)[0, :, 0].tolist() == [True, False, False, False]
    # |203 - 151| = 52 > 51 on both sides for pixel 0; pixel 1: |202 - 151| = 51, not > 51.
    assert one_frame_delay(previous, current, following, threshold=0.2)[0, :, 0].tolist() == [126, 202, 100, 100]


def test_float_mattes_in_zero_to_one_use_the_same_rule():
    previous, current, following = frames([0.9, 0.5, 0, 0], [0.1, 0.5, 0, 0], [0.85, 0.5, 0, 0], dtype=np.float32)
    smoothed = one_frame_delay(previous, current, following, threshold=DEFAULT_THRESHOLD)
    assert smoothed[0, :, 0] == pytest.approx([0.875, 0.5, 0, 0])


def test_a_sequence_is_smoothed_one_frame_behind_with_the_first_and_last_frames_kept():
    # One pixel flickering 255, 0, 255, 0, 255. The neighbours are the raw mattes: frames 1 and 3
    # sit between 255 and 255 and become 255, frame 2 sits between 0 and 0 and becomes 0.
    values = [255, 0, 255, 0, 255]
    mattes = [np.full((1, 1, 1), v, np.uint8) for v in values]
    out = list(smooth_sequence(iter(mattes)))
    assert [int(m[0, 0, 0]) for m, _ in out] == [255, 255, 0, 255, 255]
    assert [changed for _, changed in out] == [0, 1, 1, 1, 0]


@pytest.mark.parametrize("count", [1, 2])
def test_sequences_too_short_for_a_neighbour_on_each_side_pass_through(count):
    mattes = [np.full((1, 1, 1), 10 * i, np.uint8) for i in range(count)]
    out = list(smooth_sequence(mattes))
    assert [int(m[0, 0, 0]) for m, _ in out] == [10 * i for i in range(count)]


def test_mismatched_mattes_and_a_threshold_outside_zero_to_one_are_refused():
    a, b, _ = frames([0] * 4, [0] * 4, [0] * 4)
    with pytest.raises(ValueError, match="differ in shape"):
        flicker_mask(a, b, np.zeros((1, 3, 1), np.uint8))
    with pytest.raises(ValueError, match=r"threshold must be in \[0, 1\]"):
        flicker_mask(a, b, a, threshold=26)
