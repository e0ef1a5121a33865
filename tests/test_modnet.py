"""MODNet: state-dict compatibility with the published checkpoint and parity with the reference.

The fixture (tests/data/modnet/README.md) is a checkpoint in the official layout with random
weights and randomised BatchNorm statistics, plus an input and the matte the reference produced.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from compositor.networks.modnet import MODNet
from compositor.networks.modnet_checkpoint import (
    load_modnet_checkpoint,
    modnet_state_dict_from_checkpoint,
    save_modnet_checkpoint,
)

DATA_DIR = Path(__file__).parent / "data" / "modnet"
CHECKPOINT = DATA_DIR / "modnet_official_format_random.ckpt"
IO_PAIR = DATA_DIR / "modnet_official_format_random_io.pt"
KEYS_JSON = DATA_DIR / "modnet_official_state_dict_keys.json"

MATTE_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def fixture_model() -> MODNet:
    return load_modnet_checkpoint(CHECKPOINT)


@pytest.fixture(scope="module")
def fixture_io() -> dict[str, torch.Tensor]:
    return torch.load(IO_PAIR, map_location="cpu", weights_only=True)


def _official_layout() -> list[tuple[str, tuple[int, ...], str]]:
    entries = json.loads(KEYS_JSON.read_text())["keys"]
    return [(entry["key"], tuple(entry["shape"]), entry["dtype"]) for entry in entries]


def test_fixture_checkpoint_loads_strictly_without_dataparallel(fixture_model: MODNet) -> None:
    raw = torch.load(CHECKPOINT, map_location="cpu", weights_only=True)
    assert all(key.startswith("module.") for key in raw)

    model = MODNet()
    result = model.load_state_dict(modnet_state_dict_from_checkpoint(CHECKPOINT), strict=True)

    assert not result.missing_keys and not result.unexpected_keys
    assert isinstance(fixture_model, MODNet) and not fixture_model.training
    for key, value in fixture_model.state_dict().items():
        assert torch.equal(value, raw["module." + key]), key


def test_fixture_matte_is_reproduced_within_1e_4(
    fixture_model: MODNet, fixture_io: dict[str, torch.Tensor]
) -> None:
    with torch.inference_mode():
        semantic, detail, matte = fixture_model(fixture_io["input"], inference=True)

    assert semantic is None and detail is None
    assert matte.shape == fixture_io["matte"].shape
    max_abs_error = (matte - fixture_io["matte"]).abs().max().item()
    print(f"MODNet fixture matte max abs error: {max_abs_error:.3e}")
    assert max_abs_error < MATTE_TOLERANCE


def test_state_dict_keys_and_shapes_match_the_official_layout() -> None:
    ours = [
        ("module." + key, tuple(value.shape), str(value.dtype).removeprefix("torch."))
        for key, value in MODNet().state_dict().items()
    ]

    assert ours == _official_layout()


def test_the_low_resolution_branch_shares_the_backbone_instead_of_copying_it() -> None:
    model = MODNet()

    assert model.lr_branch.backbone is model.backbone
    state = model.state_dict()
    assert state["backbone.model.features.0.0.weight"].data_ptr() == (
        state["lr_branch.backbone.model.features.0.0.weight"].data_ptr()
    )
    # parameters() counts the shared encoder once.
    assert sum(p.numel() for p in model.parameters()) == 6_487_075


def test_saved_checkpoint_round_trips_in_official_layout(
    fixture_model: MODNet, tmp_path: Path
) -> None:
    path = save_modnet_checkpoint(fixture_model, tmp_path / "nested" / "modnet.ckpt")

    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert [(key, tuple(value.shape)) for key, value in raw.items()] == [
        (key, shape) for key, shape, _ in _official_layout()
    ]
    # The encoder is stored once, shared by both sets of keys, as in the published file.
    assert raw["module.backbone.model.features.0.0.weight"].data_ptr() == (
        raw["module.lr_branch.backbone.model.features.0.0.weight"].data_ptr()
    )
    assert abs(path.stat().st_size - CHECKPOINT.stat().st_size) < 0.01 * CHECKPOINT.stat().st_size

    reloaded = load_modnet_checkpoint(path)
    for key, value in fixture_model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], value), key


def test_a_checkpoint_nested_under_state_dict_without_prefix_loads(
    fixture_model: MODNet, tmp_path: Path
) -> None:
    path = tmp_path / "nested.ckpt"
    torch.save({"state_dict": fixture_model.state_dict(), "epoch": 3}, path)

    model = load_modnet_checkpoint(path)

    for key, value in fixture_model.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_a_checkpoint_of_another_network_is_rejected_with_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "resnet_like.ckpt"
    other = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Linear(8, 2))
    torch.save({"module." + key: value for key, value in other.state_dict().items()}, path)

    expected = r"not a MODNet checkpoint: 751 missing keys \[backbone\.model.*unexpected keys \[0\."
    with pytest.raises(ValueError, match=expected):
        load_modnet_checkpoint(path)


def test_a_checkpoint_with_different_hyperparameters_is_rejected_naming_the_shapes(
    tmp_path: Path,
) -> None:
    path = tmp_path / "narrow.ckpt"
    save_modnet_checkpoint(MODNet(hr_channels=16), path)

    expected = r"hyperparameters: \[hr_branch\.tohr_enc2x\.layers\.0\.weight \(16, 16, 1, 1\) !="
    with pytest.raises(ValueError, match=expected):
        load_modnet_checkpoint(path)


def test_a_checkpoint_with_two_different_encoder_copies_is_rejected(tmp_path: Path) -> None:
    state = {key: value.clone() for key, value in MODNet().state_dict().items()}
    state["lr_branch.backbone.model.features.0.0.weight"] += 1
    path = tmp_path / "diverged.ckpt"
    torch.save(state, path)

    expected = r"two different copies of the shared encoder.*features\.0\.0\.weight"
    with pytest.raises(ValueError, match=expected):
        load_modnet_checkpoint(path)


def test_a_missing_checkpoint_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="MODNet checkpoint not found"):
        load_modnet_checkpoint(tmp_path / "absent.ckpt")


def test_a_file_that_is_not_a_torch_checkpoint_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "notes.ckpt"
    path.write_text("not a checkpoint")

    with pytest.raises(ValueError, match="is not a PyTorch checkpoint"):
        load_modnet_checkpoint(path)


def test_a_checkpoint_holding_something_other_than_tensors_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "hyperparameters.ckpt"
    torch.save({"lr": 0.01, "epochs": 40}, path)

    expected = r"not a plain state dict: entries that are not tensors: \[lr, epochs\]"
    with pytest.raises(ValueError, match=expected):
        load_modnet_checkpoint(path)


def test_training_mode_also_returns_the_semantic_and_detail_predictions() -> None:
    model = MODNet().train()

    semantic, detail, matte = model(torch.rand(2, 3, 64, 96) * 2 - 1, inference=False)

    assert semantic.shape == (2, 1, 4, 6)
    assert detail.shape == matte.shape == (2, 1, 64, 96)
    for prediction in (semantic, detail, matte):
        assert 0 <= prediction.min() and prediction.max() <= 1


@pytest.mark.parametrize("shape", [(1, 3, 64, 80), (1, 3, 48, 64), (1, 1, 64, 64), (3, 64, 64)])
def test_images_the_network_cannot_take_are_rejected_with_a_clear_error(
    shape: tuple[int, ...],
) -> None:
    expected = r"MODNet (needs height and width that are multiples of 32|expects an image)"
    with pytest.raises(ValueError, match=expected):
        MODNet().eval()(torch.zeros(shape))
