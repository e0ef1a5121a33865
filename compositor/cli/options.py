"""Command-line options shared by several subcommands (weights, network resolution, outputs)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from compositor.contract.spec import DEFAULT_RESOLUTION, Resolution, format_resolution, parse_resolution

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


def positive_float(text: str) -> float:
    """argparse type: a number > 0."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def unit_fraction(text: str) -> float:
    """argparse type: a number from 0 to 1."""
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be from 0 to 1 (a fraction of full scale), got {text}")
    return value


def resolution_argument(text: str) -> Resolution:
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
        help=f"network resolution, multiples of 32: N = aspect buckets with short side N (each frame runs at "
        "the one nearest its proportions), HxW = one fixed size every frame is resized to "
        f"(default {format_resolution(DEFAULT_RESOLUTION)})",
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


# --- Outputs, checked before any work ------------------------------------------------------------


def check_output_dir(path: Path, option: str) -> None:
    """Raise ``CommandError`` unless ``path`` is a folder that exists or can be created, writable.

    Nothing is created here: a command checks its outputs first, then does its work, then writes.
    """
    from compositor.cli import CommandError

    if path.exists() and not path.is_dir():
        raise CommandError(f"{option} {path}: exists and is not a folder; give a folder name (it is created if missing)")
    _check_creatable(path, option)


def check_output_file(path: Path, option: str) -> None:
    """Raise ``CommandError`` unless ``path`` can be written as a file (its folder exists or can be created)."""
    from compositor.cli import CommandError

    if path.is_dir():
        raise CommandError(f"{option} {path}: is a folder; give a file name")
    _check_creatable(path.parent, option, file=path)


def _check_creatable(folder: Path, option: str, file: Path | None = None) -> None:
    from compositor.cli import CommandError

    shown = file if file is not None else folder
    existing = folder.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise CommandError(f"{option} {shown}: {existing} is a file, so no folder can be made under it")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise CommandError(f"{option} {shown}: {existing} is not writable")


def positive_int_list(text: str) -> tuple[int, ...]:
    """argparse type: comma-separated integers >= 1, e.g. ``1,8``."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected positive integers separated by commas, e.g. 1,8")
    return values


def comma_choices(allowed: tuple[str, ...], what: str = "mode") -> Callable[[str], tuple[str, ...]]:
    """argparse type factory: a non-empty comma-separated subset of ``allowed`` (``what`` names them in errors)."""

    def parse(text: str) -> tuple[str, ...]:
        values = tuple(v.strip() for v in text.split(",") if v.strip())
        unknown = [v for v in values if v not in allowed]
        if not values or unknown:
            raise argparse.ArgumentTypeError(
                f"unknown {what}(s) {', '.join(unknown) or '(none given)'}; choose from {','.join(allowed)}"
            )
        return values

    return parse
