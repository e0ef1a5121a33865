"""Model-repository generation: golden configs, schema validation, ensemble wiring, model files.

Golden files live in tests/data/golden/<case>/<model>/config.pbtxt. After an intended change,
regenerate them with:  COMPOSITOR_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_repository.py
and review the diff.
"""

from __future__ import annotations

import filecmp
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from compositor.cli import main
from compositor.serving.configs import (
    ConfigSchemaError,
    RepositoryOptions,
    RepositoryOptionsError,
    ensemble_steps,
    repository_configs,
    to_model_config,
    to_pbtxt,
)
from compositor.serving.triton_binary import find_triton
from compositor.serving.repository import MissingModelFilesError, generate_repository
from compositor.contract.stages import OPTIONAL_INPUTS, STAGES
from compositor.export.layout import report_shape
from compositor.contract.spec import DEFAULT_MAX_BATCH, DEFAULT_RESOLUTION, ENSEMBLES, NETWORKS, ModelSpec, fixed_resolution, tensorrt_profiles

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "data" / "golden"
COMMITTED_REPOSITORY = ROOT / "model_repository"
UPDATE_GOLDEN = os.environ.get("COMPOSITOR_UPDATE_GOLDEN") == "1"

GOLDEN_CASES = {
    "python": RepositoryOptions(flavor="python"),
    "onnxruntime": RepositoryOptions(flavor="onnxruntime"),
    "onnxruntime_trt_accelerator": RepositoryOptions(flavor="onnxruntime", trt_accelerator=True),
    "tensorrt": RepositoryOptions(flavor="tensorrt", instances=2, max_queue_delay_us=500),
}
MODELS = ["preprocess", "matting", "blending", "harmonization", "postprocess", "composite", "composite_with_alpha"]


def _files(root: Path) -> set[str]:
    """Relative paths of the generated, committed files: no build outputs, no caches."""
    return {
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and p.suffix not in (".onnx", ".plan", ".pyc") and "__pycache__" not in p.parts
    }


SPATIAL = ("height", "width")
"""The ONNX symbols of the dynamic height and width, as the export writes them."""


def _tiny_onnx(path: Path, model: ModelSpec, size: tuple = SPATIAL, rename: dict[str, str] | None = None) -> Path:
    """A stand-in ONNX file with the spec's names and shapes (outputs = Identity of the first input);
    ``size`` (height, width): symbols (dynamic, as exported) or numbers (an export from before buckets)."""
    rename = rename or {}
    inputs = [
        helper.make_tensor_value_info(rename.get(t.name, t.name), TensorProto.FLOAT, ["batch", *t.resolved_shape(size)])
        for t in model.inputs
    ]
    outputs = [helper.make_tensor_value_info(t.name, TensorProto.FLOAT, ["batch", *t.resolved_shape(size)]) for t in model.outputs]
    nodes = [helper.make_node("Identity", [inputs[0].name], [o.name]) for o in outputs]
    onnx.save(helper.make_model(helper.make_graph(nodes, model.name, inputs, outputs)), path)
    return path


def _export_dir(tmp_path: Path, resolution="64", suffix=".onnx", max_batch: int | None = None) -> Path:
    """Network files as ``compositor export`` names them; with ``max_batch``, its report too."""
    export = tmp_path / "export"
    export.mkdir(exist_ok=True)
    for name, model in NETWORKS.items():
        if suffix == ".onnx":
            _tiny_onnx(export / f"{name}.onnx", model)
        else:
            (export / f"{name}{suffix}").write_bytes(b"plan:" + name.encode())
    if max_batch is not None:
        report = {"network_resolution": resolution, "max_batch": max_batch, "opset": 17}
        (export / "export_report.json").write_text(json.dumps(report))
    return export


