"""TensorRT engines built where they run: one cache folder per GPU model and TensorRT version.

A TensorRT plan only loads on the TensorRT version that built it and is tuned for one GPU model,
so the GPU image (``deploy/docker/Dockerfile.gpu``) builds its engines when it starts, on the GPU
it got, from the FP16 ONNX files of an export folder baked into the image. Built engines go into
a cache (a volume) under a folder named by ``engine_cache_key``, e.g.
``NVIDIA-H100-80GB-HBM3_sm90_132SM-80GB_trt10.5.0_r1a2b3c4d`` (GPU, compute capability, the
multiprocessors and memory that tell a MIG slice from its GPU, the loaded libnvinfer's version, the
build recipe's hash); a pod that starts on the same GPU slice with the same TensorRT and recipe
finds the folder and starts in seconds instead of minutes.

How a killed build never leaves a half cache:

* the engines are built into a temporary folder next to the cache folder (same file system);
* ``engines.json`` (the manifest: GPU, TensorRT version, a SHA-256 of every FP16 ONNX file and
  of the export report, and each plan's size) is written last, after every plan;
* the temporary folder is then renamed onto the cache folder, so the folder either does not exist
  or holds a complete set;
* a folder is reused only if its manifest says it was built from the same ONNX files (an image
  rebuilt with new weights but the old volume rebuilds its engines) and every plan it lists is there
  with the recorded size;
* builds of one key are serialised by a lock file, so two replicas sharing the volume build once.

The folder also gets a copy of the export's ``export_report.json``, so it is itself an export
folder for the ``tensorrt`` flavour: ``compositor repository --onnx <folder> --flavor tensorrt``.

The facts of the GPU come from the CUDA driver (``libcuda.so.1``, through ctypes: no CUDA Python
package, no PyTorch) and the TensorRT version from the ``tensorrt`` package, at run time only;
``engine_cache_key`` itself is a pure function of them. This module imports neither torch nor
TensorRT at import time (the GPU image has no torch).

This module is written against the documented CUDA driver API and TensorRT 10 Python API
(through ``compositor.export.tensorrt.build_engine``); neither runs on the machines where the
project's test suite runs (no GPU, no TensorRT), where the tests drive the cache with a stand-in
builder. Building real engines is checked only on an NVIDIA GPU with TensorRT.
"""

from __future__ import annotations

import ctypes
import datetime as dt
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from compositor.contract import spec
from compositor.errors import CompositorError
from compositor.atomic_files import file_sha256
from compositor.export.engine_check import EngineRun, check_engine, tensorrt_run
from compositor.export.layout import (
    REPORT_FILE,
    TIMING_CACHE_FILE,
    ExportReportError,
    check_file,
    fp16_file,
    plan_file,
    read_report,
    report_shape,
    resolution_report,
)

log = logging.getLogger(__name__)

MANIFEST_FILE = "engines.json"
"""Written last into a cache folder: its presence (and content) says the set of engines is complete."""

DEFAULT_CACHE_DIR = Path("/var/cache/compositor/engines")
CACHE_DIR_ENV = "COMPOSITOR_ENGINE_CACHE"
"""Environment variable naming the cache root (the deployment contract's volume)."""

_UNSAFE = re.compile(r"[^A-Za-z0-9.-]+")
_BUILDING_PREFIX = ".building-"
_STALE_PREFIX = ".stale-"


class EngineCacheError(CompositorError, RuntimeError):
    """The export folder cannot be built from, or the cache folder cannot be written."""


class GpuUnavailableError(CompositorError, RuntimeError):
    """The CUDA driver is missing or reports no usable GPU."""


@dataclass(frozen=True)
class GpuFacts:
    """What an engine depends on besides TensorRT: the GPU's model name and compute capability, and
    how much of it this process has: a MIG slice reports its parent GPU's name and compute
    capability, but has fewer multiprocessors and less memory, and TensorRT picks kernels for those."""

    name: str
    compute_capability: tuple[int, int]
    multiprocessors: int | None = None
    memory_bytes: int | None = None

    def slice_label(self) -> str | None:
        """``<SMs>SM-<GiB>GB`` (``132SM-80GB`` for a whole H100, ``16SM-10GB`` for its 1g.10gb MIG slice),
        or None when not known."""
        if not self.multiprocessors or not self.memory_bytes:
            return None
        return f"{self.multiprocessors}SM-{round(self.memory_bytes / 2**30)}GB"


