"""Run the Triton server binary from the ``nvidia-pytriton`` wheel on one model repository.

``TritonServer`` starts the binary that ``compositor.serving.triton_binary`` finds, waits until the
server and all its models are ready (failing within seconds, with the reason read from the log by
``compositor.serving.server_log``, when a port is busy or a model does not load), and stops it
cleanly: the whole process group, the Python-backend stubs and their shared memory included.
The server's log is kept after it stops (``log_path``).

Example:
    >>> with TritonServer(Path("model_repository")) as server:  # doctest: +SKIP
    ...     client = tritonclient.grpc.InferenceServerClient(server.grpc_url)
"""

from __future__ import annotations

import atexit
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from compositor.errors import CompositorError
from compositor.serving import processes
from compositor.serving.triton_binary import TritonInstallation, find_installed_triton, find_triton
from compositor.serving.server_log import LogReader, diagnose_log, log_tail, new_log_path

LOGGER = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
DEFAULT_GRPC_PORT = 8001
DEFAULT_HTTP_PORT = 8000
DEFAULT_METRICS_PORT = 8002
DEFAULT_START_TIMEOUT_S = 120.0
"""Loading ONNX Runtime sessions (or building TensorRT-EP engines) takes a while; failures never wait."""
DEFAULT_STOP_TIMEOUT_S = 40.0
"""Longer than Triton's own 30 s drain of in-flight requests (``--exit-timeout-secs``) plus unloading."""

_POLL_INTERVAL_S = 0.1

RESTRICTED_APIS = ("shared-memory", "trace", "logging")
"""Triton APIs (both protocols) that answer only requests carrying ``RESTRICTED_API_HEADER``.

Shared memory lets a client make the server map any ``/dev/shm`` region its user can open (the
Python-backend stubs' regions included); trace and logging change what the server writes to disk.
``model-repository`` stays open: clients read its index to find the ensembles, and load/unload
are refused anyway with ``--model-control-mode=none``.
"""
HTTP_RESTRICTED_APIS = ("inference",)
"""Triton APIs restricted on HTTP only, unless ``allow_http_inference``.

Triton 2.51's KServe HTTP/JSON front end allocates what a request's JSON *declares* before it reads
the data: one request declaring a 3 EiB input ends the server, one declaring 8x8192x8192x3 takes it
to 2 GB. The restriction is checked before the body is parsed, so a refused request allocates
nothing. gRPC inference (which checks sizes against the message it received) stays open, and so do
HTTP health, metadata and metrics, which the probes and dashboards use.
"""
RESTRICTED_API_HEADER = "compositor-admin-key"
"""Header Triton expects on restricted APIs; its value is a random secret made per start and never
shown, so in effect the APIs are off (it is visible only in the server's own command line)."""


class ServerStartError(CompositorError, RuntimeError):
    """Triton did not become ready: busy port, invalid repository, a model failed to load, timeout."""


