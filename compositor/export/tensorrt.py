"""TensorRT engines from the FP16 ONNX: strongly typed networks, one optimisation profile each.

TensorRT is imported lazily (``import_tensorrt``); machines without it (every CPU machine) still
get the exact ``trtexec`` and ``polygraphy`` command lines, which build and check the same engines
inside NVIDIA's TensorRT or Triton containers.

Engines are built and run through Polygraphy's TensorRT loaders (``polygraphy.backend.trt``):
``NetworkFromOnnxPath(..., strongly_typed=True)``, ``CreateConfig`` with the profile from
``compositor.contract.spec.tensorrt_profiles`` and the shared timing cache, ``EngineFromNetwork``,
``SaveEngine``; ``engine_runner`` is a ``TrtRunner``, so checking an engine is the export's parity
comparison (``compositor.export.parity``) with one more runner, and ``TensorRTForward`` times the
same runner in the GPU benchmark. Our own code here: the checks that the network's and the engine's
I/O and profile are the spec's (Polygraphy builds whatever the ONNX says), writing the plan
atomically, and the command lines.

Why strongly typed: the FP16 ONNX already says which layer runs in which precision (FP16 compute,
normalisation statistics in FP32, FP32 I/O). A strongly typed network follows those types exactly,
so the engine's numerics are the ones the parity checks measured; with the FP16 builder flag the
builder would be free to pick per layer. TensorRT 10 has both; TensorRT 11 removed the FP16 builder
flag (strong typing is the way to ask for FP16), so no precision flag is set, and TF32 is off
(Polygraphy's default; ``--noTF32`` in the trtexec line): the layers kept in FP32 compute in FP32.
"""

from __future__ import annotations

import logging
import shlex
import time
from collections.abc import Mapping
from pathlib import Path

from compositor.contract import spec
from compositor.errors import CompositorError
from compositor.export.layout import TIMING_CACHE_FILE
from compositor.export.metrics import error_bounds
from compositor.atomic_files import atomic_path

log = logging.getLogger(__name__)

MIN_TENSORRT_MAJOR = 10
"""Strongly typed networks (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``) need TensorRT >= 10."""

BUILDER_SETTINGS = {"strongly_typed": True, "tf32": False, "workspace_bytes": None, "timing_cache": True}
"""How ``build_engine`` builds (``workspace_bytes`` None: TensorRT's default), as the engine cache's
recipe records it: a cached engine built otherwise is not reused."""

CONTAINER_HINT = (
    "run them from the export directory inside NVIDIA's Triton container of the release that will serve "
    "the engines (nvcr.io/nvidia/tritonserver:<yy.mm>-py3) or the TensorRT container of the same release "
    "(nvcr.io/nvidia/tensorrt:<yy.mm>-py3), on the GPU model that will serve them (a plan is specific to "
    "the TensorRT version and the GPU), e.g. docker run --gpus all --rm -v \"$PWD\":/export -w /export "
    "<image> <command>"
)
"""Where the trtexec/polygraphy lines run; in the report and in the missing-TensorRT error."""


class TensorRTUnavailableError(CompositorError, RuntimeError):
    """The TensorRT Python package is missing (or too old) on this machine."""


class EngineBuildError(CompositorError, RuntimeError):
    """TensorRT could not parse the ONNX model or build the engine."""


def import_tensorrt():
    """Import and return the ``tensorrt`` module.

    Raises:
        TensorRTUnavailableError: if it is not installed or older than TensorRT 10.
    """
    try:
        import tensorrt as trt
    except ImportError as error:
        raise TensorRTUnavailableError(
            f"the TensorRT Python package is not installed ({error}); it needs an NVIDIA GPU machine"
        ) from error
    major = int(str(trt.__version__).split(".")[0])
    if major < MIN_TENSORRT_MAJOR or not hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        raise TensorRTUnavailableError(
            f"TensorRT {trt.__version__} is too old: strongly typed networks need TensorRT >= {MIN_TENSORRT_MAJOR}"
        )
    return trt


def inferlib_version_text(number: int) -> str:
    """``getInferLibVersion()``'s number as ``major.minor.patch``: ``major*10000 + minor*100 + patch``
    from TensorRT 10 on (``NV_TENSORRT_VERSION_INT``), ``major*1000 + minor*100 + patch`` before."""
    if number >= 100000:
        return f"{number // 10000}.{number // 100 % 100}.{number % 100}"
    return f"{number // 1000}.{number // 100 % 10}.{number % 100}"


