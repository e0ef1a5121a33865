"""The classical box matte: a believable cut-out without MODNet's weights."""

import numpy as np
import pytest
from skimage import data

from compositor.examples.classical_matte import ASTRONAUT_BOX, box_matte

# The synthetic portrait: an ellipse "subject" on a textured background of other colours.
HEIGHT, WIDTH = 160, 192
CENTRE_ROW, CENTRE_COL, SEMI_ROWS, SEMI_COLS = 84, 96, 56, 38
SYNTHETIC_BOX = (44, 16, 148, 152)  # the ellipse's bounding box plus a margin of 12-14 pixels


def _synthetic_portrait() -> tuple[np.ndarray, np.ndarray]:
    """An orange, shaded, noisy ellipse on blue-green stripes and noise; returns (image, ellipse)."""
    rng = np.random.default_rng(7)
    rows, cols = np.mgrid[0:HEIGHT, 0:WIDTH].astype(float)
    stripes = 0.5 + 0.5 * np.sin(cols / 5.0 + rows / 9.0)
    background = np.stack([40 + 50 * stripes, 110 + 60 * stripes, 170 - 40 * stripes], -1)
    ellipse = ((rows - CENTRE_ROW) / SEMI_ROWS) ** 2 + ((cols - CENTRE_COL) / SEMI_COLS) ** 2 <= 1.0
    shade = 0.8 + 0.2 * (1 - (cols - CENTRE_COL) / SEMI_COLS) / 2  # lit from the left
    subject = np.stack([230 * shade, 120 * shade, 50 * shade], -1)
    image = np.where(ellipse[..., None], subject, background) + rng.normal(0, 8, (HEIGHT, WIDTH, 3))
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), ellipse


@pytest.fixture(scope="module")
def synthetic():
    image, ellipse = _synthetic_portrait()
    return image, ellipse, box_matte(image, SYNTHETIC_BOX)


@pytest.fixture(scope="module")
def astronaut_matte():
    return box_matte(data.astronaut(), ASTRONAUT_BOX)[..., 0]


def test_the_matte_is_uint8_with_one_channel_at_the_image_size(synthetic):
    _, _, matte = synthetic
    assert matte.dtype == np.uint8
    assert matte.shape == (HEIGHT, WIDTH, 1)


def test_the_matte_recovers_an_ellipse_on_a_textured_background(synthetic):
    _, ellipse, matte = synthetic
    cut = matte[..., 0] >= 128
    iou = (cut & ellipse).sum() / (cut | ellipse).sum()
    assert iou >= 0.9, f"IoU {iou:.3f}"


def test_the_matte_is_opaque_inside_the_subject_and_clear_around_it(synthetic):
    _, ellipse, matte = synthetic
    matte = matte[..., 0]
    rows, cols = np.mgrid[0:HEIGHT, 0:WIDTH]
    core = ((rows - CENTRE_ROW) / (SEMI_ROWS - 4)) ** 2 + ((cols - CENTRE_COL) / (SEMI_COLS - 4)) ** 2 <= 1
    around = ((rows - CENTRE_ROW) / (SEMI_ROWS + 4)) ** 2 + ((cols - CENTRE_COL) / (SEMI_COLS + 4)) ** 2 > 1
    assert matte[core].min() == 255
    assert matte[around].max() == 0


def test_the_matte_is_zero_outside_the_box(synthetic):
    _, _, matte = synthetic
    left, top, right, bottom = SYNTHETIC_BOX
    outside = np.ones((HEIGHT, WIDTH), bool)
    outside[top:bottom, left:right] = False
    assert matte[..., 0][outside].max() == 0


def test_the_matte_is_zero_outside_a_box_that_cuts_through_the_subject():
    image, _ = _synthetic_portrait()
    box = (70, 16, 148, 152)  # the left third of the ellipse lies outside
    matte = box_matte(image, box)[..., 0]
    assert matte[:, :70].max() == 0
    assert matte[84, 75:120].min() > 200  # the part inside is still there


def test_zero_feather_gives_a_binary_matte(synthetic):
    image, _, _ = synthetic
    matte = box_matte(image, SYNTHETIC_BOX, feather_px=0)
    assert set(np.unique(matte)) <= {0, 255}


def test_the_same_image_always_gives_the_same_matte(synthetic):
    image, _, matte = synthetic
    np.testing.assert_array_equal(box_matte(image, SYNTHETIC_BOX), matte)