@dataclass(frozen=True)
class CachedEngines:
    """A complete cache folder.

    Attributes:
        folder: the cache folder (an export folder for the ``tensorrt`` flavour).
        reused: True if it was there already, False if this call built it.
        manifest: its ``engines.json``.
    """

    folder: Path
    reused: bool
    manifest: dict


def default_cache_root() -> Path:
    """``$COMPOSITOR_ENGINE_CACHE``, else ``/var/cache/compositor/engines``."""
    return Path(os.environ.get(CACHE_DIR_ENV) or DEFAULT_CACHE_DIR)


def build_recipe(resolution, max_batch: int) -> dict:
    """How the engines are built, beyond their ONNX files and the GPU: what a cached engine must
    have been built with to be reused (``recipe_hash`` goes into the cache key and the manifest)."""
    from compositor import __version__
    from compositor.export.tensorrt import BUILDER_SETTINGS

    profiles = {
        name: {tensor: [list(p.min), list(p.opt), list(p.max)] for tensor, p in spec.tensorrt_profiles(model, resolution, max_batch).items()}
        for name, model in spec.NETWORKS.items()
    }
    return {"compositor": __version__, **BUILDER_SETTINGS, "profiles": profiles}


def recipe_hash(recipe: dict) -> str:
    """SHA-256 of the recipe as canonical JSON (sorted keys, no spaces)."""
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def engine_cache_key(gpu_name: str, compute_capability: tuple[int, int], tensorrt_version: str,
                     slice_label: str | None = None, recipe: str | None = None) -> str:
    """The cache folder name for engines built by ``tensorrt_version`` on a ``gpu_name`` GPU.

    ``slice_label`` (``GpuFacts.slice_label``: multiprocessors and memory, which tell a MIG slice
    from its whole GPU) and the first 8 hex digits of ``recipe`` (``recipe_hash``) are added when given.

    Only ``A-Z a-z 0-9 . -`` appear in each part (runs of anything else become one ``-``) and the
    parts are joined by ``_``, so the name is a safe path component on any file system.

    Example:
        >>> engine_cache_key("NVIDIA H100 80GB HBM3", (9, 0), "10.5.0")
        'NVIDIA-H100-80GB-HBM3_sm90_trt10.5.0'

    Raises:
        ValueError: an empty name or version, or a compute capability that is not (major, minor)
            with 0 <= minor <= 9 (``sm`` + major + minor must be unambiguous).
    """
    name, version = _safe(gpu_name), _safe(tensorrt_version)
    if not name:
        raise ValueError(f"GPU name {gpu_name!r} has no letters or digits")
    if not version:
        raise ValueError(f"TensorRT version {tensorrt_version!r} has no letters or digits")
    try:
        major, minor = (int(part) for part in compute_capability)
    except (TypeError, ValueError):
        raise ValueError(f"compute capability must be (major, minor) integers, got {compute_capability!r}") from None
    if major < 1 or not 0 <= minor <= 9:
        raise ValueError(f"compute capability must be (major >= 1, minor 0-9), got {compute_capability!r}")
    key = f"{name}_sm{major}{minor}"
    if slice_label:
        key += f"_{_safe(slice_label)}"
    key += f"_trt{version}"
    if recipe:
        key += f"_r{_safe(recipe)[:8]}"
    return key


def _safe(text: str) -> str:
    return _UNSAFE.sub("-", str(text)).strip("-.")


def source_fingerprint(export_dir: str | Path) -> dict:
    """What the engines are built from: SHA-256 of the report and of each network's FP16 ONNX file.

    Raises:
        ExportReportError: no readable report.
        EngineCacheError: an FP16 ONNX file is missing.
    """
    export_dir = Path(export_dir)
    read_report(export_dir)  # a clear error when it is not an export folder
    onnx = {}
    for name in spec.NETWORKS:
        path = export_dir / fp16_file(name)
        if not path.is_file():
            raise EngineCacheError(
                f"{path} not found: the engines are built from the FP16 ONNX files that 'compositor export' writes"
            )
        onnx[fp16_file(name)] = file_sha256(path)
    return {"report_sha256": file_sha256(export_dir / REPORT_FILE), "onnx_sha256": onnx}


def complete_manifest(folder: str | Path, fingerprint: dict, recipe_sha256: str | None = None) -> dict | None:
    """The manifest of ``folder`` if it holds a complete set built from ``fingerprint``, else None.

    Complete: ``engines.json`` parses, records the same sources (and, when given, the same recipe
    hash), and every plan it lists is there with the recorded size, as is the copied export report.
    """
    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("source") != fingerprint:
        return None
    if recipe_sha256 is not None and manifest.get("recipe_sha256") != recipe_sha256:
        return None
    networks = manifest.get("networks")
    if not isinstance(networks, dict) or set(networks) != set(spec.NETWORKS):
        return None
    for name, entry in networks.items():
        plan = folder / plan_file(name)
        if not plan.is_file() or plan.stat().st_size != entry.get("size_bytes"):
            return None
    if not (folder / REPORT_FILE).is_file():
        return None
    return manifest


