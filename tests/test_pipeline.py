"""The eager reference pipeline and its shared numpy pre/post-processing, on real photos."""

import numpy as np
import pytest
import skimage.data

from compositor import imaging
from compositor.contract import spec
from compositor.networks.factory import load_networks
from compositor.runtimes import EagerPipeline

RESOLUTION = 64  # aspect buckets with a small short side: the plumbing is what is under test here


@pytest.fixture(scope="module")
def pipeline():
    return EagerPipeline(load_networks(trained_defaults=False), RESOLUTION)


def _photo(name, size):
    """A real photo from scikit-image, resized to ``size`` (height, width)."""
    return imaging.resize(getattr(skimage.data, name)(), size)


def test_odd_source_size_with_a_full_hd_background_gives_outputs_on_the_source_canvas(pipeline):
    source, background = _photo("astronaut", (333, 517)), _photo("coffee", (1080, 1920))
    result = pipeline(source, background)
    assert result.alpha.shape == (333, 517, 1)
    assert result.blended.shape == result.harmonized.shape == (333, 517, 3)
    assert result.alpha.dtype == result.blended.dtype == result.harmonized.dtype == np.uint8


def test_untrained_nets_give_linear_blending_at_full_resolution(pipeline):
    # Residual upsampling: zero residuals at network resolution must leave the full-resolution
    # linear composite, with the source's full detail (not a blurry 64x64 upsample).
    source, background = _photo("astronaut", (200, 300)), _photo("coffee", (400, 600))
    result = pipeline(source, background)
    weight = result.alpha.astype(np.float64) / 255
    expected = weight * source + (1 - weight) * imaging.cover_resize(background[None], (200, 300))[0]
    assert np.abs(result.blended.astype(np.float64) - expected).max() <= 1.0
    assert np.array_equal(result.harmonized, result.blended)


def test_batch_of_three_equals_three_single_calls(pipeline):
    names = ["astronaut", "chelsea", "rocket"]
    sources = np.stack([_photo(n, (120, 160)) for n in names])
    backgrounds = np.stack([_photo(n, (90, 90)) for n in ["coffee", "astronaut", "chelsea"]])
    batched = pipeline(sources, backgrounds)
    for i in range(3):
        single = pipeline(sources[i], backgrounds[i])
        for field in ("alpha", "blended", "harmonized"):
            diff = np.abs(getattr(batched, field)[i].astype(int) - getattr(single, field))
            assert diff.max() <= 1, field


def test_a_supplied_alpha_replaces_modnet_and_is_returned_unchanged_by_a_net_that_does_not_correct_it(pipeline):
    source, background = _photo("astronaut", (96, 128)), _photo("coffee", (96, 128))
    alpha = np.zeros((96, 128, 1), np.uint8)
    alpha[20:80, 30:100] = 255
    result = pipeline(source, background, alpha)
    assert np.array_equal(result.alpha, alpha)
    inside, outside = alpha[..., 0] == 255, alpha[..., 0] == 0
    assert np.abs(result.blended[inside].astype(int) - source[inside]).max() <= 1
    assert np.abs(result.blended[outside].astype(int) - background[outside]).max() <= 1


