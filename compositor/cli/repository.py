"""Generate the Triton model repository (configs, Python models, network files) from the tensor spec.

Writes preprocess, matting, blending, harmonization, postprocess and the ensembles composite and
composite_with_alpha into --out. Every config.pbtxt is built as data and validated through
Triton's model_config_pb2 schema before it is written. Flavours: python (ONNX Runtime inside
Python-backend models; what 'compositor serve' runs here), onnxruntime (onnxruntime_onnx, CPU, or
GPU with --trt-accelerator) and tensorrt (tensorrt_plan FP16 engines, GPU). The network files come
from the export directory (--onnx DIR: DIR/<name>.onnx, or DIR/<name>.plan for tensorrt), and so
do the network resolution and the max batch (DIR/export_report.json): --resolution, if given, must
be the export's; --max-batch may be lower than the export's (higher only for the ONNX flavours,
whose batch axis is dynamic). Without --onnx (--configs-only), --resolution and --max-batch apply.
Where each network's weights came from (the export report's record: trained file and SHA-256, the
published MODNet checkpoint, or untrained) goes into its config (parameter weights_provenance) and
into PROVENANCE.md at the repository root; without --onnx it is "unknown".

Example:
  compositor export --out artifacts/export
  compositor repository --onnx artifacts/export --out model_repository --flavor python
  compositor repository --onnx artifacts/export --out /tmp/trt_repo --flavor tensorrt --instances 2
  compositor repository --out model_repository --configs-only      # what is committed
"""

from __future__ import annotations

import logging
from pathlib import Path

from compositor.cli import subcommand_parser
from compositor.cli.options import non_negative_int, positive_int, resolution_argument
from compositor.contract import provenance as weights_provenance
from compositor.contract.parameters import DEFAULT_INTRA_OP_THREADS, DEFAULT_MAX_QUEUE_DELAY_US, DEFAULT_TRT_ACCELERATOR_CACHE, FLAVORS
from compositor.contract.spec import DEFAULT_MAX_BATCH, DEFAULT_RESOLUTION, format_resolution

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    parser = subcommand_parser(subparsers, __name__, __doc__)
    parser.add_argument("--onnx", type=Path, metavar="DIR",
                        help="export directory with <name>.onnx / <name>.plan and export_report.json")
    parser.add_argument("--out", type=Path, default=Path("model_repository"), help="repository directory (default model_repository)")
    parser.add_argument("--flavor", choices=FLAVORS, default="python", help="how the networks run (default python)")
    parser.add_argument("--instances", type=positive_int, default=1, metavar="N", help="instances per network model (default 1)")
    parser.add_argument("--stage-instances", type=positive_int, metavar="N",
                        help="instances of preprocess and postprocess, which run on the CPU (default: --instances on "
                             "CPU flavours; half this machine's cores for the GPU ones, so the CPU stages keep the GPU busy)")
    parser.add_argument("--resolution", type=resolution_argument, metavar="N|HxW",
                        help="network resolution, multiples of 32 (default: the export's with --onnx, else "
                             f"{format_resolution(DEFAULT_RESOLUTION)})")
    parser.add_argument("--max-batch", type=positive_int, metavar="B",
                        help=f"max_batch_size of every model (default: the export's with --onnx, else {DEFAULT_MAX_BATCH})")
    parser.add_argument("--max-queue-delay-us", type=non_negative_int, default=DEFAULT_MAX_QUEUE_DELAY_US, metavar="U",
                        help=f"dynamic-batcher queue delay of the networks (default {DEFAULT_MAX_QUEUE_DELAY_US})")
    parser.add_argument("--intra-op-threads", type=non_negative_int, default=DEFAULT_INTRA_OP_THREADS, metavar="T",
                        help=f"ONNX Runtime intra-op threads per network instance on CPU, 0 = all cores (default {DEFAULT_INTRA_OP_THREADS})")
    parser.add_argument("--trt-accelerator", action="store_true",
                        help="onnxruntime flavour: run on GPU with the TensorRT execution accelerator (FP32, the "
                             "export's profile, engines cached in --trt-cache)")
    parser.add_argument("--trt-cache", default=DEFAULT_TRT_ACCELERATOR_CACHE, metavar="DIR",
                        help=f"with --trt-accelerator: where the server keeps its engines, one folder per network "
                             f"(default {DEFAULT_TRT_ACCELERATOR_CACHE}, on the GPU image's cache volume)")
    parser.add_argument("--configs-only", action="store_true",
                        help="write configs and Python models even when network files are missing")
    parser.set_defaults(handler=run)


def run(args) -> int:
    # Imported here: the config generator loads tritonclient and protobuf, which --help never needs.
    from compositor.serving.configs import RepositoryOptions
    from compositor.serving.repository import PROVENANCE_FILE, export_settings, generate_repository

    resolution = args.resolution or DEFAULT_RESOLUTION
    max_batch = args.max_batch or DEFAULT_MAX_BATCH
    source = ""
    if args.onnx is not None:
        exported = export_settings(args.onnx, args.flavor, args.resolution, args.max_batch)
        resolution, max_batch = exported.resolution, exported.max_batch
        source = f"; export {args.onnx}"
    options = RepositoryOptions(
        flavor=args.flavor,
        resolution=resolution,
        max_batch=max_batch,
        instances=args.instances,
        stage_instances=args.stage_instances or _default_stage_instances(args),
        max_queue_delay_us=args.max_queue_delay_us,
        intra_op_threads=args.intra_op_threads,
        trt_accelerator=args.trt_accelerator,
        trt_cache_dir=args.trt_cache,
    )
    result = generate_repository(args.out, options, export_dir=args.onnx, configs_only=args.configs_only)
    print(f"{result.root}: {', '.join(result.models)} ({options.flavor} flavour, "
          f"network resolution {options.resolution.describe()}, max batch {options.max_batch}{source})")
    print(f"weights: {weights_provenance.summary(result.provenance)} (recorded in the configs and {result.root / PROVENANCE_FILE})")
    untrained = weights_provenance.untrained_networks(result.provenance)
    if untrained:
        log.warning("UNTRAINED weights in this repository for: %s (clients will warn about it)", ", ".join(untrained))
    if result.model_files_missing:
        print("model files still missing (the server cannot load these models until they exist):")
        for path in result.model_files_missing:
            print(f"  {path}")
    return 0


def _default_stage_instances(args) -> int:
    """``--instances`` on CPU flavours; half the cores this process may use for the GPU ones."""
    if args.flavor != "tensorrt" and not args.trt_accelerator:
        return args.instances
    import os

    return max(1, len(os.sched_getaffinity(0)) // 2)
