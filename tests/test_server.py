"""The Triton launcher against the real server binary from the nvidia-pytriton wheel.

Each test writes a tiny repository (a Python-backend ``identity`` model) into ``tmp_path``; the
inference tests prove the stub runs with this environment's numpy (an identity model run with the
wrong numpy answers with empty or malformed outputs).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from compositor.serving.triton_binary import TritonNotFoundError, find_stub, find_triton
from compositor.serving.server import ServerStartError, TritonServer
from compositor.serving.server_log import diagnose_log, new_log_path

from triton_probes import ServeProcess, free_ports, port_is_free, process_tree, processes_serving, serve_command, write_identity_repository

ENSEMBLE_CONFIG = """\
name: "identity_twice"
platform: "ensemble"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
ensemble_scheduling {
  step [
    { model_name: "identity" model_version: -1
      input_map { key: "INPUT0" value: "INPUT0" } output_map { key: "OUTPUT0" value: "middle" } },
    { model_name: "identity" model_version: -1
      input_map { key: "INPUT0" value: "middle" } output_map { key: "OUTPUT0" value: "OUTPUT0" } }
  ]
}
"""


@pytest.fixture(scope="module")
def identity_server(tmp_path_factory):
    repository = write_identity_repository(tmp_path_factory.mktemp("repository"))
    (repository / "identity_twice" / "1").mkdir(parents=True)
    (repository / "identity_twice" / "config.pbtxt").write_text(ENSEMBLE_CONFIG)
    with TritonServer(repository, **free_ports(), allow_http_inference=True) as server:  # test_an_inference_over_http_...
        yield server


def test_find_triton_picks_the_stub_of_this_python():
    installation = find_triton()
    assert installation.binary.is_file()
    assert installation.stub.parent.name == f"{sys.version_info.major}.{sys.version_info.minor}"
    assert installation.python_bin_dir == Path(sys.executable).parent
    env = installation.environment({"PATH": "/usr/bin", "LD_LIBRARY_PATH": "/opt/lib"})
    assert env["PATH"].split(":")[0] == str(Path(sys.executable).parent)
    assert env["LD_LIBRARY_PATH"].endswith(":/opt/lib")


def test_the_server_keeps_freed_memory_in_the_heap_unless_the_caller_says_otherwise():
    installation = find_triton()
    env = installation.environment({"PATH": "/usr/bin"})
    assert env["MALLOC_MMAP_THRESHOLD_"] == str(32 * 2**20)
    assert env["MALLOC_TRIM_THRESHOLD_"] == str(512 * 2**20)
    assert installation.environment({"PATH": "/usr/bin", "MALLOC_MMAP_THRESHOLD_": "4096"})["MALLOC_MMAP_THRESHOLD_"] == "4096"


def test_a_python_without_a_stub_is_a_clear_error(tmp_path):
    (tmp_path / "3.11").mkdir()
    (tmp_path / "3.12").mkdir()
    with pytest.raises(TritonNotFoundError, match=r"no Triton Python-backend stub for Python 3.99 .*3.11, 3.12"):
        find_stub(tmp_path, "3.99")


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            """E1127 11:09:56.727987 3089 main.cc:257] "failed to start HTTP service: """
            """Unavailable - Socket '127.0.0.1:18000' already in use \"""",
            "HTTP port 18000 on 127.0.0.1 is already in use",
        ),
        (
            """E1127 11:09:53.713148 3051 model_lifecycle.cc:642] "failed to load 'broken' version 1: """
            """Internal: RuntimeError: boom\\n\\nAt:\\n  model.py(7): initialize\\n\"""",
            "model 'broken' failed to load: Internal: RuntimeError: boom\n\nAt:\n  model.py(7): initialize",
        ),
        (
            """E1127 11:13:42.556331 5746 model_repository_manager.cc:1460] "Poll failed for model """
            """directory 'identity': failed to read text proto from /r/identity/config.pbtxt\"""",
            "model 'identity' failed to load: failed to read text proto from /r/identity/config.pbtxt",
        ),
        ("""error: creating server: Internal - failed to stat file /nope""", "failed to stat file /nope"),
        ("""I1127 11:09:43.391192 2915 model_lifecycle.cc:839] "successfully loaded 'identity'\"""", None),
    ],
)
def test_the_log_diagnosis_names_the_cause(line, expected):
    message = diagnose_log(line, {18000: "HTTP"})
    if expected is None:
        assert message is None
    else:
        assert expected in message


