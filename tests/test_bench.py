"""`compositor bench` end to end at a tiny resolution: eager, ONNX Runtime and a real Triton server."""

import json
import subprocess
import sys

import pytest

from compositor.bench.report import markdown, ratios

pytestmark = pytest.mark.triton

REQUIRED = ("mode", "concurrency", "batch", "resolution", "perf_throughput", "perf_latency_p50", "perf_latency_p99")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    run = subprocess.run(
        [sys.executable, "-m", "compositor", "bench", "--quick", "--resolution", "64", "--concurrency", "1,2",
         "--duration-s", "0.3", "--json", str(out / "bench.json"), "--markdown", str(out / "bench.md"),
         "--plot", str(out / "bench.png")],
        capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return {"json": json.loads((out / "bench.json").read_text()), "folder": out, "stdout": run.stdout}


def test_every_mode_reports_the_chain_at_each_concurrency_and_each_network_alone(report):
    rows = report["json"]["results"]
    seen = {(r["mode"], r["workload"], r["concurrency"]) for r in rows}
    for mode in ("eager", "onnxruntime", "triton"):
        assert {(mode, "chain", 1), (mode, "chain", 2)} <= seen
        assert {(mode, name, 1) for name in ("matting", "blending", "harmonization")} <= seen
    for row in rows:
        assert all(key in row for key in REQUIRED), row
        assert row["resolution"] == "64" and row["batch"] == 1
        assert row["perf_throughput"] > 0
        assert row["perf_latency_p50"] <= row["perf_latency_p90"] <= row["perf_latency_p95"] <= row["perf_latency_p99"]


def test_the_header_names_the_machine_and_the_compute_floor(report):
    data = report["json"]
    machine = data["machine"]
    assert machine["cpu_cores"] >= 1 and machine["threads"] >= 1 and machine["cpu_model"]
    assert machine["peak_gflops"] > 0
    # Both GEMMs measured; the floor is the faster one, so achieved/peak is not flattered by a slow BLAS.
    by_gemm = machine["peak_gflops_by_gemm"]
    assert set(by_gemm) == {"torch", "numpy"} and min(by_gemm.values()) > 0
    assert machine["peak_gflops"] == max(by_gemm.values()) == by_gemm[machine["peak_gemm"]]
    assert data["compute"]["peak_gflops_by_gemm"] == by_gemm
    assert f"the faster of torch {by_gemm['torch']} and numpy {by_gemm['numpy']}" in markdown(data)
    assert set(data["compute"]["gflops_per_image"]) == {"chain", "matting", "blending", "harmonization"}
    for row in data["results"]:
        assert row["achieved_gflops"] == pytest.approx(row["perf_throughput"] * data["compute"]["gflops_per_image"][row["workload"]])


def test_triton_rows_carry_the_server_side_breakdown_per_composing_model(report):
    chain = [r for r in report["json"]["results"] if r["mode"] == "triton" and r["workload"] == "chain"]
    for row in chain:
        assert {"preprocess", "matting", "blending", "harmonization", "postprocess"} <= set(row["server"])
        for model in row["server"].values():
            assert model["perf_server_compute_infer"] > 0
            assert model["perf_server_queue"] >= 0
        assert row["server_peak_rss_mb"] > 0


def test_ratios_markdown_and_plot_come_from_the_same_results(report):
    data = report["json"]
    assert data["ratios"] == ratios(data)
    assert all(value > 0 for value in data["ratios"].values())
    assert (report["folder"] / "bench.md").read_text() == markdown(data)
    assert (report["folder"] / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"



def ensemble_successes(url: str) -> int:
    from compositor.bench.triton_target import statistics

    return statistics(url)["composite"]["success_count"]


def test_with_several_urls_the_chain_is_spread_over_every_server_and_their_statistics_summed(
    triton_servers, small_repository, tmp_path
):
    servers = [triton_servers.start(small_repository) for _ in range(2)]
    urls = [server.grpc_url for server in servers]
    try:
        before = [ensemble_successes(url) for url in urls]
        run = subprocess.run(
            [sys.executable, "-m", "compositor", "bench", "--modes", "triton", "--url", ",".join(urls), "--no-networks",
             "--resolution", "64", "--concurrency", "4", "--duration-s", "0.5", "--json", str(tmp_path / "two.json")],
            capture_output=True, text=True, timeout=300,
        )
        assert run.returncode == 0, run.stderr[-3000:]
        served = [ensemble_successes(url) - start for url, start in zip(urls, before)]
    finally:
        for server in servers:
            server.stop()
    data = json.loads((tmp_path / "two.json").read_text())
    (row,) = data["results"]
    assert data["settings"]["triton_servers"] == urls
    assert (row["workload"], row["concurrency"]) == ("chain", 4)
    # Both servers took a fair share (least-in-flight routing), and the row counts what both did.
    assert min(served) >= 0.3 * sum(served), served
    assert row["server"]["composite"]["inference_count"] == sum(served)


def test_the_scaling_table_sums_queue_and_compute_over_the_ensembles_steps_not_the_ensemble():
    from compositor.bench.report import scaling_table

    def times(queue_us, infer_us):
        return {"perf_server_queue": queue_us, "perf_server_compute_input": 100.0,
                "perf_server_compute_infer": infer_us, "perf_server_compute_output": 400.0}

    row = {"workload": "chain", "mode": "triton", "concurrency": 2, "perf_throughput": 3.456,
           "perf_latency_p50": 510.2, "perf_latency_p95": 601.0, "perf_latency_p99": 699.6,
           "server": {"composite": times(9e6, 9e6), "preprocess": times(1000.0, 1500.0), "matting": times(2500.0, 6000.0)}}
    report = {"machine": {"cpu_model": "Test CPU", "cpu_cores": 2}, "settings": {"resolution": "512x512", "batch": 1},
              "results": [row]}
    table = scaling_table([("2 replicas x 1 instance", report)])
    # queue 1.0 + 2.5 = 3.5 ms -> "4"; compute (0.1 + 1.5 + 0.4) + (0.1 + 6.0 + 0.4) = 8.5 ms -> "8" (round half to even)
    assert "| 2 replicas x 1 instance | 2 | 3.46 | 510 | 601 | 700 | 4 | 8 |" in table
    assert "Test CPU, 2 cores" in table and "512x512" in table