# --- Golden files -------------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(GOLDEN_CASES))
def test_generated_configs_equal_the_golden_files(case, tmp_path):
    generate_repository(tmp_path / "repo", GOLDEN_CASES[case], configs_only=True)
    for model in MODELS:
        generated = (tmp_path / "repo" / model / "config.pbtxt").read_text()
        golden = GOLDEN / case / model / "config.pbtxt"
        if UPDATE_GOLDEN:
            golden.parent.mkdir(parents=True, exist_ok=True)
            golden.write_text(generated)
        assert generated == golden.read_text(), f"{case}/{model}: regenerate goldens only for an intended change"


def test_committed_model_repository_is_what_the_generator_writes_for_the_python_flavour(tmp_path):
    generate_repository(tmp_path / "repo", RepositoryOptions(), configs_only=True)
    generated, committed = _files(tmp_path / "repo"), _files(COMMITTED_REPOSITORY)
    assert generated == committed, "run 'compositor repository --out model_repository --configs-only'"
    mismatched = [f for f in sorted(generated) if not filecmp.cmp(tmp_path / "repo" / f, COMMITTED_REPOSITORY / f, shallow=False)]
    assert not mismatched, f"stale files in model_repository/: {mismatched}"


def test_python_models_in_the_repository_import_their_class_from_the_package(tmp_path):
    generate_repository(tmp_path / "repo", RepositoryOptions(), configs_only=True)
    sources = ROOT / "compositor" / "serving" / "python_models"
    expected = {"preprocess": "preprocess", "postprocess": "postprocess", **{name: "onnxruntime_network" for name in NETWORKS}}
    for model, module in expected.items():
        text = (tmp_path / f"repo/{model}/1/model.py").read_text()
        assert f"from compositor.serving.python_models.{module} import TritonPythonModel" in text
        assert "class TritonPythonModel" in (sources / f"{module}.py").read_text()


@pytest.mark.parametrize("module", sorted(p.stem for p in (ROOT / "compositor/serving/python_models").glob("[!_]*.py")))
def test_the_python_models_load_neither_the_config_generator_nor_torch(module):
    # In a fresh interpreter, with the wheel's own triton_python_backend_utils.py importable as in the stub.
    backend = find_triton().python_backend_dir
    listing = "import importlib, sys; importlib.import_module(sys.argv[1]); print(*sorted(sys.modules))"
    loaded = subprocess.run(
        [sys.executable, "-c", listing, f"compositor.serving.python_models.{module}"],
        env={**os.environ, "PYTHONPATH": str(backend)}, capture_output=True, text=True, check=True,
    ).stdout.split()
    heavy = [m for m in loaded if m.split(".")[0] in ("tritonclient", "torch", "onnx") or m.startswith("google.protobuf")
             or m == "compositor.serving.configs"]
    assert "triton_python_backend_utils" in loaded
    assert heavy == []


# --- Config content -----------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(GOLDEN_CASES))
def test_every_config_passes_through_the_triton_schema_and_keeps_its_name(case):
    for name, config in repository_configs(GOLDEN_CASES[case]).items():
        assert to_model_config(config).name == name


def test_a_config_that_breaks_the_schema_fails_at_generation_time():
    with pytest.raises(ConfigSchemaError, match=r"model 'matting'.*max_batch_sise"):
        to_pbtxt({"name": "matting", "max_batch_sise": 8})
    with pytest.raises(ConfigSchemaError, match="KIND_TPU"):
        to_pbtxt({"name": "matting", "instance_group": [{"kind": "KIND_TPU"}]})


def test_network_models_batch_dynamically_with_the_requested_limits():
    options = RepositoryOptions(max_batch=16, max_queue_delay_us=2500, instances=3, resolution=256)
    configs = repository_configs(options)
    for name, model in NETWORKS.items():
        config = to_model_config(configs[name])
        assert config.max_batch_size == 16
        assert config.dynamic_batching.max_queue_delay_microseconds == 2500
        assert config.instance_group[0].count == 3
        assert [i.name for i in config.input] == model.input_names()
        assert all(list(i.dims)[1:] == [-1, -1] for i in config.input), "one model takes every aspect bucket"
        assert all(list(o.dims)[1:] == [-1, -1] for o in config.output)
    for stage in ("preprocess", "postprocess"):
        config = to_model_config(configs[stage])
        assert not config.HasField("dynamic_batching"), "frames of different sizes cannot share a batch"
        assert config.max_batch_size == 16