def loaded_library_version(trt) -> str:
    """The version of the ``libnvinfer`` this process runs (the one an engine is built by).

    The Python bindings' ``__version__`` names the wheel, not necessarily the library it loaded:
    in the GPU image the bindings load the base image's ``libnvinfer.so.10``, the library Triton
    deserialises the plans with. ``getInferLibVersion`` is that library's own answer; the bindings'
    version is used only when the library cannot be asked.
    """
    import ctypes

    major = str(trt.__version__).split(".")[0]
    try:
        library = ctypes.CDLL(f"libnvinfer.so.{major}")  # already loaded by the bindings: the same handle
        function = library.getInferLibVersion
    except (OSError, AttributeError) as error:
        log.warning("cannot ask libnvinfer.so.%s for its version (%s); using the bindings' %s", major, error, trt.__version__)
        return str(trt.__version__)
    function.restype = ctypes.c_int32
    version = inferlib_version_text(function())
    if not str(trt.__version__).startswith(version):
        log.warning("the TensorRT bindings are %s but the loaded libnvinfer is %s: keyed on the library", trt.__version__, version)
    return version


def is_available() -> bool:
    """Whether a usable TensorRT (>= 10) can be imported here."""
    try:
        import_tensorrt()
    except TensorRTUnavailableError:
        return False
    return True


def unavailable_reason() -> str | None:
    """Why TensorRT cannot be used here, or None if it can."""
    try:
        import_tensorrt()
    except TensorRTUnavailableError as error:
        return str(error)
    return None


# --- Command lines --------------------------------------------------------------------------------


def _shape(shape: tuple[int, ...], separator: str) -> str:
    return separator.join(str(d) for d in shape)


def trtexec_command(
    onnx_file: str, plan_file: str, profiles: Mapping[str, spec.Profile], timing_cache_file: str = TIMING_CACHE_FILE
) -> str:
    """The ``trtexec`` line that builds the same engine as ``build_engine``.

    Strongly typed (no precision flags, TF32 off), the same min/opt/max shapes, the same timing cache.
    """
    arguments = [
        "trtexec",
        f"--onnx={onnx_file}",
        f"--saveEngine={plan_file}",
        "--stronglyTyped",
        "--noTF32",
        f"--minShapes={spec.profile_shapes(dict(profiles), 'min')}",
        f"--optShapes={spec.profile_shapes(dict(profiles), 'opt')}",
        f"--maxShapes={spec.profile_shapes(dict(profiles), 'max')}",
        f"--timingCacheFile={timing_cache_file}",
    ]
    return shlex.join(arguments)


def _polygraphy_shapes(profiles: Mapping[str, spec.Profile], which: str) -> list[str]:
    return [f"{name}:[{_shape(getattr(p, which), ',')}]" for name, p in profiles.items()]


def polygraphy_tolerances(tolerances: Mapping[str, Mapping[str, float]]) -> list[str]:
    """``polygraphy run`` comparison arguments for the FP16 parity tolerances.

    The same bounds the export's own Polygraphy comparison uses (``metrics.error_bounds``): a
    ``max_abs_error`` bound becomes ``--check-error-stat out:max --atol out:<bound>``; a PSNR bound
    of P dB becomes ``--check-error-stat out:mean --atol out:10^(-P/20)`` (the PSNR itself is not a
    ``polygraphy run`` option with a [0, 1] peak).
    """
    bounds = error_bounds({output: dict(limits) for output, limits in tolerances.items()})
    stats = [f"{output}:{stat}" for output, (stat, _) in bounds.items()]
    atols = [f"{output}:{bound:g}" for output, (_, bound) in bounds.items()]
    return ["--check-error-stat", *stats, "--atol", *atols, "--rtol", "0"]


