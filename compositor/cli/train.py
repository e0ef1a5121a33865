"""Train the blending or harmonization network (the paper's recipes) and write its weights file.

Data: --synthetic uses only photos shipped with installed packages (scikit-image's, matplotlib's and
scikit-learn's samples and Debian's plasma-workspace-wallpapers, ukui-wallpapers, lomiri-wallpapers,
gnome-backgrounds and sway-backgrounds, which scripts/setup-training.sh installs), split by photo
into train, validation (checkpoint selection) and test (never loaded by training); --data DIR takes a folder of photos (PPR10K-style groups: one subfolder
per group), a matting set (image/ + alpha/) or iHarmony4 (harmonization only).

The weights file (--out) holds the best validation weights with their provenance. The run folder
(default: OUT with the suffix .run) keeps log.csv, checkpoint.safetensors and best.safetensors;
--resume continues from its checkpoint. --minutes bounds the wall time (useful on a CPU).

Examples:
  scripts/setup-training.sh
  compositor train blending --synthetic --size 256 --batch-size 8 --minutes 45 --out weights/blending.safetensors
  compositor train harmonization --synthetic --size 256 --minutes 45 --out weights/harmonization.safetensors
  compositor train harmonization --synthetic --background-cue partial --size 256 --out weights/harmonization_partial.safetensors
  compositor train harmonization --data iHarmony4/ --device cuda --adversarial-weight 0.01 --out h.safetensors
  compositor train blending --synthetic --size 256 --minutes 45 --out weights/blending.safetensors --resume
"""

from __future__ import annotations

import json
from pathlib import Path

from compositor.cli import CommandError, subcommand_parser
from compositor.cli.options import check_output_dir, check_output_file, non_negative_int, positive_int


def register(subparsers) -> None:
    parser = subcommand_parser(subparsers, __name__, __doc__)
    parser.add_argument("task", choices=("blending", "harmonization"), help="which network to train")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--synthetic", action="store_true", help="train on the package-shipped photos")
    source.add_argument("--data", type=Path, metavar="DIR", help="photos (PPR10K-style groups), a matting set or iHarmony4")
    parser.add_argument("--out", type=Path, required=True, metavar="WEIGHTS.safetensors", help="weights file to write")
    parser.add_argument("--size", type=positive_int, default=512, help="training side in pixels, a multiple of 32 (default 512; 256 on a CPU)")
    parser.add_argument("--crop", type=positive_int, metavar="N",
                        help="train on N x N windows around the matte's edge of each synthesised image (blending; default: whole images)")
    parser.add_argument("--batch-size", type=positive_int, default=4, help="images per step (default 4)")
    parser.add_argument("--steps", type=positive_int, default=20000, help="training steps (default 20000)")
    parser.add_argument("--minutes", type=float, metavar="M", help="stop after M minutes of training (resumed runs count earlier time)")
    parser.add_argument("--learning-rate", type=float, metavar="LR", help="Adam learning rate (default: the paper's, 1e-4 blending, 2e-4 harmonization)")
    parser.add_argument("--adversarial-weight", type=float, default=0.0, metavar="LAMBDA",
                        help="harmonization: weight of the DoveNet-style adversarial loss (default 0: L1 only)")
    parser.add_argument("--background-cue", choices=("complete", "partial"), default="complete",
                        help="harmonization: the complete background (the paper) or only what lies outside the mask (the ablation)")
    parser.add_argument("--no-tone-transform", dest="tone_transform", action="store_false",
                        help="harmonization: the paper's exact net, without the gated tone transform in front")
    parser.add_argument("--tone-steps", type=non_negative_int, default=0, metavar="N",
                        help="harmonization: train the tone transform alone for the first N steps (cheap: no U-Net), then the whole net")
    parser.add_argument("--harmonious-weight", type=float, default=3.0, metavar="W",
                        help="harmonization: weight of the loss on already harmonious inputs (default 3: do no harm first)")
    parser.add_argument("--no-refine-alpha", dest="refine_alpha", action="store_false",
                        help="blending: the paper's exact net, a colour residual only, without the matte-correction head")
    parser.add_argument("--transfer-lr-multiplier", type=float, default=10.0, metavar="K",
                        help="harmonization: the tone transform learns at K times the learning rate (default 10)")
    parser.add_argument("--base-channels", type=positive_int, default=16, help="U-Net width at full resolution (default 16)")
    parser.add_argument("--validate-every", type=positive_int, default=250, metavar="N", help="validation every N steps (default 250)")
    parser.add_argument("--validation-samples", type=positive_int, default=64, metavar="N", help="held-out samples per validation (default 64)")
    parser.add_argument("--checkpoint-every", type=positive_int, default=50, metavar="N", help="checkpoint every N steps (default 50)")
    parser.add_argument("--run-dir", type=Path, metavar="DIR", help="log, checkpoint and best weights (default OUT with suffix .run)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    parser.add_argument("--threads", type=non_negative_int, default=0, help="PyTorch CPU threads (default 0: PyTorch's choice)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initialisation and the data (default 0)")
    parser.add_argument("--resume", action="store_true", help="continue from the run folder's checkpoint")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs still go to stderr)")
    parser.set_defaults(handler=run)


def run(args) -> int:
    if args.task == "blending" and (args.background_cue != "complete" or not args.tone_transform or args.adversarial_weight):
        raise CommandError("--background-cue, --no-tone-transform and --adversarial-weight apply to harmonization only")
    if args.task == "harmonization" and not args.refine_alpha:
        raise CommandError("--no-refine-alpha applies to blending only")
    if args.size % 32:
        raise CommandError(f"--size must be a multiple of 32, got {args.size}")
    if args.data is not None and not args.data.is_dir():
        raise CommandError(f"--data {args.data}: not a folder")
    check_output_file(args.out, "--out")
    if args.run_dir is not None:
        check_output_dir(args.run_dir, "--run-dir")

    # Imported here: PyTorch takes seconds to import, and --help needs none of it.
    import torch

    from compositor.training.trainer import TrainConfig, Trainer

    if args.threads:
        torch.set_num_threads(args.threads)
    config = TrainConfig(
        task=args.task, out=args.out, synthetic=args.synthetic, data=args.data, size=args.size, crop=args.crop,
        batch_size=args.batch_size, steps=args.steps, minutes=args.minutes, learning_rate=args.learning_rate,
        adversarial_weight=args.adversarial_weight, background_cue=args.background_cue,
        tone_transform=args.tone_transform, harmonious_weight=args.harmonious_weight, tone_steps=args.tone_steps, refine_alpha=args.refine_alpha, transfer_learning_rate_multiplier=args.transfer_lr_multiplier,
        base_channels=args.base_channels, validate_every=args.validate_every,
        validation_samples=args.validation_samples, checkpoint_every=args.checkpoint_every, run_dir=args.run_dir,
        device=args.device, seed=args.seed, resume=args.resume,
    )
    summary = Trainer(config).run(progress=not args.no_progress)
    print(f"{args.out}: best step {summary['best_step']} of {summary['steps_trained']}, "
          f"{summary['training_time_s'] / 60:.1f} min, validation {json.dumps(summary['validation'])}")
    return 0
