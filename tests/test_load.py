"""Load: 1000 mixed-size requests at concurrency 16 through the ``composite`` ensemble (gRPC, loopback).

Every request must be answered, every answer must equal the eager pipeline's output for its input
(within one level on at least 99.9 % of values, per output), and the server must not restart on
the way: same ``tritonserver`` pid, same Python-backend stub pids, ready on every health probe,
and Triton's own statistics counting exactly 1000 successful ``composite`` executions (a model that
reloaded would have reset them; a resent request would count twice).

The figures (latency percentiles, throughput, the server's peak resident memory: ``tritonserver``
plus its stub processes, sampled every 50 ms) are printed (``pytest -s``) and written to
``load.json`` in the test's ``tmp_path``, with perf_analyzer / model_analyzer field names.
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import skimage.data

from compositor import imaging
from compositor.client.remote import CompositorClient
from compositor.runtimes import EagerPipeline

from triton_probes import family_rss, http_status, stub_command_lines

pytestmark = [pytest.mark.triton, pytest.mark.slow]

REQUESTS = 1000
CONCURRENCY = 16
RUN_BOUND_S = 240.0
"""The whole run must finish within this; requests still unsent then are counted as unanswered."""
SAMPLE_INTERVAL_S = 0.05
HEALTH_INTERVAL_S = 0.25
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "cat", "immunohistochemistry")
SOURCE_SIZES = [(40, 48), (60, 80), (72, 56), (90, 120), (120, 90), (120, 160)]  # (height, width)
BACKGROUND_SIZES = [(50, 40), (64, 64), (100, 150)]
PAIRS = [(s, b) for b in range(len(BACKGROUND_SIZES)) for s in range(len(SOURCE_SIZES))]


def pair_for(index: int) -> tuple[int, int]:
    """Request ``index`` cycles through all 18 (source size, background size) pairs."""
    return PAIRS[index % len(PAIRS)]


def frames(pair: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    s, b = pair
    source = imaging.resize(getattr(skimage.data, PHOTOS[s])(), SOURCE_SIZES[s])
    background = imaging.resize(getattr(skimage.data, PHOTOS[(b + 3) % len(PHOTOS)])()[..., :3], BACKGROUND_SIZES[b])
    return source, background


def composite_successes(http_url: str) -> tuple[int, int]:
    """Triton's own (success, fail) counts of the ``composite`` ensemble."""
    with urllib.request.urlopen(f"http://{http_url}/v2/models/composite/stats", timeout=5.0) as response:
        stats = json.load(response)["model_stats"][0]["inference_stats"]
    return int(stats["success"]["count"]), int(stats["fail"]["count"])


class Watcher(threading.Thread):
    """Samples the server's resident memory every 50 ms and its readiness every 250 ms."""

    def __init__(self, pid: int, http_url: str) -> None:
        super().__init__(daemon=True)
        self.pid, self.ready_url = pid, f"http://{http_url}/v2/health/ready"
        self.peak_rss = 0
        self.samples = 0
        self.not_ready: list[int] = []
        self.probes = 0
        self._done = threading.Event()

    def run(self) -> None:
        next_probe = 0.0
        while not self._done.is_set():
            self.peak_rss = max(self.peak_rss, family_rss(self.pid))
            self.samples += 1
            if time.monotonic() >= next_probe:
                status = http_status(self.ready_url)
                self.probes += 1
                if status != 200:
                    self.not_ready.append(status)
                next_probe = time.monotonic() + HEALTH_INTERVAL_S
            self._done.wait(SAMPLE_INTERVAL_S)

    def stop(self) -> None:
        self._done.set()
        self.join()


@pytest.fixture(scope="module")
def server(own_server):
    return own_server


