"""Run a benchmark: every mode x workload x concurrency, with the machine header and the ratios.

``run_benchmark`` is what ``compositor bench`` calls; it returns the report dict that the CLI
writes as JSON / markdown / plot.
"""

from __future__ import annotations

import contextlib
import logging
import resource
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from compositor.bench import MODES, triton_target
from compositor.bench.load import LoadSettings, measure
from compositor.bench.machine import machine_header
from compositor.bench.report import ratios
from compositor.bench.workloads import CHAIN, WORKLOADS, in_process_workloads, make_pipeline, network_inputs, torch_threads
from compositor.export.layout import fp32_file
from compositor.networks.contract import contract_models
from compositor.networks.complexity import complexity_table
from compositor.networks.factory import Networks
from compositor.contract.spec import DEFAULT_RESOLUTION, NETWORKS, Resolution, format_resolution, parse_resolution

log = logging.getLogger(__name__)



@dataclass
class BenchSettings:
    """What to measure and how long.

    Attributes:
        modes: subset of ``MODES``.
        concurrency: concurrency levels of the full chain (networks alone run at concurrency 1).
        batch: images per request.
        load: measurement windows (``compositor.bench.load.LoadSettings``; concurrency is set per run).
        networks_alone: also time each network alone.
        onnx_dir: exported FP32 ONNX models; exported into a temporary folder when None.
        url: running Triton servers' gRPC ``host:port`` (several separated by commas); one is started
            when None.
    """

    modes: tuple[str, ...] = MODES
    resolution: Resolution = DEFAULT_RESOLUTION
    concurrency: tuple[int, ...] = (1, 2, 4, 8)
    batch: int = 1
    load: LoadSettings = field(default_factory=LoadSettings)
    networks_alone: bool = True
    onnx_dir: Path | None = None
    url: str | None = None

    def __post_init__(self) -> None:
        self.resolution = parse_resolution(self.resolution)


def _export_onnx(networks: Networks, resolution: Resolution, out_dir: Path) -> Path:
    from compositor.export.onnx_export import export_fp32  # ONNX tooling, for these two modes only

    models = contract_models(networks)
    for name in NETWORKS:
        export_fp32(models[name], name, out_dir / fp32_file(name), resolution)
    return out_dir


def _result_row(mode: str, workload: str, concurrency: int, settings: BenchSettings, measured: dict, gflops: float) -> dict:
    images_per_s = measured["perf_throughput"] * settings.batch
    return {
        "mode": mode,
        "workload": workload,
        "concurrency": concurrency,
        "batch": settings.batch,
        "resolution": format_resolution(settings.resolution),
        **measured,
        "perf_throughput": images_per_s,  # images/s (perf_analyzer: inferences/s)
        "requests_per_s": measured["perf_throughput"],
        "achieved_gflops": images_per_s * gflops,
    }


def run_benchmark(networks: Networks, settings: BenchSettings, command: str = "") -> dict:
    """Measure every requested mode; returns the report (``machine``, ``settings``, ``results`` ...)."""
    unknown = set(settings.modes) - set(MODES)
    if unknown:
        raise ValueError(f"unknown mode(s) {sorted(unknown)}; choose from {', '.join(MODES)}")
    started = time.perf_counter()
    header = machine_header(threads=torch_threads())
    # The sample frames (astronaut) are square: every mode runs the square bucket, where FLOPs are counted.
    complexity = complexity_table(contract_models(networks), settings.resolution.reference)
    flops = {row["network"]: row["gflops"] for row in complexity}
    flops[CHAIN] = sum(flops.values())
    workload_names = WORKLOADS if settings.networks_alone else (CHAIN,)
    report = {
        "command": command,
        "machine": header,
        "settings": {
            "modes": list(settings.modes),
            "resolution": format_resolution(settings.resolution),
            "concurrency": list(settings.concurrency),
            "batch": settings.batch,
            "window_s": settings.load.window_s,
            "min_requests_per_window": settings.load.min_requests,
            "stability": settings.load.stability,
            "untrained_weights": list(networks.untrained),
            "triton_servers": settings.url.split(",") if settings.url else "started by the benchmark",
        },
        "compute": {
            "gflops_per_image": flops,
            "peak_gflops": header["peak_gflops"],
            "peak_gflops_by_gemm": header["peak_gflops_by_gemm"],
        },
        "results": [],
        "triton_server": {},
    }
    with contextlib.ExitStack() as stack:
        onnx_dir = settings.onnx_dir
        needs_onnx = {"onnxruntime", "triton"} & set(settings.modes)
        if needs_onnx and onnx_dir is None and not (settings.modes == ("triton",) and settings.url):
            onnx_dir = _export_onnx(networks, settings.resolution, Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="compositor-bench-onnx-"))))
        reference = make_pipeline("eager", networks, settings.resolution)
        inputs = network_inputs(reference, settings.batch)
        plan = []
        for mode in settings.modes:
            if mode == "triton":
                url, pid = stack.enter_context(triton_target.triton_endpoint(settings.url, onnx_dir, settings.resolution))
                workloads = triton_target.triton_workloads(url, settings.batch, workload_names, inputs, stack)
            else:
                url, pid = None, None
                pipeline = reference if mode == "eager" else make_pipeline(mode, networks, settings.resolution, onnx_dir)
                workloads = in_process_workloads(mode, pipeline, settings.batch, workload_names)
            for workload in workloads:
                levels = settings.concurrency if workload.workload == CHAIN else (1,)
                plan += [(workload, level, url, pid) for level in levels]
        # Modes take turns at each (workload, concurrency): the numbers a ratio compares are measured
        # minutes apart, not a whole mode apart, so drift in a shared or throttled machine's speed
        # (seen here: +-20% over minutes) does not masquerade as a difference between runtimes.
        plan.sort(key=lambda item: (workload_names.index(item[0].workload), item[1], settings.modes.index(item[0].mode)))
        for workload, level, url, pid in tqdm(plan, desc="bench", unit="run"):
            load = LoadSettings(**{**settings.load.__dict__, "concurrency": level})
            before = triton_target.statistics(url) if url else None
            with triton_target.MemorySampler(pid) as memory:
                measured = measure(workload.call, load)
            row = _result_row(workload.mode, workload.workload, level, settings, measured, flops[workload.workload])
            if url:
                breakdown = triton_target.server_breakdown(before, triton_target.settled_statistics(url))
                row["server"] = breakdown
                top = breakdown.get(triton_target.ENSEMBLE if workload.workload == CHAIN else workload.workload, {})
                row.update({key: value for key, value in top.items() if key.startswith("perf_server")})
                row["server_peak_rss_mb"] = memory.peak_bytes / 2**20 if pid else None
            row["measured_at_s"] = round(time.perf_counter() - started, 1)
            report["results"].append(row)
            tqdm.write(
                f"{workload.mode:<12}{workload.workload:<14}c={level:<3}{row['perf_throughput']:8.2f} img/s  "
                f"p50 {row['perf_latency_p50']:7.0f} ms  p99 {row['perf_latency_p99']:7.0f} ms"
            )
    # Listed by workload, then mode, then concurrency; measured_at_s keeps the measuring order.
    report["results"].sort(key=lambda r: (workload_names.index(r["workload"]), settings.modes.index(r["mode"]), r["concurrency"]))
    report["client_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report["ratios"] = ratios(report)
    report["wall_time_s"] = time.perf_counter() - started
    return report
