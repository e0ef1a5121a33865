"""The blending and harmonization U-Nets and their weight files."""

import pytest
import torch

from compositor.networks.blending import BlendingUNet
from compositor.networks.harmonization import AttentionGate, HarmonizationUNet, MaskedAdaIN
from compositor.networks.weights import load_network, read_metadata, save_network


def _images(batch=2, size=(64, 96), seed=0):
    generator = torch.Generator().manual_seed(seed)
    source = torch.rand(batch, 3, *size, generator=generator)
    alpha = torch.rand(batch, 1, *size, generator=generator)
    background = torch.rand(batch, 3, *size, generator=generator)
    return source, alpha, background


def _randomise_head(net):
    with torch.no_grad():
        net.residual_head.weight.normal_(0, 0.1)
        net.residual_head.bias.normal_(0, 0.1)


@torch.no_grad()
def test_untrained_blending_net_equals_linear_alpha_blending_exactly():
    source, alpha, background = _images()
    blended = BlendingUNet().eval()(source, alpha, background)
    assert torch.equal(blended, alpha * source + (1 - alpha) * background)


@torch.no_grad()
def test_blending_net_with_a_trained_head_departs_from_linear_blending():
    source, alpha, background = _images()
    net = BlendingUNet().eval()
    _randomise_head(net)
    blended = net(source, alpha, background)
    assert (blended - (alpha * source + (1 - alpha) * background)).abs().max() > 1e-3
    assert blended.min() >= 0 and blended.max() <= 1


@torch.no_grad()
def test_untrained_harmonization_net_returns_its_input_composite():
    composite, mask, background = _images()
    harmonized = HarmonizationUNet().eval()(composite, mask, background)
    assert torch.equal(harmonized, composite)


@torch.no_grad()
def test_harmonization_residual_never_touches_pixels_outside_the_mask():
    composite, _, background = _images()
    mask = torch.zeros(2, 1, 64, 96)
    mask[..., 16:48, 32:64] = 1.0
    net = HarmonizationUNet().eval()
    _randomise_head(net)
    harmonized = net(composite, mask, background)
    outside = mask.expand_as(composite) == 0
    assert torch.equal(harmonized[outside], composite[outside])
    assert (harmonized - composite)[~outside].abs().max() > 1e-3


def test_harmonization_net_gates_the_three_outer_decoder_levels_and_encodes_background_at_each():
    net = HarmonizationUNet(levels=5)
    gated = [isinstance(gate, AttentionGate) for gate in net.attention_gates]
    assert gated == [False, True, True, True]
    assert len(net.background_encoders) == len(net.decoders) == 4
    for encoder in net.background_encoders:
        convs = [m for m in encoder if isinstance(m, torch.nn.Conv2d)]
        assert [c.kernel_size for c in convs] == [(3, 3), (3, 3)]


def test_masked_adain_gives_the_foreground_the_background_statistics():
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(1, 4, 32, 32, generator=generator) * 3 + 2
    background = torch.randn(1, 4, 32, 32, generator=generator) * 0.5 - 1
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 8:24, 8:24] = 1.0
    out = MaskedAdaIN()(features, mask, background)
    inside = out[..., 8:24, 8:24]
    torch.testing.assert_close(inside.mean(dim=(2, 3)), background.mean(dim=(2, 3)), atol=1e-4, rtol=0)
    torch.testing.assert_close(
        inside.std(dim=(2, 3), unbiased=False), background.std(dim=(2, 3), unbiased=False), atol=1e-3, rtol=1e-3
    )
    assert torch.equal(out[..., :8, :], features[..., :8, :])


@pytest.mark.parametrize("cls", [BlendingUNet, HarmonizationUNet])
def test_weights_round_trip_with_architecture_and_provenance(tmp_path, cls):
    torch.manual_seed(3)
    net = cls(base_channels=8, levels=3).eval()
    _randomise_head(net)
    path = save_network(net, tmp_path / "net.safetensors", provenance={"trained_on": "unit test", "steps": 0})
    metadata = read_metadata(path)
    assert metadata["architecture"] == cls.__name__
    assert metadata["hyperparameters"] == {"base_channels": 8, "levels": 3}
    assert metadata["provenance"] == {"trained_on": "unit test", "steps": 0}
    loaded = load_network(path, expected=cls)
    inputs = _images(batch=1, size=(32, 32))
    with torch.no_grad():
        assert torch.equal(loaded(*inputs), net(*inputs))
    assert not list(tmp_path.glob("*.partial"))


def test_loading_weights_of_the_wrong_architecture_names_both(tmp_path):
    path = save_network(BlendingUNet(base_channels=4, levels=2), tmp_path / "blend.safetensors")
    with pytest.raises(ValueError, match="holds a BlendingUNet, but a HarmonizationUNet is needed"):
        load_network(path, expected=HarmonizationUNet)


def test_a_pickle_is_refused_as_weights_file(tmp_path):
    path = tmp_path / "net.pt"
    torch.save(BlendingUNet(base_channels=4, levels=2).state_dict(), path)
    with pytest.raises(ValueError, match="not a safetensors weights file"):
        load_network(path)


def test_the_tone_transform_harmonizer_runs_on_non_square_inputs_and_is_the_identity_untrained():
    torch.manual_seed(0)
    net = HarmonizationUNet(base_channels=8, tone_transform=True).eval()
    composite, background = torch.rand(1, 3, 64, 96), torch.rand(1, 3, 64, 96)
    mask = torch.zeros(1, 1, 64, 96)
    mask[..., 16:, 24:72] = 1.0
    with torch.no_grad():
        harmonized = net(composite, mask, background)
    assert harmonized.shape == (1, 3, 64, 96)
    assert (harmonized - composite).abs().max() < 1e-3
