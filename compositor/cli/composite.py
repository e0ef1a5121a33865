"""Composite a portrait onto a new, complete background (in-process with --local, or via Triton).

Writes DIR/alpha.png, DIR/blended.png, DIR/harmonized.png at the source's size and
DIR/comparison.png (source | background | linear paste | blended | harmonized, and below them the
three composites enlarged where the matte's edge is softest).

Exactly one of --local (eager PyTorch in this process) or --url (a Triton server running the
compositor repository, e.g. started by 'compositor serve') says where the networks run.
--resolution and the weights options apply to --local only (a server runs what it was deployed
with); --protocol and --timeout-s to --url only.

Example:
  compositor composite --local --source portrait.jpg --background beach.jpg --out out/
  compositor composite --url localhost:8001 --source portrait.jpg --background beach.jpg --out out/
  compositor composite --url localhost:8000 --protocol http --source portrait.jpg --background beach.jpg \\
      --alpha matte.png --out out/
  compositor composite --local --source portrait.jpg --background beach.jpg --alpha matte.png \\
      --resolution 256x384 --modnet-checkpoint modnet_photographic_portrait_matting.ckpt --out out/
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from compositor import imaging
from compositor.cli import CommandError, subcommand_parser
from compositor.cli.options import add_network_options, check_output_dir, networks_from_args, positive_float
from compositor.client.remote import DEFAULT_TIMEOUT_S, PROTOCOLS
from compositor.figures import comparison_strip, edge_zoom_strip, linear_paste, stack_rows
from compositor.results import CompositeResult
from compositor.spec import DEFAULT_RESOLUTION

log = logging.getLogger(__name__)

# Options of one mode that the other cannot use: a user who gives them means something that would
# not happen, so they are refused rather than ignored.
LOCAL_ONLY = {"resolution": "--resolution", "modnet_checkpoint": "--modnet-checkpoint",
              "blending_checkpoint": "--blending-checkpoint", "harmonization_checkpoint": "--harmonization-checkpoint",
              "untrained": "--untrained"}
REMOTE_ONLY = {"protocol": "--protocol", "timeout_s": "--timeout-s"}


def register(subparsers) -> None:
    parser = subcommand_parser(subparsers, __name__, __doc__)
    parser.add_argument("--source", required=True, type=Path, help="portrait photo (RGB image file)")
    parser.add_argument("--background", required=True, type=Path, help="new complete background (RGB, any size)")
    parser.add_argument("--alpha", type=Path, help="optional grayscale matte at the source's size (skips MODNet)")
    parser.add_argument("--out", required=True, type=Path, help="output folder (created if missing)")
    # Exactly one of the two; checked in run() so that a missing choice is a CommandError (exit 2
    # with a hint) like every other usage error of this command.
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--local", action="store_true", help="run the eager PyTorch pipeline in-process")
    where.add_argument("--url", metavar="HOST:PORT",
                       help="Triton server: gRPC port (default 8001), or the HTTP port (default 8000) with --protocol http; "
                       "grpc:// or http:// in front is accepted when it matches --protocol")
    remote = parser.add_argument_group("server (with --url only)")
    remote.add_argument("--protocol", choices=PROTOCOLS, help="gRPC (default) or HTTP")
    remote.add_argument("--timeout-s", type=positive_float, metavar="S",
                        help=f"request timeout in seconds (default {DEFAULT_TIMEOUT_S:g})")
    add_network_options(parser)
    # None marks "not given", so that run() can refuse an option of the other mode; the help
    # still shows the real default.
    parser.set_defaults(handler=run, resolution=None)


def run(args) -> int:
    if not (args.local or args.url):
        raise CommandError("say where to run: --local runs the eager pipeline in-process, --url HOST:PORT calls a Triton server")
    _refuse_options_of_the_other_mode(args)
    # Read and validate every input, and check the output folder, before any work, so a mistake
    # costs nothing and writes nothing.
    source = imaging.read_image(args.source)
    background = imaging.read_image(args.background)
    alpha = imaging.read_image(args.alpha, mode="L") if args.alpha else None
    imaging.check_inputs(source[None], background[None], None if alpha is None else alpha[None])
    check_output_dir(args.out, "--out")

    result = run_remote(args, source, background, alpha) if args.url else run_local(args, source, background, alpha)
    for path in write_outputs(args.out, source, background, result):
        print(path)
    return 0


def _refuse_options_of_the_other_mode(args) -> None:
    mode, others = ("--url", LOCAL_ONLY) if args.url else ("--local", REMOTE_ONLY)
    given = [flag for name, flag in others.items() if getattr(args, name) not in (None, False)]
    if not given:
        return
    one = len(given) == 1
    if args.url:
        reason = ("a server runs the networks, weights and resolution it was exported and deployed with "
                  f"(set them with 'compositor export'); drop {'it' if one else 'them'}, or use --local")
    else:
        reason = f"{'it sets' if one else 'they set'} how to reach a Triton server with --url HOST:PORT; drop {'it' if one else 'them'}"
    raise CommandError(f"{', '.join(given)} {'does' if one else 'do'} not apply with {mode}: {reason}")


def _size(image) -> str:
    """An image's size as image tools print it: width x height."""
    return f"{image.shape[1]}x{image.shape[0]} (width x height)"


def run_local(args, source, background, alpha) -> CompositeResult:
    # Imported here: PyTorch takes seconds to import, and --url and --help need none of it.
    from compositor.pipeline import EagerPipeline

    pipeline = EagerPipeline(networks_from_args(args), args.resolution or DEFAULT_RESOLUTION)
    started = time.perf_counter()
    result = pipeline(source, background, alpha)
    log.info("eager pipeline: %.0f ms for a %s image", (time.perf_counter() - started) * 1e3, _size(source))
    return result


def run_remote(args, source, background, alpha) -> CompositeResult:
    from compositor.client.remote import CompositorClient

    protocol = args.protocol or "grpc"
    with CompositorClient(args.url, protocol=protocol, timeout_s=args.timeout_s or DEFAULT_TIMEOUT_S) as client:
        client.check_ready(client.model_with_alpha if alpha is not None else client.model)
        started = time.perf_counter()
        outputs = client.composite(source, background, alpha)
        latency_ms = (time.perf_counter() - started) * 1e3
        url = client.url
    print(f"{protocol}://{url}: {latency_ms:.0f} ms end to end for a {_size(source)} image")
    return CompositeResult(**outputs)


def write_outputs(out_dir: Path, source, background, result: CompositeResult) -> list[Path]:
    """Write the three outputs and the comparison strip; every file is written atomically."""
    background_full = imaging.cover_resize(background[None], source.shape[:2])[0]
    pasted = linear_paste(source, result.alpha, background_full)
    comparison = comparison_strip(
        [
            ("source", source),
            ("background", background_full),
            ("linear paste", pasted),
            ("blended", result.blended),
            ("harmonized", result.harmonized),
        ]
    )
    # A second row zooms in where the matte is soft: where blending and a linear paste differ.
    zoom = edge_zoom_strip(result.alpha, [("linear paste", pasted), ("blended", result.blended), ("harmonized", result.harmonized)])
    comparison = stack_rows([comparison, zoom])
    out_dir.mkdir(parents=True, exist_ok=True)
    return [
        imaging.write_image(out_dir / "alpha.png", result.alpha),
        imaging.write_image(out_dir / "blended.png", result.blended),
        imaging.write_image(out_dir / "harmonized.png", result.harmonized),
        imaging.write_image(out_dir / "comparison.png", comparison),
    ]