def test_preprocess_records_the_network_resolution_as_a_parameter():
    config = to_model_config(repository_configs(RepositoryOptions(resolution="256x384"))["preprocess"])
    assert config.parameters["resolution"].string_value == "256x384"
    assert config.parameters["buckets"].string_value == "256x384"


def test_preprocess_of_an_aspect_bucket_deployment_records_the_short_side_and_lists_every_bucket():
    config = to_model_config(repository_configs(RepositoryOptions(resolution=256))["preprocess"])
    assert config.parameters["resolution"].string_value == "256"
    # Short side 256; long sides 256 * 4/3, 3/2, 16/9 floored to multiples of 32: 320, 384, 448.
    assert config.parameters["buckets"].string_value == "256x256,256x320,320x256,256x384,384x256,256x448,448x256"


def test_client_alpha_is_an_optional_input_of_the_shared_stage_models():
    configs = repository_configs(RepositoryOptions())
    for stage in ("preprocess", "postprocess"):
        optional = {i.name for i in to_model_config(configs[stage]).input if i.optional}
        assert optional == set(OPTIONAL_INPUTS[stage]) == {"alpha"}


@pytest.mark.parametrize(
    ("flavor", "accelerator", "platform", "backend", "kind"),
    [
        ("python", False, "", "python", "KIND_CPU"),
        ("onnxruntime", False, "onnxruntime_onnx", "", "KIND_CPU"),
        ("onnxruntime", True, "onnxruntime_onnx", "", "KIND_GPU"),
        ("tensorrt", False, "tensorrt_plan", "", "KIND_GPU"),
    ],
)
def test_each_flavour_runs_the_networks_on_its_backend(flavor, accelerator, platform, backend, kind):
    configs = repository_configs(RepositoryOptions(flavor=flavor, trt_accelerator=accelerator))
    for name in NETWORKS:
        config = to_model_config(configs[name])
        assert (config.platform, config.backend) == (platform, backend)
        assert config.instance_group[0].kind == getattr(type(config.instance_group[0]), kind)
        accelerators = config.optimization.execution_accelerators.gpu_execution_accelerator
        assert [a.name for a in accelerators] == (["tensorrt"] if accelerator else [])
        if accelerator:
            parameters = dict(accelerators[0].parameters)
            # FP32 (no precision_mode), the export's profile, engines and timing cache on the cache volume
            assert "precision_mode" not in parameters
            assert parameters["trt_engine_cache_enable"] == "1" and parameters["trt_timing_cache_enable"] == "1"
            assert parameters["trt_engine_cache_path"] == f"/var/cache/compositor/engines/onnxruntime-trt/{name}"
            profiles = tensorrt_profiles(NETWORKS[name], DEFAULT_RESOLUTION, DEFAULT_MAX_BATCH)
            first = next(iter(profiles))
            assert parameters["trt_profile_min_shapes"].startswith(f"{first}:1x")
            assert parameters["trt_profile_max_shapes"].split(",")[0] == f"{first}:{'x'.join(map(str, profiles[first].max))}"
            assert [entry.split(":")[0] for entry in parameters["trt_profile_opt_shapes"].split(",")] == list(profiles)
    for stage in ("preprocess", "postprocess"):
        assert to_model_config(configs[stage]).backend == "python"
        group = to_model_config(configs[stage]).instance_group[0]
        assert group.kind == type(group).KIND_CPU


