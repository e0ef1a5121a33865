"""``compositor serve --triton-root``: an installed Triton (NVIDIA's container layout) instead of the wheel's.

NVIDIA's Triton container has ``/opt/tritonserver/bin/tritonserver`` and ``/opt/tritonserver/backends``
(python with its stub, tensorrt, onnxruntime, ...), its libraries on the container's library path.
The GPU image runs ``compositor serve --triton-root /opt/tritonserver``. That container cannot run
here, so these tests lay the wheel's own Triton out the same way (links to the real binary, backend
and stub; its libraries on ``LD_LIBRARY_PATH``, as the container sets them) and run it from there.
"""

from __future__ import annotations

import os
import urllib.request
from pathlib import Path

import numpy as np
import psutil
import pytest
import tritonclient.grpc

from compositor.cli import main
from compositor.serving.triton_binary import TritonNotFoundError, find_installed_triton, find_triton
from compositor.serving.server import TritonServer

from triton_probes import ServeProcess, free_ports, serve_command, write_identity_repository


def container_layout(root: Path) -> Path:
    """The wheel's Triton laid out as ``/opt/tritonserver`` is in NVIDIA's container."""
    wheel = find_triton()
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "tritonserver").symlink_to(wheel.binary)
    python = root / "backends" / "python"
    python.mkdir(parents=True)
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        (python / name).symlink_to(wheel.python_backend_dir / name)
    (python / "triton_python_backend_stub").symlink_to(wheel.stub)
    (root / "caches").symlink_to(wheel.cache_dir)
    return root


@pytest.fixture
def container_environment(monkeypatch):
    """``LD_LIBRARY_PATH`` as the container sets it for its own Triton (here: the wheel's libraries)."""
    libraries = os.pathsep.join(str(d) for d in find_triton().library_dirs)
    monkeypatch.setenv("LD_LIBRARY_PATH", libraries)
    return {**os.environ, "LD_LIBRARY_PATH": libraries}


def test_a_folder_that_is_not_a_triton_installation_is_refused_naming_what_is_missing(tmp_path):
    with pytest.raises(TritonNotFoundError, match=r"bin/tritonserver is missing \(expected the layout of /opt/tritonserver"):
        find_installed_triton(tmp_path)
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "tritonserver").write_text("")
    with pytest.raises(TritonNotFoundError, match="backends/python/libtriton_python.so is missing"):
        find_installed_triton(tmp_path)


def test_the_serve_command_reports_a_wrong_triton_root(tmp_path, capsys):
    repository = write_identity_repository(tmp_path / "repository")
    assert main(["serve", "--repository", str(repository), "--triton-root", str(tmp_path / "nothing")]) == 2
    assert "nothing is not a Triton installation: " in capsys.readouterr().err


@pytest.mark.triton
def test_an_installed_triton_serves_with_its_own_backends_folder(tmp_path, container_environment):
    root = container_layout(tmp_path / "opt-tritonserver")
    repository = write_identity_repository(tmp_path / "repository")
    server = TritonServer(repository, **free_ports(), triton_root=root)
    with server:
        argv = psutil.Process(server.pid).cmdline()
        assert argv[0] == str(root / "bin" / "tritonserver")
        assert f"--backend-directory={root / 'backends'}" in argv  # as it is: tensorrt etc. would be there
        with tritonclient.grpc.InferenceServerClient(server.grpc_url) as client:
            data = np.arange(6, dtype=np.float32).reshape(2, 3)
            tensor = tritonclient.grpc.InferInput("INPUT0", list(data.shape), "FP32")
            tensor.set_data_from_numpy(data)
            result = client.infer("identity", [tensor]).as_numpy("OUTPUT0")
        assert np.array_equal(result, data)


@pytest.mark.triton
def test_the_serve_command_runs_an_installed_triton(tmp_path, container_environment):
    root = container_layout(tmp_path / "opt-tritonserver")
    repository = write_identity_repository(tmp_path / "repository")
    ports = free_ports()
    serve = ServeProcess(serve_command(repository, ports) + ["--triton-root", str(root)])
    try:
        serve.wait_for("Triton ready")
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"http://127.0.0.1:{ports['http_port']}/v2/health/ready", timeout=10) as response:
            assert response.status == 200
        tritons = [p for p in psutil.Process(serve.process.pid).children() if p.name() == "tritonserver"]
        assert [p.cmdline()[0] for p in tritons] == [str(root / "bin" / "tritonserver")]
    finally:
        serve.kill()
