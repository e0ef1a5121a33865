"""Fixtures shared by several test files."""

import pytest
import torch

from compositor.networks.factory import load_networks


@pytest.fixture(scope="session")
def nontrivial_networks():
    """The default networks with small random residual heads on the blending and harmonization nets.

    Untrained, both nets pass their input through exactly, so a wiring mistake downstream (a
    swapped input, a dropped residual) would go unnoticed; these heads make every net matter.
    """
    networks = load_networks(trained_defaults=False)
    generator = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for net in (networks.blending, networks.harmonization):
            net.residual_head.weight.normal_(0.0, 0.2, generator=generator)
    return networks
