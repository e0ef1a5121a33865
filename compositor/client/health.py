"""Which of a pool's servers are ready, and which one a request goes to.

``ServerHealth`` keeps one ``ServerState`` per server: ready or down, requests in flight, when a
down server is probed next. A request goes to the ready server with the fewest requests in flight
(taking turns on ties); a server that fails a request by being unreachable is marked down, and is
probed (``/v2/health/ready``; gRPC ``ServerReady``) every ``backoff_s``, then ``2 x backoff_s``, ...
(at most every ``MAX_PROBE_INTERVAL_S``), over a fresh connection, until it answers ready again.
``compositor.client.pool`` dispatches requests over it.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from compositor.client.errors import ClientError, ServerUnreachableError

log = logging.getLogger("compositor.client.pool")

MAX_PROBE_INTERVAL_S = 5.0
"""A down server is probed at least this often, however long it has been down."""


@dataclass
class ServerState:
    """The view of one server. Fields are guarded by ``ServerHealth.lock``."""

    url: str
    ready: bool = False
    generation: int = 0  # bumped when the server goes down or comes back: clients made before are replaced
    failed_probes: int = 0
    next_probe_s: float = 0.0
    probing: bool = False
    in_flight: int = 0
    deployment: object | None = None
    last_error: Exception | None = field(default=None, repr=False)


class ServerHealth:
    """The ready/down state of every server, with the probes that move a server between them.

    Args:
        urls: ``host:port`` of each server, in the order ties are broken.
        protocol: ``grpc`` or ``http``, for messages.
        timeout_s: how long every server may be down before ``wait_for_a_server`` gives up.
        backoff_s: the first interval between probes of a down server (doubled after each failure).
        start_client: makes the ``CompositorClient`` the first probe uses (the request timeout).
        probe_client: makes a short-timeout one for later probes (closed after each probe).
    """

    def __init__(self, urls: list[str], protocol: str, timeout_s: float, backoff_s: float,
                 start_client: Callable[[str], object], probe_client: Callable[[str], object]) -> None:
        self.servers = [ServerState(url) for url in urls]
        self.protocol = protocol
        self.timeout_s = timeout_s
        self.backoff_s = backoff_s
        self._start_client = start_client
        self._probe_client = probe_client
        self.lock = threading.Lock()
        self._turn = itertools.count()
        self._all_down_since: float | None = None

    def first_probe(self, server: ServerState) -> ClientError | None:
        """Check one server at start-up; mark it ready, or return why it is not."""
        client = self._start_client(server.url)
        try:
            client._check_live()
            if not client.is_server_ready():
                return ServerUnreachableError(f"Triton server at {client.where} answers but is not ready (models still loading?)")
        except ClientError as error:
            return error
        finally:
            client.close()
        with self.lock:
            server.ready = True
        return None

    def choose(self, avoid: ServerState | None = None) -> ServerState | None:
        """The ready server with the fewest requests in flight (taking turns on ties), after probing
        down servers that are due; ``avoid`` only if it is the only one."""
        self._probe_due()
        with self.lock:
            ready = [s for s in self.servers if s.ready]
            if not ready:
                return None
            others = [s for s in ready if s is not avoid] or ready
            turn = next(self._turn)
            return min(others, key=lambda s: (s.in_flight, (self.servers.index(s) - turn) % len(self.servers)))

    def wait_for_a_server(self) -> ServerState | None:
        """Probe down servers until one is ready; None once all have been down longer than ``timeout_s``."""
        while True:
            server = self.choose()
            if server is not None:
                return server
            with self.lock:
                since = self._all_down_since if self._all_down_since is not None else time.monotonic()
                next_probe_s = min(s.next_probe_s for s in self.servers)
            now = time.monotonic()
            remaining_s = since + self.timeout_s - now
            if remaining_s <= 0:
                return None
            time.sleep(max(0.01, min(next_probe_s - now, remaining_s)))

    def mark_down(self, server: ServerState, error: Exception) -> None:
        with self.lock:
            server.last_error = error
            if not server.ready:
                return
            server.ready = False
            server.generation += 1
            server.deployment = None
            server.failed_probes = 0
            server.next_probe_s = time.monotonic() + self.backoff_s
            if not any(s.ready for s in self.servers):
                self._all_down_since = time.monotonic()
        log.warning("%s://%s is down (%s); skipping it until it answers ready", self.protocol, server.url, error)

    def _probe_due(self) -> None:
        """Probe each down server whose turn has come (one thread per server at a time)."""
        now = time.monotonic()
        with self.lock:
            due = [s for s in self.servers if not s.ready and not s.probing and s.next_probe_s <= now]
            for server in due:
                server.probing = True
        for server in due:
            # A fresh connection: a gRPC channel that saw the server go keeps backing off its reconnects.
            ready = self.answers_ready(server)
            with self.lock:
                server.probing = False
                if ready:
                    server.ready = True
                    server.generation += 1
                    self._all_down_since = None
                else:
                    server.failed_probes += 1
                    interval_s = min(self.backoff_s * 2**server.failed_probes, MAX_PROBE_INTERVAL_S)
                    server.next_probe_s = time.monotonic() + max(interval_s, 0.01)
            if ready:
                log.info("%s://%s answers ready again; sending requests to it", self.protocol, server.url)

    def answers_ready(self, server: ServerState) -> bool:
        """Whether ``server`` answers ready now, asked over a fresh connection."""
        client = self._probe_client(server.url)
        try:
            return client.is_server_ready()
        finally:
            client.close()

    def all_down_error(self, last: Exception | None) -> ServerUnreachableError:
        with self.lock:
            details = "; ".join(f"{self.protocol}://{s.url}: {s.last_error or 'not ready'}" for s in self.servers)
        noun = "the Triton server has" if len(self.servers) == 1 else f"all {len(self.servers)} Triton servers have"
        error = ServerUnreachableError(f"{noun} been down for more than {self.timeout_s:g} s ({details})")
        error.__cause__ = last
        return error