BuildFunction = Callable[..., dict]
"""``compositor.export.tensorrt.build_engine``'s signature: (onnx_path, plan_path, name, profiles,
timing_cache_path) -> build information with at least ``size_bytes``."""


def ensure_engines(
    export_dir: str | Path,
    cache_root: str | Path,
    gpu: GpuFacts,
    tensorrt_version: str,
    build: BuildFunction | None = None,
    fingerprint: dict | None = None,
    run_engine: EngineRun | None = None,
) -> CachedEngines:
    """Reuse the complete cache folder for this GPU and TensorRT, or build it atomically.

    Args:
        export_dir: a ``compositor export`` folder with ``<name>.fp16.onnx`` and the report.
        cache_root: where the cache folders live (created).
        gpu: the GPU the engines are for (``query_gpu``).
        tensorrt_version: the TensorRT that builds them (``tensorrt.__version__``).
        build: the engine builder (default ``compositor.export.tensorrt.build_engine``).
        fingerprint: ``source_fingerprint(export_dir)`` if the caller has it already (hashing the
            ONNX files again would cost a read of every file at each start).
        run_engine: runs a built plan on the export's stored check case before anything is
            published (``engine_check``; default ``engine_check.tensorrt_run``).

    Returns:
        the complete folder, and whether it was reused.

    Raises:
        ExportReportError, EngineCacheError: the export folder is not usable.
        TensorRTUnavailableError, EngineBuildError: from the builder; nothing is left in the cache.
        EngineCheckError: a built engine misses the FP16 tolerances on the stored case (or the
            export has none); nothing is published.
    """
    export_dir, cache_root = Path(export_dir), Path(cache_root)
    try:
        resolution, max_batch = report_shape(export_dir)
    except ExportReportError as error:
        raise EngineCacheError(str(error)) from None
    recipe = build_recipe(resolution, max_batch)
    digest = recipe_hash(recipe)
    key = engine_cache_key(gpu.name, gpu.compute_capability, tensorrt_version, gpu.slice_label(), digest)
    fingerprint = fingerprint or source_fingerprint(export_dir)
    folder = cache_root / key
    manifest = complete_manifest(folder, fingerprint, digest)
    if manifest is not None:
        log.info("engine cache: reusing %s", folder)
        return CachedEngines(folder, True, manifest)
    try:
        cache_root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise EngineCacheError(f"cannot create the engine cache {cache_root}: {error}") from error
    with _lock(cache_root / f".{key}.lock"):
        # Another process may have finished the same build while this one waited for the lock.
        manifest = complete_manifest(folder, fingerprint, digest)
        if manifest is not None:
            log.info("engine cache: reusing %s (built by another process meanwhile)", folder)
            return CachedEngines(folder, True, manifest)
        _remove_leftovers(cache_root, key)
        if build is None:
            from compositor.export.tensorrt import build_engine as build
        manifest = _build_and_publish(export_dir, cache_root, folder, key, gpu, tensorrt_version, fingerprint,
                                      (resolution, max_batch, recipe, digest), build, run_engine or tensorrt_run)
    return CachedEngines(folder, False, manifest)


def _build_and_publish(export_dir, cache_root, folder, key, gpu, tensorrt_version, fingerprint, shape_and_recipe,
                       build, run_engine) -> dict:
    resolution, max_batch, recipe, digest = shape_and_recipe  # read and hashed once, by ensure_engines
    staging = Path(tempfile.mkdtemp(prefix=f"{_BUILDING_PREFIX}{key}-", dir=cache_root))
    try:
        networks = {}
        for name in spec.NETWORKS:
            profiles = spec.tensorrt_profiles(spec.NETWORKS[name], resolution, max_batch)
            log.info("engine cache: building %s for %s (%s)", name, gpu.name, key)
            info = build(export_dir / fp16_file(name), staging / plan_file(name), name, profiles, staging / TIMING_CACHE_FILE)
            # Checked before it can be published: a miss ends the build with nothing in the cache.
            checked = check_engine(name, staging / plan_file(name), export_dir / check_file(name), run_engine)
            log.info("engine cache: %s passes the FP16 tolerances on the stored case", name)
            networks[name] = {**info, "size_bytes": (staging / plan_file(name)).stat().st_size, "check": checked}
        shutil.copyfile(export_dir / REPORT_FILE, staging / REPORT_FILE)
        manifest = {
            "key": key,
            "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "gpu": {"name": gpu.name, "compute_capability": list(gpu.compute_capability),
                    "multiprocessors": gpu.multiprocessors, "memory_bytes": gpu.memory_bytes},
            "recipe": recipe,
            "recipe_sha256": digest,
            "tensorrt_version": tensorrt_version,
            **resolution_report(resolution),
            "max_batch": max_batch,
            "source": fingerprint,
            "networks": networks,
        }
        # Last, after every plan: a folder with a manifest is a complete folder.
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
        os.chmod(staging, 0o755)  # mkdtemp makes it 0700; Triton may run as another user
        _publish(staging, folder, cache_root, key)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("engine cache: %s complete", folder)
    return manifest


