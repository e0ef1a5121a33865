"""``CompositorPool`` against real Triton servers: order, bound, isolation of failures, failover.

One server for most tests; two more for the failover tests, one of which is stopped mid-run and
started again on the same ports. All serve the session's export (aspect buckets, short side 64) of the perturbed networks.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import skimage.data

from compositor import imaging
from compositor.client.pool import CompositeRequest, CompositorPool
from compositor.client.remote import ClientError, CompositorClient, ServerUnreachableError
from compositor.runtimes import EagerPipeline
from compositor.serving.server import free_port
from compositor.contract.spec import aspect_buckets

from triton_probes import INTERRUPTIBLE

pytestmark = pytest.mark.triton

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")
SIZES = [(48, 64), (64, 48), (37, 81), (90, 30), (64, 64), (20, 120), (75, 75), (33, 47), (120, 90), (52, 52)]


def photo(name: str, size: tuple[int, int]) -> np.ndarray:
    return imaging.resize(getattr(skimage.data, name)(), size)


def mixed_requests(count: int, offset: int = 0) -> list[CompositeRequest]:
    """Requests of different sizes (so they cannot be mistaken for each other), keyed 0..count-1 (+offset)."""
    requests = []
    for i in range(count):
        size = SIZES[i % len(SIZES)]
        source = photo(PHOTOS[i % 4], size)
        background = photo(PHOTOS[(i + 1) % 4], (40 + i % 7, 50))
        requests.append(CompositeRequest(offset + i, source, background))
    return requests


@pytest.fixture(scope="module")
def server(own_server):
    return own_server


@pytest.fixture(scope="module")
def eager(small_export):
    return EagerPipeline(small_export.networks, small_export.resolution)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_outcomes_come_in_submission_order_and_equal_single_requests(server, eager, protocol):
    url = server.grpc_url if protocol == "grpc" else server.http_url
    requests = mixed_requests(10)
    with CompositorPool(url, protocol=protocol, max_in_flight=4) as pool:
        outcomes = list(pool.map(requests))
    assert [o.key for o in outcomes] == list(range(10))
    assert all(o.ok and o.attempts == 1 and o.server == url for o in outcomes), [o.error for o in outcomes if not o.ok]
    with CompositorClient(url, protocol=protocol) as client:
        for request, outcome in zip(requests, outcomes):
            single = client.composite(request.source, request.background)
            for name in ("alpha", "blended", "harmonized"):
                assert np.array_equal(getattr(outcome.result, name), single[name]), (request.key, name)
    # And what the eager pipeline makes of the same frames (ONNX Runtime vs PyTorch: within one level).
    for request, outcome in zip(requests[:3], outcomes[:3]):
        expected = eager(request.source, request.background)
        diff = np.abs(outcome.result.harmonized.astype(int) - expected.harmonized)
        assert np.mean(diff <= 1) >= 0.999


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_shared_memory_gives_the_same_bytes_and_leaves_no_region_behind(server, protocol):
    from compositor.client.shared_memory import server_regions

    if protocol == "grpc":
        import tritonclient.grpc as module
    else:
        import tritonclient.http as module
    url = server.grpc_url if protocol == "grpc" else server.http_url
    requests = mixed_requests(6)
    requests.append(CompositeRequest("matte", requests[0].source, requests[0].background,
                                     np.full((*requests[0].source.shape[:2], 1), 200, np.uint8)))
    results = {}
    for shared_memory in (False, True):
        with CompositorPool(url, protocol=protocol, max_in_flight=3, shared_memory=shared_memory) as pool:
            results[shared_memory] = list(pool.map(requests))
            if shared_memory:  # regions were made and registered, one set per worker thread
                with module.InferenceServerClient(url) as triton:
                    assert server_regions(triton)
                assert list(Path("/dev/shm").glob(f"compositor_{os.getpid()}_*"))
    for plain, shared in zip(results[False], results[True]):
        assert plain.ok and shared.ok and plain.key == shared.key
        for name in ("alpha", "blended", "harmonized"):
            assert np.array_equal(getattr(plain.result, name), getattr(shared.result, name)), (plain.key, name)
    with module.InferenceServerClient(url) as triton:
        assert server_regions(triton) == set()
    leftovers = list(Path("/dev/shm").glob(f"compositor_{os.getpid()}_*"))
    assert leftovers == []


INTERRUPTED_RUN = """
import os, sys
import numpy as np
from compositor.client.pool import CompositeRequest, CompositorPool

frames = (CompositeRequest(i, np.full((64, 80, 3), i % 256, np.uint8), np.zeros((32, 32, 3), np.uint8)) for i in range(10**6))
with CompositorPool(sys.argv[1], max_in_flight=3, shared_memory=True) as pool:
    for n, outcome in enumerate(pool.map(frames)):
        assert outcome.ok, outcome.error
        if n == 5:
            print(os.getpid(), flush=True)