def test_a_box_covering_the_whole_image_still_finds_the_subject():
    image, ellipse = _synthetic_portrait()
    matte = box_matte(image, (0, 0, WIDTH, HEIGHT))[..., 0]
    cut = matte >= 128
    assert (cut & ellipse).sum() / (cut | ellipse).sum() >= 0.8


@pytest.mark.parametrize(
    "box, message",
    [
        ((-1, 16, 148, 152), "outside"),
        ((44, 16, WIDTH + 1, 152), "outside"),
        ((44, 16, 148, HEIGHT + 5), "outside"),
        ((44, 16, 44, 152), "positive size"),
        ((44, 152, 148, 152), "positive size"),
        ((148, 16, 44, 152), "positive size"),
        ((44, 16, 148), "four integers"),
        ((44.5, 16, 148, 152), "four integers"),
    ],
)
def test_a_bad_box_is_rejected_naming_the_problem(synthetic, box, message):
    image, _, _ = synthetic
    with pytest.raises(ValueError, match=message):
        box_matte(image, box)


@pytest.mark.parametrize("shape", [(HEIGHT, WIDTH), (HEIGHT, WIDTH, 1)])
def test_a_grayscale_image_is_rejected(shape):
    with pytest.raises(ValueError, match="grayscale"):
        box_matte(np.zeros(shape, np.uint8), SYNTHETIC_BOX)


def test_an_rgba_image_is_rejected():
    rgba = np.zeros((HEIGHT, WIDTH, 4), np.uint8)
    with pytest.raises(ValueError, match=r"RGB image of shape \[H, W, 3\]"):
        box_matte(rgba, SYNTHETIC_BOX)


def test_a_float_image_is_rejected():
    with pytest.raises(ValueError, match="uint8"):
        box_matte(np.zeros((HEIGHT, WIDTH, 3), np.float32), SYNTHETIC_BOX)


@pytest.mark.parametrize("feather_px", [-1.0, float("nan"), float("inf"), "2"])
def test_a_bad_feather_is_rejected(synthetic, feather_px):
    image, _, _ = synthetic
    with pytest.raises(ValueError, match="feather_px"):
        box_matte(image, SYNTHETIC_BOX, feather_px=feather_px)


def test_the_astronaut_box_lies_inside_the_image_and_leaves_out_the_shuttle():
    left, top, right, bottom = ASTRONAUT_BOX
    height, width = data.astronaut().shape[:2]
    assert 0 <= left < right <= width and 0 <= top < bottom <= height
    assert right < 380  # the shuttle's boosters start at about x = 380


# Pixels (row, col) checked by eye on skimage's astronaut.
ASTRONAUT_SUBJECT = {
    "nose": (120, 225),
    "forehead": (85, 230),
    "top of the hair": (30, 225),
    "hair on her right (image left)": (80, 165),
    "hair on her left (image right)": (100, 290),
    "black turtleneck": (200, 225),
    "grey collar ring": (220, 125),
    "dark collar ring": (240, 300),
    "suit sleeve at the left": (400, 60),
    "suit shoulder at the right": (300, 340),
    "white strap": (380, 250),
    "mission patch": (380, 170),
}
ASTRONAUT_BACKGROUND = {
    "backdrop top left of the hair": (40, 120),
    "backdrop top right of the hair": (40, 340),
    "backdrop left of the collar": (130, 120),
    "backdrop right of the neck": (170, 320),
    "shuttle wing tip inside the box": (215, 362),
    "flag stripe inside the box": (150, 40),
}


def test_the_astronaut_matte_covers_her_head_collar_and_suit(astronaut_matte):
    for name, (row, col) in ASTRONAUT_SUBJECT.items():
        patch = astronaut_matte[row - 2 : row + 3, col - 2 : col + 3]
        assert patch.min() > 200, f"{name} at {(row, col)}: alpha {patch.min()}"


def test_the_astronaut_matte_leaves_out_the_backdrop_flag_and_shuttle(astronaut_matte):
    for name, (row, col) in ASTRONAUT_BACKGROUND.items():
        patch = astronaut_matte[row - 2 : row + 3, col - 2 : col + 3]
        assert patch.max() < 50, f"{name} at {(row, col)}: alpha {patch.max()}"
    # The shuttle model's left edge inside the box, above her shoulder, stays clear.
    assert astronaut_matte[:270, 345:].max() < 50