def test_a_thousand_mixed_requests_at_concurrency_16_are_all_answered_correctly_with_no_restart(server, small_export, tmp_path):
    inputs = {pair: frames(pair) for pair in PAIRS}
    eager = EagerPipeline(small_export.networks, small_export.resolution)
    expected = {pair: eager(*inputs[pair]) for pair in PAIRS}

    pid, stubs_before = server.pid, {argv[1]: pid for pid, argv in stub_command_lines(server.pid)}
    assert len(stubs_before) == 5, stubs_before  # preprocess, matting, blending, harmonization, postprocess
    successes_before, fails_before = composite_successes(server.http_url)
    local = threading.local()
    clients: list[CompositorClient] = []
    clients_lock = threading.Lock()
    deadline = time.monotonic() + RUN_BOUND_S

    def one(index: int):
        if time.monotonic() > deadline:
            return index, None, "not sent: the run exceeded its bound", 0.0
        client = getattr(local, "client", None)
        if client is None:
            # retries=0: a retry would hide a fault this test is meant to see.
            client = local.client = CompositorClient(server.grpc_url, retries=0)
            with clients_lock:
                clients.append(client)
        source, background = inputs[pair_for(index)]
        started = time.perf_counter()
        try:
            outputs = client.composite(source, background)
        except Exception as error:  # noqa: BLE001 - counted and reported below
            return index, None, repr(error), time.perf_counter() - started
        return index, outputs, None, time.perf_counter() - started

    watcher = Watcher(pid, server.http_url)
    watcher.start()
    started = time.monotonic()
    try:
        with ThreadPoolExecutor(CONCURRENCY) as executor:
            outcomes = list(executor.map(one, range(REQUESTS)))
    finally:
        elapsed_s = time.monotonic() - started
        watcher.stop()
        for client in clients:
            client.close()

    errors = [(index, error) for index, _, error, _ in outcomes if error is not None]
    mismatched = []
    worst_fraction = 1.0
    for index, outputs, error, _ in outcomes:
        if error is not None:
            continue
        want = expected[pair_for(index)]
        for name in ("alpha", "blended", "harmonized"):
            got = outputs[name]
            assert got.shape == getattr(want, name).shape, (index, name, got.shape)
            within = float(np.mean(np.abs(got.astype(np.int16) - getattr(want, name).astype(np.int16)) <= 1))
            worst_fraction = min(worst_fraction, within)
            if within < 0.999:
                mismatched.append((index, name, within))
    latencies_ms = np.array([latency for _, _, error, latency in outcomes if error is None]) * 1000.0
    successes_after, fails_after = composite_successes(server.http_url)

    figures = {
        "requests": REQUESTS,
        "concurrency": CONCURRENCY,
        "answered": REQUESTS - len(errors),
        "lost": len(errors),
        "mismatched": len(mismatched),
        "worst_fraction_within_1_level": worst_fraction,
        "perf_latency_p50_ms": float(np.percentile(latencies_ms, 50)) if len(latencies_ms) else None,
        "perf_latency_p90_ms": float(np.percentile(latencies_ms, 90)) if len(latencies_ms) else None,
        "perf_latency_p99_ms": float(np.percentile(latencies_ms, 99)) if len(latencies_ms) else None,
        "perf_throughput": (REQUESTS - len(errors)) / elapsed_s,
        "elapsed_s": elapsed_s,
        "server_peak_rss_mb": watcher.peak_rss / 2**20,
        "rss_samples": watcher.samples,
        "health_probes": watcher.probes,
        "health_not_ready": len(watcher.not_ready),
        "triton_composite_success_delta": successes_after - successes_before,
        "triton_composite_fail_delta": fails_after - fails_before,
        "machine": f"{os.cpu_count()} CPUs, network resolution {small_export.resolution}",
    }
    (tmp_path / "load.json").write_text(json.dumps(figures, indent=2))
    print("\nload test:", json.dumps(figures, indent=2))

    assert elapsed_s <= RUN_BOUND_S, f"the run took {elapsed_s:.0f} s, over its bound of {RUN_BOUND_S:.0f} s"
    assert not errors, f"{len(errors)} of {REQUESTS} requests failed, e.g. {errors[:3]}"
    assert not mismatched, f"{len(mismatched)} answers differ from the eager pipeline, e.g. {mismatched[:3]}"
    # No restart: same processes, ready throughout, and Triton counted each request exactly once.
    assert server.is_running() and server.pid == pid
    assert {argv[1]: p for p, argv in stub_command_lines(pid)} == stubs_before
    assert watcher.probes > 0 and not watcher.not_ready, watcher.not_ready
    assert (successes_after - successes_before, fails_after - fails_before) == (REQUESTS, 0)