def polygraphy_command(
    fp16_onnx_file: str,
    profiles: Mapping[str, spec.Profile],
    tolerance_args: list[str],
    timing_cache_file: str = TIMING_CACHE_FILE,
) -> str:
    """A ``polygraphy run`` line comparing TensorRT with ONNX Runtime on the FP16 ONNX.

    Polygraphy builds a strongly typed engine from the FP16 ONNX with the same profile (the recipe
    of ``build_engine``), runs it and ONNX Runtime on the same [0, 1] inputs at the opt batch, and
    compares the outputs (``tolerance_args`` from ``polygraphy_tolerances``).
    """
    arguments = [
        "polygraphy", "run", fp16_onnx_file,
        "--trt", "--onnxrt", "--strongly-typed",
        "--trt-min-shapes", *_polygraphy_shapes(profiles, "min"),
        "--trt-opt-shapes", *_polygraphy_shapes(profiles, "opt"),
        "--trt-max-shapes", *_polygraphy_shapes(profiles, "max"),
        "--input-shapes", *_polygraphy_shapes(profiles, "opt"),
        "--val-range", "[0,1]",
        "--load-timing-cache", timing_cache_file,
        *tolerance_args,
    ]  # fmt: skip
    return shlex.join(arguments)


def polygraphy_engine_commands(
    fp32_onnx_file: str, plan_file: str, profiles: Mapping[str, spec.Profile], tolerance_args: list[str]
) -> list[str]:
    """Two ``polygraphy run`` lines comparing the built ``.plan`` itself with ONNX Runtime FP32.

    The first runs ONNX Runtime on the FP32 ONNX and saves its inputs and outputs; the second runs
    the engine on the same inputs and compares.
    """
    stem = Path(plan_file).stem
    inputs, outputs = f"{stem}.polygraphy_inputs.json", f"{stem}.onnxrt_outputs.json"
    reference = [
        "polygraphy", "run", fp32_onnx_file, "--onnxrt",
        "--input-shapes", *_polygraphy_shapes(profiles, "opt"),
        "--val-range", "[0,1]",
        "--save-inputs", inputs, "--save-outputs", outputs,
    ]  # fmt: skip
    engine = [
        "polygraphy", "run", plan_file, "--model-type", "engine", "--trt",
        "--load-inputs", inputs, "--load-outputs", outputs,
        *tolerance_args,
    ]  # fmt: skip
    return [shlex.join(reference), shlex.join(engine)]


# --- Building and running (Polygraphy's TensorRT backend) ----------------------------------------


def polygraphy_profile(profiles: Mapping[str, spec.Profile]):
    """The spec's profile as a ``polygraphy.backend.trt.Profile``."""
    from polygraphy.backend.trt import Profile

    profile = Profile()
    for name, shapes in profiles.items():
        profile.add(name, min=shapes.min, opt=shapes.opt, max=shapes.max)
    return profile


def build_engine(
    onnx_path: str | Path,
    plan_path: str | Path,
    name: str,
    profiles: Mapping[str, spec.Profile],
    timing_cache_path: str | Path | None = None,
    workspace_bytes: int | None = None,
) -> dict:
    """Build a strongly typed TensorRT engine from an FP16 ONNX file and write it as a plain plan.

    Args:
        onnx_path: the FP16 (mixed-precision) ONNX model.
        plan_path: output ``.plan``, written atomically.
        name: network name in ``spec.NETWORKS`` (its I/O names are checked on the network).
        profiles: one optimisation profile, input name -> min/opt/max shapes.
        timing_cache_path: timing cache to load (if it exists) and save back.
        workspace_bytes: builder workspace limit (TensorRT's default if None).

    Returns:
        build information for the report (TensorRT version, seconds, engine size).

    Raises:
        TensorRTUnavailableError: no TensorRT >= 10 here.
        EngineBuildError: parse or build failure (with the parser's errors), or an engine whose
            I/O differs from the spec.
    """
    trt = import_tensorrt()
    from polygraphy.backend.trt import CreateConfig, EngineFromNetwork, NetworkFromOnnxPath, SaveEngine
    from polygraphy.exception import PolygraphyException

    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    model_spec = spec.NETWORKS[name]
    log.info("engine %s -> %s (TensorRT %s, strongly typed)", onnx_path.name, plan_path, trt.__version__)
    started = time.perf_counter()
    timing_cache = Path(timing_cache_path) if timing_cache_path else None
    try:
        builder, network, parser = NetworkFromOnnxPath(str(onnx_path), strongly_typed=True)()
        _check_network_io(trt, network, model_spec)
        config = CreateConfig(
            profiles=[polygraphy_profile(profiles)],
            load_timing_cache=str(timing_cache) if timing_cache and timing_cache.is_file() else None,
            memory_pool_limits={trt.MemoryPoolType.WORKSPACE: workspace_bytes} if workspace_bytes else None,
        )
        engine = EngineFromNetwork(
            (builder, network, parser), config=config, save_timing_cache=str(timing_cache) if timing_cache else None
        )()
    except PolygraphyException as error:  # Polygraphy raises this with the parser's or builder's errors
        raise EngineBuildError(f"{name}: TensorRT could not build an engine from {onnx_path}: {error}") from error
    _check_engine(engine, model_spec, profiles)
    with atomic_path(plan_path) as staging:
        SaveEngine(engine, str(staging))()
    seconds = time.perf_counter() - started
    size = plan_path.stat().st_size
    log.info("engine %s: %.1f MB in %.1f s", plan_path.name, size / 1e6, seconds)
    return {
        "path": plan_path.name,
        "tensorrt_version": str(trt.__version__),
        "strongly_typed": True,
        "build_seconds": round(seconds, 2),
        "size_bytes": size,
        "device_memory_bytes": device_memory_bytes(engine),
    }


