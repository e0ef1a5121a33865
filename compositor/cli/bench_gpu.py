"""GPU benchmark: eager FP32 vs eager FP16 (autocast) vs torch.compile vs TensorRT, on each network and the chain.

Workloads are each network alone and the network chain (matting -> blending -> harmonization on
device tensors at the network resolution: what the GPU does per request; the CPU pre/post-processing
is not part of it). Tensors between networks are FP32, as in the Triton ensemble and the TensorRT
engines' I/O. Modes:

  eager_fp32    PyTorch eager, true FP32 (TF32 disabled: FP32 is the accuracy reference);
  eager_fp16    PyTorch eager under torch.autocast(float16);
  compile_fp16  torch.compile of each network (the chain reuses them), under the same autocast;
                compilation is timed separately (first_call_s / compile_s);
  tensorrt      strongly typed engines built by the export's own per-network chain (FP32 and FP16
                parity, readiness, engine parity against ONNX Runtime), when TensorRT is installed
                (otherwise recorded in "skipped" with the reason; never faked).

Every row has perf_analyzer field names: perf_throughput (images/s), perf_latency_avg and
perf_latency_p50/p90/p95/p99 (ms, one synchronised iteration each), plus achieved TFLOP/s, peak
memory and, for every mode but eager_fp32, the output difference against eager FP32 on the same
inputs (max abs error, PSNR): no speed without its accuracy. Each mode starts with a first call
(compilation, cuDNN autotuning), then --warmup untimed and --iterations timed iterations. Work that
would start after --budget-s is recorded as skipped, so the default run fits in 8 minutes on an H100.
The JSON is rewritten (atomically) after every mode, so an interrupted run keeps what it measured.
With TensorRT installed, its export checks and engine builds take minutes: give the tensorrt mode a
run of its own (--modes tensorrt) or a larger --budget-s.

Needs PyTorch (a CUDA build), numpy and safetensors (the trained weights in weights/); the tensorrt
mode also TensorRT >= 10, polygraphy, onnx, onnxruntime, onnxscript, scikit-image and pillow.

With --device cpu (a dry run of the plumbing) eager_fp16 still uses float16 autocast, which PyTorch
supports on the CPU (slowly: the timings mean nothing there, the accuracy columns still do);
compile_fp16 needs --compile-backend eager there (dynamo only), and tensorrt is skipped.

Exit status: 0; 1 if a measurement failed (recorded under "errors"); 2 on bad options or no CUDA.

Example (GPU machine, repository root; benchmarks/gpu.sh wraps this):
  compositor bench-gpu --out benchmarks/results/gpu.json
  compositor bench-gpu --out gpu.json --batches 1,4,8 --modes eager_fp16,compile_fp16
  PYTHONPATH="$PWD" python3 -m compositor bench-gpu --out gpu.json     # without installing the package

CPU dry run of the plumbing (seconds; what the tests run):
  compositor bench-gpu --device cpu --resolution 64 --batches 1 --iterations 2 --warmup 1 \\
      --modes eager_fp32,eager_fp16 --out /tmp/gpu-dry-run.json
"""

from __future__ import annotations

from pathlib import Path

# gpu_modes imports PyTorch only inside its functions: the names and defaults come at no cost.
from compositor.bench.gpu_modes import COMPILE_MODES, DEFAULT_BUDGET_S, MODES, WORKLOADS
from compositor.cli import CommandError, subcommand_parser
from compositor.cli.options import (
    add_network_options,
    comma_choices,
    non_negative_int,
    positive_float,
    positive_int,
    positive_int_list,
)


def register(subparsers) -> None:
    parser = subcommand_parser(subparsers, __name__, __doc__)
    parser.add_argument("--out", type=Path, required=True, help="results JSON (written atomically)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cuda (default), or cpu for a dry run")
    parser.add_argument("--batches", type=positive_int_list, default=(1, 8), help="batch sizes (default 1,8)")
    parser.add_argument("--iterations", type=positive_int, default=50, help="timed iterations per measurement (default 50)")
    parser.add_argument("--warmup", type=non_negative_int, default=10, help="untimed iterations after the first call (default 10)")
    parser.add_argument("--modes", type=comma_choices(MODES), default=MODES, help=f"subset of {','.join(MODES)} (default all)")
    parser.add_argument("--workloads", type=comma_choices(WORKLOADS, "workload"), default=WORKLOADS, help=f"subset of {','.join(WORKLOADS)} (default all)")
    parser.add_argument("--compile-mode", choices=COMPILE_MODES, default="default", help="torch.compile mode (default: default)")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend (default inductor; eager: dynamo only)")
    parser.add_argument("--budget-s", type=positive_float, default=DEFAULT_BUDGET_S,
                        help=f"start no measurement after this many seconds (default {DEFAULT_BUDGET_S:.0f})")  # fmt: skip
    add_network_options(parser)  # --resolution (spec.parse_resolution) and the checkpoints
    parser.set_defaults(handler=run)


def run(args) -> int:
    """Check CUDA, run, write the JSON, print the table; returns the exit status."""
    # PyTorch and the benchmark are imported here, so 'compositor bench-gpu --help' answers at once.
    from compositor.bench.gpu import GpuBenchSettings, run_gpu_benchmark
    from compositor.bench.machine import cuda_unavailable_reason
    from compositor.bench.report import gpu_table

    if args.device == "cuda" and (reason := cuda_unavailable_reason()):
        raise CommandError(f"--device cuda: {reason}")
    settings = GpuBenchSettings(
        device=args.device,
        resolution=args.resolution,
        batches=args.batches,
        iterations=args.iterations,
        warmup=args.warmup,
        modes=args.modes,
        workloads=args.workloads,
        compile_mode=args.compile_mode,
        compile_backend=args.compile_backend,
        budget_s=args.budget_s,
        checkpoints={
            "modnet_checkpoint": args.modnet_checkpoint,
            "blending_checkpoint": args.blending_checkpoint,
            "harmonization_checkpoint": args.harmonization_checkpoint,
        },
        trained_defaults=not args.untrained,
    )
    report = run_gpu_benchmark(settings, out=args.out)
    print(gpu_table(report))
    print(f"results: {args.out}")
    return 1 if report["errors"] else 0
