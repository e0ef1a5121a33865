"""Keeping Triton serving: stop signals forwarded, model processes watched, replicas restarted, logs echoed.

``compositor serve`` parses its options and calls these; they hold what a long-running supervisor
does between start and stop, with their own logger and error type (``SupervisionError``), so a
service of one's own can run a ``TritonServer`` or a ``ReplicaSet`` the same way.

Why watch at all: Triton 2.51 does not restart a Python-backend model process that died, and keeps
answering ready while every request to that model fails (triton-inference-server/server#8604).
Stopping the server makes health checks tell the truth; a replica set restarts the replica instead.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from compositor.errors import CompositorError
from compositor.serving.triton_binary import TritonNotFoundError
from compositor.serving.replicas import ReplicaSet
from compositor.serving.server import ServerStartError, TritonServer
from compositor.serving.server_log import LogReader

LOGGER = logging.getLogger(__name__)

MODEL_CHECK_INTERVAL_S = 2.0
"""How often the supervisor checks that every model process is alive."""


class SupervisionError(CompositorError, RuntimeError):
    """The server (or every replica) stopped serving and could not be kept running; the message says why."""


@contextlib.contextmanager
def forwarding_stop_signals(request_stop: Callable[[], None]):
    """Ctrl-C and SIGTERM call ``request_stop``; yields the list of signals received."""
    received: list[int] = []

    def forward(signum, _frame) -> None:
        # Only forward here: raising from a handler could strike inside Popen and orphan the server.
        received.append(signum)
        request_stop()

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class LogEcho:
    """Copies the new lines of each server's log to stdout when ``enabled`` (``--print-log``, for
    containers, whose ``docker logs`` / ``kubectl logs`` show stdout); a no-op otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._readers: dict[Path, LogReader] = {}

    def __call__(self, server: TritonServer, prefix: str = "") -> None:
        if not self.enabled or server.log_path is None:
            return
        reader = self._readers.setdefault(server.log_path, LogReader(server.log_path, keep_text=False))
        lines = reader.read_new_lines()
        if lines:
            sys.stdout.write("".join(prefix + line for line in lines.splitlines(keepends=True)))
            sys.stdout.flush()


def wait_watching_models(server: TritonServer, echo: LogEcho) -> int:
    """Wait for Triton to exit and return its exit code; if a model process dies first, stop Triton.

    Raises:
        SupervisionError: a model process died (the server was stopped: it would have kept
            answering ready while failing every request to that model).
    """
    while True:
        try:
            returncode = server.wait(timeout_s=MODEL_CHECK_INTERVAL_S)
            echo(server)
            return returncode
        except subprocess.TimeoutExpired:
            echo(server)
            dead = server.dead_model_processes()
        if dead:
            LOGGER.error("model process of %s died; stopping Triton (it would keep answering ready)", ", ".join(dead))
            server.stop(timeout_s=5.0)
            raise SupervisionError(
                f"the process of model(s) {', '.join(dead)} died and Triton 2.51 does not restart it: every "
                "request to it would fail while the health endpoints still answered ready, so the server "
                f"was stopped; restart it (a supervisor can do so on this exit status). Log: {server.log_path}"
            )


def keep_replicas_running(replicas: ReplicaSet, startup_timeout_s: float, received: list[int], echo: LogEcho,
                          announce: Callable[[str], None] = print) -> None:
    """Until a stop signal arrives in ``received``: restart any replica that failed (``announce`` says
    so), echo the logs.

    Raises:
        SupervisionError: every replica has stopped and none could be restarted.
    """
    while not received:
        time.sleep(MODEL_CHECK_INTERVAL_S)
        for replica, server in enumerate(replicas.servers):
            echo(server, prefix=f"[replica {replica}] ")
        if received:
            return
        for replica, what in replicas.failures():
            server = replicas.servers[replica]
            LOGGER.error("replica %d (gRPC %s): %s; its log is kept in %s", replica, server.grpc_url, what, server.log_path)
            try:
                restarted = replicas.restart(replica, timeout_s=startup_timeout_s)
            except (ServerStartError, TritonNotFoundError) as error:
                LOGGER.error("replica %d did not come back: %s", replica, error)
                continue
            if restarted:
                announce(f"replica {replica} restarted ({replicas.restarts[replica]} of at most "
                         f"{replicas.max_restarts}): gRPC {replicas.servers[replica].grpc_url}")
            elif not received:
                LOGGER.error("replica %d restarted %d times already: left down", replica, replicas.max_restarts)
        if replicas.running() == 0 and not received:
            raise SupervisionError(
                f"every replica has stopped and none could be restarted; their logs: "
                f"{', '.join(str(server.log_path) for server in replicas.servers)}"
            )
