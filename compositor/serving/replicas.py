"""Several Triton servers on one machine, each on its own block of consecutive ports, kept running.

``compositor serve --replicas N`` runs N copies of one model repository. Replica ``i`` listens on
the first replica's three ports plus ``i x stride``, where the stride is the span of those three
ports: with the defaults (HTTP 8000, gRPC 8001, metrics 8002) replica 1 takes 8003-8005, replica 2
8006-8008. The client's several-server mode (``--url 127.0.0.1:8001,127.0.0.1:8004``,
``CompositorPool``) spreads requests over them and fails over when one goes.

Why replicas on one machine: one Triton process serialises what its Python-backend models do
(pre- and post-processing run in one stub process per instance) and holds one copy of each network;
replicas add whole pipelines, and a replica that fails leaves the others serving while it restarts.
Model instances (``compositor repository --instances``) are the cheaper first step: see the README's
scaling guide.

A replica that stops unexpectedly, or one of whose model processes dies (Triton 2.51 would keep
answering ready: see ``TritonServer.dead_model_processes``), is stopped and started again on the
same ports, up to ``max_restarts`` times each; the others keep serving meanwhile.

Example:
    >>> replicas = ReplicaSet(Path("model_repository"), replicas=2)  # doctest: +SKIP
    >>> replicas.start()  # doctest: +SKIP
    >>> replicas.grpc_urls()  # doctest: +SKIP
    ['127.0.0.1:8001', '127.0.0.1:8004']
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from compositor.errors import CompositorError
from compositor.serving.server import (
    DEFAULT_GRPC_PORT,
    DEFAULT_HTTP_PORT,
    DEFAULT_METRICS_PORT,
    DEFAULT_START_TIMEOUT_S,
    DEFAULT_STOP_TIMEOUT_S,
    ServerStartError,
    TritonServer,
)

LOGGER = logging.getLogger(__name__)

MAX_REPLICAS = 64
"""More would be a typo: each replica holds every network and a few processes."""

DEFAULT_MAX_RESTARTS = 5
"""How many times one replica is started again before it is left down."""


class ReplicaOptionsError(CompositorError, ValueError):
    """A replica count or a port layout that cannot work."""


@dataclass(frozen=True)
class ReplicaPorts:
    """One replica's endpoints."""

    grpc: int
    http: int
    metrics: int


def replica_ports(grpc_port: int, http_port: int, metrics_port: int, replicas: int) -> list[ReplicaPorts]:
    """The ports of each replica: the first replica's plus ``i x`` the span of its three ports.

    Raises:
        ReplicaOptionsError: fewer than one replica or more than ``MAX_REPLICAS``, two of the first
            replica's ports equal, or a port past 65535.
    """
    if not 1 <= replicas <= MAX_REPLICAS:
        raise ReplicaOptionsError(f"--replicas must be within 1-{MAX_REPLICAS}, not {replicas}")
    first = (grpc_port, http_port, metrics_port)
    if len(set(first)) != 3:
        raise ReplicaOptionsError(f"the gRPC, HTTP and metrics ports must differ, not {grpc_port}, {http_port}, {metrics_port}")
    stride = max(first) - min(first) + 1
    last = max(first) + (replicas - 1) * stride
    if last > 65535:
        raise ReplicaOptionsError(
            f"{replicas} replicas need ports up to {last} (each takes the next {stride} after the previous); "
            "give lower --grpc-port/--http-port/--metrics-port or fewer replicas"
        )
    return [ReplicaPorts(grpc_port + i * stride, http_port + i * stride, metrics_port + i * stride) for i in range(replicas)]


def replica_log_path(log_path: Path | None, replica: int, replicas: int, restart: int) -> Path | None:
    """Replica ``replica``'s log for its ``restart``-th start: the given path for a single server.

    A restart writes a new file, so the log of the run that failed is kept. ``None`` (a new file in
    the default folder each time) stays ``None``.
    """
    if log_path is None or (replicas == 1 and restart == 0):
        return log_path
    parts = [log_path.stem]
    if replicas > 1:
        parts.append(f"replica{replica}")
    if restart:
        parts.append(f"restart{restart}")
    return log_path.with_name(".".join(parts) + log_path.suffix)


