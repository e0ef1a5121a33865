"""The engine cache of the GPU image (``compositor.export.engine_cache``, ``compositor engines``).

TensorRT does not run here, so the cache is driven with a stand-in builder that writes a plan from
its inputs with ``build_engine``'s signature; the key, the reuse rules, the atomic build, the
repository generated from a cache folder and the command's behaviour without TensorRT are real.
"""

from __future__ import annotations

import ctypes.util
import hashlib
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from compositor.contract import spec
from compositor.errors import CompositorError
from compositor.export import engine_cache
from compositor.export.engine_cache import GpuFacts, engine_cache_key, ensure_engines, source_fingerprint
from compositor.export.engine_check import EngineCheckError, write_check_case
from compositor.export.layout import REPORT_FILE, check_file, fp16_file, plan_file
from compositor.export.tensorrt import EngineBuildError, is_available as tensorrt_is_available

H100 = GpuFacts("NVIDIA H100 80GB HBM3", (9, 0))
BARE_KEY = "NVIDIA-H100-80GB-HBM3_sm90_trt10.5.0"


def recipe_digest(resolution=(64, 64), max_batch=4) -> str:
    """SHA-256 of the recipe as canonical JSON, hashed here (not by the code under test)."""
    recipe = engine_cache.build_recipe(spec.parse_resolution(f"{resolution[0]}x{resolution[1]}"), max_batch)
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


KEY = f"{BARE_KEY}_r{recipe_digest()[:8]}"
"""The folder of make_export's engines on an H100 with TensorRT 10.5.0."""


@pytest.mark.parametrize(
    ("name", "capability", "version", "key"),
    [
        ("NVIDIA H100 80GB HBM3", (9, 0), "10.5.0", BARE_KEY),
        ("NVIDIA GeForce RTX 4090", (8, 9), "10.5.0.18", "NVIDIA-GeForce-RTX-4090_sm89_trt10.5.0.18"),
        ("NVIDIA A100-SXM4-40GB", (8, 0), "10.5.0", "NVIDIA-A100-SXM4-40GB_sm80_trt10.5.0"),
        ("NVIDIA B200", (10, 0), "10.9.0", "NVIDIA-B200_sm100_trt10.9.0"),
        (" Tesla T4/../x_y ", (7, 5), "10.5.0+cuda12", "Tesla-T4-..-x-y_sm75_trt10.5.0-cuda12"),
    ],
)
def test_the_cache_key_names_the_gpu_its_compute_capability_and_the_tensorrt_version(name, capability, version, key):
    assert engine_cache_key(name, capability, version) == key


def test_the_cache_key_is_one_safe_path_component_whatever_the_driver_reports():
    key = engine_cache_key("../../etc/passwd\x00 *?", (9, 0), "10/5")
    assert "/" not in key and "\x00" not in key and not key.startswith(".")
    assert key == "etc-passwd_sm90_trt10-5"


@pytest.mark.parametrize(
    ("name", "capability", "version", "message"),
    [
        ("", (9, 0), "10.5.0", "GPU name '' has no letters or digits"),
        ("  /// ", (9, 0), "10.5.0", "GPU name '  /// ' has no letters or digits"),
        ("NVIDIA H100", (9, 0), "", "TensorRT version '' has no letters or digits"),
        ("NVIDIA H100", (9, 10), "10.5.0", r"minor 0-9\), got \(9, 10\)"),
        ("NVIDIA H100", (0, 0), "10.5.0", r"major >= 1"),
        ("NVIDIA H100", ("9", "x"), "10.5.0", r"must be \(major, minor\) integers"),
        ("NVIDIA H100", (9,), "10.5.0", r"must be \(major, minor\) integers"),
    ],
)
def test_the_cache_key_refuses_facts_that_would_make_an_ambiguous_or_empty_name(name, capability, version, message):
    with pytest.raises(ValueError, match=message):
        engine_cache_key(name, capability, version)


# --- The cache, with a stand-in builder -----------------------------------------------------------


