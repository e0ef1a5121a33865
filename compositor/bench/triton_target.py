"""The ``triton`` benchmark mode: a server to measure, its clients, and its side of the story.

Either already running servers (``--url``, one ``host:port`` or several separated by commas) or
one the benchmark starts from a generated ``python``-flavour repository. With several servers the
full chain goes through the client's several-server mode (``CompositorPool``: each request to the
ready server with the fewest in flight), as ``compositor composite --url a,b`` sends it; each
network alone is timed on the first server. Server-side timings come from Triton's statistics API,
summed over the servers, as deltas over each measurement, named as perf_analyzer / model_analyzer
name them.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import tritonclient.grpc

from compositor.bench.workloads import CHAIN, Workload, sample_frames
from compositor.client.pool import CompositorPool, parse_urls
from compositor.client.remote import CompositorClient
from compositor.serving.configs import RepositoryOptions
from compositor.serving.repository import generate_repository
from compositor.serving.server import TritonServer, free_port
from compositor.contract.spec import COMPOSITE, NETWORKS, Resolution

log = logging.getLogger(__name__)

ENSEMBLE = COMPOSITE.name


@contextlib.contextmanager
def triton_endpoint(url: str | None, onnx_dir: Path, resolution: Resolution):
    """Yield ``(grpc_url, server_pid or None)``: the given server, or one started for the run."""
    if url:
        yield url, None
        return
    with tempfile.TemporaryDirectory(prefix="compositor-bench-") as workdir:
        repository = Path(workdir) / "model_repository"
        generate_repository(repository, RepositoryOptions(flavor="python", resolution=resolution), export_dir=onnx_dir)
        server = TritonServer(repository, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port())
        with server:
            yield server.grpc_url, server.pid


class ThreadClients:
    """One client per load-generator thread: gRPC stubs are cheap and this keeps threads independent."""

    def __init__(self, url: str):
        self.url = url
        self._local = threading.local()

    def get(self) -> CompositorClient:
        if not hasattr(self._local, "client"):
            # Inputs are validated once by the benchmark, not on every timed request.
            self._local.client = CompositorClient(self.url, protocol="grpc", validate=False)
        return self._local.client


POOL_MAX_IN_FLIGHT = 64
"""Worker threads of the several-server pool: more than any concurrency level the benchmark runs."""


def triton_workloads(
    url: str, batch: int, workloads: tuple[str, ...], network_inputs: dict[str, list[np.ndarray]], stack: contextlib.ExitStack
) -> list[Workload]:
    """Full chain through the ensemble, and each network model called alone.

    Several servers in ``url``: the chain through a ``CompositorPool`` (closed with ``stack``).
    """
    urls = parse_urls(url, "grpc")
    clients = ThreadClients(urls[0])
    source, background = sample_frames(batch)
    result = []
    for name in workloads:
        if name == CHAIN and len(urls) > 1:
            pool = stack.enter_context(CompositorPool(",".join(urls), max_in_flight=POOL_MAX_IN_FLIGHT))
            call = lambda: pool.composite(source, background)  # noqa: E731
        elif name == CHAIN:
            call = lambda: clients.get().composite(source, background)  # noqa: E731
        else:
            spec = NETWORKS[name]
            feeds = dict(zip(spec.input_names(), network_inputs[name]))
            call = lambda name=name, feeds=feeds, outputs=spec.output_names(): clients.get().infer(name, feeds, outputs)  # noqa: E731
        result.append(Workload("triton", name, batch, call))
    return result


def settled_statistics(url: str, timeout_s: float = 5.0, interval_s: float = 0.1) -> dict[str, dict]:
    """``statistics`` once two snapshots ``interval_s`` apart agree (at most ``timeout_s``).

    Triton records a request in its statistics just after it sends the response, so a snapshot
    taken the moment the last response arrives can miss it (seen on a loaded 2-core machine: one
    request of 28 missing); every request has finished client-side when this is called.
    """
    deadline = time.monotonic() + timeout_s
    current = statistics(url)
    while time.monotonic() < deadline:
        time.sleep(interval_s)
        previous, current = current, statistics(url)
        if current == previous:
            break
    return current


def statistics(url: str) -> dict[str, dict]:
    """Cumulative per-model statistics (counts and nanoseconds), summed over the servers in ``url``."""
    stats: dict[str, dict] = {}
    for one_url in parse_urls(url, "grpc"):
        with tritonclient.grpc.InferenceServerClient(one_url) as client:
            raw = client.get_inference_statistics(as_json=True)
        for model in raw.get("model_stats", []):
            inference = model.get("inference_stats", {})
            counts = {
                "inference_count": int(model.get("inference_count", 0)),
                "execution_count": int(model.get("execution_count", 0)),
                **{f"{key}_ns": int(inference.get(key, {}).get("ns", 0)) for key in ("queue", "compute_input", "compute_infer", "compute_output")},
                "success_count": int(inference.get("success", {}).get("count", 0)),
            }
            total = stats.setdefault(model["name"], dict.fromkeys(counts, 0))
            for key, value in counts.items():
                total[key] += value
    return stats


def server_breakdown(before: dict, after: dict) -> dict:
    """Per-request server time (microseconds) per model between two ``statistics`` snapshots.

    Averaged over the requests each model completed in between (all measurement windows), as
    perf_analyzer averages its server-side fields.
    """
    breakdown = {}
    for model, end in after.items():
        start = before.get(model, {})
        delta = {key: end[key] - start.get(key, 0) for key in end}
        requests = delta["success_count"]
        if not requests:
            continue
        breakdown[model] = {
            "perf_server_queue": delta["queue_ns"] / requests / 1e3,
            "perf_server_compute_input": delta["compute_input_ns"] / requests / 1e3,
            "perf_server_compute_infer": delta["compute_infer_ns"] / requests / 1e3,
            "perf_server_compute_output": delta["compute_output_ns"] / requests / 1e3,
            "inference_count": delta["inference_count"],
            "execution_count": delta["execution_count"],
        }
    return breakdown


class MemorySampler:
    """Peak resident memory of a process tree (the server and its Python-backend stubs), sampled."""

    def __init__(self, pid: int | None, interval_s: float = 0.2):
        self.pid = pid
        self.interval_s = interval_s
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        root = psutil.Process(self.pid)
        total = 0
        for process in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                total += process.memory_info().rss
        return total

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            with contextlib.suppress(psutil.Error):
                self.peak_bytes = max(self.peak_bytes, self._sample())

    def __enter__(self) -> MemorySampler:
        if self.pid is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self.pid is not None:
            self._thread.join()