@pytest.mark.parametrize("ensemble", sorted(ENSEMBLES))
def test_every_ensemble_tensor_is_produced_before_it_is_consumed(ensemble):
    """Walk the steps: each input map reads a tensor the client sent or an earlier step wrote."""
    spec = ENSEMBLES[ensemble]
    config = to_model_config(repository_configs(RepositoryOptions())[ensemble])
    models = {**NETWORKS, **STAGES}
    available = set(spec.input_names())
    for step in config.ensemble_scheduling.step:
        model = models[step.model_name]
        required = set(model.input_names()) - OPTIONAL_INPUTS.get(model.name, frozenset())
        assert required <= set(step.input_map) <= set(model.input_names()), step.model_name
        missing = set(step.input_map.values()) - available
        assert not missing, f"{step.model_name} reads {missing} before any step writes it"
        assert set(step.output_map) <= set(model.output_names())
        available |= set(step.output_map.values())
    assert set(spec.output_names()) <= available
    assert [s.model_name for s in config.ensemble_scheduling.step][0] == "preprocess"
    assert [s.model_name for s in config.ensemble_scheduling.step][-1] == "postprocess"


def test_the_ensemble_with_a_client_matte_skips_matting():
    assert "matting" not in [s["model_name"] for s in ensemble_steps(with_alpha=True)]
    assert "matting" in [s["model_name"] for s in ensemble_steps(with_alpha=False)]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"flavor": "tflite"}, "flavor must be one of python, onnxruntime, tensorrt"),
        ({"max_batch": 0}, "max_batch must be >= 1"),
        ({"instances": 0}, "instances must be >= 1"),
        ({"max_queue_delay_us": -1}, "max_queue_delay_us must be >= 0"),
        ({"resolution": "500"}, "multiple of 32"),
        ({"flavor": "tensorrt", "trt_accelerator": True}, "option of the onnxruntime flavour"),
    ],
)
def test_invalid_options_are_rejected_with_the_reason(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RepositoryOptions(**kwargs)


# --- Model files --------------------------------------------------------------------------------


def test_python_flavour_copies_the_onnx_files_next_to_the_model_sources(tmp_path):
    export = _export_dir(tmp_path)
    result = generate_repository(tmp_path / "repo", RepositoryOptions(resolution=64), export_dir=export)
    for name in NETWORKS:
        assert (tmp_path / f"repo/{name}/1/model.onnx").read_bytes() == (export / f"{name}.onnx").read_bytes()
        assert (tmp_path / f"repo/{name}/1/model.py").is_file()
    assert not result.model_files_missing
    assert (tmp_path / "repo/composite/1").is_dir() and (tmp_path / "repo/composite_with_alpha/1").is_dir()


def test_onnx_with_a_fixed_spatial_size_from_before_aspect_buckets_is_refused(tmp_path):
    export = _export_dir(tmp_path)
    _tiny_onnx(export / "matting.onnx", NETWORKS["matting"], (64, 64))
    with pytest.raises(ValueError, match=r"matting.onnx: input 'image' has shape \[3, 64, 64\].*\[3, 'height', 'width'\].*re-export"):
        generate_repository(tmp_path / "repo", RepositoryOptions(resolution=64), export_dir=export)
    assert not (tmp_path / "repo").exists(), "nothing is written when an input is wrong"


def test_onnx_with_other_tensor_names_is_refused(tmp_path):
    export = _export_dir(tmp_path)
    _tiny_onnx(export / "blending.onnx", NETWORKS["blending"], rename={"alpha": "input.1"})
    with pytest.raises(ValueError, match=r"blending.onnx: inputs .*'input.1'.* differ from the spec"):
        generate_repository(tmp_path / "repo", RepositoryOptions(resolution=64), export_dir=export)


def test_tensorrt_flavour_without_engines_names_them_and_the_command_that_builds_them(tmp_path):
    with pytest.raises(MissingModelFilesError, match=r"matting.plan, blending.plan, harmonization.plan.*compositor export --engines"):
        generate_repository(tmp_path / "repo", RepositoryOptions(flavor="tensorrt"), export_dir=_export_dir(tmp_path))


def test_configs_only_writes_everything_but_the_engines_and_lists_them(tmp_path):
    result = generate_repository(tmp_path / "repo", RepositoryOptions(flavor="tensorrt"), configs_only=True)
    assert sorted(Path(p).name for p in result.model_files_missing) == ["model.plan"] * 3
    assert all((tmp_path / "repo" / m / "config.pbtxt").is_file() for m in MODELS)
    assert not (tmp_path / "repo/matting/1/model.py").exists(), "tensorrt networks are not Python models"


def test_tensorrt_flavour_copies_plans_and_regeneration_removes_another_flavours_files(tmp_path):
    repo = tmp_path / "repo"
    generate_repository(repo, RepositoryOptions(resolution=64), export_dir=_export_dir(tmp_path))
    generate_repository(repo, RepositoryOptions(flavor="tensorrt", resolution=64), export_dir=_export_dir(tmp_path, suffix=".plan"))
    assert sorted(p.name for p in (repo / "matting/1").iterdir()) == ["model.plan"]
    assert (repo / "matting/1/model.plan").read_bytes() == b"plan:matting"
    assert (repo / "preprocess/1/model.py").is_file()


def test_repository_command_writes_the_repository_and_reports_missing_files(tmp_path, capsys):
    code = main(["repository", "--out", str(tmp_path / "repo"), "--flavor", "onnxruntime", "--configs-only", "--max-batch", "4"])
    out = capsys.readouterr().out
    assert code == 0
    assert "onnxruntime flavour" in out and "max batch 4" in out and "matting/1/model.onnx" in out
    assert "max_batch_size: 4" in (tmp_path / "repo/matting/config.pbtxt").read_text()


def test_repository_command_fails_clearly_without_model_files(tmp_path, capsys):
    assert main(["repository", "--out", str(tmp_path / "repo"), "--flavor", "tensorrt"]) == 2
    assert "--configs-only" in capsys.readouterr().err



# --- Settings from the export report -------------------------------------------------------------


def test_repository_command_takes_resolution_and_max_batch_from_the_export_report(tmp_path, capsys):
    export = _export_dir(tmp_path, resolution="64x96", max_batch=4)
    assert main(["repository", "--onnx", str(export), "--out", str(tmp_path / "repo")]) == 0
    assert "network resolution 64x96 (fixed), max batch 4" in capsys.readouterr().out
    matting = (tmp_path / "repo/matting/config.pbtxt").read_text()
    assert "max_batch_size: 4" in matting and "dims: 3\n  dims: -1\n  dims: -1\n" in matting
    assert 'string_value: "64x96"' in (tmp_path / "repo/preprocess/config.pbtxt").read_text()


def test_a_report_from_before_aspect_buckets_reads_as_its_one_fixed_size(tmp_path):
    export = _export_dir(tmp_path)
    (export / "export_report.json").write_text(json.dumps({"resolution": [64, 96], "max_batch": 4}))
    assert report_shape(export) == (fixed_resolution(64, 96), 4)


def test_the_report_of_an_aspect_bucket_export_reads_as_its_buckets(tmp_path):
    export = _export_dir(tmp_path, resolution="64", max_batch=4)
    resolution, max_batch = report_shape(export)
    assert (resolution.buckets, resolution.fixed, max_batch) == (((64, 64), (64, 96), (96, 64)), False, 4)


def test_an_explicit_resolution_that_agrees_with_the_export_report_is_accepted(tmp_path):
    export = _export_dir(tmp_path, resolution="64x96", max_batch=4)
    assert main(["repository", "--onnx", str(export), "--out", str(tmp_path / "repo"), "--resolution", "64x96"]) == 0


def test_an_explicit_resolution_other_than_the_exports_is_an_error_naming_both(tmp_path, capsys):
    export = _export_dir(tmp_path, resolution="64x96", max_batch=4)
    assert main(["repository", "--onnx", str(export), "--out", str(tmp_path / "repo"), "--resolution", "64"]) == 2
    assert re.search(
        r"resolution 64 \(aspect buckets 64x64, 64x96, 96x64\) differs from the export's 64x96 \(fixed\) \(.*export_report.json\)",
        capsys.readouterr().err,
    )
    assert not (tmp_path / "repo").exists()


def test_a_max_batch_above_the_exports_is_refused_for_tensorrt_engines_and_a_lower_one_is_used(tmp_path, capsys):
    export = _export_dir(tmp_path, suffix=".plan", max_batch=4)
    command = ["repository", "--onnx", str(export), "--out", str(tmp_path / "repo"), "--flavor", "tensorrt"]
    assert main([*command, "--max-batch", "8"]) == 2
    assert re.search(r"max batch 8 is more than the export's 4 .*engines accept batches up to 4", capsys.readouterr().err)
    assert main([*command, "--max-batch", "2"]) == 0
    assert "max_batch_size: 2" in (tmp_path / "repo/matting/config.pbtxt").read_text()


def test_onnx_flavours_take_a_max_batch_above_the_exports_as_the_batch_axis_is_dynamic(tmp_path):
    export = _export_dir(tmp_path, max_batch=4)
    assert main(["repository", "--onnx", str(export), "--out", str(tmp_path / "repo"), "--max-batch", "16"]) == 0
    assert "max_batch_size: 16" in (tmp_path / "repo/blending/config.pbtxt").read_text()


def test_an_export_folder_without_its_report_is_a_clear_error(tmp_path, capsys):
    export = _export_dir(tmp_path)
    assert main(["repository", "--onnx", str(export), "--out", str(tmp_path / "repo")]) == 2
    assert re.search(r"export_report.json not found: is .* a 'compositor export --out DIR' folder", capsys.readouterr().err)


@pytest.mark.parametrize("max_batch", [1, 8, 16])
def test_tensorrt_configs_accept_exactly_what_the_spec_engine_profiles_accept(max_batch):
    readiness = pytest.importorskip("compositor.export.readiness", reason="the export chain's readiness checks are not installed")
    options = RepositoryOptions(flavor="tensorrt", max_batch=max_batch, resolution=256)
    configs = repository_configs(options)
    for name, model in NETWORKS.items():
        config = to_model_config(configs[name])
        readiness.check_profile_against_triton(
            tensorrt_profiles(model, options.resolution, max_batch),
            {i.name: list(i.dims) for i in config.input},
            config.max_batch_size,
            options.resolution,
        )


def test_the_cpu_stages_get_their_own_instance_count_and_half_the_cores_on_gpu_by_default():
    from compositor.cli import build_parser
    from compositor.cli.repository import _default_stage_instances

    configs = repository_configs(RepositoryOptions(flavor="tensorrt", instances=2, stage_instances=6))
    assert [configs[m]["instance_group"][0]["count"] for m in ("preprocess", "postprocess")] == [6, 6]
    assert {configs[name]["instance_group"][0]["count"] for name in NETWORKS} == {2}
    assert RepositoryOptions(instances=3).stage_instances == 3  # unset: the networks' count
    with pytest.raises(RepositoryOptionsError, match="stage_instances must be >= 1"):
        RepositoryOptions(stage_instances=0)
    parser = build_parser()
    cores = len(os.sched_getaffinity(0))
    gpu = parser.parse_args(["repository", "--out", "r", "--flavor", "tensorrt"])
    assert _default_stage_instances(gpu) == max(1, cores // 2)
    cpu = parser.parse_args(["repository", "--out", "r", "--instances", "3"])
    assert _default_stage_instances(cpu) == 3