def make_export(directory: Path, resolution=(64, 64), max_batch=4) -> Path:
    """An export folder as far as the engine cache and the tensorrt repository read it."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in spec.NETWORKS:
        (directory / fp16_file(name)).write_bytes(f"fp16 onnx of {name}".encode())
    report = {
        "resolution": list(resolution),
        "max_batch": max_batch,
        "weights": {
            "untrained": [],
            "provenance": {
                name: {"kind": "trained", "file": f"{name}.safetensors", "sha256": "ab" * 32, "note": "test"}
                for name in spec.NETWORKS
            },
        },
    }
    (directory / REPORT_FILE).write_text(json.dumps(report))
    for name in spec.NETWORKS:
        inputs = {t.name: np.full((1, t.shape[0], 8, 8), 0.25, np.float32) for t in spec.NETWORKS[name].inputs}
        write_check_case(directory / check_file(name), inputs, standin_outputs(name))
    return directory


def standin_outputs(name: str) -> dict[str, np.ndarray]:
    """What make_export's check cases record as the FP32 outputs, and what a good stand-in engine returns."""
    return {t.name: np.full((1, t.shape[0], 8, 8), 0.5, np.float32) for t in spec.NETWORKS[name].outputs}


def good_engine(plan_path: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A stand-in for running a plan on the GPU: the stored FP32 outputs, as an engine within tolerance gives."""
    assert set(inputs) == set(spec.NETWORKS[plan_path.stem].input_names())
    return standin_outputs(plan_path.stem)


def ensure(*args, **kwargs):
    """``ensure_engines`` with the stand-in engine run (the stand-in builders' plans cannot run)."""
    kwargs.setdefault("run_engine", good_engine)
    return ensure_engines(*args, **kwargs)


class StandInBuilder:
    """``build_engine``'s signature; the plan is its inputs, and it checks nothing is published early."""

    def __init__(self, cache_root: Path, fail_on: str | None = None, delay_s: float = 0.0):
        self.cache_root, self.fail_on, self.delay_s = cache_root, fail_on, delay_s
        self.calls: list[str] = []

    def __call__(self, onnx_path, plan_path, name, profiles, timing_cache_path):
        self.calls.append(name)
        # Engines go to a temporary folder beside the keyed one, renamed onto it only when complete.
        staging = Path(plan_path).parent
        assert staging.parent == self.cache_root and staging.name.startswith(f".building-{KEY}-"), staging
        assert not (staging / engine_cache.MANIFEST_FILE).exists(), "the manifest is written after every plan"
        time.sleep(self.delay_s)
        if name == self.fail_on:
            raise EngineBuildError(f"{name}: stand-in failure")
        shapes = {k: (p.min, p.opt, p.max) for k, p in profiles.items()}
        Path(plan_path).write_bytes(Path(onnx_path).read_bytes() + f" -> plan {shapes}".encode())
        return {"path": Path(plan_path).name, "tensorrt_version": "10.5.0", "strongly_typed": True}


def test_a_build_publishes_every_plan_the_report_and_the_manifest_in_one_folder(tmp_path):
    export, root = make_export(tmp_path / "export"), tmp_path / "cache"
    builder = StandInBuilder(root)

    result = ensure(export, root, H100, "10.5.0", build=builder)

    assert (result.folder, result.reused) == (root / KEY, False)
    assert builder.calls == list(spec.NETWORKS)
    assert sorted(p.name for p in result.folder.iterdir()) == sorted(
        [*(plan_file(n) for n in spec.NETWORKS), REPORT_FILE, engine_cache.MANIFEST_FILE]
    )
    manifest = json.loads((result.folder / engine_cache.MANIFEST_FILE).read_text())
    assert manifest == result.manifest
    assert manifest["key"] == KEY and manifest["tensorrt_version"] == "10.5.0"
    assert manifest["gpu"] == {"name": "NVIDIA H100 80GB HBM3", "compute_capability": [9, 0], "multiprocessors": None, "memory_bytes": None}
    assert manifest["source"] == source_fingerprint(export) and manifest["recipe_sha256"] == recipe_digest()
    assert (manifest["resolution"], manifest["max_batch"]) == ([64, 64], 4)
    # The spec's profiles reached the builder: batch 1..max_batch at the export's resolution.
    matting_plan = (result.folder / plan_file("matting")).read_text()
    assert "(1, 3, 64, 64)" in matting_plan and "(4, 3, 64, 64)" in matting_plan
    assert [p.name for p in root.iterdir() if p.name.startswith(".building-")] == []


def test_a_complete_folder_built_from_the_same_onnx_files_is_reused_without_building(tmp_path):
    export, root = make_export(tmp_path / "export"), tmp_path / "cache"
    first = ensure(export, root, H100, "10.5.0", build=StandInBuilder(root))
    builder = StandInBuilder(root)

    again = ensure(export, root, H100, "10.5.0", build=builder)

    assert (again.folder, again.reused, builder.calls) == (first.folder, True, [])
    assert again.manifest == first.manifest


def test_another_gpu_model_or_tensorrt_version_gets_its_own_folder(tmp_path):
    export, root = make_export(tmp_path / "export"), tmp_path / "cache"
    ensure(export, root, H100, "10.5.0", build=StandInBuilder(root))
    l4 = ensure(export, root, GpuFacts("NVIDIA L4", (8, 9)), "10.5.0", build=lambda *a: _plan(*a))
    newer = ensure(export, root, H100, "10.6.0", build=lambda *a: _plan(*a))
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) == sorted(
        [KEY, f"NVIDIA-L4_sm89_trt10.5.0_r{recipe_digest()[:8]}", f"NVIDIA-H100-80GB-HBM3_sm90_trt10.6.0_r{recipe_digest()[:8]}"]
    )
    assert not l4.reused and not newer.reused


def _plan(onnx_path, plan_path, name, profiles, timing_cache_path):
    Path(plan_path).write_bytes(b"plan of " + Path(onnx_path).read_bytes())
    return {"path": Path(plan_path).name}


def test_new_onnx_files_in_the_image_rebuild_the_engines_kept_on_the_volume(tmp_path):
    export, root = make_export(tmp_path / "export"), tmp_path / "cache"
    ensure(export, root, H100, "10.5.0", build=StandInBuilder(root))
    (export / fp16_file("blending")).write_bytes(b"retrained blending")

    rebuilt = ensure(export, root, H100, "10.5.0", build=StandInBuilder(root))

    assert not rebuilt.reused
    assert (rebuilt.folder / plan_file("blending")).read_bytes().startswith(b"retrained blending")
    assert rebuilt.manifest["source"] == source_fingerprint(export)
    assert sorted(p.name for p in root.iterdir()) == sorted([KEY, f".{KEY}.lock"])


@pytest.mark.parametrize("damage", ["no manifest", "truncated plan", "missing report", "unreadable manifest"])
def test_an_incomplete_folder_is_rebuilt_not_served(tmp_path, damage):
    export, root = make_export(tmp_path / "export"), tmp_path / "cache"
    folder = ensure(export, root, H100, "10.5.0", build=StandInBuilder(root)).folder
    if damage == "no manifest":
        (folder / engine_cache.MANIFEST_FILE).unlink()
    elif damage == "truncated plan":
        plan = folder / plan_file("harmonization")
        plan.write_bytes(plan.read_bytes()[:5])
    elif damage == "missing report":
        (folder / REPORT_FILE).unlink()
    else:
        (folder / engine_cache.MANIFEST_FILE).write_text("{not json")
    builder = StandInBuilder(root)

    result = ensure(export, root, H100, "10.5.0", build=builder)

    assert not result.reused and builder.calls == list(spec.NETWORKS)
    assert engine_cache.complete_manifest(folder, source_fingerprint(export)) == result.manifest


def test_a_failed_build_leaves_neither_a_folder_nor_temporary_files(tmp_path):
    export, root = make_export(tmp_path / "export"), tmp_path / "cache"
    with pytest.raises(EngineBuildError, match="blending: stand-in failure"):
        ensure(export, root, H100, "10.5.0", build=StandInBuilder(root, fail_on="blending"))
    assert sorted(p.name for p in root.iterdir()) == [f".{KEY}.lock"]


def test_the_folders_left_by_a_killed_build_are_removed_by_the_next_one(tmp_path):
    export, root = make_export(tmp_path / "export"), tmp_path / "cache"
    killed = root / f".building-{KEY}-x1y2"
    killed.mkdir(parents=True)
    (killed / plan_file("matting")).write_bytes(b"half a plan")
    other_key = root / ".building-NVIDIA-L4_sm89_trt10.5.0-abcd"
    other_key.mkdir()

    ensure(export, root, H100, "10.5.0", build=StandInBuilder(root))

    assert not killed.exists()
    assert other_key.exists(), "another key's build may still be running: not ours to remove"


def test_two_replicas_starting_together_on_one_volume_build_the_engines_once(tmp_path):
    export, root = make_export(tmp_path / "export"), tmp_path / "cache"
    builder = StandInBuilder(root, delay_s=0.1)
    results = []
    threads = [threading.Thread(target=lambda: results.append(ensure(export, root, H100, "10.5.0", build=builder)))
               for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert builder.calls == list(spec.NETWORKS)
    assert sorted(r.reused for r in results) == [False, True]


def test_a_cache_folder_is_an_export_folder_for_the_tensorrt_repository(tmp_path):
    from compositor.serving.configs import RepositoryOptions
    from compositor.serving.repository import export_settings, generate_repository

    export, root = make_export(tmp_path / "export"), tmp_path / "cache"
    folder = ensure(export, root, H100, "10.5.0", build=StandInBuilder(root)).folder

    settings = export_settings(folder, "tensorrt")
    options = RepositoryOptions(flavor="tensorrt", resolution=settings.resolution, max_batch=settings.max_batch)
    repository = generate_repository(tmp_path / "repo", options, export_dir=folder)

    for name in spec.NETWORKS:
        assert (repository.root / name / "1" / "model.plan").read_bytes() == (folder / plan_file(name)).read_bytes()
    assert repository.provenance["matting"]["file"] == "matting.safetensors"
    assert "platform: \"tensorrt_plan\"" in (repository.root / "matting" / "config.pbtxt").read_text()


@pytest.mark.parametrize(
    ("breakage", "message"),
    [("no report", "export_report.json not found"), ("no fp16 onnx", "blending.fp16.onnx not found")],
)
def test_an_unusable_export_folder_is_named_before_anything_is_built(tmp_path, breakage, message):
    export, root = make_export(tmp_path / "export"), tmp_path / "cache"
    (export / (REPORT_FILE if breakage == "no report" else fp16_file("blending"))).unlink()
    with pytest.raises(CompositorError, match=message):
        ensure(export, root, H100, "10.5.0", build=StandInBuilder(root))
    assert not root.exists()


# --- The command and the GPU query on this machine ------------------------------------------------


def run_engines_command(*arguments: str) -> subprocess.CompletedProcess:
    code = (
        "import sys, json\nfrom compositor.cli import main\ncode = main(sys.argv[1:])\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\nsys.exit(code)\n"
    )
    return subprocess.run([sys.executable, "-c", code, "engines", *arguments], capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(tensorrt_is_available(), reason="TensorRT is installed here: this checks the machines without it")
def test_without_tensorrt_the_command_exits_3_with_the_reason_builds_nothing_and_imports_no_torch(tmp_path):
    export, root = make_export(tmp_path / "export"), tmp_path / "cache"

    run = run_engines_command("--onnx", str(export), "--cache", str(root))

    assert run.returncode == 3, run.stderr
    assert "no TensorRT engine was built: the TensorRT Python package is not installed" in run.stderr
    assert not root.exists()
    modules = set(json.loads(run.stdout.strip().splitlines()[-1]))
    assert modules.isdisjoint({"torch", "onnx", "onnxruntime", "tritonclient", "polygraphy"}), modules


@pytest.mark.parametrize(("breakage", "message"), [("no report", "export_report.json not found"),
                                                   ("no fp16 onnx", "matting.fp16.onnx not found")])
def test_the_command_names_an_unusable_export_folder_with_exit_2(tmp_path, breakage, message):
    export = make_export(tmp_path / "export")
    (export / (REPORT_FILE if breakage == "no report" else fp16_file("matting"))).unlink()
    run = run_engines_command("--onnx", str(export), "--cache", str(tmp_path / "cache"))
    assert run.returncode == 2
    assert run.stderr.startswith("error: ") and message in run.stderr


def test_importing_the_engine_cache_imports_neither_torch_nor_onnx_nor_tensorrt():
    code = "import compositor.export.engine_cache, compositor.cli.engines, sys, json\n" \
           "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    modules = set(json.loads(run.stdout))
    assert modules.isdisjoint({"torch", "onnx", "onnxruntime", "tensorrt", "polygraphy", "tritonclient"}), modules


@pytest.mark.skipif(ctypes.util.find_library("cuda") is not None, reason="a CUDA driver is installed here")
def test_without_a_cuda_driver_the_gpu_query_says_so():
    with pytest.raises(engine_cache.GpuUnavailableError, match="libcuda.so.1 cannot be loaded"):
        engine_cache.query_gpu()


def test_the_key_tells_a_mig_slice_from_its_whole_gpu_and_one_recipe_from_another(tmp_path):
    whole = GpuFacts("NVIDIA H100 80GB HBM3", (9, 0), 132, 80 * 2**30)
    mig = GpuFacts("NVIDIA H100 80GB HBM3", (9, 0), 16, 10 * 2**30)  # 1g.10gb reports the parent's name
    assert whole.slice_label() == "132SM-80GB" and mig.slice_label() == "16SM-10GB"
    assert engine_cache_key(mig.name, mig.compute_capability, "10.5.0", mig.slice_label(), "ab" * 32) == \
        "NVIDIA-H100-80GB-HBM3_sm90_16SM-10GB_trt10.5.0_rabababab"
    export, root = make_export(tmp_path / "export"), tmp_path / "cache"
    first = ensure(export, root, whole, "10.5.0", build=_plan)
    on_mig = ensure(export, root, mig, "10.5.0", build=_plan)
    assert first.folder != on_mig.folder and not on_mig.reused
    # Another recipe (here: a larger max batch, so other profiles) is another folder, never a reuse.
    bigger = ensure(make_export(tmp_path / "export8", max_batch=8), root, whole, "10.5.0", build=_plan)
    assert bigger.folder.name.endswith(f"_r{recipe_digest(max_batch=8)[:8]}") and not bigger.reused
    recipe = first.manifest["recipe"]
    assert recipe["strongly_typed"] is True and recipe["tf32"] is False and recipe["compositor"]
    assert recipe["profiles"]["matting"]["image"] == [[1, 3, 64, 64], [4, 3, 64, 64], [4, 3, 64, 64]]
    assert first.manifest["recipe_sha256"] == recipe_digest()


@pytest.mark.parametrize(("number", "text"), [(100500, "10.5.0"), (110003, "11.0.3"), (8601, "8.6.1"), (100912, "10.9.12")])
def test_the_loaded_libraries_version_number_reads_as_tensorrt_spells_it(number, text):
    from compositor.export.tensorrt import inferlib_version_text

    assert inferlib_version_text(number) == text


def test_without_libnvinfer_the_bindings_version_is_the_key_with_a_warning(caplog):
    """Here no libnvinfer can be loaded: the stand-in bindings' version is used, and the log says why."""
    from types import SimpleNamespace

    from compositor.export.tensorrt import loaded_library_version

    assert loaded_library_version(SimpleNamespace(__version__="10.5.0")) == "10.5.0"
    assert "cannot ask libnvinfer.so.10 for its version" in caplog.text


def test_an_engine_that_misses_the_fp16_tolerances_on_the_stored_case_is_never_published(tmp_path):
    export, root = make_export(tmp_path / "export"), tmp_path / "cache"

    def drifting_engine(plan_path, inputs):
        outputs = standin_outputs(plan_path.stem)
        if plan_path.stem == "harmonization":
            outputs["harmonized"] = outputs["harmonized"] + 0.05  # 26 dB: below the 40 dB tolerance
        return outputs

    with pytest.raises(EngineCheckError, match=r"harmonization: .*harmonized: psnr_db 26\.0 dB < tolerance 40 dB"):
        ensure_engines(export, root, H100, "10.5.0", build=_plan, run_engine=drifting_engine)
    assert [p.name for p in root.iterdir() if not p.name.endswith(".lock")] == []  # nothing published, no leftovers
    built = ensure_engines(export, root, H100, "10.5.0", build=_plan, run_engine=good_engine)
    assert not built.reused and built.manifest["networks"]["matting"]["check"]["alpha"]["max_abs_error"] == 0.0


def test_an_export_without_check_cases_is_refused_naming_what_to_do(tmp_path):
    export, root = make_export(tmp_path / "export"), tmp_path / "cache"
    (export / check_file("blending")).unlink()
    with pytest.raises(EngineCheckError, match=r"blending.check.npz: no readable stored check case .*export again"):
        ensure_engines(export, root, H100, "10.5.0", build=_plan, run_engine=good_engine)
