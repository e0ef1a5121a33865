"""The GPU benchmark's command line (``compositor bench-gpu``), dry-run on the CPU: the real CLI as a
subprocess, tiny settings.

The CUDA measurements themselves run on a GPU machine (benchmarks/gpu.sh); here the plumbing, the
JSON fields, the chain's wiring, the CUDA error, the TensorRT skip, gpu.sh's requirement check and
the light imports are checked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from compositor.contract import spec
from compositor.bench import gpu_modes
from compositor.bench.workloads import device_workload_inputs, device_workloads
from compositor.export import tensorrt
from compositor.networks.contract import contract_models
from compositor.networks.factory import load_networks

pytestmark = pytest.mark.slow  # each test runs the benchmark (most in a subprocess)

REPOSITORY = Path(__file__).resolve().parents[1]
OUTPUTS = {"matting": {"alpha"}, "blending": {"blended", "refined_alpha"}, "harmonization": {"harmonized"},
           "chain": {"alpha", "blended", "refined_alpha", "harmonized"}}
DRY_RUN = ["--device", "cpu", "--resolution", "64", "--batches", "1", "--iterations", "2", "--warmup", "1"]


def _environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPOSITORY)}


def run_cli(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "compositor", "bench-gpu", *arguments],
        check=False, capture_output=True, text=True, cwd=REPOSITORY, env=_environment(), timeout=120,
    )  # fmt: skip


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path_factory.mktemp("gpu") / "x.json"
    result = run_cli(*DRY_RUN, "--modes", "eager_fp32,eager_fp16", "--out", str(out))
    assert result.returncode == 0, result.stderr
    return result, json.loads(out.read_text())


def test_untrained_benchmarks_seeded_networks_and_the_default_the_trained_files(dry_run, tmp_path):
    _, report = dry_run
    assert "blending" not in report["settings"]["weights"]["untrained"]  # weights/blending.safetensors
    assert "harmonization" not in report["settings"]["weights"]["untrained"]
    out = tmp_path / "untrained.json"
    result = run_cli(*DRY_RUN, "--untrained", "--modes", "eager_fp32", "--workloads", "blending", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert json.loads(out.read_text())["settings"]["weights"]["untrained"] == ["matting", "blending", "harmonization"]


def test_dry_run_writes_one_row_per_mode_and_workload_with_perf_analyzer_fields(dry_run):
    _, report = dry_run

    assert {"machine", "settings", "results", "skipped", "wall_time_s"} <= report.keys()
    assert report["complete"] is True and report["errors"] == [] and report["skipped"] == []
    assert report["machine"]["torch"] == torch.__version__ and report["machine"]["peak_tflops"]["fp32"] > 0
    assert report["settings"]["resolution"] == "64" and report["settings"]["batches"] == [1]
    rows = {(r["mode"], r["workload"]) for r in report["results"]}
    assert rows == {(m, w) for m in ("eager_fp32", "eager_fp16") for w in ("matting", "blending", "harmonization", "chain")}
    for row in report["results"]:
        percentiles = [row[f"perf_latency_p{p}"] for p in (50, 90, 95, 99)]
        assert percentiles == sorted(percentiles) and percentiles[0] > 0
        assert row["perf_throughput"] > 0 and row["achieved_tflops"] > 0
        assert (row["batch"], row["resolution"], row["iterations"], row["warmup"]) == (1, "64", 2, 1)
        assert row["peak_memory_mb"] is None  # PyTorch's CUDA allocator only


def test_fp16_rows_carry_their_difference_from_fp32_on_every_output(dry_run):
    _, report = dry_run

    for row in report["results"]:
        accuracy = row["accuracy_vs_eager_fp32"]
        if row["mode"] == "eager_fp32":
            assert accuracy is None  # the reference itself
            continue
        assert set(accuracy) == OUTPUTS[row["workload"]]
        for output in accuracy.values():
            assert output["finite"] is True
            assert 0 <= output["max_abs_error"] < 0.1
            assert output["psnr_db"] is None or output["psnr_db"] > 30  # None: identical outputs


def test_dry_run_prints_the_table_and_progress_with_elapsed_time(dry_run):
    result, _ = dry_run

    assert "eager_fp16   chain" in result.stdout and "accuracy vs FP32" in result.stdout
    assert "] eager_fp32   matting" in result.stderr and " s] " in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: --device cuda would run")
def test_device_cuda_without_cuda_exits_2_naming_cuda(tmp_path):
    result = run_cli("--out", str(tmp_path / "x.json"), "--iterations", "1")

    assert result.returncode == 2
    assert "error: --device cuda: " in result.stderr
    assert "torch.cuda.is_available() is False" in result.stderr and "torch.version.cuda" in result.stderr
    assert not (tmp_path / "x.json").exists()


def test_gpu_sh_records_tensorrt_and_cpu_inductor_as_skipped_with_their_reasons(tmp_path):
    result = subprocess.run(
        [str(REPOSITORY / "benchmarks" / "gpu.sh"), *DRY_RUN, "--modes", "compile_fp16,tensorrt"],
        check=False, capture_output=True, text=True, env={**_environment(), "OUT": str(tmp_path), "PYTHON": sys.executable}, timeout=120,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "gpu.json").read_text())
    reasons = {entry["mode"]: entry["reason"] for entry in report["skipped"]}
    missing = tensorrt.unavailable_reason()
    expected = f"TensorRT not installed: {missing}" if missing else "TensorRT engines run on CUDA only (--device cpu)"
    assert reasons["tensorrt"] == expected
    assert "inductor" in reasons["compile_fp16"] and "--compile-backend eager" in reasons["compile_fp16"]
    assert report["results"] == [] and report["complete"] is True
    assert "skipped tensorrt: TensorRT" in result.stdout


def test_compile_mode_runs_through_dynamo_and_records_its_compile_time(tmp_path):
    # The eager backend traces with dynamo but generates no code: the plumbing in seconds.
    out = tmp_path / "x.json"
    result = run_cli(*DRY_RUN, "--modes", "compile_fp16", "--compile-backend", "eager", "--workloads", "blending", "--out", str(out))

    assert result.returncode == 0, result.stderr
    (row,) = json.loads(out.read_text())["results"]
    assert (row["mode"], row["workload"]) == ("compile_fp16", "blending")
    assert row["compile_s"] == row["first_call_s"] > 0
    assert row["accuracy_vs_eager_fp32"]["blended"]["finite"] is True


def test_the_chain_workload_feeds_each_network_what_the_spec_says(nontrivial_networks):
    models = contract_models(nontrivial_networks)
    source, background = device_workload_inputs("chain", (64, 64), 2, torch.device("cpu"))

    with torch.inference_mode():
        outputs = device_workloads(models, ("chain",))["chain"](source, background)
        alpha = models["matting"](source)
        blended, refined_alpha = models["blending"](source, alpha, background)
        harmonized = models["harmonization"](blended, refined_alpha, background)

    assert set(outputs) == {"alpha", "blended", "refined_alpha", "harmonized"}
    torch.testing.assert_close(outputs["alpha"], alpha, rtol=0, atol=0)
    torch.testing.assert_close(outputs["blended"], blended, rtol=0, atol=0)
    torch.testing.assert_close(outputs["refined_alpha"], refined_alpha, rtol=0, atol=0)
    assert not torch.equal(refined_alpha, alpha), "the test networks correct the matte: harmonization must get the corrected one"
    torch.testing.assert_close(outputs["harmonized"], harmonized, rtol=0, atol=0)
    assert source.shape == (2, 3, 64, 64) and background.shape == (2, 3, 64, 64)


def test_network_workloads_take_the_spec_inputs_in_order_and_name_their_output():
    models = contract_models(load_networks(trained_defaults=False))

    for name, model_spec in spec.NETWORKS.items():
        inputs = device_workload_inputs(name, (64, 96), 1, torch.device("cpu"))
        assert [tuple(t.shape) for t in inputs] == [(1, *t.resolved_shape((64, 96))) for t in model_spec.inputs]
        with torch.inference_mode():
            outputs = device_workloads(models, (name,))[name](*inputs)
        assert list(outputs) == model_spec.output_names()
        assert [tuple(t.shape) for t in outputs.values()] == [(1, *t.resolved_shape((64, 96))) for t in model_spec.outputs]


def test_help_and_the_benchmark_names_need_neither_torch_nor_scikit_image():
    code = (
        "import sys; import compositor.bench.load, compositor.bench.report, compositor.bench.machine, compositor.cli.bench_gpu; "
        "print(sorted(m for m in ('torch', 'skimage', 'matplotlib', 'onnx', 'onnxruntime', 'polygraphy') if m in sys.modules))"
    )
    imports = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    help_text = run_cli("--help")

    assert imports.stdout.strip() == "[]"
    assert help_text.returncode == 0
    assert "Example" in help_text.stdout and "compositor bench-gpu --out benchmarks/results/gpu.json" in help_text.stdout
    for mode in gpu_modes.MODES:
        assert mode in help_text.stdout


def test_gpu_sh_names_the_missing_packages_before_running(tmp_path):
    # An interpreter without site-packages stands in for a CUDA machine's bare python3.
    bare_python = tmp_path / "python3"
    bare_python.write_text(f'#!/bin/sh\nexec "{sys.executable}" -S "$@"\n')
    bare_python.chmod(0o755)

    result = subprocess.run(
        [str(REPOSITORY / "benchmarks" / "gpu.sh"), "--device", "cpu"],
        check=False, capture_output=True, text=True, env={**_environment(), "OUT": str(tmp_path / "out"), "PYTHON": str(bare_python)},
        timeout=60,
    )  # fmt: skip

    assert result.returncode == 2
    assert "lacks torch (a CUDA build), numpy, safetensors" in result.stderr
    assert not (tmp_path / "out" / "gpu.json").exists()


def test_the_gpu_check_records_the_environment_first_then_runs_the_benchmark(tmp_path):
    """benchmarks/gpu-check.sh on this CPU machine: the environment record says what is missing
    (driver, CUDA, TensorRT) with the reason, and the benchmark's dry run still writes its rows."""
    run = subprocess.run(
        [str(REPOSITORY / "benchmarks" / "gpu-check.sh"), *DRY_RUN, "--modes", "eager_fp32", "--workloads", "blending"],
        capture_output=True, text=True, cwd=REPOSITORY, timeout=300,
        env={**_environment(), "PYTHON": sys.executable, "OUT": str(tmp_path)},
    )
    assert run.returncode == 0, run.stderr[-2000:]
    environment = json.loads((tmp_path / "gpu-environment.json").read_text())
    assert environment["torch"]["ok"] and environment["torch"]["version"] == torch.__version__
    assert not environment["engine_cache_gpu"]["ok"] and "libcuda.so.1" in environment["engine_cache_gpu"]["reason"]
    assert not environment["tensorrt"]["ok"] and "TensorRT" in environment["tensorrt"]["reason"]
    report = json.loads((tmp_path / "gpu.json").read_text())
    assert {(r["mode"], r["workload"]) for r in report["results"]} == {("eager_fp32", "blending")}
