"""``compositor serve`` killed with SIGKILL takes Triton and its Python-backend stubs with it.

SIGKILL gives the command no chance to stop the server; the server learns of it through Linux's
parent-death signal (``PR_SET_PDEATHSIG``), drains, unloads its models and exits. Before that,
Triton and its stubs kept running and holding the ports after the command was gone.
"""

from __future__ import annotations

import queue
import signal
import subprocess
import threading
import time
from pathlib import Path

import psutil
import pytest

from triton_probes import free_ports, is_gone, port_is_free, serve_command, write_identity_repository

GONE_WITHIN_S = 30.0
"""Triton's own drain on SIGTERM is bounded by --exit-timeout-secs (30 s); with nothing in flight it
takes about a second."""


def start_serve(tmp_path: Path, stderr: int) -> tuple[subprocess.Popen, dict[str, int]]:
    """``compositor serve`` on a two-instance identity repository in ``tmp_path``, on free ports
    (returned keyed ``grpc``, ``http``, ``metrics``)."""
    repository = write_identity_repository(tmp_path / "repository", instances=2)
    ports = free_ports()
    command = serve_command(repository, ports) + ["--log-file", str(tmp_path / "triton.log")]
    serve = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True)
    return serve, {name.removesuffix("_port"): port for name, port in ports.items()}


def wait_for_line(process: subprocess.Popen, text: str, timeout_s: float) -> str:
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
    seen = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            seen.append(lines.get(timeout=0.2))
        except queue.Empty:
            assert process.poll() is None, "compositor serve exited:\n" + "".join(seen)
            continue
        if text in seen[-1]:
            return "".join(seen)
    raise AssertionError(f"no {text!r} within {timeout_s} s in:\n" + "".join(seen))


@pytest.mark.triton
def test_sigkill_of_the_serve_command_takes_triton_its_stubs_their_shared_memory_and_the_ports_with_it(tmp_path):
    serve, ports = start_serve(tmp_path, stderr=subprocess.STDOUT)
    tree: list[psutil.Process] = []
    regions: list[Path] = []
    try:
        wait_for_line(serve, "Triton ready", timeout_s=60)
        tree = psutil.Process(serve.pid).children(recursive=True)
        servers = [p for p in tree if p.name() == "tritonserver"]
        stubs = [p.cmdline() for p in tree if "triton_python_backend_stub" in " ".join(p.cmdline())]
        assert len(servers) == 1 and len(stubs) == 2, [p.cmdline() for p in tree]
        regions = [Path("/dev/shm") / argv[2] for argv in stubs]
        assert all(region.exists() for region in regions)

        serve.send_signal(signal.SIGKILL)
        serve.wait(timeout=10)
        deadline = time.monotonic() + GONE_WITHIN_S
        while time.monotonic() < deadline and not all(is_gone(p) for p in tree):
            time.sleep(0.2)
        assert [p.cmdline()[:1] for p in tree if not is_gone(p)] == []
        assert [port for port in ports.values() if not port_is_free(port)] == []
        assert [region for region in regions if region.exists()] == []
    finally:
        serve.kill()
        serve.wait()
        survivors = [process for process in tree if not is_gone(process)]
        for process in survivors:  # whatever outlived the command must not outlive the test
            process.kill()
        psutil.wait_procs(survivors, timeout=5)
        for region in regions:  # killed servers cannot unlink their regions
            region.unlink(missing_ok=True)


@pytest.mark.triton
def test_a_dead_model_process_stops_the_serve_command_so_health_checks_tell_the_truth(tmp_path):
    # Triton 2.51 neither restarts a dead stub nor stops answering ready (tests/test_faults.py shows
    # it); the serve command notices, stops Triton and exits non-zero, naming the model.
    # stdout carries "Triton ready"; the error goes to stderr, read whole once the command exits.
    serve, ports = start_serve(tmp_path, stderr=subprocess.PIPE)
    tree: list[psutil.Process] = []
    try:
        wait_for_line(serve, "Triton ready", timeout_s=60)
        tree = psutil.Process(serve.pid).children(recursive=True)
        stubs = [p for p in tree if "triton_python_backend_stub" in " ".join(p.cmdline())]
        assert len(stubs) == 2
        stubs[0].kill()
        _, output = serve.communicate(timeout=GONE_WITHIN_S + 30)
        assert serve.returncode == 2, output
        assert "the process of model(s) identity died" in output, output
        deadline = time.monotonic() + GONE_WITHIN_S
        while time.monotonic() < deadline and not all(is_gone(p) for p in tree):
            time.sleep(0.2)
        assert [p.cmdline()[:1] for p in tree if not is_gone(p)] == []
        assert port_is_free(ports["http"])  # health probes now fail: the truth
    finally:
        serve.kill()
        serve.wait()
        survivors = [process for process in tree if not is_gone(process)]
        for process in survivors:
            process.kill()
        psutil.wait_procs(survivors, timeout=5)
