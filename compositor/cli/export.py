"""Export the networks to ONNX (FP32 and FP16) and, with --engines, TensorRT plans, each checked.

Writes to --out: matting.onnx, blending.onnx, harmonization.onnx (FP32, opset 17, dynamic batch,
height and width: one graph for every aspect bucket of --resolution), their FP16 mixed-precision
variants <name>.fp16.onnx (FP16 compute, FP32 I/O, normalisation statistics in FP32), <name>.check.npz
(photo inputs and the FP32 outputs on them: 'compositor engines' checks each engine on them), with
--engines <name>.plan (strongly typed TensorRT engines, batch 1..--max-batch, every bucket) and
timing.cache, and export_report.json (the buckets, parity errors against eager PyTorch at the
square and the widest bucket, FP16 errors and PSNR, TensorRT readiness, trtexec/polygraphy
commands, and where each network's weights came from: trained file and SHA-256, published MODNet
checkpoint, or untrained).
--resolution N: aspect buckets with short side N (each frame runs at the one nearest its
proportions); --resolution HxW: one fixed size every frame is resized to.
Without checkpoint options the local pipeline's default weights are exported (weights/*.safetensors,
MODNet from $MODNET_CHECKPOINT, the seeded initialisation for what is missing, or for everything
with --untrained), so exported models and `compositor composite --local` agree. A network that misses the
FP16 tolerances with only its statistics in FP32 keeps more in FP32 along a fixed ladder (MODNet:
its MobileNetV2 encoder, which the untrained weights need); the report records every attempt.

Without TensorRT, --engines still writes the ONNX files and the report, then says that no engine
was built and prints the trtexec command lines that build the same engines in NVIDIA's TensorRT or
Triton container, and exits with status 3.

Exit status: 0 exported (and, with --engines, every engine built and checked); 2 bad options or a
failed check (nothing unchecked is left in --out); 3 --engines without TensorRT (ONNX files and
report written, no engine built).

Example:
  compositor export --out exported
  compositor export --out exported --resolution 256x384 --modnet-checkpoint modnet_photographic_portrait_matting.ckpt
  compositor export --out exported --max-batch 16 --engines     # on an NVIDIA GPU machine with TensorRT
"""

from __future__ import annotations

import sys
from pathlib import Path

from compositor.cli import CommandError, subcommand_parser
from compositor.cli.options import add_network_options, networks_from_args, positive_int
from compositor.contract import provenance as weights_provenance
from compositor.contract.spec import DEFAULT_MAX_BATCH


def register(subparsers) -> None:
    parser = subcommand_parser(subparsers, __name__, __doc__)
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="export directory (created)")
    add_network_options(parser)
    parser.add_argument(
        "--max-batch",
        type=positive_int,
        default=DEFAULT_MAX_BATCH,
        metavar="N",
        help=f"largest batch: TensorRT profile max and Triton max_batch_size (default {DEFAULT_MAX_BATCH})",
    )
    parser.add_argument("--engines", action="store_true", help="also build TensorRT engines (needs TensorRT >= 10)")
    parser.set_defaults(handler=run)


ENGINES_NOT_BUILT = 3
"""Exit status of ``--engines`` without TensorRT: the ONNX export succeeded, no engine was built."""


def run(args) -> int:
    # The export chain pulls in ONNX tooling; imported here so 'compositor --help' stays quick.
    from compositor.export.fp16 import PrecisionError
    from compositor.export.layout import read_report
    from compositor.export.onnx_export import ExportError
    from compositor.export.parity import ParityError
    from compositor.export.exporter import export_all
    from compositor.export.readiness import ReadinessError
    from compositor.export.tensorrt import EngineBuildError, TensorRTUnavailableError

    networks = networks_from_args(args)
    weights = {
        "modnet_checkpoint": args.modnet_checkpoint,
        "blending_checkpoint": args.blending_checkpoint,
        "harmonization_checkpoint": args.harmonization_checkpoint,
    }
    try:
        result = export_all(args.out, networks, args.resolution, args.max_batch, args.engines, weights=weights)
    except TensorRTUnavailableError as error:
        # Raised after the ONNX files and the report were written: show both, then why no engine.
        print(summary(read_report(args.out), args.out))
        print(str(error), file=sys.stderr)
        return ENGINES_NOT_BUILT
    except (ExportError, ParityError, PrecisionError, ReadinessError, EngineBuildError) as error:
        raise CommandError(f"export failed: {error}") from error
    print(summary(result.report, args.out))
    return 0


def summary(report: dict, out: Path) -> str:
    """A few lines for the terminal; the details are in the report."""
    from compositor.export.layout import REPORT_FILE

    lines = [f"exported to {out} ({report['seconds']['total']:.0f} s); details in {out / REPORT_FILE}"]
    for name, entry in report["networks"].items():
        fp32 = max(
            o["max_abs_error"] for case in entry["fp32_parity"]["cases"].values() for o in case.values()
        )
        photos = entry["fp16"]["parity"]["cases"]["photos"]
        fp16 = ", ".join(
            f"{output} max abs {o['max_abs_error']:.2g}, PSNR "
            + (f"{o['psnr_db']:.1f} dB" if o["psnr_db"] is not None else "inf")
            for output, o in photos.items()
        )
        lines.append(f"  {name:<14} FP32 max abs error {fp32:.2g}; FP16 ({entry['fp16']['policy']}) {fp16}")
        if entry["tensorrt"]["engine"]:
            lines.append(f"  {'':<14} TensorRT {entry['files']['plan']}: parity against ONNX Runtime FP32 passed")
    provenance = report.get("weights", {}).get("provenance", {})
    if provenance:
        lines.append(f"  weights: {weights_provenance.summary(provenance)} (recorded in the report; "
                     "'compositor repository --onnx' copies it into the configs)")
    return "\n".join(lines)