"""


def test_ctrl_c_in_a_shared_memory_run_leaves_no_region_on_the_server_or_in_dev_shm(server):
    import signal
    import subprocess
    import sys

    import tritonclient.grpc as grpcclient

    from compositor.client.shared_memory import server_regions

    run = subprocess.Popen([sys.executable, "-c", INTERRUPTIBLE + INTERRUPTED_RUN, server.grpc_url], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    try:
        pid = int(run.stdout.readline())  # requests are flowing through shared memory now
        with grpcclient.InferenceServerClient(server.grpc_url) as triton:
            assert server_regions(triton)
            run.send_signal(signal.SIGINT)
            _, err = run.communicate(timeout=60)
            assert "KeyboardInterrupt" in err and run.returncode != 0
            assert server_regions(triton) == set()
        assert list(Path("/dev/shm").glob(f"compositor_{pid}_*")) == []
    finally:
        run.kill()
        run.wait()


def test_at_most_max_in_flight_requests_are_outstanding_and_they_do_overlap(server):
    import tritonclient.grpc as grpcclient

    taken, yielded, outstanding = [0], [0], []

    def requests():
        for request in mixed_requests(16):
            taken[0] += 1
            outstanding.append(taken[0] - yielded[0])
            yield request

    with grpcclient.InferenceServerClient(server.grpc_url) as stats:
        before = stats.get_inference_statistics("composite").model_stats[0].inference_count
        with CompositorPool(server.grpc_url, max_in_flight=3) as pool:
            for outcome in pool.map(requests()):
                assert outcome.ok
                yielded[0] += 1
            peak = pool.peak_in_flight
        after = stats.get_inference_statistics("composite").model_stats[0].inference_count
        # Triton counts a request just after answering it: the last one may not be in yet.
        deadline = time.monotonic() + 10
        while after - before < 16 and time.monotonic() < deadline:
            time.sleep(0.05)
            after = stats.get_inference_statistics("composite").model_stats[0].inference_count
    assert max(outstanding) == 3  # taken lazily: never more than 3 ahead of what was yielded
    assert 2 <= peak <= 3
    assert after - before == 16  # each request reached the server once


def test_a_corrupt_item_fails_alone_with_its_reason_and_the_rest_succeed(server):
    requests = mixed_requests(6)
    requests[2] = CompositeRequest("rgba", np.zeros((32, 32, 4), np.uint8), requests[2].background)
    requests[4] = CompositeRequest("bad matte", requests[4].source, requests[4].background, np.zeros((8, 8, 1), np.uint8))
    with CompositorPool(server.grpc_url, max_in_flight=3) as pool:
        outcomes = list(pool.map(requests))
    assert [o.key for o in outcomes] == [0, 1, "rgba", 3, "bad matte", 5]
    failed = {o.key: o for o in outcomes if not o.ok}
    assert sorted(failed, key=str) == ["bad matte", "rgba"]
    assert isinstance(failed["rgba"].error, imaging.ImageError) and "expected 3 channel(s), got 4 (RGBA)" in str(failed["rgba"].error)
    assert "alpha: size 8x8" in str(failed["bad matte"].error)
    assert all(o.result is None and o.attempts == 0 for o in failed.values())
    assert all(o.ok and o.result.harmonized.shape == requests[i].source.shape for i, o in enumerate(outcomes) if o.key not in failed)


def test_a_server_down_at_start_is_skipped_when_another_is_up(server):
    down = f"127.0.0.1:{free_port()}"
    with CompositorPool(f"{down},{server.grpc_url}", max_in_flight=2) as pool:
        assert pool.ready_urls == [server.grpc_url]
        assert pool.deployment.resolution == aspect_buckets(64)
        outcomes = list(pool.map(mixed_requests(4)))
    assert all(o.ok and o.server == server.grpc_url for o in outcomes)


# --- Two servers, one stopped mid-run ----------------------------------------------------------


class Pair:
    """Two servers on fixed ports; ``a`` can be stopped and started again on the same ports."""

    def __init__(self, factory, repository):
        self.factory, self.repository = factory, repository
        self.a = factory.start(repository)
        self.b = factory.start(repository)
        self.ports = (self.a.grpc_port, self.a.http_port, self.a.metrics_port)

    def restart_a(self) -> None:
        self.a.stop()
        self.a = self.factory.start(self.repository, *self.ports)

    def urls(self) -> str:
        return f"{self.a.grpc_url},{self.b.grpc_url}"


@pytest.fixture(scope="module")
def pair(triton_servers, small_repository):
    pair = Pair(triton_servers, small_repository)
    yield pair
    pair.a.stop()
    pair.b.stop()


def test_a_server_stopped_mid_run_is_skipped_every_item_is_answered_once_and_it_is_used_again_after_restart(pair):
    a, b = pair.a.grpc_url, pair.b.grpc_url
    stopper = threading.Thread(target=pair.a.stop)
    count, stop_after = 24, 6

    def requests():
        for request in mixed_requests(count):
            if request.key == stop_after + 4:  # the stop has begun; let it finish before sending more
                stopper.join()
            yield request

    outcomes = []
    with CompositorPool(pair.urls(), max_in_flight=4, timeout_s=30, retries=3, backoff_s=0.05) as pool:
        for outcome in pool.map(requests()):
            outcomes.append(outcome)
            if len(outcomes) == stop_after:
                stopper.start()  # from another thread, while requests are in flight
        assert [o.key for o in outcomes] == list(range(count))  # each exactly once, in order
        assert all(o.ok for o in outcomes), [(o.key, o.error) for o in outcomes if not o.ok]
        assert {o.server for o in outcomes[:stop_after]} == {a, b}  # both served before the stop
        assert all(o.server == b for o in outcomes[stop_after + 4:])  # skipped once stopped
        # a is marked down only by failing a request; that request was sent again, to b.
        assert any(o.attempts == 2 and o.server == b for o in outcomes[stop_after:])
        assert pool.ready_urls == [b]

        pair.restart_a()
        served_by_a = []
        deadline = time.monotonic() + 60
        key = count
        while not served_by_a and time.monotonic() < deadline:  # a is probed with backoff: it comes back
            for outcome in pool.map(mixed_requests(4, offset=key)):
                assert outcome.ok, outcome.error
                served_by_a += [outcome.key] if outcome.server == a else []
            key += 4
        assert served_by_a, "the restarted server was never used again"
        assert sorted(pool.ready_urls) == sorted([a, b])


def test_retries_are_honoured_and_every_server_down_is_an_error_naming_every_url(pair):
    if not pair.a.is_running():
        pair.restart_a()
    a, b = pair.a.grpc_url, pair.b.grpc_url
    requests = mixed_requests(2)
    no_retry = CompositorPool(pair.urls(), max_in_flight=1, timeout_s=3, retries=0, backoff_s=0.05)
    client_a = CompositorClient(a, retries=2, backoff_s=0.05)
    client_b = CompositorClient(b, retries=2, backoff_s=0.05, validate=False)
    try:
        client_a.composite(requests[0].source, requests[0].background)  # a connection that worked
        pair.a.stop()
        # One of two consecutive requests goes to a, which refuses it, and with retries=0 it is not resent.
        outcomes = list(no_retry.map(requests))
        failed = [o for o in outcomes if not o.ok]
        assert len(failed) == 1 and failed[0].attempts == 1 and failed[0].server == a
        assert isinstance(failed[0].error, ServerUnreachableError)
        assert [o.server for o in outcomes if o.ok] == [b]

        # The single client: a refused connection is retried `retries` times, a rejected request never.
        with pytest.raises(ServerUnreachableError, match=f"grpc://{a} is unreachable"):
            client_a.composite(requests[0].source, requests[0].background)
        assert client_a.attempts == 3
        bad = {"source": np.zeros((1, 16, 16, 4), np.uint8), "background": np.zeros((1, 16, 16, 3), np.uint8)}
        with pytest.raises(ClientError, match="rejected the request"):
            client_b.infer("composite", bad, ["harmonized"])
        assert client_b.attempts == 1

        # Both down: a request with retries left waits timeout_s for a server to come back, then fails
        # with an error that names both.
        patient = CompositorPool(pair.urls(), max_in_flight=1, timeout_s=3, retries=5, backoff_s=0.05)
        assert patient.ready_urls == [b]
        pair.b.stop()
        started = time.monotonic()
        with patient:
            (outcome,) = patient.map(requests[:1])
        assert time.monotonic() - started < 3 * 3
        assert isinstance(outcome.error, ServerUnreachableError)
        assert "all 2 Triton servers have been down for more than 3 s" in str(outcome.error)
        assert f"grpc://{a}:" in str(outcome.error) and f"grpc://{b}:" in str(outcome.error)
    finally:
        no_retry.close()
        client_a.close()
        client_b.close()


def test_each_worker_has_its_own_grpc_connection_so_a_connection_balancer_can_spread_them(server):
    """gRPC would otherwise share one TCP connection among the workers' channels, and a Kubernetes
    ClusterIP Service (which balances connections, not requests) would send every request to one pod."""
    import psutil

    port = int(server.grpc_url.rsplit(":", 1)[1])

    def connections() -> int:
        return sum(1 for c in psutil.Process().net_connections(kind="tcp")
                   if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED)

    with CompositorPool(server.grpc_url, max_in_flight=3) as pool:
        outcomes = list(pool.map(mixed_requests(12)))
        assert all(o.ok for o in outcomes)
        assert connections() >= 3
