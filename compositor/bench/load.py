"""How the benchmarks time calls: closed-loop load (C workers issue requests back to back, like
perf_analyzer) for ``compositor bench``, synchronised iterations on a device (``time_iterations``)
for ``compositor bench-gpu``, and the latency percentiles both report (``latency_fields``).

Each measurement window lasts at least ``window_s`` and at least ``min_requests`` requests;
windows repeat until two consecutive windows agree on throughput within ``stability`` (perf_analyzer's
stability criterion) or ``max_windows`` is reached. Only the stable windows are reported.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


@dataclass
class LoadSettings:
    concurrency: int = 1
    warmup_requests: int = 2
    window_s: float = 5.0
    min_requests: int = 10
    max_windows: int = 4
    stability: float = 0.10


@dataclass
class Window:
    latencies_s: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def throughput(self) -> float:
        return len(self.latencies_s) / self.elapsed_s if self.elapsed_s else 0.0


PERCENTILES = (50, 90, 95, 99)


def latency_fields(latencies_s: list[float]) -> dict:
    """perf_analyzer's latency fields from per-request latencies in seconds.

    Returns:
        ``perf_latency_avg`` and ``perf_latency_p50/p90/p95/p99`` in ms (numpy's linear-interpolation
        percentiles), plus ``latency_min_ms`` and ``latency_max_ms``.
    """
    latencies_ms = np.asarray(latencies_s, dtype=np.float64) * 1e3
    return {
        "perf_latency_avg": float(latencies_ms.mean()),
        **{f"perf_latency_p{p}": float(np.percentile(latencies_ms, p)) for p in PERCENTILES},
        "latency_min_ms": float(latencies_ms.min()),
        "latency_max_ms": float(latencies_ms.max()),
    }


def _run_window(call: Callable[[], object], concurrency: int, window_s: float, min_requests: int) -> Window:
    """Run ``concurrency`` workers until the window is long enough; every started request finishes."""
    window = Window()
    lock = threading.Lock()
    stop = threading.Event()
    errors: list[BaseException] = []
    started = time.perf_counter()

    def worker() -> None:
        while not stop.is_set():
            begin = time.perf_counter()
            try:
                call()
            except BaseException as error:  # noqa: BLE001 - re-raised in the caller's thread below
                errors.append(error)
                stop.set()
                return
            latency = time.perf_counter() - begin
            with lock:
                window.latencies_s.append(latency)
                if time.perf_counter() - started >= window_s and len(window.latencies_s) >= min_requests:
                    stop.set()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    window.elapsed_s = time.perf_counter() - started
    if errors:
        raise errors[0]
    return window


def measure(call: Callable[[], object], settings: LoadSettings) -> dict:
    """Warm up, then measure windows until stable.

    Returns:
        perf_analyzer-style fields: ``perf_throughput`` (requests/s), ``perf_latency_avg`` and
        ``perf_latency_p50/p90/p95/p99`` (ms), ``request_count``, ``window_count``, ``stable``.
    """
    for _ in range(settings.warmup_requests):
        call()
    windows: list[Window] = []
    stable = False
    while len(windows) < settings.max_windows:
        windows.append(_run_window(call, settings.concurrency, settings.window_s, settings.min_requests))
        if len(windows) >= 2:
            last, previous = windows[-1].throughput, windows[-2].throughput
            if abs(last - previous) <= settings.stability * max(last, previous):
                stable = True
                break
    used = windows[-2:]
    latencies = latency_fields([lat for w in used for lat in w.latencies_s])
    requests = sum(len(w.latencies_s) for w in used)
    elapsed = sum(w.elapsed_s for w in used)
    if not stable:
        log.warning("throughput did not stabilise within %d windows (concurrency %d)", settings.max_windows, settings.concurrency)
    return {
        "perf_throughput": requests / elapsed,
        **{key: value for key, value in latencies.items() if key.startswith("perf_")},
        "request_count": requests,
        "window_count": len(windows),
        "stable": stable,
    }


def time_iterations(call: Callable, inputs: list[torch.Tensor], iterations: int, warmup: int, device: torch.device) -> dict:
    """First call, ``warmup`` untimed calls, ``iterations`` calls each synchronised and timed (PyTorch, any device).

    Returns:
        ``first_call_s``, ``latencies_s``, ``outputs`` (of the last call) and ``peak_memory_bytes``
        (PyTorch's allocator on CUDA, since the first call; None on the CPU).
    """
    import torch

    on_cuda = device.type == "cuda"

    def synchronize() -> None:
        if on_cuda:
            torch.cuda.synchronize(device)

    with torch.inference_mode():
        if on_cuda:
            torch.cuda.reset_peak_memory_stats(device)
        synchronize()
        started = time.perf_counter()
        outputs = call(*inputs)
        synchronize()
        first_call_s = time.perf_counter() - started
        for _ in range(warmup):
            call(*inputs)
        latencies_s = []
        for _ in range(iterations):
            synchronize()
            started = time.perf_counter()
            outputs = call(*inputs)
            synchronize()
            latencies_s.append(time.perf_counter() - started)
    peak = torch.cuda.max_memory_allocated(device) if on_cuda else None
    return {"first_call_s": first_call_s, "latencies_s": latencies_s, "outputs": outputs, "peak_memory_bytes": peak}
