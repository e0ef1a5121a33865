"""TensorRT side of the export: command lines, the missing-TensorRT error path, and (on a GPU
machine with TensorRT) a real strongly typed engine compared with ONNX Runtime.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from compositor.contract import spec
from compositor.cli import main
from compositor.export import fp16, parity, tensorrt
from compositor.export.onnx_export import export_fp32
from compositor.networks.contract import contract_models
from compositor.networks.factory import load_networks

RESOLUTION = (64, 96)


@pytest.fixture
def without_tensorrt(monkeypatch):
    """Make ``import tensorrt`` fail as on a machine without it (a None entry raises ImportError)."""
    monkeypatch.setitem(sys.modules, "tensorrt", None)


def test_trtexec_command_builds_a_strongly_typed_engine_with_the_spec_profile():
    profiles = spec.tensorrt_profiles(spec.BLENDING, (512, 512), max_batch=8)

    command = tensorrt.trtexec_command("blending.fp16.onnx", "blending.plan", profiles)

    assert command == (
        "trtexec --onnx=blending.fp16.onnx --saveEngine=blending.plan --stronglyTyped --noTF32 "
        "--minShapes=source:1x3x512x512,alpha:1x1x512x512,background:1x3x512x512 "
        "--optShapes=source:4x3x512x512,alpha:4x1x512x512,background:4x3x512x512 "
        "--maxShapes=source:8x3x512x512,alpha:8x1x512x512,background:8x3x512x512 "
        "--timingCacheFile=timing.cache"
    )
    assert "--fp16" not in command  # strongly typed: the precisions come from the FP16 ONNX
    assert "--noTF32" in command  # as Polygraphy's CreateConfig: the layers kept in FP32 compute in FP32


def test_polygraphy_commands_use_only_flags_that_polygraphy_run_accepts():
    profiles = spec.tensorrt_profiles(spec.MATTING, RESOLUTION, max_batch=4)
    tolerances = tensorrt.polygraphy_tolerances({"alpha": parity.FP16_TOLERANCES["alpha"], "blended": {"psnr_db": 40.0}})
    commands = [tensorrt.polygraphy_command("matting.fp16.onnx", profiles, tolerances)]
    commands += tensorrt.polygraphy_engine_commands("matting.onnx", "matting.plan", profiles, tolerances)
    help_text = subprocess.run(
        [str(Path(sys.executable).parent / "polygraphy"), "run", "--help"], capture_output=True, text=True, check=True
    ).stdout

    assert tolerances == ["--check-error-stat", "alpha:max", "blended:mean", "--atol", "alpha:0.02", "blended:0.01", "--rtol", "0"]
    assert commands[0].startswith("polygraphy run matting.fp16.onnx --trt --onnxrt --strongly-typed --trt-min-shapes 'image:[1,3,64,96]'")
    assert "--model-type engine --trt" in commands[2]
    for command in commands:
        for flag in re.findall(r"(?<= )--[a-z0-9-]+", command):
            assert re.search(rf"(^|\s|\[){re.escape(flag)}(\s|$|\])", help_text, re.M), flag


def test_import_tensorrt_names_what_is_missing(without_tensorrt):
    with pytest.raises(tensorrt.TensorRTUnavailableError, match="the TensorRT Python package is not installed"):
        tensorrt.import_tensorrt()
    assert not tensorrt.is_available()


def test_building_or_running_an_engine_without_tensorrt_reports_its_absence_and_writes_nothing(tmp_path, without_tensorrt):
    profiles = spec.tensorrt_profiles(spec.BLENDING, RESOLUTION, max_batch=2)
    onnx_path = tmp_path / "blending.fp16.onnx"
    onnx_path.write_bytes(b"not read: TensorRT is checked first")

    with pytest.raises(tensorrt.TensorRTUnavailableError, match="not installed"):
        tensorrt.build_engine(onnx_path, tmp_path / "blending.plan", "blending", profiles, tmp_path / "timing.cache")
    with pytest.raises(tensorrt.TensorRTUnavailableError, match="not installed"):
        tensorrt.engine_runner(tmp_path / "blending.plan")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blending.fp16.onnx"]


def test_the_spec_profile_becomes_polygraphys_profile_shape_for_shape():
    profiles = spec.tensorrt_profiles(spec.HARMONIZATION, RESOLUTION, max_batch=6)

    profile = tensorrt.polygraphy_profile(profiles)

    assert list(profile) == ["composite", "mask", "background"]
    assert tuple(profile["mask"].min) == (1, 1, 64, 96)
    assert tuple(profile["mask"].opt) == (4, 1, 64, 96)
    assert tuple(profile["composite"].max) == (6, 3, 64, 96)


def test_export_help_shows_an_example(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--help"])

    text = capsys.readouterr().out
    assert exit_info.value.code == 0
    assert "Example:" in text and "compositor export --out exported" in text
    assert "3 --engines without TensorRT" in text  # the exit status README and scripts rely on
    for option in ("--modnet-checkpoint", "--resolution", "--max-batch", "--engines"):
        assert option in text


@pytest.mark.slow
def test_engines_without_tensorrt_export_the_onnx_models_print_trtexec_lines_and_exit_3(tmp_path, capsys, without_tensorrt):
    out = tmp_path / "export"

    code = main(["export", "--out", str(out), "--resolution", "64x96", "--max-batch", "2", "--engines"])

    captured = capsys.readouterr()
    assert code == 3
    assert captured.out.startswith(f"exported to {out}")  # the export's own summary: the ONNX part succeeded
    assert "no TensorRT engine was built: the TensorRT Python package is not installed" in captured.err
    assert "error:" not in captured.err
    for name in spec.NETWORKS:
        assert f"trtexec --onnx={name}.fp16.onnx --saveEngine={name}.plan --stronglyTyped" in captured.err
        assert (out / f"{name}.onnx").is_file() and (out / f"{name}.fp16.onnx").is_file()
        assert not (out / f"{name}.plan").exists()
    assert "--maxShapes=image:2x3x64x96" in captured.err
    report = json.loads((out / "export_report.json").read_text())
    assert report["tensorrt"]["engines_requested"] and not report["tensorrt"]["engines_built"]
    assert not report["tensorrt"]["available"] and "not installed" in report["tensorrt"]["reason_unavailable"]
    assert all(entry["tensorrt"]["engine"] is None and entry["files"]["plan"] is None for entry in report["networks"].values())
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")], "no temporary files left behind"


@pytest.mark.tensorrt
def test_engine_is_built_strongly_typed_and_agrees_with_onnxruntime(tmp_path):
    pytest.importorskip("tensorrt", reason="TensorRT is not installed (needs an NVIDIA GPU machine)")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("TensorRT is installed but no CUDA device is visible")
    model = contract_models(load_networks())["blending"]
    fp32_path, fp16_path, plan_path = tmp_path / "blending.onnx", tmp_path / "blending.fp16.onnx", tmp_path / "blending.plan"
    export_fp32(model, "blending", fp32_path, RESOLUTION)
    fp16.save_mixed_precision(fp32_path, fp16_path, fp16.precision_ladder(model)[0])
    profiles = spec.tensorrt_profiles(spec.BLENDING, RESOLUTION, max_batch=4)

    info = tensorrt.build_engine(fp16_path, plan_path, "blending", profiles, tmp_path / "timing.cache")

    assert info["strongly_typed"] and plan_path.is_file() and (tmp_path / "timing.cache").is_file()
    # The export's own comparison, with the engine as one more Polygraphy runner.
    feeds = parity.parity_feeds(contract_models(load_networks()), RESOLUTION)
    report = parity.check_against_fp32_onnx("blending", fp32_path, tensorrt.engine_runner(plan_path), feeds)
    assert report.passed and report.cases["photos"]["blended"].psnr_db >= 40.0
    # And independently of Polygraphy: the plan run by hand gives the same output as ONNX Runtime.
    expected = parity.run_onnx(parity.onnxruntime_session(fp32_path), feeds["random"]["blending"])["blended"]
    with tensorrt.engine_runner(plan_path) as runner:
        actual = runner.infer(feeds["random"]["blending"])["blended"]
    assert parity.psnr_db(expected, actual) >= 40.0