def engine_runner(plan_path: str | Path, runner_name: str = "TensorRT engine"):
    """A Polygraphy ``TrtRunner`` on a ``.plan`` (TensorRT imported lazily, as by Polygraphy)."""
    import_tensorrt()
    from polygraphy.backend.common import BytesFromPath
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    return TrtRunner(EngineFromBytes(BytesFromPath(str(plan_path))), name=runner_name)


def device_memory_bytes(engine) -> int | None:
    """Activation memory an engine's execution context allocates (outside PyTorch's allocator)."""
    for attribute in ("device_memory_size_v2", "device_memory_size"):
        if hasattr(engine, attribute):
            return int(getattr(engine, attribute))
    return None


class TensorRTForward:
    """A network as the GPU benchmark calls it: PyTorch CUDA tensors in, FP32 CUDA tensors out (one, or a
    tuple in spec order where the network has several outputs).

    A thin wrapper over an activated ``engine_runner``: PyTorch tensors go in without copies and
    the output stays on the GPU. The runner synchronises its stream before returning, so a chain of
    these needs no further synchronisation between networks.
    """

    def __init__(self, plan_path: str | Path, name: str):
        self.model_spec = spec.NETWORKS[name]
        self.runner = engine_runner(plan_path, f"TensorRT {name}")
        self.runner.activate()

    def __call__(self, *inputs):
        feeds = {tensor.name: value.contiguous() for tensor, value in zip(self.model_spec.inputs, inputs)}
        outputs = self.runner.infer(feeds, check_inputs=False, copy_outputs_to_host=False)
        results = tuple(outputs[name] for name in self.model_spec.output_names())
        return results[0] if len(results) == 1 else results

    def close(self) -> None:
        if self.runner.is_active:
            self.runner.deactivate()


def _check_network_io(trt, network, model_spec: spec.ModelSpec) -> None:
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    outputs = [network.get_output(i) for i in range(network.num_outputs)]
    got = ([t.name for t in inputs], [t.name for t in outputs])
    if got != (model_spec.input_names(), model_spec.output_names()):
        raise EngineBuildError(f"{model_spec.name}: network I/O {got} != spec {model_spec.input_names()} -> {model_spec.output_names()}")
    for tensor in inputs + outputs:
        if tensor.dtype != trt.float32:
            raise EngineBuildError(f"{model_spec.name}: {tensor.name} is {tensor.dtype}, the contract says FP32 I/O")


def _check_engine(engine, model_spec: spec.ModelSpec, profiles: Mapping[str, spec.Profile]) -> None:
    """Check a built engine's I/O names and profile against the spec."""
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    expected = model_spec.input_names() + model_spec.output_names()
    if sorted(names) != sorted(expected):
        raise EngineBuildError(f"{model_spec.name}: engine tensors {names} != spec {expected}")
    for input_name, shapes in profiles.items():
        got = tuple(tuple(s) for s in engine.get_tensor_profile_shape(input_name, 0))
        if got != (shapes.min, shapes.opt, shapes.max):
            raise EngineBuildError(f"{model_spec.name}: engine profile of {input_name} is {got}, expected {shapes}")
