"""Benchmark results as people read them: a markdown table, a plot, the ratios that decide adoption
(``compositor bench``), and the GPU benchmark's table (``gpu_table``). matplotlib is imported by ``plot``.
"""

from __future__ import annotations

from pathlib import Path

from compositor.bench.workloads import CHAIN
from compositor.contract.spec import COMPOSITE, COMPOSITE_WITH_ALPHA
from compositor.atomic_files import atomic_path, write_text


def chain_rows(report: dict) -> list[dict]:
    return [r for r in report["results"] if r["workload"] == CHAIN]


def _best(rows: list[dict], mode: str, key: str, pick=max, concurrency: int | None = None):
    values = [r[key] for r in rows if r["mode"] == mode and (concurrency is None or r["concurrency"] == concurrency)]
    return pick(values) if values else None


def ratios(report: dict) -> dict:
    """The adoption targets (full chain, batch 1, one run) as ratios; None where a mode was not run."""
    rows = [r for r in chain_rows(report) if r["batch"] == 1]
    eager = _best(rows, "eager", "perf_throughput", concurrency=1)
    ort = _best(rows, "onnxruntime", "perf_throughput", concurrency=1)
    ort_latency = _best(rows, "onnxruntime", "perf_latency_p50", min, concurrency=1)
    triton_latency = _best(rows, "triton", "perf_latency_p50", min, concurrency=1)
    triton_best = _best(rows, "triton", "perf_throughput")
    return {
        "onnxruntime_over_eager_throughput": ort / eager if ort and eager else None,
        "triton_c1_over_onnxruntime_latency_p50": triton_latency / ort_latency if triton_latency and ort_latency else None,
        "triton_best_over_onnxruntime_throughput": triton_best / ort if triton_best and ort else None,
    }


def markdown(report: dict) -> str:
    """The README's performance table, generated from a results JSON."""
    header = report["machine"]
    lines = [
        f"Machine: {header['cpu_model']}, {header['cpu_cores']} cores, {header['threads']} threads, "
        f"no GPU; measured peak {header['peak_gflops']} GFLOP/s ({_peak_source(header)}). "
        f"Network resolution {report['settings']['resolution']}, batch {report['settings']['batch']}. "
        f"Command: `{report['command']}`.",
        "",
        "| mode | workload | concurrency | throughput (img/s) | p50 (ms) | p90 (ms) | p99 (ms) | GFLOP/s achieved |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['mode']} | {r['workload']} | {r['concurrency']} | {r['perf_throughput']:.2f} | "
            f"{r['perf_latency_p50']:.0f} | {r['perf_latency_p90']:.0f} | {r['perf_latency_p99']:.0f} | "
            f"{r.get('achieved_gflops', float('nan')):.1f} |"
        )
    ratio = report.get("ratios", {})
    if ratio:
        lines += ["", "Targets (full chain, batch 1, this run):", ""]
        names = {
            "onnxruntime_over_eager_throughput": ("ONNX Runtime / eager throughput", ">= 1.5"),
            "triton_c1_over_onnxruntime_latency_p50": ("Triton c=1 / ONNX Runtime p50 latency", "<= 1.15"),
            "triton_best_over_onnxruntime_throughput": ("Triton best / ONNX Runtime throughput", ">= 1.0"),
        }
        for key, (label, target) in names.items():
            value = ratio.get(key)
            lines.append(f"- {label}: {'not run' if value is None else f'{value:.2f}'} (target {target})")
    return "\n".join(lines) + "\n"


def _peak_source(header: dict) -> str:
    """How the peak was measured: both GEMMs where the header has them (results since they were measured)."""
    by_gemm = header.get("peak_gflops_by_gemm")
    if not by_gemm:
        return "FP32 matrix product"
    return "FP32 matrix product, the faster of " + " and ".join(f"{name} {value}" for name, value in by_gemm.items())


def plot(report: dict, path: Path) -> Path:
    """Throughput and p50/p99 latency against concurrency, full chain, one line per mode."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers
    import matplotlib.pyplot as plt

    rows = chain_rows(report)
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for mode in dict.fromkeys(r["mode"] for r in rows):
        mine = sorted((r for r in rows if r["mode"] == mode), key=lambda r: r["concurrency"])
        x = [r["concurrency"] for r in mine]
        left.plot(x, [r["perf_throughput"] for r in mine], marker="o", label=mode)
        line = right.plot(x, [r["perf_latency_p50"] for r in mine], marker="o", label=f"{mode} p50")[0]
        right.plot(x, [r["perf_latency_p99"] for r in mine], marker="x", linestyle="--", color=line.get_color(), label=f"{mode} p99")
    left.set(title="Full chain throughput", xlabel="concurrency", ylabel="images/s")
    right.set(title="Full chain latency", xlabel="concurrency", ylabel="ms")
    for axis in (left, right):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    header = report["machine"]
    figure.suptitle(f"{header['cpu_model']}, {header['cpu_cores']} cores, {report['settings']['resolution']}", fontsize=9)
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=100, format="png")
    plt.close(figure)
    return path


README_START = "<!-- performance:start (generated by `compositor bench --readme README.md`; do not edit) -->"
README_END = "<!-- performance:end -->"


def readme_section(report: dict, json_path: str, plot_path: str | None) -> str:
    """The README's performance section: the generated table, the plot, where the numbers live."""
    parts = [README_START, "", markdown(report).rstrip(), "", f"Raw results: `{json_path}`."]
    if plot_path:
        parts += ["", f"![Full-chain throughput and latency against concurrency]({plot_path})"]
    return "\n".join(parts + ["", README_END])