@pytest.mark.triton
def test_the_server_binds_only_to_loopback_and_is_ready(identity_server):
    assert identity_server.is_running()
    listening = {
        (conn.laddr.ip, conn.laddr.port)
        for conn in psutil.Process(identity_server.pid).net_connections(kind="tcp")
        if conn.status == psutil.CONN_LISTEN
    }
    ports = {identity_server.grpc_port, identity_server.http_port, identity_server.metrics_port}
    assert {port for _, port in listening} >= ports
    # gRPC listens on an IPv4-mapped IPv6 socket: ::ffff:127.0.0.1.
    assert all(ip in ("127.0.0.1", "::ffff:127.0.0.1") for ip, port in listening if port in ports), listening


@pytest.mark.triton
def test_an_inference_over_grpc_returns_the_input(identity_server):
    import tritonclient.grpc as grpcclient

    data = np.arange(10, dtype=np.float32).reshape(2, 5) / 7
    client = grpcclient.InferenceServerClient(identity_server.grpc_url)
    assert client.is_model_ready("identity")
    infer_input = grpcclient.InferInput("INPUT0", list(data.shape), "FP32")
    infer_input.set_data_from_numpy(data)
    result = client.infer("identity", [infer_input], outputs=[grpcclient.InferRequestedOutput("OUTPUT0")])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data)


@pytest.mark.triton
def test_an_ensemble_of_python_models_returns_the_input(identity_server):
    import tritonclient.grpc as grpcclient

    data = np.full((1, 3), 0.25, dtype=np.float32)
    client = grpcclient.InferenceServerClient(identity_server.grpc_url)
    infer_input = grpcclient.InferInput("INPUT0", list(data.shape), "FP32")
    infer_input.set_data_from_numpy(data)
    np.testing.assert_array_equal(client.infer("identity_twice", [infer_input]).as_numpy("OUTPUT0"), data)


@pytest.mark.triton
def test_an_inference_over_http_returns_the_input(identity_server):
    import tritonclient.http as httpclient

    data = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    client = httpclient.InferenceServerClient(identity_server.http_url)
    infer_input = httpclient.InferInput("INPUT0", list(data.shape), "FP32")
    infer_input.set_data_from_numpy(data, binary_data=True)
    result = client.infer("identity", [infer_input])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data)


@pytest.mark.triton
def test_a_busy_port_fails_fast_naming_the_port(tmp_path):
    repository = write_identity_repository(tmp_path / "repository")
    ports = free_ports()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", ports["http_port"]))
        squatter.listen()
        started = time.monotonic()
        with pytest.raises(ServerStartError, match=f"HTTP port {ports['http_port']} on 127.0.0.1"):
            TritonServer(repository, **ports).start()
    assert time.monotonic() - started < 5


@pytest.mark.triton
def test_a_model_failing_to_load_fails_fast_with_its_name_and_the_log_is_kept_where_the_error_says(tmp_path):
    repository = write_identity_repository(tmp_path / "repository", name="broken", fail_in_initialize=True)
    server = TritonServer(repository, **free_ports())
    started = time.monotonic()
    with pytest.raises(ServerStartError, match=r"(?s)model 'broken' failed to load.*deliberate failure") as caught:
        server.start(timeout_s=60)
    assert time.monotonic() - started < 20
    assert not server.is_running()
    assert process_tree(server.pid) == []
    assert f"the whole server log is kept in {server.log_path};" in str(caught.value)
    assert server.log_path.parent == Path(tempfile.gettempdir()) / "compositor-triton-logs"
    assert "deliberate failure in initialize" in server.log_path.read_text()


def test_a_new_log_in_the_default_folder_leaves_only_the_newest_older_logs(tmp_path):
    for age_s in range(5):
        old = tmp_path / f"tritonserver-old{age_s}.log"
        old.write_text("old")
        os.utime(old, (time.time() - 100 * age_s,) * 2)
    (tmp_path / "notes.txt").write_text("not a log")
    new = new_log_path(tmp_path, keep=3)
    assert new.is_file() and new.read_text() == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["tritonserver-old0.log", "tritonserver-old1.log", new.name, "notes.txt"]
    )
    assert new_log_path(tmp_path, keep=3) != new


