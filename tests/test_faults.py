"""Faults: the server killed mid-run, and one Python-model process killed.

Server killed (SIGKILL to ``tritonserver`` and its process group, from another thread, while a
``CompositorPool`` has requests in flight): every request gets exactly one outcome, never silently
missing; with retries that outlast a restart on the same ports every one succeeds with the answer
the server gave before the kill, and without retries each unanswered one is an error that says
the server was unreachable or unavailable.

One stub killed (the ``postprocess`` model's ``triton_python_backend_stub``): Triton 2.51 does not
restart it (triton-inference-server/server#7862, #8604), and every later request fails with
"Stub process 'postprocess_0_0' is not healthy". Its health endpoints still answer ready: that is
the weak point, recorded by a strict ``xfail`` that starts failing once health tells the truth.

Killed stubs cannot unlink their ``/dev/shm/triton_python_backend_shm_region_*`` files; the tests
count the ones left behind (printed with ``pytest -s``) and remove them.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import skimage.data

from compositor import imaging
from compositor.client.pool import CompositeRequest, CompositorPool
from compositor.client.remote import ClientError, CompositorClient, ServerUnavailableError, ServerUnreachableError

from triton_probes import http_status, is_gone, stub_command_lines

pytestmark = pytest.mark.triton

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")
SIZES = [(48, 64), (64, 48), (40, 80), (90, 30), (64, 64), (75, 75)]
RESTART_PAUSE_S = 1.0


def mixed_requests(count: int) -> list[CompositeRequest]:
    """Requests keyed 0..count-1; their inputs repeat every 12 (6 source sizes, 4 photos, 3 background sizes)."""
    return [
        CompositeRequest(
            i,
            imaging.resize(getattr(skimage.data, PHOTOS[i % 4])(), SIZES[i % len(SIZES)]),
            imaging.resize(getattr(skimage.data, PHOTOS[(i + 1) % 4])(), (40 + i % 3, 50)),
        )
        for i in range(count)
    ]


def remove_leftover_regions(regions: list[Path], what: str) -> int:
    """Unlink the regions still in /dev/shm (killed processes cannot); print and return how many."""
    left = [region for region in regions if region.exists()]
    print(f"\n{what}: {len(left)} of {len(regions)} stub shared-memory regions left in /dev/shm")
    for region in left:
        region.unlink(missing_ok=True)
    return len(left)


class Killable:
    """A server on fixed ports that can be SIGKILLed and started again on the same ports."""

    def __init__(self, factory, repository) -> None:
        self.factory, self.repository = factory, repository
        self.server = factory.start(repository)
        self.ports = (self.server.grpc_port, self.server.http_port, self.server.metrics_port)
        self.left_regions = 0

    def kill(self) -> None:
        """SIGKILL the server and its process group (the stubs), as an OOM killer or ``kill -9`` would."""
        server = self.server
        regions = [Path("/dev/shm") / argv[2] for _, argv in stub_command_lines(server.pid)]
        members = psutil.Process(server.pid).children(recursive=True)
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout_s=10)
        for member in members:  # the stubs too: until they are gone, the ports may not be free
            wait_until_dead(member)
        server.stop()  # reaps, removes its work directory
        self.left_regions += remove_leftover_regions(regions, "after SIGKILL of tritonserver")

    def restart(self) -> None:
        self.server = self.factory.start(self.repository, *self.ports)


@pytest.fixture(scope="module")
def killable(triton_servers, small_repository):
    killable = Killable(triton_servers, small_repository)
    yield killable
    killable.server.stop()


def run_with_a_kill(killable, pool: CompositorPool, requests, kill_after: int, restart: bool):
    """Outcomes of ``pool.map(requests)``; after ``kill_after`` outcomes another thread kills the
    server and (when ``restart``) starts it again after a short pause. Without a restart, the
    requests from ``kill_after + 4`` on are sent only once the server is dead."""

    failures = []

    def kill_and_restart():
        try:
            killable.kill()
            if restart:
                time.sleep(RESTART_PAUSE_S)
                killable.restart()
        except BaseException as error:  # re-raised in the test's thread
            failures.append(error)

    killer = threading.Thread(target=kill_and_restart)

    def paced():
        for request in requests:
            if not restart and request.key == kill_after + 4:  # sent only once the server is gone
                killer.join()
            yield request

    outcomes = []
    try:
        for outcome in pool.map(paced()):
            outcomes.append(outcome)
            if len(outcomes) == kill_after:
                killer.start()
    finally:
        if killer.ident is not None:
            killer.join()
    if failures:
        raise failures[0]
    return outcomes


@pytest.mark.slow
def test_a_server_killed_mid_run_and_restarted_answers_every_request_exactly_once_and_correctly(killable):
    requests = mixed_requests(60)
    with CompositorClient(killable.server.grpc_url) as client:
        good = [client.composite(r.source, r.background) for r in requests[: len(SIZES) * 2]]
    # Retries and a timeout that outlast the restart (loading the models takes seconds here).
    with CompositorPool(killable.server.grpc_url, max_in_flight=4, timeout_s=90, retries=5, backoff_s=0.2) as pool:
        outcomes = run_with_a_kill(killable, pool, requests, kill_after=15, restart=True)
    assert [o.key for o in outcomes] == list(range(60))  # each exactly once, in order
    assert all(o.ok for o in outcomes), [(o.key, o.error) for o in outcomes if not o.ok]
    assert any(o.attempts > 1 for o in outcomes[15:]), "no request was in flight at the kill"
    for outcome in outcomes:
        want = good[outcome.key % len(good)]  # the inputs repeat every 12
        for name in ("alpha", "blended", "harmonized"):
            diff = np.abs(getattr(outcome.result, name).astype(np.int16) - want[name].astype(np.int16))
            assert diff.max() <= 1, (outcome.key, name, diff.max())


@pytest.mark.slow
def test_a_server_killed_mid_run_without_retries_reports_every_unanswered_request_as_unreachable(killable):
    requests = mixed_requests(30)
    try:
        with CompositorPool(killable.server.grpc_url, max_in_flight=4, timeout_s=3, retries=0, backoff_s=0.05) as pool:
            outcomes = run_with_a_kill(killable, pool, requests, kill_after=8, restart=False)
    finally:
        killable.restart()  # for the next test, whatever happened
    assert [o.key for o in outcomes] == list(range(30))  # each exactly once: none silently dropped
    assert all(o.ok for o in outcomes[:8])
    assert not any(o.ok for o in outcomes[12:]), "requests sent after the kill must fail"
    failed = [o for o in outcomes if not o.ok]
    for outcome in failed:
        assert isinstance(outcome.error, (ServerUnreachableError, ServerUnavailableError)), (outcome.key, outcome.error)
        assert killable.server.grpc_url in str(outcome.error)
        assert any(word in str(outcome.error) for word in ("unreachable", "UNAVAILABLE", "down")), outcome.error
    # The restarted server answers the same client code again.
    with CompositorClient(killable.server.grpc_url) as client:
        assert client.composite(requests[0].source, requests[0].background)["harmonized"].shape == (48, 64, 3)


def wait_until_dead(process: psutil.Process, timeout_s: float = 10.0) -> None:
    """Until ``process`` is gone or a zombie (Triton does not reap a dead stub)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if is_gone(process):
            return
        time.sleep(0.05)
    raise AssertionError(f"process {process.pid} still alive {timeout_s:g} s after SIGKILL")