class ReplicaSet:
    """N ``TritonServer``s over one repository, on consecutive port blocks (see the module docstring).

    Args:
        repository: the model repository every replica serves.
        replicas: how many servers.
        grpc_port, http_port, metrics_port, log_path: the first replica's (``TritonServer``'s).
        max_restarts: restarts per replica before it is left down.
        server_options: the other ``TritonServer`` keywords (host, extra_args, allow_shared_memory,
            triton_root), the same for every replica.
    """

    def __init__(
        self,
        repository: Path,
        replicas: int,
        grpc_port: int = DEFAULT_GRPC_PORT,
        http_port: int = DEFAULT_HTTP_PORT,
        metrics_port: int = DEFAULT_METRICS_PORT,
        log_path: Path | None = None,
        max_restarts: int = DEFAULT_MAX_RESTARTS,
        **server_options,
    ) -> None:
        self.ports = replica_ports(grpc_port, http_port, metrics_port, replicas)
        self.repository = Path(repository)
        self.log_path = log_path
        self.server_options = server_options
        self.max_restarts = max_restarts
        self.restarts = [0] * replicas
        self.servers = [self._server(i) for i in range(replicas)]
        self._stop_requested = False

    def _server(self, replica: int) -> TritonServer:
        ports = self.ports[replica]
        return TritonServer(
            self.repository,
            grpc_port=ports.grpc,
            http_port=ports.http,
            metrics_port=ports.metrics,
            log_path=replica_log_path(self.log_path, replica, len(self.ports), self.restarts[replica]),
            **self.server_options,
        )

    def start(self, timeout_s: float = DEFAULT_START_TIMEOUT_S) -> None:
        """Launch every replica, then wait for each; if any fails, stop all and raise its error.

        Launching all before waiting lets them load their models at the same time.
        """
        try:
            for server in self.servers:
                server.launch()
            for replica, server in enumerate(self.servers):
                try:
                    server.wait_until_ready(timeout_s)
                except ServerStartError as error:
                    if len(self.servers) == 1:
                        raise
                    raise type(error)(f"replica {replica} (gRPC port {server.grpc_port}): {error}") from error
        except BaseException:
            self.stop(timeout_s=5.0)
            raise

    def grpc_urls(self) -> list[str]:
        return [server.grpc_url for server in self.servers]

    def request_stop(self) -> None:
        """Ask every replica to stop, without waiting: safe to call from a signal handler."""
        self._stop_requested = True
        for server in self.servers:
            server.request_stop()

    def stop(self, timeout_s: float = DEFAULT_STOP_TIMEOUT_S) -> None:
        """Stop every replica (idempotent)."""
        for server in self.servers:
            server.stop(timeout_s=timeout_s)

    def failures(self) -> list[tuple[int, str]]:
        """``(replica, what happened)`` for each running-set replica that has stopped or lost a model process."""
        found = []
        for replica, server in enumerate(self.servers):
            if server.is_running():
                dead = server.dead_model_processes()
                if dead:
                    found.append((replica, f"the process of model(s) {', '.join(dead)} died"))
            elif not server.stopped:  # stopped by us on purpose is not a failure
                found.append((replica, f"Triton exited with code {server.wait()}"))
        return found

    def restart(self, replica: int, timeout_s: float = DEFAULT_START_TIMEOUT_S) -> bool:
        """Stop replica ``replica`` and start it again on its ports; False once its restarts are used up.

        Raises:
            ServerStartError, StartCancelled: it did not come back (it stays down; call again to retry).
        """
        old = self.servers[replica]
        old.stop(timeout_s=5.0)
        if self.restarts[replica] >= self.max_restarts or self._stop_requested:
            return False
        self.restarts[replica] += 1
        self.servers[replica] = new = self._server(replica)
        new.start(timeout_s=timeout_s)
        return True

    def running(self) -> int:
        """How many replicas are running."""
        return sum(server.is_running() for server in self.servers)
