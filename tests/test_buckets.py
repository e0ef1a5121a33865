"""Aspect buckets: which network sizes a resolution has, which one a frame gets, and that the
pre/post-processing and the eager pipeline run at it.

Expected sizes are worked out by hand from MODNet's reference sizing (short side N, long side
N * ratio floored to a multiple of 32), never computed by the code under test.
"""

import numpy as np
import pytest
import skimage.data

from compositor import imaging
from compositor.contract import spec
from compositor.networks.factory import load_networks
from compositor.runtimes import EagerPipeline

# Short side 512: 512 * 4/3 = 682.7 -> 672; 512 * 3/2 = 768; 512 * 16/9 = 910.2 -> 896.
BUCKETS_512 = ((512, 512), (512, 672), (672, 512), (512, 768), (768, 512), (512, 896), (896, 512))


def test_the_default_resolution_has_the_square_and_landscape_and_portrait_4_3_3_2_and_16_9_buckets():
    assert spec.DEFAULT_RESOLUTION.buckets == BUCKETS_512
    assert str(spec.DEFAULT_RESOLUTION) == "512" and not spec.DEFAULT_RESOLUTION.fixed
    assert spec.DEFAULT_RESOLUTION.reference == (512, 512)


def test_buckets_that_coincide_at_a_small_short_side_appear_once():
    # 64 * 4/3 = 85 -> 64 (the square again); 64 * 3/2 = 96; 64 * 16/9 = 113 -> 96 (3:2 again).
    assert spec.aspect_buckets(64).buckets == ((64, 64), (64, 96), (96, 64))
    assert spec.aspect_buckets(32).buckets == ((32, 32),)


@pytest.mark.parametrize(
    ("width", "height", "bucket"),
    [
        (1000, 1000, (512, 512)),  # 1:1
        (1080, 720, (512, 768)),  # 3:2, MODNet's reference size for it exactly
        (6000, 4000, (512, 768)),  # 3:2 at camera size
        (1920, 1080, (512, 896)),  # 16:9, MODNet's reference size for it exactly
        (640, 480, (512, 672)),  # 4:3: log(4/3 / (672/512)) = 0.016, log(1.5 / (4/3)) = 0.118
        (720, 1080, (768, 512)),  # portrait 2:3
        (1080, 1920, (896, 512)),  # portrait 9:16
        (3000, 4000, (672, 512)),  # portrait 3:4
        (2400, 1000, (512, 896)),  # 2.4:1, wider than any bucket: the widest
        (1100, 1000, (512, 512)),  # 1.1: log 1.1 = 0.095 from 1:1, log(1.3125 / 1.1) = 0.177 from 4:3
    ],
)
def test_a_frame_gets_the_bucket_nearest_its_aspect_ratio(width, height, bucket):
    assert spec.DEFAULT_RESOLUTION.bucket_for(height, width) == bucket


def test_an_explicit_height_by_width_is_one_fixed_size_that_every_frame_gets():
    fixed = spec.parse_resolution("256x384")
    assert (fixed.buckets, fixed.fixed, str(fixed)) == (((256, 384),), True, "256x384")
    assert fixed.bucket_for(1000, 1000) == fixed.bucket_for(1920, 1080) == (256, 384)
    assert spec.parse_resolution("512x512") != spec.parse_resolution("512"), "512x512 squashes, 512 keeps the aspect"


def test_resolutions_parse_from_text_numbers_and_tuples_and_refuse_sides_off_the_32_grid():
    assert spec.parse_resolution("512") == spec.parse_resolution(512) == spec.DEFAULT_RESOLUTION
    assert spec.parse_resolution((64, 96)) == spec.fixed_resolution(64, 96)
    with pytest.raises(ValueError, match=r"resolution 500x500: each side must be a positive multiple of 32"):
        spec.parse_resolution("500")
    with pytest.raises(ValueError, match=r"resolution '512 by 512' is not N or HxW"):
        spec.parse_resolution("512 by 512")


def test_tensorrt_profiles_span_every_bucket_and_optimise_for_the_square_one():
    profile = spec.tensorrt_profiles(spec.MATTING, spec.DEFAULT_RESOLUTION, max_batch=8)["image"]
    assert profile == spec.Profile(min=(1, 3, 512, 512), opt=(4, 3, 512, 512), max=(8, 3, 896, 896))