class StartCancelled(ServerStartError):
    """``request_stop`` was called (e.g. by a signal handler) before the server was ready."""


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that is free on ``host`` right now (for tests; another process may take it later)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class TritonServer:
    """The Triton server binary from ``nvidia-pytriton``, serving one model repository.

    Flags, and why:

    * ``--grpc-address/--http-address/--metrics-address``: Triton binds 0.0.0.0 by default; we bind
      ``host`` (127.0.0.1 unless told otherwise).
    * ``--model-control-mode=none``: load every model at start-up; no load/unload over the API.
    * ``--strict-readiness=true``: ``/v2/health/ready`` only once *all* models are ready.
    * ``--exit-on-error=true``: a model that fails to load stops the server instead of leaving it
      up with a hole in the ensemble.
    * ``--disable-auto-complete-config``: our configs are complete (generated and validated); an
      incomplete one must fail to load rather than be guessed. It also skips one stub launch per
      Python model (about 1.3 s each) that only exists to call ``auto_complete_config``.
    * ``--backend-directory``: a private directory with the stub for this Python version.
    * ``--http-restricted-api/--grpc-restricted-protocol``: the ``RESTRICTED_APIS`` (shared
      memory, trace, logging) answer HTTP 403 / gRPC UNAVAILABLE ("... is restricted, expecting
      header ...") unless ``allow_shared_memory`` lifts the restriction on shared memory (which
      ``compositor.client.shared_memory`` needs); on HTTP also inference (``HTTP_RESTRICTED_APIS``),
      unless ``allow_http_inference``.

    The process runs in its own session (process group), so a Ctrl-C in the terminal reaches only
    our process, which then stops the server in order; ``stop`` kills the whole group last, the
    Python-backend stubs included. On Linux the server also gets SIGTERM when the thread that
    started it dies (``PR_SET_PDEATHSIG``), so a launcher killed with SIGKILL does not leave Triton
    holding the ports: Triton then drains, unloads its models (the stubs exit and free their
    shared memory) and exits. Only a server started from the main thread gets it, since a worker
    thread that ends would take the server with it.

    Args:
        repository: the model repository (``--model-repository``).
        host: address all three endpoints bind to.
        grpc_port, http_port, metrics_port: endpoint ports.
        log_path: file for the server's output (Triton log and the models' own prints and
            tracebacks), kept after ``stop``; default a new file in
            ``compositor.serving.server_log.DEFAULT_LOG_DIR``.
        extra_args: more ``tritonserver`` arguments, appended last (so they can override ours).
        allow_shared_memory: let clients register system shared memory (off by default: any
            client that can reach the port could make the server map its own regions).
        allow_http_inference: accept inference over KServe HTTP/JSON too (off by default: one
            request can declare an input large enough to end the server, ``HTTP_RESTRICTED_APIS``).
        triton_root: an installed Triton to run instead of the wheel's, e.g. ``/opt/tritonserver``
            in NVIDIA's container (``installation.find_installed_triton``).
    """

    def __init__(
        self,
        repository: Path,
        host: str = LOOPBACK,
        grpc_port: int = DEFAULT_GRPC_PORT,
        http_port: int = DEFAULT_HTTP_PORT,
        metrics_port: int = DEFAULT_METRICS_PORT,
        log_path: Path | None = None,
        extra_args: Sequence[str] = (),
        allow_shared_memory: bool = False,
        triton_root: Path | None = None,
        allow_http_inference: bool = False,
    ) -> None:
        self.repository = Path(repository)
        self.triton_root = Path(triton_root) if triton_root is not None else None
        self.host = host
        self.grpc_port = grpc_port
        self.http_port = http_port
        self.metrics_port = metrics_port
        self.extra_args = tuple(extra_args)
        self.allow_shared_memory = allow_shared_memory
        self.allow_http_inference = allow_http_inference
        self._requested_log_path = Path(log_path) if log_path is not None else None
        self._process: subprocess.Popen | None = None
        self._workdir: Path | None = None
        self._log_path: Path | None = None
        self._stopped = False
        self._model_processes: dict[int, str] = {}
        self._stop_requested = False
        self._launched_at = 0.0

    # --- addresses -------------------------------------------------------------------------------

    @property
    def grpc_url(self) -> str:
        """``host:port`` for ``tritonclient.grpc`` (loopback when bound to all interfaces)."""
        return _host_port(_connect_host(self.host), self.grpc_port)

    @property
    def http_url(self) -> str:
        """``host:port`` for ``tritonclient.http``."""
        return _host_port(_connect_host(self.host), self.http_port)

    @property
    def metrics_url(self) -> str:
        """Prometheus endpoint."""
        return f"http://{_host_port(_connect_host(self.host), self.metrics_port)}/metrics"

    @property
    def log_path(self) -> Path | None:
        """Where the server's output goes (set by ``start``; the file stays after ``stop``)."""
        return self._log_path

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def stopped(self) -> bool:
        """Whether ``stop`` has run (an exit without it is the server's own doing)."""
        return self._stopped

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self, timeout_s: float = DEFAULT_START_TIMEOUT_S) -> TritonServer:
        """Launch the server and wait until it and all its models are ready (``launch`` + ``wait_until_ready``).

        Returns:
            ``self``.

        Raises:
            TritonNotFoundError: the wheel or the stub for this Python is missing.
            ServerStartError: the repository is missing or empty, a port is in use, a model failed
                to load, the server exited, or it was not ready within ``timeout_s``. The message
                names the cause and ends with the tail of the server log.
            StartCancelled: ``request_stop`` was called before the server was ready.
        """
        self.launch()
        return self.wait_until_ready(timeout_s)

    def launch(self) -> TritonServer:
        """Check the repository and ports, then start the server process without waiting for it.

        Several servers launched one after the other, then waited for, load their models at the same
        time (``compositor serve --replicas``), and all get ``PR_SET_PDEATHSIG`` from the main thread.

        Raises:
            TritonNotFoundError, ServerStartError: as ``start``, for what is found before launching.
        """
        if self._process is not None:
            raise RuntimeError("this TritonServer was already started")
        _check_repository(self.repository)
        _check_ports_free(self.host, self._ports())
        installation = find_triton() if self.triton_root is None else find_installed_triton(self.triton_root)
        processes.warn_if_small_shm()
        processes.sweep_stale_stub_regions()

        self._workdir = Path(tempfile.mkdtemp(prefix="compositor-triton-"))
        backend_dir = installation.build_backend_directory(self._workdir / "backends")
        if self._requested_log_path is not None:
            self._log_path = self._requested_log_path
            self._log_path.parent.mkdir(parents=True, exist_ok=True)
        else:
            self._log_path = new_log_path()
        argv = self._argv(installation, backend_dir)
        LOGGER.info("starting Triton: %s", " ".join(_redact_secrets(argv)))
        LOGGER.info("Triton log: %s", self._log_path)

        try:
            with open(self._log_path, "wb") as log:
                self._process = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=installation.environment(),
                    start_new_session=True,
                    preexec_fn=processes.die_with_parent_function(),
                )
        except OSError as error:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
            raise ServerStartError(f"could not run {installation.binary}: {error}") from error
        self._launched_at = time.monotonic()
        # Never leave a server behind when the interpreter exits without calling stop().
        atexit.register(self._stop_at_exit)
        return self

    def wait_until_ready(self, timeout_s: float = DEFAULT_START_TIMEOUT_S) -> TritonServer:
        """Wait until a launched server and all its models are ready; stop it if it fails to be.

        Raises:
            ServerStartError, StartCancelled: as ``start``.
        """
        if self._process is None:
            raise RuntimeError("the server was not launched")
        started = self._launched_at
        try:
            self._wait_until_ready(started + timeout_s, timeout_s)
        except BaseException:
            self.stop(timeout_s=5.0)
            raise
        LOGGER.info(
            "Triton ready in %.1f s: gRPC %s, HTTP %s", time.monotonic() - started, self.grpc_url, self.http_url
        )
        self._model_processes = {pid: processes.model_of(argv) for pid, argv in processes.stub_processes(self._process.pid)}
        return self

    def dead_model_processes(self) -> list[str]:
        """The models whose Python-backend process (stub) has died since the server became ready.

        Triton 2.51 neither restarts such a process nor says so: every request to the model fails
        ("Stub process ... is not healthy") while ``/v2/health/ready`` keeps answering 200
        (triton-inference-server/server#8604). ``compositor serve`` checks this and stops the server,
        so that health checks fail and a supervisor restarts it.
        """
        if not self.is_running() or self._stop_requested:  # stopping: its stubs exit first
            return []
        return sorted({model for pid, model in self._model_processes.items() if not processes.process_alive(pid)})

    def request_stop(self) -> None:
        """Ask the server to stop, without waiting: safe to call from a signal handler.

        Sends SIGINT to a running server (it drains, unloads and exits; ``wait`` then returns) and
        makes a ``start`` in progress raise ``StartCancelled``. Call ``stop`` afterwards to reap
        the process and clean up.
        """
        self._stop_requested = True
        if self.is_running():
            processes.send_signal(self._process.pid, signal.SIGINT)

    def wait(self, timeout_s: float | None = None) -> int:
        """Block until the server exits; returns its exit code.

        Raises:
            subprocess.TimeoutExpired: still running after ``timeout_s``.
        """
        if self._process is None:
            raise RuntimeError("the server was not started")
        return self._process.wait(timeout=timeout_s)

    def stop(self, timeout_s: float = DEFAULT_STOP_TIMEOUT_S) -> int | None:
        """Stop the server: SIGINT (Triton drains and unloads), then SIGTERM, then SIGKILL.

        Waits up to ``timeout_s`` after SIGINT and a few seconds after SIGTERM; finally kills
        whatever is left of the process group (Python-backend stubs). Idempotent.

        Returns:
            The server's exit code, or ``None`` if it was never started.
        """
        process = self._process
        if process is None:
            return None
        if self._stopped:
            return process.returncode
        atexit.unregister(self._stop_at_exit)
        if process.poll() is None:
            LOGGER.info("stopping Triton (pid %d)", process.pid)
            shm_regions = processes.stub_shm_regions(process.pid)  # now, while the stubs are there to ask
            for sig, grace_s in ((signal.SIGINT, timeout_s), (signal.SIGTERM, min(timeout_s, 5.0))):
                processes.send_signal(process.pid, sig)
                try:
                    process.wait(timeout=grace_s)
                    break
                except subprocess.TimeoutExpired:
                    LOGGER.warning("Triton still running %g s after %s", grace_s, sig.name)
            else:
                processes.kill_group(process.pid)
                process.wait()
                # Killed processes cannot unlink their shared memory; a few runs would fill /dev/shm.
                for region in shm_regions:
                    region.unlink(missing_ok=True)
        # Stubs normally exit with the server; any that did not go now.
        processes.kill_group(process.pid)
        LOGGER.info("Triton exited with code %s; its log is kept in %s", process.returncode, self._log_path)
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
        self._stopped = True
        return process.returncode

    def __enter__(self) -> TritonServer:
        if self._process is None:
            self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # --- internals -------------------------------------------------------------------------------

    def _ports(self) -> dict[int, str]:
        ports = {"gRPC": self.grpc_port, "HTTP": self.http_port, "metrics": self.metrics_port}
        by_port: dict[int, str] = {}
        for name, port in ports.items():
            if not 0 < port < 65536:
                raise ServerStartError(f"the {name} port must be within 1-65535, not {port}")
            if port in by_port:
                raise ServerStartError(f"the {by_port[port]} and {name} ports are both {port}")
            by_port[port] = name
        return by_port

    def _argv(self, installation: TritonInstallation, backend_dir: Path) -> list[str]:
        return [
            str(installation.binary),
            f"--model-repository={self.repository.resolve()}",
            f"--backend-directory={backend_dir}",
            *([f"--cache-directory={installation.cache_dir}"] if installation.cache_dir.is_dir() else []),
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            f"--http-address={self.host}",
            f"--http-port={self.http_port}",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.metrics_port}",
            "--model-control-mode=none",
            "--strict-readiness=true",
            "--exit-on-error=true",
            "--disable-auto-complete-config",
            *self._restriction_args(),
            *self.extra_args,
        ]

    def _restriction_args(self) -> list[str]:
        apis = [api for api in RESTRICTED_APIS if not (api == "shared-memory" and self.allow_shared_memory)]
        http_apis = apis + ([] if self.allow_http_inference else list(HTTP_RESTRICTED_APIS))
        # A fresh secret per start that no client is told: the restricted APIs are off in effect.
        secret = f"{RESTRICTED_API_HEADER}={secrets.token_hex(32)}"
        return [f"--http-restricted-api={','.join(http_apis)}:{secret}", f"--grpc-restricted-protocol={','.join(apis)}:{secret}"]

    def _wait_until_ready(self, deadline: float, timeout_s: float) -> None:
        assert self._process is not None
        ready_url = f"http://{self.http_url}/v2/health/ready"
        # No proxy: an http_proxy in the environment must not intercept a loopback health check.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        log = LogReader(self._log_path)
        while True:
            if self._stop_requested:
                raise StartCancelled("stop requested before Triton was ready")
            returncode = self._process.poll()  # before reading, so that the log is complete if it exited
            # Fail on the first fatal line rather than wait for the other models to finish loading.
            failure = diagnose_log(log.read_new_lines(), self._ports())
            if failure is None and returncode is not None:
                failure = f"Triton exited with code {returncode} before it was ready"
            if failure is not None:
                raise ServerStartError(self._failure_message(failure, log.text))
            # Ready only if *our* process is still alive: the HTTP answer could come from a squatter.
            if _is_ready(opener, ready_url) and self._process.poll() is None:
                return
            if time.monotonic() > deadline:
                summary = f"Triton was not ready after {timeout_s:.0f} s"
                raise ServerStartError(self._failure_message(summary, log.text))
            time.sleep(_POLL_INTERVAL_S)

    def _failure_message(self, summary: str, log_text: str) -> str:
        return (
            f"{summary}\n(repository {self.repository}; the whole server log is kept in {self._log_path}; "
            f"its last lines:)\n{log_tail(log_text)}"
        )

    def _stop_at_exit(self) -> None:
        if self.is_running():
            LOGGER.warning("interpreter exiting: stopping Triton (pid %d)", self.pid)
            self.stop(timeout_s=10.0)