@pytest.mark.triton
def test_a_missing_repository_is_a_clear_error(tmp_path):
    with pytest.raises(ServerStartError, match="model repository .*missing does not exist"):
        TritonServer(tmp_path / "missing", **free_ports()).start()


@pytest.mark.triton
def test_stop_leaves_no_process_behind(tmp_path):
    repository = write_identity_repository(tmp_path / "repository")
    server = TritonServer(repository, **free_ports()).start()
    tree = process_tree(server.pid)
    assert any("triton_python_backend_stub" in " ".join(p.cmdline()) for p in tree)
    assert server.stop() == 0
    _, alive = psutil.wait_procs(tree, timeout=5)
    assert alive == []
    assert port_is_free(server.http_port)


@pytest.mark.triton
def test_a_server_deaf_to_sigint_and_sigterm_is_killed_with_its_stubs_and_shared_memory(tmp_path):
    repository = write_identity_repository(tmp_path / "repository")
    server = TritonServer(repository, **free_ports()).start()
    tree = process_tree(server.pid)
    stub_args = [p.cmdline() for p in tree if "triton_python_backend_stub" in " ".join(p.cmdline())]
    shm_region = Path("/dev/shm") / stub_args[0][2]
    assert shm_region.exists()
    server._process.send_signal(signal.SIGSTOP)  # a stopped process handles no signal but SIGKILL
    started = time.monotonic()
    assert server.stop(timeout_s=0.5) == -signal.SIGKILL
    assert time.monotonic() - started < 10
    _, alive = psutil.wait_procs(tree, timeout=5)
    assert alive == []
    assert not shm_region.exists()


@pytest.mark.triton
def test_the_serve_command_becomes_ready_and_exits_0_on_sigint(tmp_path):
    repository = write_identity_repository(tmp_path / "repository")
    ports = free_ports()
    serve = ServeProcess(serve_command(repository, ports))
    try:
        serve.wait_for("Triton ready")
        assert f"gRPC 127.0.0.1:{ports['grpc_port']}" in serve.text
        serve.process.send_signal(signal.SIGINT)
        assert serve.process.wait(timeout=30) == 0, serve.text
        serve.wait_for("Triton stopped")
    finally:
        serve.kill()
    assert processes_serving(repository) == []
    for port in ports.values():
        assert port_is_free(port)
    kept = re.search(r"SIGINT: Triton stopped \(exit code 0\); its log is kept in (\S+)", serve.text)
    assert kept, serve.text
    log = Path(kept[1])
    assert log.parent == Path(tempfile.gettempdir()) / "compositor-triton-logs"
    assert "successfully loaded 'identity'" in log.read_text()


@pytest.mark.triton
def test_print_log_copies_the_server_log_to_stdout_and_keeps_the_file(tmp_path):
    repository = write_identity_repository(tmp_path / "repository")
    log = tmp_path / "triton.log"
    serve = ServeProcess(serve_command(repository, free_ports()) + ["--print-log", "--log-file", str(log)])
    try:
        serve.wait_for("successfully loaded 'identity'")  # a line only Triton's log has
        serve.process.send_signal(signal.SIGINT)
        assert serve.process.wait(timeout=30) == 0, serve.text
        serve.wait_for("Triton stopped")
    finally:
        serve.kill()
    assert "successfully loaded 'identity'" in log.read_text()


@pytest.mark.triton
def test_a_sigint_while_the_serve_command_starts_leaves_no_server_behind(tmp_path):
    repository = write_identity_repository(tmp_path / "repository")
    serve = ServeProcess(serve_command(repository, free_ports()))
    try:
        serve.wait_for("starting Triton")
        serve.process.send_signal(signal.SIGINT)
        assert serve.process.wait(timeout=30) == 130, serve.text
    finally:
        serve.kill()
    assert processes_serving(repository) == []


@pytest.mark.triton
def test_the_serve_command_reports_a_busy_port_and_exits_non_zero(tmp_path):
    repository = write_identity_repository(tmp_path / "repository")
    ports = free_ports()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", ports["grpc_port"]))
        squatter.listen()
        result = subprocess.run(serve_command(repository, ports), capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert f"gRPC port {ports['grpc_port']} on 127.0.0.1" in result.stderr


def test_the_serve_help_has_an_example(capsys):
    from compositor.cli import build_parser

    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["serve", "--help"])
    assert exit_info.value.code == 0
    assert "compositor serve --repository" in capsys.readouterr().out