@pytest.fixture(scope="module")
def stub_killed(triton_servers, small_repository):
    """A server whose ``postprocess`` stub was SIGKILLed after one good request; yields (server, client)."""
    server = triton_servers.start(small_repository)
    (request,) = mixed_requests(1)
    client = CompositorClient(server.grpc_url, retries=0)
    region = None
    try:
        client.composite(request.source, request.background)
        ((pid, argv),) = [(pid, argv) for pid, argv in stub_command_lines(server.pid) if f"{os.sep}postprocess{os.sep}" in argv[1]]
        region = Path("/dev/shm") / argv[2]
        victim = psutil.Process(pid)
        os.kill(pid, signal.SIGKILL)
        wait_until_dead(victim)
        yield server, client, request
    finally:
        client.close()
        regions = [region] if region else []
        # With a dead stub, Triton's own orderly exit (SIGINT) waits about 30 s for it to unload.
        server.stop(timeout_s=5)
        remove_leftover_regions(regions, "after SIGKILL of the postprocess stub and stop()")


def test_requests_after_a_python_model_process_is_killed_fail_with_an_error_naming_it(stub_killed):
    server, client, request = stub_killed
    # Triton 2.51 does not restart a dead stub: for as long as we watch, each request fails with a
    # clear error (never a wrong answer, never a hang), and the server itself stays up.
    deadline = time.monotonic() + 5
    tries = 0
    while time.monotonic() < deadline or tries < 3:
        with pytest.raises(ClientError, match=r"Stub process 'postprocess_0_0' is not healthy"):
            client.composite(request.source, request.background)
        tries += 1
    assert server.is_running()
    assert not [argv for _, argv in stub_command_lines(server.pid) if f"{os.sep}postprocess{os.sep}" in argv[1]], "the stub came back"
    assert http_status(f"http://{server.http_url}/v2/health/live") == 200
    # Through a pool with this one server: retried (the server is at fault, not the request), then reported.
    with CompositorPool(server.grpc_url, max_in_flight=1, retries=2, backoff_s=0.05) as pool:
        (outcome,) = pool.map([request])
    assert isinstance(outcome.error, ClientError) and outcome.attempts == 3
    assert "Stub process 'postprocess_0_0' is not healthy" in str(outcome.error)


def test_a_pool_sends_requests_failed_by_a_dead_python_model_process_to_another_server(stub_killed, killable):
    broken, _, _ = stub_killed
    healthy = killable.server
    requests = mixed_requests(8)
    with CompositorPool(f"{broken.grpc_url},{healthy.grpc_url}", max_in_flight=2, retries=3, backoff_s=0.05) as pool:
        outcomes = list(pool.map(requests))
    assert [o.key for o in outcomes] == list(range(8))
    assert all(o.ok and o.server == healthy.grpc_url for o in outcomes), [(o.key, o.server, o.error) for o in outcomes]
    # The dead stub's server was tried (it answers ready) and failed over from, not silently skipped.
    assert any(o.attempts == 2 for o in outcomes)


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="Triton 2.51 keeps answering ready after a Python-backend stub died and every request fails "
    "(triton-inference-server/server#8604); contain it with a readiness probe that sends a request",
)
def test_health_says_not_ready_while_a_python_model_process_is_dead(stub_killed):
    server, client, request = stub_killed
    with pytest.raises(ClientError, match="is not healthy"):
        client.composite(request.source, request.background)
    assert http_status(f"http://{server.http_url}/v2/models/composite/ready") != 200
    assert http_status(f"http://{server.http_url}/v2/health/ready") != 200