@pytest.fixture(scope="module")
def refining_pipeline():
    """Untrained nets except a random matte-correction head on the blending net (no colour residual)."""
    import torch

    from compositor.networks.blending import BlendingUNet

    networks = load_networks(trained_defaults=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(2)
        networks.blending = BlendingUNet(refine_alpha=True).eval()
        torch.nn.init.normal_(networks.blending.alpha_head.weight, 0.0, 0.5)
    return EagerPipeline(networks, RESOLUTION)


def test_the_matte_blending_corrects_is_the_one_every_output_uses(refining_pipeline):
    source, background = _photo("astronaut", (96, 128)), _photo("coffee", (96, 128))
    alpha = np.zeros((96, 128, 1), np.uint8)
    alpha[20:80, 30:100] = 255
    result = refining_pipeline(source, background, alpha)
    changed = result.alpha != alpha
    assert changed.mean() > 0.01, "the random head must correct the matte somewhere"
    # Only near the given matte's edge (within 1/32 of the network side, 2 pixels at 64, upsampled
    # 2x to the canvas, plus the resize's reach): far inside and far outside it stays as given.
    assert not changed[30:70, 40:90].any() and not changed[:8].any() and not changed[:, :16].any()
    # Blended is the linear composite with the corrected matte (this net has no colour residual)...
    weight = result.alpha.astype(np.float64) / 255
    expected = weight * source + (1 - weight) * background
    assert np.abs(result.blended.astype(np.float64) - expected).max() <= 2.0
    # ...and not with the given one, where the two mattes differ.
    given = alpha.astype(np.float64) / 255 * source + (1 - alpha.astype(np.float64) / 255) * background
    assert np.abs(result.blended.astype(np.float64) - given)[changed[..., 0]].max() > 10
    assert np.array_equal(result.harmonized, result.blended)  # untrained harmonizer: the blended input


def test_cover_resize_scales_to_cover_and_crops_the_centre():
    # A 100x400 background onto a 100x100 canvas keeps the middle quarter at scale 1.
    background = np.zeros((1, 100, 400, 3), np.uint8)
    background[:, :, 150:250] = 200
    covered = imaging.cover_resize(background, (100, 100))
    assert covered.shape == (1, 100, 100, 3)
    assert (covered == 200).all()
    assert imaging.cover_box((1080, 1920), (333, 517))[1] == 0  # wider target: full height kept


def test_cover_box_stays_inside_the_image_despite_rounding():
    # 300x451 onto 123x457 once gave a left edge of -2.8e-14, which Pillow refuses.
    left, top, right, bottom = imaging.cover_box((300, 451), (123, 457))
    assert 0 <= left and 0 <= top and right <= 451 and bottom <= 300
    covered = imaging.cover_resize(np.zeros((1, 300, 451, 3), np.uint8), (123, 457))
    assert covered.shape == (1, 123, 457, 3)


@pytest.mark.parametrize(
    "source, background, alpha, message",
    [
        (np.zeros((1, 10, 10, 1), np.uint8), np.zeros((1, 5, 5, 3), np.uint8), None, r"source: expected 3 channel\(s\), got 1 \(grayscale\)"),
        (np.zeros((1, 10, 10, 4), np.uint8), np.zeros((1, 5, 5, 3), np.uint8), None, r"source: expected 3 channel\(s\), got 4 \(RGBA\)"),
        (np.zeros((1, 0, 10, 3), np.uint8), np.zeros((1, 5, 5, 3), np.uint8), None, "source: image is empty"),
        (np.zeros((1, 10, 10, 3), np.float32), np.zeros((1, 5, 5, 3), np.uint8), None, "source: expected uint8 pixels"),
        (np.zeros((1, 10, 10, 3), np.uint8), np.zeros((1, 5, 5, 4), np.uint8), None, "background: expected 3 channel"),
        (np.zeros((1, 10, 10, 3), np.uint8), np.zeros((1, 5, 5, 3), np.uint8), np.zeros((1, 10, 12, 1), np.uint8), "alpha: size 12x10 .* does not match source 10x10"),
        (np.zeros((1, 9000, 10, 3), np.uint8), np.zeros((1, 5, 5, 3), np.uint8), None, "exceeds the 8192-pixel side limit"),
    ],
)
def test_bad_input_arrays_are_refused_with_the_problem_named(source, background, alpha, message):
    with pytest.raises(imaging.ImageError, match=message):
        imaging.preprocess(source, background, RESOLUTION, alpha)


def test_the_chain_feeds_each_network_its_spec_inputs_in_order_from_tensors_made_before_it():
    available = set(spec.CHAIN_INPUTS)
    for step in spec.CHAIN:
        network = spec.NETWORKS[step.network]
        assert [name for name, _ in step.inputs] == network.input_names()
        assert set(step.reads()) <= available, f"{step.network} reads a tensor made after it"
        assert list(step.writes()) == network.output_names()
        available.update(step.outputs)
    assert [step.network for step in spec.CHAIN] == ["matting", "blending", "harmonization"]


def test_harmonization_takes_the_matte_blending_corrected_not_the_one_blending_was_given():
    harmonization = next(step for step in spec.CHAIN if step.network == "harmonization")
    assert dict(harmonization.inputs)["mask"] == "refined_alpha"
    blending = next(step for step in spec.CHAIN if step.network == "blending")
    assert blending.writes() == {"blended": "blended", "refined_alpha": "refined_alpha"}


def test_a_given_matte_skips_matting_and_reaches_both_later_networks():
    calls = []

    def run_network(name, *inputs):
        calls.append((name, inputs))
        return ("blended-out", "refined-A") if name == "blending" else f"{name}-out"

    tensors = spec.run_chain(run_network, {"source": "S", "background": "B", "alpha": "A"})
    assert calls == [("blending", ("S", "A", "B")), ("harmonization", ("blended-out", "refined-A", "B"))]
    assert tensors["harmonized"] == "harmonization-out"
    assert spec.network_feeds(tensors)["harmonization"] == {"composite": "blended-out", "mask": "refined-A", "background": "B"}


def test_a_network_returning_a_different_number_of_outputs_than_the_chain_declares_is_an_error():
    with pytest.raises(ValueError, match=r"blending returned 1 outputs, the chain expects \('blended', 'refined_alpha'\)"):
        spec.run_chain(lambda name, *inputs: "one", {"source": "S", "background": "B", "alpha": "A"})


def test_the_onnx_runtime_pipeline_runs_without_importing_pytorch(small_export):
    """Serving-side users (and the ONNX Runtime benchmark) need no PyTorch; it takes seconds to import.
    Its output is the eager pipeline's on the same export (compared in test_export); here: it runs."""
    import subprocess
    import sys

    code = (
        "import sys, numpy as np, skimage.data\n"
        "from compositor import imaging\n"
        "from compositor.runtimes import OnnxRuntimePipeline\n"
        f"pipeline = OnnxRuntimePipeline({str(small_export.directory)!r}, {str(small_export.resolution)!r})\n"
        "result = pipeline(imaging.resize(skimage.data.astronaut(), (48, 40)), skimage.data.coffee())\n"
        "assert result.harmonized.shape == (48, 40, 3) and result.harmonized.dtype == np.uint8\n"
        "print('torch' in sys.modules)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "False"