# --- helpers ---------------------------------------------------------------------------------------


def _check_repository(repository: Path) -> None:
    if not repository.exists():
        raise ServerStartError(f"model repository {repository} does not exist")
    if not repository.is_dir():
        raise ServerStartError(f"model repository {repository} is not a directory")
    models = [p.name for p in repository.iterdir() if p.is_dir() and (p / "config.pbtxt").is_file()]
    if not models:
        raise ServerStartError(
            f"model repository {repository} holds no models (no <model>/config.pbtxt); "
            "generate one with 'compositor repository'"
        )
    LOGGER.debug("repository %s: %s", repository, ", ".join(sorted(models)))


def _check_ports_free(host: str, ports: dict[int, str]) -> None:
    for port, name in ports.items():
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            # SO_REUSEADDR as servers set it: a port in TIME_WAIT is usable, a listening one is not.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError as error:
                message = f"{name} port {port} on {host} is not available: {error.strerror}"
                raise ServerStartError(message) from None


def _connect_host(host: str) -> str:
    # Clients cannot connect to a wildcard address; use the loopback of the same family.
    return {"0.0.0.0": LOOPBACK, "": LOOPBACK, "::": "::1"}.get(host, host)


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _is_ready(opener: urllib.request.OpenerDirector, url: str) -> bool:
    try:
        with opener.open(url, timeout=1.0) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _redact_secrets(argv: Sequence[str]) -> list[str]:
    """``argv`` with the restricted-API secret masked, for the log."""
    marker = f"{RESTRICTED_API_HEADER}="
    return [arg.split(marker)[0] + marker + "<secret>" if marker in arg else arg for arg in argv]