def _publish(staging: Path, folder: Path, cache_root: Path, key: str) -> None:
    """Rename ``staging`` onto ``folder``, moving an incomplete or outdated ``folder`` aside first."""
    stale = None
    if folder.exists() or folder.is_symlink():
        stale = Path(tempfile.mkdtemp(prefix=f"{_STALE_PREFIX}{key}-", dir=cache_root))
        os.rename(folder, stale / "old")
    try:
        os.rename(staging, folder)
    except OSError as error:
        raise EngineCacheError(f"cannot move the built engines into {folder}: {error}") from error
    finally:
        if stale is not None:
            shutil.rmtree(stale, ignore_errors=True)


def _remove_leftovers(cache_root: Path, key: str) -> None:
    """Remove temporary folders of ``key`` left by killed builds (the caller holds the key's lock)."""
    for prefix in (_BUILDING_PREFIX, _STALE_PREFIX):
        for path in cache_root.glob(f"{prefix}{key}-*"):
            log.info("engine cache: removing %s, left by an interrupted build", path)
            shutil.rmtree(path, ignore_errors=True)


@contextmanager
def _lock(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --- The GPU, from the CUDA driver ----------------------------------------------------------------

_CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT = 16
_CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75
_CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76


def query_gpu(ordinal: int = 0) -> GpuFacts:
    """Name and compute capability of CUDA device ``ordinal`` (after ``CUDA_VISIBLE_DEVICES``).

    Uses the CUDA driver API (``cuInit``, ``cuDeviceGet``, ``cuDeviceGetName``,
    ``cuDeviceGetAttribute``) from ``libcuda.so.1``, which the NVIDIA container runtime mounts.
    Device 0 is the one TensorRT builds on (its default device).

    Raises:
        GpuUnavailableError: no driver library, or the driver reports an error (no GPU visible).
    """
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError as error:
        raise GpuUnavailableError(
            f"the CUDA driver library libcuda.so.1 cannot be loaded ({error}): no NVIDIA GPU driver here "
            "(in a container: run it with --gpus / the NVIDIA container runtime)"
        ) from None

    def check(result: int, call: str) -> None:
        if result != 0:
            raise GpuUnavailableError(f"CUDA driver call {call} failed with CUresult {result} (is a GPU visible?)")

    check(cuda.cuInit(0), "cuInit")
    device = ctypes.c_int()
    check(cuda.cuDeviceGet(ctypes.byref(device), ctypes.c_int(ordinal)), f"cuDeviceGet({ordinal})")
    name = ctypes.create_string_buffer(256)
    check(cuda.cuDeviceGetName(name, ctypes.c_int(len(name)), device), "cuDeviceGetName")
    major, minor = ctypes.c_int(), ctypes.c_int()
    check(cuda.cuDeviceGetAttribute(ctypes.byref(major), _CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, device),
          "cuDeviceGetAttribute(COMPUTE_CAPABILITY_MAJOR)")  # fmt: skip
    check(cuda.cuDeviceGetAttribute(ctypes.byref(minor), _CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, device),
          "cuDeviceGetAttribute(COMPUTE_CAPABILITY_MINOR)")  # fmt: skip
    multiprocessors, memory = ctypes.c_int(), ctypes.c_size_t()
    check(cuda.cuDeviceGetAttribute(ctypes.byref(multiprocessors), _CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, device),
          "cuDeviceGetAttribute(MULTIPROCESSOR_COUNT)")  # fmt: skip
    check(cuda.cuDeviceTotalMem_v2(ctypes.byref(memory), device), "cuDeviceTotalMem_v2")
    return GpuFacts(name.value.decode(errors="replace"), (major.value, minor.value), multiprocessors.value, memory.value)

