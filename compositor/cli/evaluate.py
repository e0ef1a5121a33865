"""Evaluate the trained networks on held-out data, the paper's way (its Tables 1 and 2), plus flicker.

Table 1: boundary-band PSNR/SSIM of learned vs linear blending (same imperfect matte). Table 2:
PSNR/SSIM of the harmonizer vs copy-paste, vs classical colour transfer (Reinhard, toward the
complete background's Lab statistics), vs the partial-cue ablation and the paper's exact net.
Video: flicker on synthetic moving-foreground clips, complete vs partial cue.

--synthetic evaluates on the validation split of the package-shipped photos (never trained on);
--data DIR on every photo of DIR (a folder of photos or a matting set, kept out of training).
Weights default to the ones in weights/.

Examples:
  compositor evaluate --synthetic --json artifacts/evaluation.json --figure artifacts/evaluation.png
  compositor evaluate --data held_out_photos/ --size 512 --samples 100
"""

from __future__ import annotations

import json
from pathlib import Path

from compositor.cli import CommandError, subcommand_parser
from compositor.cli.options import check_output_file, positive_int


def register(subparsers) -> None:
    from compositor.networks.defaults import default_weights

    parser = subcommand_parser(subparsers, __name__, __doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--synthetic", action="store_true", help="held-out split of the package-shipped photos")
    source.add_argument("--data", type=Path, metavar="DIR", help="held-out photos or a matting set")
    parser.add_argument("--size", type=positive_int, default=256, help="evaluation side in pixels, a multiple of 32 (default 256)")
    parser.add_argument("--samples", type=positive_int, default=200, help="held-out samples (default 200)")
    parser.add_argument("--clips", type=positive_int, default=8, help="moving-foreground clips for flicker (default 8)")
    parser.add_argument("--json", type=Path, metavar="OUT", help="write every metric to OUT (JSON)")
    parser.add_argument("--figure", type=Path, metavar="PNG", help="write held-out examples side by side")
    weights = parser.add_argument_group("weights (defaults: weights/)")
    weights.add_argument("--blending-checkpoint", type=Path, default=default_weights("blending"), metavar="P")
    weights.add_argument("--harmonization-checkpoint", type=Path, default=default_weights("harmonization"), metavar="P")
    weights.add_argument("--partial-checkpoint", type=Path, default=default_weights("harmonization_partial"), metavar="P",
                         help="the partial-cue ablation")
    weights.add_argument("--paper-checkpoint", type=Path, default=default_weights("harmonization_paper"), metavar="P",
                         help="the paper's exact net (optional: skipped if the file is absent)")
    parser.set_defaults(handler=run)


def format_tables(results: dict) -> str:
    """The three tables as Markdown."""
    b, h, v = results["blending"], results["harmonization"], results["video"]
    lines = [
        "Table 1: blending, boundary band (and outside it, where linear blending is already right)",
        "",
        "| method | PSNR (dB) | SSIM | PSNR outside the band (dB) |",
        "|---|---|---|---|",
        f"| linear blending | {b['linear_boundary_psnr']:.2f} | {b['linear_boundary_ssim']:.4f} | {b['linear_outside_psnr']:.2f} |",
        f"| learned blending | {b['boundary_psnr']:.2f} | {b['boundary_ssim']:.4f} | {b['outside_psnr']:.2f} |",
        "",
        "Table 2: harmonization, whole image (foreground-only PSNR in the last column)",
        "",
        "| method | PSNR (dB) | SSIM | foreground PSNR (dB) |",
        "|---|---|---|---|",
    ]
    rows = [("copy-paste", "copy_paste_"), ("colour transfer (Reinhard, Lab)", "colour_transfer_"),
            ("paper's net, complete cue", "paper_net_"), ("ours, partial cue (ablation)", "partial_cue_"),
            ("ours, complete cue", "")]
    for label, prefix in rows:
        if f"{prefix}psnr" in h:
            lines.append(f"| {label} | {h[prefix + 'psnr']:.2f} | {h[prefix + 'ssim']:.4f} | {h[prefix + 'foreground_psnr']:.2f} |")
    lines += ["", f"Video: flicker, mean absolute change in 8-bit levels where the input did not change "
              f"({v['clips']} clips x {v['frames_per_clip']} frames)", "", "| method | flicker |", "|---|---|",
              f"| colour transfer, complete background | {v['colour_transfer_flicker']:.3f} |"]
    if "partial_cue_flicker" in v:
        lines.append(f"| ours, partial cue | {v['partial_cue_flicker']:.3f} |")
    lines.append(f"| ours, complete cue | {v['flicker']:.3f} |")
    return "\n".join(lines)


def run(args) -> int:
    if args.size % 32:
        raise CommandError(f"--size must be a multiple of 32, got {args.size}")
    if args.data is not None and not args.data.is_dir():
        raise CommandError(f"--data {args.data}: not a folder")
    for name in ("blending_checkpoint", "harmonization_checkpoint", "partial_checkpoint"):
        if not getattr(args, name).is_file():
            raise CommandError(f"--{name.replace('_', '-')} {getattr(args, name)}: no such file (train it with 'compositor train')")
    for option in ("json", "figure"):
        if getattr(args, option) is not None:
            check_output_file(getattr(args, option), f"--{option}")

    # Imported here: PyTorch takes seconds to import, and --help needs none of it.
    import torch

    from compositor.files import atomic_path
    from compositor.imaging import write_image
    from compositor.networks.blending import BlendingUNet
    from compositor.networks.harmonization import HarmonizationUNet
    from compositor.networks.weights import load_network
    from compositor.training import evaluation
    from compositor.training.synthesis import fixed_batches

    harmonizers = evaluation.Harmonizers(
        complete=load_network(args.harmonization_checkpoint, expected=HarmonizationUNet),
        partial=load_network(args.partial_checkpoint, expected=HarmonizationUNet),
        paper=load_network(args.paper_checkpoint, expected=HarmonizationUNet) if args.paper_checkpoint.is_file() else None,
    )
    blending = load_network(args.blending_checkpoint, expected=BlendingUNet)
    synthesizer, description = evaluation.held_out_synthesizer(args.synthetic, args.data, args.size)
    batches = fixed_batches(synthesizer, args.samples, batch_size=8)
    torch.set_grad_enabled(False)
    results = evaluation.evaluate(blending, harmonizers, batches, args.clips)
    results["setup"] = {
        **description, "size": args.size, "samples": args.samples, "seed": evaluation.EVALUATION_SEED,
        "weights": {name: str(getattr(args, f"{name}_checkpoint")) for name in ("blending", "harmonization", "partial", "paper")},
    }
    print(format_tables(results))
    if args.json:
        with atomic_path(args.json) as temporary:
            temporary.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json}")
    if args.figure:
        write_image(args.figure, evaluation.example_figure(blending, harmonizers, batches[0]))
        print(f"wrote {args.figure}")
    return 0