def test_networks_export_with_dynamic_batch_height_and_width_axes():
    assert spec.dynamic_axes(spec.BLENDING)["alpha"] == {0: "batch", 2: "height", 3: "width"}


# --- Pre- and post-processing ----------------------------------------------------------------------


def _photo(name, size):
    """A real photo from scikit-image, resized to ``size`` (height, width)."""
    return imaging.resize(getattr(skimage.data, name)(), size)


def test_preprocess_brings_a_3_2_frame_its_background_and_matte_to_the_3_2_bucket():
    source = _photo("astronaut", (240, 360))[None]  # 360x240 (width x height): 3:2
    background = _photo("coffee", (400, 400))[None]
    alpha = np.zeros((1, 240, 360, 1), np.uint8)
    alpha[:, 60:180, 90:270] = 255

    prepared = imaging.preprocess(source, background, 64, alpha)

    assert prepared.source.shape == (1, 3, 64, 96)
    assert prepared.background.shape == (1, 3, 64, 96)
    assert prepared.alpha.shape == (1, 1, 64, 96)
    assert prepared.background_full.shape == (1, 240, 360, 3), "cover-resized to the source canvas first"
    # The matte's box scales with the frame: rows 60:180 of 240 -> 16:48 of 64, columns 90:270 of 360 -> 24:72 of 96.
    assert prepared.alpha[0, 0, 20:44, 28:68].min() == 1.0 and prepared.alpha[0, 0, :12].max() == 0.0


def test_preprocess_squashes_every_frame_into_a_fixed_resolution_as_before_buckets():
    prepared = imaging.preprocess(_photo("astronaut", (240, 360))[None], _photo("coffee", (64, 64))[None], "64x64")
    assert prepared.source.shape == (1, 3, 64, 64)


def test_postprocess_upsamples_outputs_of_any_bucket_to_the_source_canvas():
    source = _photo("astronaut", (240, 360))[None]
    background_full = _photo("coffee", (240, 360))[None]
    prepared = imaging.preprocess(source, background_full, 64)
    alpha = np.full((1, 1, 64, 96), 0.5, np.float32)
    outputs = imaging.postprocess(source, background_full, prepared.source, prepared.background, alpha, alpha,
                                  prepared.source, prepared.source)
    assert outputs["alpha"].shape == (1, 240, 360, 1)
    assert outputs["blended"].shape == outputs["harmonized"].shape == (1, 240, 360, 3)
    assert np.all(outputs["alpha"] == 128)


@pytest.fixture(scope="module")
def pipeline():
    return EagerPipeline(load_networks(trained_defaults=False), 64)


def _record_network_sizes(pipeline, monkeypatch) -> list:
    """Make ``pipeline`` note (network, input height and width) of every network it runs."""
    sizes, run_network = [], pipeline.run_network

    def recording(name, *inputs):
        sizes.append((name, inputs[0].shape[-2:]))
        return run_network(name, *inputs)

    monkeypatch.setattr(pipeline, "run_network", recording)
    return sizes


def test_the_eager_pipeline_runs_a_3_2_frame_at_the_3_2_bucket_and_answers_at_the_source_size(pipeline, monkeypatch):
    sizes = _record_network_sizes(pipeline, monkeypatch)
    result = pipeline(_photo("astronaut", (240, 360)), _photo("coffee", (300, 300)))

    assert sizes == [("matting", (64, 96)), ("blending", (64, 96)), ("harmonization", (64, 96))]
    assert result.alpha.shape == (240, 360, 1)
    assert result.blended.shape == result.harmonized.shape == (240, 360, 3)


def test_the_eager_pipeline_runs_a_portrait_frame_at_the_portrait_bucket(pipeline, monkeypatch):
    sizes = _record_network_sizes(pipeline, monkeypatch)
    result = pipeline(_photo("astronaut", (300, 200)), _photo("coffee", (300, 300)))

    assert {size for _, size in sizes} == {(96, 64)}
    assert result.blended.shape == (300, 200, 3)
