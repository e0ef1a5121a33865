"""Fixtures shared by several test files.

Servers: ``small_export`` exports the perturbed networks (``nontrivial_networks``) at aspect buckets
of short side 64 (64x64, 64x96, 96x64) once per session; ``small_repository`` is a ``python``-flavour repository generated from it;
``triton_servers`` starts real Triton servers on free ports (``start(repository)``), stopping them
all at the end of the session (a test module may stop its own earlier, or stop one mid-test and
start another on the same ports).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from compositor.networks.blending import BlendingUNet
from compositor.networks.defaults import MODNET_WEIGHTS_VARIABLE
from compositor.networks.factory import load_networks
from compositor.contract.spec import Resolution, aspect_buckets

# The suite never runs the published MODNet that set-up downloads: every test (and every command
# or server a test starts, which inherit the environment) sees a machine where set-up could not
# obtain it. Tests of the default path convert a small ONNX made from the shared fixture instead
# (tests/modnet_onnx_fixture.py) and point this variable at it.
# A folder of this session's own: nothing a test (or another checkout's suite) writes can appear there.
os.environ[MODNET_WEIGHTS_VARIABLE] = str(Path(tempfile.mkdtemp(prefix="compositor-tests-")) / "no-published-modnet.safetensors")

# --- Tiers ---------------------------------------------------------------------------------------
# `scripts/test.sh --quick` runs `-m "not triton and not slow"`: unit tests, no server, no export of
# whole networks, no command run in a subprocess. A test is `slow` when marked so, or when it needs
# one of these fixtures (each exports networks or starts servers once per session or module).
SLOW_FIXTURES = {"small_export", "triton_servers", "exported", "dry_run"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)

SMALL_RESOLUTION = aspect_buckets(64)
"""Network resolution of the servers tests start: aspect buckets like the default's, fast on a 2-core CPU."""


@pytest.fixture(scope="session")
def nontrivial_networks():
    """The default networks with small random residual heads on the blending and harmonization nets,
    and a blending net that corrects the matte (a random ``alpha_head``, as the shipped net has one).

    Untrained, both nets pass their input through exactly, so a wiring mistake downstream (a
    swapped input, a dropped residual, the uncorrected matte handed on) would go unnoticed; these
    heads make every net and both of blending's outputs matter.
    """
    networks = load_networks(trained_defaults=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        networks.blending = BlendingUNet(refine_alpha=True).eval()
    generator = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for net in (networks.blending, networks.harmonization):
            net.residual_head.weight.normal_(0.0, 0.2, generator=generator)
        networks.blending.alpha_head.weight.normal_(0.0, 0.5, generator=generator)
    return networks


@dataclass(frozen=True)
class SmallExport:
    """An export directory (``compositor export`` layout, report included) and what made it."""

    directory: Path
    networks: object
    resolution: Resolution


@pytest.fixture(scope="session")
def small_export(nontrivial_networks, tmp_path_factory) -> SmallExport:
    """``nontrivial_networks`` exported with ``export_all`` at ``SMALL_RESOLUTION``, once per session."""
    from compositor.export.exporter import export_all

    directory = tmp_path_factory.mktemp("small_export")
    export_all(directory, nontrivial_networks, resolution=SMALL_RESOLUTION)
    return SmallExport(directory, nontrivial_networks, SMALL_RESOLUTION)


class ServerFactory:
    """Starts real Triton servers on free ports from repositories generated from ``small_export``."""

    def __init__(self, export: SmallExport, tmp_path_factory) -> None:
        self.export = export
        self._tmp = tmp_path_factory
        self.started: list = []

    def repository(self, **options) -> Path:
        """A new repository generated from the export; ``options`` are ``RepositoryOptions`` fields."""
        from compositor.serving.configs import RepositoryOptions
        from compositor.serving.repository import generate_repository

        out = self._tmp.mktemp("repository")
        generate_repository(out, RepositoryOptions(resolution=self.export.resolution, **options), export_dir=self.export.directory)
        return out

    def start(self, repository: Path, grpc_port: int | None = None, http_port: int | None = None,
              metrics_port: int | None = None, allow_shared_memory: bool = True, allow_http_inference: bool = True,
              extra_args=()):
        """A started ``TritonServer`` (free ports unless given), stopped at the end of the session.

        Shared memory and HTTP inference are allowed by default here (``TritonServer`` refuses both
        by default), since the client's shared-memory and HTTP tests use these servers; the tests of
        the defaults ask for them off. ``extra_args`` go to ``tritonserver``.
        """
        from compositor.serving.server import TritonServer, free_port

        server = TritonServer(
            repository,
            grpc_port=grpc_port or free_port(),
            http_port=http_port or free_port(),
            metrics_port=metrics_port or free_port(),
            log_path=self._tmp.mktemp("log") / "tritonserver.log",
            allow_shared_memory=allow_shared_memory,
            allow_http_inference=allow_http_inference,
            extra_args=extra_args,
        )
        self.started.append(server)
        return server.start()

    def stop_all(self) -> None:
        for server in self.started:
            server.stop()


@pytest.fixture(scope="session")
def small_repository(triton_servers) -> Path:
    """A ``python``-flavour repository at ``SMALL_RESOLUTION`` from ``small_export`` (default options)."""
    return triton_servers.repository()


@pytest.fixture(scope="session")
def triton_servers(small_export, tmp_path_factory):
    """A ``ServerFactory``; every server it started is stopped at the end of the session."""
    factory = ServerFactory(small_export, tmp_path_factory)
    yield factory
    factory.stop_all()


@pytest.fixture(scope="session")
def small_server(triton_servers, small_repository):
    """One server on ``small_repository`` for the tests that only send requests (never stop it)."""
    return triton_servers.start(small_repository)


@pytest.fixture(scope="module")
def own_server(triton_servers, small_repository):
    """A server on ``small_repository`` for one test module alone, stopped when the module is done.

    Module scope: each module that asks for it gets its own instance, one nothing else touched.
    """
    server = triton_servers.start(small_repository)
    yield server
    server.stop()