# --- missing or corrupt model files: a clear error at generation or at start ---------------------


@pytest.mark.parametrize("damage", ["truncated", "not onnx"])
def test_repository_generation_names_a_corrupt_onnx_file(small_export, tmp_path, damage):
    from compositor.serving.configs import RepositoryOptions
    from compositor.serving.repository import CorruptModelFileError, generate_repository

    export = shutil.copytree(small_export.directory, tmp_path / "export")
    onnx_file = export / "blending.onnx"
    content = onnx_file.read_bytes()
    onnx_file.write_bytes(content[: len(content) // 2] if damage == "truncated" else b"<html>not a model</html>")
    options = RepositoryOptions(resolution=small_export.resolution)
    with pytest.raises(CorruptModelFileError, match=r"blending\.onnx is not a valid ONNX model.*compositor export"):
        generate_repository(tmp_path / "repository", options, export_dir=export)
    assert not (tmp_path / "repository" / "blending" / "1" / "model.onnx").exists()


def test_repository_generation_names_a_missing_onnx_file(small_export, tmp_path):
    from compositor.serving.configs import RepositoryOptions
    from compositor.serving.repository import MissingModelFilesError, generate_repository

    export = shutil.copytree(small_export.directory, tmp_path / "export")
    (export / "harmonization.onnx").unlink()
    with pytest.raises(MissingModelFilesError, match=r"needs harmonization\.onnx in .*export"):
        generate_repository(tmp_path / "repository", RepositoryOptions(resolution=small_export.resolution), export_dir=export)


@pytest.mark.triton
@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_a_corrupt_or_missing_model_file_in_a_repository_fails_the_start_naming_the_model(triton_servers, damage):
    repository = triton_servers.repository()
    model_file = repository / "matting" / "1" / "model.onnx"
    if damage == "missing":
        model_file.unlink()
    else:
        model_file.write_bytes(model_file.read_bytes()[:1000])
    server = TritonServer(repository, **free_ports())
    started = time.monotonic()
    with pytest.raises(ServerStartError, match=r"model 'matting' failed to load"):
        server.start(timeout_s=120)
    assert time.monotonic() - started < 60
    assert process_tree(server.pid) == []


@pytest.mark.triton
def test_a_server_started_from_a_worker_thread_outlives_the_thread(tmp_path):
    # The parent-death signal fires when the *thread* that forked exits; only the main thread's
    # servers get it, or a pool's worker thread ending would take its server with it.
    repository = write_identity_repository(tmp_path / "repository")
    started: list[TritonServer] = []
    worker = threading.Thread(target=lambda: started.append(TritonServer(repository, **free_ports()).start()))
    worker.start()
    worker.join(timeout=60)
    server = started[0]
    try:
        time.sleep(3)  # a server that got the signal would have drained and exited by now
        assert server.is_running()
        import tritonclient.http as httpclient

        assert httpclient.InferenceServerClient(server.http_url).is_server_ready()
    finally:
        server.stop()


def test_stale_stub_regions_are_swept_and_live_young_or_foreign_ones_kept(tmp_path):
    """Regions a killed server left behind go; one a live process maps, one just made, and names
    that are not a stub's stay (the real /dev/shm, with names of this test's own)."""
    import mmap
    import uuid

    from compositor.serving.processes import SHM_DIR, STUB_REGION_PREFIX, sweep_stale_stub_regions

    tag = uuid.uuid4().hex[:8]
    old = time.time() - 3600
    stale, mapped, young = (SHM_DIR / f"{STUB_REGION_PREFIX}test-{tag}-{kind}" for kind in ("stale", "mapped", "young"))
    other = SHM_DIR / f"not-a-stub-{tag}"
    for path in (stale, mapped, young, other):
        path.write_bytes(b"\0" * 4096)
    for path in (stale, mapped, other):
        os.utime(path, (old, old))
    try:
        with open(mapped, "r+b") as handle, mmap.mmap(handle.fileno(), 4096):
            swept = sweep_stale_stub_regions()
            assert stale.name in swept and not stale.exists()
            assert mapped.exists() and young.exists() and other.exists()
            assert not {mapped.name, young.name} & set(swept)
    finally:
        for path in (stale, mapped, young, other):
            path.unlink(missing_ok=True)