def update_readme(readme: Path, section: str) -> Path:
    """Replace the text between the performance markers of ``readme`` with ``section``."""
    text = readme.read_text()
    span = readme_section_span(text)
    if span is None:
        raise ValueError(f"{readme} has no performance markers ({README_START} ... {README_END})")
    return write_text(readme, text[:span[0]] + section + text[span[1]:])


def readme_section_span(text: str) -> tuple[int, int] | None:
    """Where the generated performance section lies in ``text`` (both markers included), or None
    when the markers are missing or out of order."""
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        return None
    return start, end + len(README_END)


# --- Scaling out: replicas and model instances (benchmarks/replicas.sh) ------------------------------


def scaling_table(runs: list[tuple[str, dict]]) -> str:
    """One markdown table comparing deployments (each a ``compositor bench --modes triton`` report).

    Args:
        runs: ``(deployment label, report)`` pairs, in the order to show them.
    """
    first = runs[0][1]
    header = first["machine"]
    lines = [
        f"Machine: {header['cpu_model']}, {header['cpu_cores']} cores, no GPU. Full chain through the Triton "
        f"ensemble (python flavour, ONNX Runtime FP32), network resolution {first['settings']['resolution']}, "
        f"batch {first['settings']['batch']}, closed-loop load (each client sends its next request when the "
        "previous one is answered); several replicas are reached through the client's several-server mode.",
        "",
        "| deployment | concurrency | throughput (img/s) | p50 (ms) | p95 (ms) | p99 (ms) | server queue (ms) | server compute (ms) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, report in runs:
        for r in sorted(chain_rows(report), key=lambda row: row["concurrency"]):
            queue_us, compute_us = _composing_models_time(r.get("server", {}))
            lines.append(
                f"| {label} | {r['concurrency']} | {r['perf_throughput']:.2f} | {r['perf_latency_p50']:.0f} | "
                f"{r['perf_latency_p95']:.0f} | {r['perf_latency_p99']:.0f} | {queue_us / 1e3:.0f} | {compute_us / 1e3:.0f} |"
            )
    lines += [
        "",
        "Server queue and compute: per request, summed over the ensemble's steps (preprocess, the three networks, "
        "postprocess), from Triton's statistics; the ensemble itself never queues.",
    ]
    return "\n".join(lines) + "\n"


def _composing_models_time(server: dict) -> tuple[float, float]:
    """Queue and compute microseconds per request, summed over the models an ensemble calls."""
    steps = [times for model, times in server.items() if model not in (COMPOSITE.name, COMPOSITE_WITH_ALPHA.name)]
    queue = sum(times["perf_server_queue"] for times in steps)
    compute = sum(times[f"perf_server_compute_{part}"] for times in steps for part in ("input", "infer", "output"))
    return queue, compute


# --- The GPU benchmark (compositor bench-gpu) -----------------------------------------------------


def gpu_accuracy_text(row: dict) -> str:
    """A GPU row's accuracy against eager FP32 in a few characters ("" for the reference itself)."""
    accuracy = row["accuracy_vs_eager_fp32"]
    if accuracy is None:
        return ""
    if not all(a["finite"] for a in accuracy.values()):
        return "  NOT FINITE"
    worst_abs = max(a["max_abs_error"] for a in accuracy.values())
    psnrs = [a["psnr_db"] for a in accuracy.values() if a["psnr_db"] is not None]
    return f"  max|d| {worst_abs:.2e}  PSNR {min(psnrs):.1f} dB" if psnrs else f"  max|d| {worst_abs:.2e}  identical"


def gpu_table(report: dict) -> str:
    """The GPU benchmark's results as a compact fixed-width table (what ``compositor bench-gpu`` prints)."""
    header = f"{'mode':<13}{'workload':<14}{'batch':>5}{'img/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'TFLOP/s':>9}{'peak MB':>9}{'first s':>9}  accuracy vs FP32"
    lines = [header, "-" * len(header)]
    for row in report["results"]:
        memory = "-" if row["peak_memory_mb"] is None else f"{row['peak_memory_mb']:.0f}"
        lines.append(
            f"{row['mode']:<13}{row['workload']:<14}{row['batch']:>5}{row['perf_throughput']:>10.1f}"
            f"{row['perf_latency_p50']:>9.2f}{row['perf_latency_p99']:>9.2f}{row['achieved_tflops']:>9.2f}"
            f"{memory:>9}{row['first_call_s']:>9.1f}{gpu_accuracy_text(row) or '  (reference)'}"
        )
    for skipped in report["skipped"]:
        where = " ".join(str(skipped[k]) for k in ("workload", "batch") if skipped.get(k) is not None)
        lines.append(f"skipped {skipped['mode']}{' ' + where if where else ''}: {skipped['reason']}")
    for error in report["errors"]:
        lines.append(f"ERROR {error['mode']} {error['workload'] or ''} {error['batch'] or ''}: {error['error']}")
    machine = report["machine"]
    lines.append(
        f"{machine['gpu']} | torch {machine['torch']} CUDA {machine['torch_cuda']} | driver {machine.get('driver', '-')} | "
        f"peak {machine['peak_tflops']['fp32']:.1f} (fp32) / {machine['peak_tflops']['fp16']:.1f} (fp16) TFLOP/s | "
        f"{report['wall_time_s']:.0f} s"
    )
    return "\n".join(lines)
