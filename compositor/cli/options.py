"""Command-line options shared by several subcommands (weights and network resolution)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from compositor.spec import DEFAULT_RESOLUTION, format_resolution, parse_resolution

if TYPE_CHECKING:
    from compositor.networks.factory import Networks


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def resolution_argument(text: str) -> tuple[int, int]:
    try:
        return parse_resolution(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_resolution_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--resolution",
        type=resolution_argument,
        default=DEFAULT_RESOLUTION,
        metavar="N|HxW",
        help=f"network resolution, multiples of 32 (default {format_resolution(DEFAULT_RESOLUTION)})",
    )


def add_network_options(parser: argparse.ArgumentParser, resolution: bool = True) -> None:
    """``--modnet-checkpoint``, ``--blending-checkpoint``, ``--harmonization-checkpoint`` (+ ``--resolution``)."""
    group = parser.add_argument_group(
        "weights (default: the trained files in weights/; MODNet from $MODNET_CHECKPOINT; otherwise "
        "a seeded, untrained initialisation, with a warning)"
    )
    group.add_argument("--modnet-checkpoint", metavar="P",
                       help="the published modnet_photographic_portrait_matting.ckpt (or MODNET_CHECKPOINT=P)")
    group.add_argument("--blending-checkpoint", metavar="P", help="BlendingUNet .safetensors (default weights/blending.safetensors)")
    group.add_argument("--harmonization-checkpoint", metavar="P",
                       help="HarmonizationUNet .safetensors (default weights/harmonization.safetensors)")
    group.add_argument("--untrained", action="store_true",
                       help="ignore weights/ and MODNET_CHECKPOINT: seeded initialisation where no checkpoint is given")
    if resolution:
        add_resolution_option(parser)


def networks_from_args(args: argparse.Namespace) -> Networks:
    # Imported here: PyTorch takes seconds to import, and commands that only parse need none of it.
    from compositor.networks.factory import load_networks

    return load_networks(
        args.modnet_checkpoint,
        args.blending_checkpoint,
        args.harmonization_checkpoint,
        trained_defaults=not getattr(args, "untrained", False),
    )
