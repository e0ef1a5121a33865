"""Build the TensorRT engines for this machine's GPU from an export folder, or reuse cached ones.

Engines are specific to the GPU model and the TensorRT version, so they are built where they
run: from the FP16 ONNX files of a 'compositor export' folder (--onnx), with the same strongly
typed recipe and profiles as 'compositor export --engines', into a folder of the cache (--cache)
named after the GPU, its compute capability, its multiprocessors and memory (which tell a MIG
slice from the whole GPU), the version of the libnvinfer loaded (not the Python bindings'), and a
hash of the build recipe (builder settings, profiles, package version), e.g.
<cache>/NVIDIA-H100-80GB-HBM3_sm90_132SM-80GB_trt10.5.0_r1a2b3c4d/. A complete folder built from the same ONNX files
is reused at once; otherwise the engines are built into a temporary folder that is renamed into
place when complete (engines.json, the manifest, is written last), so a killed build never leaves
a half cache. The folder gets a copy of export_report.json and is an export folder for the
tensorrt flavour. The folder's path is the last line printed (and written to --path-file).

What the GPU image runs when it starts (deploy/docker/); it needs TensorRT >= 10 and a GPU.

Each new engine is run on the export's stored check case (<name>.check.npz: photo inputs and the
FP32 ONNX outputs on them) and held to the FP16 tolerances before the folder is published.

Exit status: 0 engines ready (built or reused); 2 bad input (not an export folder, missing FP16
ONNX or check case) or a failed build or check (nothing is left in the cache); 3 TensorRT or a GPU is missing here
(nothing built; the reason is printed).

Example:
  compositor engines --onnx exported --cache /var/cache/compositor/engines
  compositor engines --onnx exported --cache engines --path-file engines.path 2>&1 | tee build.log
  compositor repository --onnx "$(cat engines.path)" --flavor tensorrt --out trt_repo
"""

from __future__ import annotations

import sys
from pathlib import Path

from compositor.cli import CommandError, subcommand_parser

CANNOT_BUILD_HERE = 3
"""Exit status without TensorRT or without a GPU (as 'compositor export --engines' without TensorRT)."""


def register(subparsers) -> None:
    parser = subcommand_parser(subparsers, __name__, __doc__)
    parser.add_argument("--onnx", required=True, type=Path, metavar="DIR",
                        help="export folder with <name>.fp16.onnx and export_report.json")
    parser.add_argument("--cache", type=Path, metavar="DIR",
                        help="engine cache root (default $COMPOSITOR_ENGINE_CACHE, else /var/cache/compositor/engines)")
    parser.add_argument("--path-file", type=Path, metavar="FILE",
                        help="also write the engines' folder to FILE (atomically, only on success), so a script "
                             "can keep the build's whole output on its terminal or log")
    parser.set_defaults(handler=run)


def run(args) -> int:
    # Light imports only (json, ctypes): the GPU image runs this without torch.
    from compositor.export import engine_cache
    from compositor.export.engine_check import EngineCheckError
    from compositor.export.layout import ExportReportError
    from compositor.export.tensorrt import EngineBuildError, TensorRTUnavailableError, import_tensorrt, loaded_library_version

    cache_root = args.cache or engine_cache.default_cache_root()
    try:
        # The export folder first: a wrong path is the user's to fix on any machine.
        fingerprint = engine_cache.source_fingerprint(args.onnx)
    except (ExportReportError, engine_cache.EngineCacheError) as error:
        raise CommandError(str(error)) from error
    try:
        trt = import_tensorrt()
        gpu = engine_cache.query_gpu()
    except (TensorRTUnavailableError, engine_cache.GpuUnavailableError) as error:
        print(f"no TensorRT engine was built: {error}", file=sys.stderr)
        return CANNOT_BUILD_HERE
    try:
        version = loaded_library_version(trt)
        result = engine_cache.ensure_engines(args.onnx, cache_root, gpu, version, fingerprint=fingerprint)
    except (engine_cache.EngineCacheError, EngineBuildError, EngineCheckError) as error:
        raise CommandError(f"engine build failed: {error}") from error
    verb = "reused" if result.reused else "built"
    print(f"engines {verb} for {gpu.name} (sm {gpu.compute_capability[0]}.{gpu.compute_capability[1]}, "
          f"{gpu.slice_label() or 'size unknown'}), TensorRT {version}:")
    print(result.folder)
    if args.path_file is not None:
        from compositor.atomic_files import write_text

        write_text(args.path_file, f"{result.folder}\n")
    return 0
