"""The client reads the deployment from the server: names, limits, resolution, weights' provenance.

Two real servers for the module, both from the session's export (aspect buckets, short side 64): one runs a repository
generated with the standard model names and a non-default max batch (3), the other a copy in which
every model the client could look for by name is renamed. Neither test tells the client a name.
"""

from __future__ import annotations

import logging
import re
import shutil

import numpy as np
import pytest

from compositor.client.deployment import DeploymentError, read_deployment
from compositor.client.remote import CompositorClient
from compositor.imaging import ImageError
from compositor.contract.spec import aspect_buckets

pytestmark = pytest.mark.triton

PROTOCOLS = ("grpc", "http")
MAX_BATCH = 3
RENAMED = {"composite": "portrait", "composite_with_alpha": "portrait_own_matte", "matting": "modnet",
           "blending": "seamless", "harmonization": "colour_match", "preprocess": "prepare", "postprocess": "finish"}


def rename_models(repository, names: dict[str, str]) -> None:
    """Rename models in a generated repository: their folders, their config's name and ensemble steps."""
    for old, new in names.items():
        (repository / old).rename(repository / new)
    for config in repository.glob("*/config.pbtxt"):
        text = config.read_text()
        for old, new in names.items():
            # The model's own name is the one unindented ``name:`` line; tensors' names are nested.
            text = re.sub(rf'^name: "{old}"$', f'name: "{new}"', text, flags=re.M)
            text = re.sub(rf'(\n\s+model_name: )"{old}"', rf'\1"{new}"', text)
        config.write_text(text)


@pytest.fixture(scope="module")
def standard(triton_servers):
    return triton_servers.start(triton_servers.repository(max_batch=MAX_BATCH))


@pytest.fixture(scope="module")
def renamed(triton_servers, small_repository, tmp_path_factory):
    repository = tmp_path_factory.mktemp("renamed") / "repository"
    shutil.copytree(small_repository, repository)
    rename_models(repository, RENAMED)
    return triton_servers.start(repository)


def url_of(server, protocol):
    return server.grpc_url if protocol == "grpc" else server.http_url


def triton_client(server, protocol):
    if protocol == "grpc":
        import tritonclient.grpc as module
    else:
        import tritonclient.http as module
    return module.InferenceServerClient(url_of(server, protocol))


def test_a_client_warns_once_per_server_that_networks_are_untrained(standard, caplog):
    # The first test of the module: no client has read this server's deployment over HTTP yet.
    source, background = np.zeros((16, 16, 3), np.uint8), np.zeros((16, 16, 3), np.uint8)
    with caplog.at_level(logging.WARNING, logger="compositor.client"):
        for _ in range(2):
            with CompositorClient(standard.http_url, protocol="http") as client:
                client.composite(source, background)
    warnings = [r.getMessage() for r in caplog.records if "UNTRAINED" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert standard.http_url in warnings[0] and "matting, blending, harmonization" in warnings[0]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_names_batch_limit_and_resolution_come_from_the_server(standard, protocol):
    deployment = read_deployment(triton_client(standard, protocol), protocol, url_of(standard, protocol))
    assert deployment.composite == "composite"
    assert deployment.composite_with_alpha == "composite_with_alpha"
    assert deployment.max_batch_size == MAX_BATCH
    assert deployment.resolution == aspect_buckets(64)
    assert deployment.max_image_side == 8192
    assert deployment.networks == {"matting": "matting", "blending": "blending", "harmonization": "harmonization"}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_renamed_models_are_found_by_their_signature_and_used(renamed, protocol):
    url = url_of(renamed, protocol)
    deployment = read_deployment(triton_client(renamed, protocol), protocol, url)
    assert (deployment.composite, deployment.composite_with_alpha) == ("portrait", "portrait_own_matte")
    assert deployment.networks == {"matting": "modnet", "blending": "seamless", "harmonization": "colour_match"}
    assert deployment.resolution == aspect_buckets(64)
    source = np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    background = np.full((20, 20, 3), 90, np.uint8)
    matte = np.full((40, 30, 1), 255, np.uint8)
    with CompositorClient(url, protocol=protocol) as client:
        assert client.model == "portrait"
        outputs = client.composite(source, background)
        assert outputs["harmonized"].shape == (40, 30, 3)
        # An opaque matte keeps the source (up to the networks' residual at the edges of the canvas).
        with_matte = client.composite(source, background, matte)
        assert np.array_equal(with_matte["alpha"], matte)
        assert np.abs(with_matte["blended"].astype(int) - source).mean() < np.abs(background.mean() - source.astype(int)).mean()


def test_the_weights_provenance_of_each_network_is_read_from_the_repository(standard):
    deployment = read_deployment(triton_client(standard, "grpc"), "grpc", standard.grpc_url)
    # small_export holds the seeded networks: the export records them as untrained.
    assert {name: record["kind"] for name, record in deployment.provenance.items()} == {
        "matting": "untrained", "blending": "untrained", "harmonization": "untrained"}
    assert deployment.untrained_networks() == ["matting", "blending", "harmonization"]


def test_a_batch_over_the_servers_limit_fails_locally_with_the_limit(standard):
    frames = np.zeros((MAX_BATCH + 1, 16, 16, 3), np.uint8)
    with CompositorClient(standard.grpc_url) as client:
        with pytest.raises(ImageError, match=rf"batch {MAX_BATCH + 1} is more than the {MAX_BATCH} frames per request"):
            client.composite(frames, frames)


def test_a_server_without_the_ensembles_is_not_a_deployment(triton_servers, small_repository, tmp_path_factory):
    repository = tmp_path_factory.mktemp("networks_only") / "repository"
    shutil.copytree(small_repository, repository)
    for ensemble in ("composite", "composite_with_alpha"):
        shutil.rmtree(repository / ensemble)
    server = triton_servers.start(repository)
    try:
        with CompositorClient(server.grpc_url) as client:
            with pytest.raises(DeploymentError, match=r"serves no ready ensemble with the inputs source, background .*"
                               r"models there: blending, harmonization, matting, postprocess, preprocess"):
                client.composite(np.zeros((16, 16, 3), np.uint8), np.zeros((16, 16, 3), np.uint8))
    finally:
        server.stop()
