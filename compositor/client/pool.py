"""Many compositing requests in flight, over one or several Triton servers, answered in order.

``CompositorPool.map`` takes an iterable of ``CompositeRequest`` (read lazily: a folder of images
or a video's frames never has to fit in memory), keeps at most ``max_in_flight`` of them
outstanding on a thread pool, and yields one ``CompositeOutcome`` per request, in submission
order, each exactly once. An item's own failure (a bad frame, a request the server rejects, a
bug on the server's side, a timeout) becomes that outcome's ``error`` and the others go on.

Several servers (``url="host1:8001,host2:8001"``) share the load: each request goes to the ready
server with the fewest requests in flight. A server that fails a request by being unreachable or
answering UNAVAILABLE is marked down and skipped, and the request is sent again to another
(``retries``, with backoff when there is no other); a down server is probed
(``/v2/health/ready``; gRPC ``ServerReady``) every ``backoff_s``, then ``2 x backoff_s``, ... (at most
every ``health.MAX_PROBE_INTERVAL_S``) and used again once it answers ready. Only when every server has been
down for longer than ``timeout_s`` does a request fail with ``ServerUnreachableError`` naming every
URL. A request failed because one of a server's model processes died (Triton keeps answering ready
then: ``BROKEN_SERVER_SIGNS``) is treated the same way. Resending a request that a failing server
may have half processed is safe: the ensembles keep no state between requests.

Threads: each worker thread has its own ``CompositorClient`` per server (tritonclient's HTTP
client must not be shared between threads; gRPC could be, but one rule is simpler), and with
``shared_memory`` its own shared memory regions, so two requests in flight never share a region.

Example:
    >>> requests = (CompositeRequest(path.name, read(path), beach) for path in paths)  # doctest: +SKIP
    >>> with CompositorPool("localhost:8001,otherhost:8001", max_in_flight=8) as pool:  # doctest: +SKIP
    ...     for outcome in pool.map(requests):
    ...         print(outcome.key, outcome.error or outcome.result.harmonized.shape)
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from collections.abc import Hashable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from compositor import imaging
from compositor.client.errors import (
    ClientError,
    InvalidURLError,
    ModelNotReadyError,
    RequestTimeoutError,
    ServerUnavailableError,
    ServerUnreachableError,
)
from compositor.client.remote import (
    DEFAULT_BACKOFF_S,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT_S,
    HEALTH_TIMEOUT_S,
    CompositorClient,
    check_retry_settings,
)
from compositor.client.health import ServerHealth, ServerState
from compositor.client.urls import normalize_url
from compositor.results import CompositeResult

DEFAULT_MAX_IN_FLIGHT = 4
"""Requests outstanding at once: enough to keep a server's preprocess, networks and postprocess
busy together, few enough that frames do not pile up in memory."""

log = logging.getLogger(__name__)

BROKEN_SERVER_SIGNS = ("is not healthy",)
"""Words of a server-side error that no request caused: Triton 2.51's answer once a Python-backend
stub process has died ("Stub process 'postprocess_0_0' is not healthy"). Triton does not restart
the stub and keeps answering ready (triton-inference-server/server#8604), so such a request is
sent again to another server, like one a server failed by being unavailable."""


def _says_server_is_broken(error: Exception) -> bool:
    return any(sign in str(error) for sign in BROKEN_SERVER_SIGNS)


@dataclass(frozen=True)
class CompositeRequest:
    """One item: a source frame, its background, and optionally its own matte.

    Attributes:
        key: any hashable label the caller recognises the outcome by (a file name, a frame index).
        source, background, alpha: as ``CompositorClient.composite`` takes them.
    """

    key: Hashable
    source: np.ndarray
    background: np.ndarray
    alpha: np.ndarray | None = None


@dataclass(frozen=True)
class CompositeOutcome:
    """What became of one request: a result, or the error that stopped it.

    Attributes:
        key: the request's key.
        result: the composite (same batch layout as the request's source), or None on error.
        error: why the request failed, or None on success.
        attempts: how many times it was sent (0 when it failed before being sent).
        server: ``host:port`` of the server that answered last, or None when none did.
    """

    key: Hashable
    result: CompositeResult | None
    error: Exception | None
    attempts: int
    server: str | None

    @property
    def ok(self) -> bool:
        return self.error is None


def parse_urls(url: str, protocol: str) -> list[str]:
    """``host:port`` of every server in a comma-separated list, each by ``normalize_url``'s rules.

    Raises:
        InvalidURLError: an empty list or entry, a malformed URL, or the same server twice.
    """
    entries = [entry.strip() for entry in url.split(",")]
    if not any(entries) or not all(entries):
        raise InvalidURLError(f"{url!r}: give host:port, or several separated by commas (host1:8001,host2:8001)")
    urls = [normalize_url(entry, protocol) for entry in entries]
    repeated = sorted({u for u in urls if urls.count(u) > 1})
    if repeated:
        raise InvalidURLError(f"{url}: {', '.join(repeated)} is listed more than once")
    return urls


class CompositorPool:
    """A bounded, ordered, fault-tolerant stream of composites over one or several servers.

    Args:
        url: ``host:port`` of a server, or several separated by commas; as ``CompositorClient``'s
            ``url`` (the scheme of ``protocol`` allowed, default ports added).
        protocol: ``grpc`` or ``http`` (all servers speak it).
        max_in_flight: requests outstanding at most (also the number of worker threads); results
            waiting to be yielded in order count as outstanding, which bounds memory too.
        timeout_s: per request; also how long every server may be down before requests fail.
        retries: how often one request is sent again after its server failed it (unreachable,
            UNAVAILABLE); other failures are never retried.
        backoff_s: wait before a retry when no other server is ready, doubled each time; also
            the first interval between probes of a down server.
        shared_memory: frames through system shared memory (every server on this host).

    Raises:
        InvalidURLError: a malformed ``url``.
        ServerUnreachableError: no server is ready (the message names every URL and why).
        DeploymentError: the first ready server serves no compositing ensemble.
    """

    def __init__(
        self,
        url: str,
        protocol: str = "grpc",
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retries: int = DEFAULT_RETRIES,
        backoff_s: float = DEFAULT_BACKOFF_S,
        shared_memory: bool = False,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        check_retry_settings(timeout_s, retries, backoff_s)
        self.protocol = protocol
        self.urls = parse_urls(url, protocol)
        self.max_in_flight = max_in_flight
        self.timeout_s = float(timeout_s)
        self.retries = retries
        self.backoff_s = float(backoff_s)
        self.shared_memory = shared_memory
        if shared_memory:
            # The regions are made in worker threads, where no signal handler can be installed:
            # install the SIGTERM/atexit clean-up here, from the thread that makes the pool.
            from compositor.client.shared_memory import install_exit_handlers

            install_exit_handlers()
        self.in_flight = 0
        """Requests being sent right now."""
        self.peak_in_flight = 0
        """The most requests that were being sent at once."""
        self._health = ServerHealth(self.urls, protocol, self.timeout_s, self.backoff_s, self._new_client, self._probe_client)
        self._lock = self._health.lock  # one lock: a request's bookkeeping touches its server's state
        self._local = threading.local()
        self._clients: list[CompositorClient] = []
        self._closed = False
        self._executor = ThreadPoolExecutor(max_in_flight, thread_name_prefix="compositor-pool")
        try:
            self.deployment = self._start()
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return f"CompositorPool({self.protocol}://{','.join(self.urls)}, max_in_flight={self.max_in_flight})"

    def __enter__(self) -> CompositorPool:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Wait for requests in flight, then close every client (their shared memory included). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._executor.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            with contextlib.suppress(Exception):  # a client of a dead server may fail to unregister
                client.close()

    @property
    def ready_urls(self) -> list[str]:
        """The servers the pool sends requests to now."""
        with self._lock:
            return [s.url for s in self._health.servers if s.ready]

    # --- the stream ------------------------------------------------------------------------------

    def map(self, requests: Iterable[CompositeRequest]) -> Iterator[CompositeOutcome]:
        """Composite every request; yield their outcomes in submission order, each exactly once.

        ``requests`` is read lazily: a request is taken only when fewer than ``max_in_flight`` are
        outstanding (sent, or done and waiting for an earlier one to be yielded). Stopping the
        iteration early cancels the requests not yet sent.
        """
        if self._closed:
            raise RuntimeError("this CompositorPool is closed")
        pending: collections.deque = collections.deque()
        source = iter(requests)
        exhausted = False
        try:
            while True:
                while not exhausted and len(pending) < self.max_in_flight:
                    try:
                        request = next(source)
                    except StopIteration:
                        exhausted = True
                        break
                    pending.append(self._executor.submit(self._serve, request))
                if not pending:
                    return
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()

    def composite(self, source: np.ndarray, background: np.ndarray, alpha: np.ndarray | None = None) -> CompositeResult:
        """One request through the pool (its servers, retries and failover); raises its error."""
        (outcome,) = self.map([CompositeRequest(None, source, background, alpha)])
        if outcome.error is not None:
            raise outcome.error
        return outcome.result

    # --- one request -----------------------------------------------------------------------------

    def _serve(self, request: CompositeRequest) -> CompositeOutcome:
        """Send one request until a server answers it, it fails on its own, or retries run out. Never raises."""
        attempts = 0
        failed: Exception | None = None
        failed_server: ServerState | None = None
        while True:
            server = self._health.choose(avoid=failed_server)
            if server is None:
                server = self._health.wait_for_a_server()
                if server is None:
                    return CompositeOutcome(request.key, None, self._health.all_down_error(failed), attempts, None)
            if failed_server is not None and (server is failed_server or not server.ready):
                time.sleep(self.backoff_s * 2 ** (attempts - 1))  # no other server to turn to: back off
            attempts += 1
            try:
                client = self._client_for(server)
                with self._counted(server):
                    outputs = client.composite(request.source, request.background, request.alpha)
            except imaging.ImageError as error:  # the frame itself: found before anything was sent
                return CompositeOutcome(request.key, None, error, attempts - 1, None)
            except (ServerUnreachableError, ServerUnavailableError, ModelNotReadyError) as error:
                failed, failed_server = error, server
            except RequestTimeoutError as error:  # already cost timeout_s; a retry could cost it again
                return CompositeOutcome(request.key, None, error, attempts, server.url)
            except ClientError as error:
                # The server answered with an error: the request's fault, unless the server is going away
                # or one of its model processes died (it then still answers ready: see BROKEN_SERVER_SIGNS).
                if not _says_server_is_broken(error) and self._health.answers_ready(server):
                    return CompositeOutcome(request.key, None, error, attempts, server.url)
                failed, failed_server = error, server
            except Exception as error:  # noqa: BLE001 - one item's failure must not stop the others
                log.exception("request %r failed", request.key)
                return CompositeOutcome(request.key, None, error, attempts, server.url)
            else:
                return CompositeOutcome(request.key, CompositeResult(**outputs), None, attempts, server.url)
            self._health.mark_down(server, failed)
            if attempts > self.retries:
                return CompositeOutcome(request.key, None, failed, attempts, server.url)
            log.warning("%s; sending request %r again (retry %d of %d)", failed, request.key, attempts, self.retries)

    @contextlib.contextmanager
    def _counted(self, server: ServerState):
        with self._lock:
            server.in_flight += 1
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            yield
        finally:
            with self._lock:
                server.in_flight -= 1
                self.in_flight -= 1

    # --- servers ---------------------------------------------------------------------------------

    def _start(self):
        """Probe every server at once; the deployment of the first ready one (in URL order)."""
        probes = [self._executor.submit(self._health.first_probe, server) for server in self._health.servers]
        reasons = [probe.result() for probe in probes]
        servers = self._health.servers
        ready = [server for server in servers if server.ready]
        if not ready:
            if len(servers) == 1:  # the client's own message, as a single client would say it
                if isinstance(reasons[0], ServerUnreachableError):
                    raise reasons[0]
                raise ServerUnreachableError(str(reasons[0])) from reasons[0]
            details = "; ".join(f"{self.protocol}://{s.url}: {reason}" for s, reason in zip(servers, reasons))
            raise ServerUnreachableError(f"none of the {len(servers)} Triton servers is ready ({details})")
        for server, reason in zip(servers, reasons):
            if not server.ready:
                log.warning("skipping %s://%s for now (%s); it is used once it answers ready", self.protocol, server.url, reason)
        return self._client_for(ready[0]).deployment

    # --- clients ---------------------------------------------------------------------------------

    def _new_client(self, url: str) -> CompositorClient:
        # retries=0: the pool retries, possibly on another server.
        return CompositorClient(url, protocol=self.protocol, timeout_s=self.timeout_s, shared_memory=self.shared_memory, retries=0)

    def _probe_client(self, url: str) -> CompositorClient:
        return CompositorClient(url, protocol=self.protocol, timeout_s=min(self.timeout_s, HEALTH_TIMEOUT_S), retries=0)

    def _client_for(self, server: ServerState) -> CompositorClient:
        """This thread's client for ``server``; a new one after the server went down or came back."""
        clients = self._local.__dict__.setdefault("clients", {})
        with self._lock:
            generation, deployment = server.generation, server.deployment
        entry = clients.get(server.url)
        if entry is not None and entry[0] == generation:
            return entry[1]
        if entry is not None:
            with self._lock:
                if entry[1] in self._clients:
                    self._clients.remove(entry[1])
            with contextlib.suppress(Exception):
                entry[1].close()
        client = self._new_client(server.url)
        with self._lock:
            self._clients.append(client)
        clients[server.url] = (generation, client)
        if deployment is not None:
            client._deployment = deployment  # read once per server, not once per thread
        else:
            deployment = client.deployment
            with self._lock:
                if server.generation == generation:
                    server.deployment = deployment
            first = getattr(self, "deployment", None)
            if first is not None and (deployment.resolution, deployment.ensembles) != (first.resolution, first.ensembles):
                log.warning(
                    "%s://%s deploys %s at %s, but %s://%s deploys %s at %s: outputs will differ by server",
                    self.protocol, server.url, deployment.ensembles, deployment.resolution,
                    self.protocol, first.url, first.ensembles, first.resolution,
                )
        return client
