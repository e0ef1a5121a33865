"""What several server tests need to look at a running Triton from outside, and a minimal model.

A repository with one Python-backend identity model starts in well under a second, so tests about
the server process itself (signals, security options, dead model processes) use it instead of the
compositing ensembles. ``ServeProcess`` runs ``compositor serve`` and reads what it prints.
"""

from __future__ import annotations

import queue
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil

from compositor.serving.server import free_port

IDENTITY_CONFIG = """\
name: "{name}"
backend: "python"
max_batch_size: 8
input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] }} ]
instance_group [ {{ kind: KIND_CPU count: {instances} }} ]
"""

IDENTITY_MODEL = '''\
import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        {fail}
        config = json.loads(args["model_config"])
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        self.output_dtype = pb_utils.triton_string_to_numpy(config["output"][0]["data_type"])

    def execute(self, requests):
        responses = []
        for request in requests:
            array = pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy()
            output = pb_utils.Tensor(self.output_name, np.ascontiguousarray(array, dtype=self.output_dtype))
            responses.append(pb_utils.InferenceResponse(output_tensors=[output]))
        return responses
'''


def write_identity_repository(
    root: Path, instances: int = 1, name: str = "identity", fail_in_initialize: bool = False
) -> Path:
    """A repository at ``root`` holding an identity model ``name`` with ``instances`` model processes.

    With ``fail_in_initialize`` the model raises in ``initialize``, so it never becomes ready.
    """
    model = root / name
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text(IDENTITY_CONFIG.format(name=name, instances=instances))
    fail = 'raise RuntimeError("deliberate failure in initialize")' if fail_in_initialize else "pass"
    (model / "1" / "model.py").write_text(IDENTITY_MODEL.format(fail=fail))
    return root


def stub_command_lines(pid: int) -> list[tuple[int, list[str]]]:
    """``(pid, argv)`` of the Python-backend stubs under server ``pid``: ``stub MODEL.py SHM_REGION ...``."""
    found = []
    for child in psutil.Process(pid).children(recursive=True):
        try:
            argv = child.cmdline()
        except psutil.Error:
            continue
        if len(argv) > 2 and argv[0].endswith("triton_python_backend_stub"):
            found.append((child.pid, argv))
    return found


def free_ports() -> dict[str, int]:
    """Three free loopback ports, keyed as ``TritonServer`` takes them (and ``serve_command``)."""
    return {"grpc_port": free_port(), "http_port": free_port(), "metrics_port": free_port()}


def process_tree(pid: int) -> list[psutil.Process]:
    """``pid`` and all its descendants; empty once ``pid`` is gone."""
    try:
        parent = psutil.Process(pid)
        return [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def family_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and all its descendants (Triton's Python-backend stubs); processes
    that vanish meanwhile count nothing."""
    total = 0
    for member in process_tree(pid):
        try:
            total += member.memory_info().rss
        except psutil.Error:
            pass
    return total


def processes_serving(repository: Path) -> list[psutil.Process]:
    """Every process with ``repository`` in its command line."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if any(str(repository) in part for part in process.info["cmdline"] or ()):
            found.append(process)
    return found


def is_gone(process: psutil.Process) -> bool:
    # Orphans are reparented to PID 1, which in a container may never reap them (and Triton does
    # not reap a dead stub): a zombie is dead.
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        # SO_REUSEADDR, as servers set it: the readiness checks leave connections in TIME_WAIT.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
"""Opens loopback URLs directly, whatever ``http_proxy`` says."""


def http_status(url: str, timeout_s: float = 2.0) -> int:
    """The HTTP status ``url`` answers with (asked directly, never through a proxy), or -1 when nothing answers."""
    try:
        with _NO_PROXY.open(url, timeout=timeout_s) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return -1


def serve_command(repository: Path, ports: dict[str, int]) -> list[str]:
    command = [sys.executable, "-m", "compositor", "serve", "--repository", str(repository)]
    for name, port in ports.items():
        command += [f"--{name.replace('_', '-')}", str(port)]
    return command


class ServeProcess:
    """``compositor serve`` in a subprocess, its combined output read line by line in a thread."""

    def __init__(self, command: list[str]) -> None:
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.output: list[str] = []
        self._lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self._lines.put(line)

    def wait_for(self, text: str, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while not any(text in line for line in self.output):
            assert time.monotonic() < deadline, f"no {text!r} in:\n{self.text}"
            try:
                self.output.append(self._lines.get(timeout=max(deadline - time.monotonic(), 0.01)))
            except queue.Empty:
                pass

    @property
    def text(self) -> str:
        return "".join(self.output)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


INTERRUPTIBLE = "import signal; signal.signal(signal.SIGINT, signal.default_int_handler)\n"
"""First line of a child script that a test interrupts with SIGINT, as Ctrl-C would.

A shell runs background jobs with SIGINT ignored, and children inherit that: a suite started with
``&`` would see Ctrl-C tests hang. The child puts Python's KeyboardInterrupt handler back itself:
a ``preexec_fn`` would make subprocess fork instead of vfork, and with this process's gRPC
channels busy, grpcio's fork handlers crash the forked child before it execs now and then
(grpc/grpc#43055: about 3 in 100 here).
"""

