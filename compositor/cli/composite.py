"""Composite a portrait onto a new, complete background (in-process with --local, or via Triton).

Writes DIR/alpha.png, DIR/blended.png, DIR/harmonized.png at the source's size and
DIR/comparison.png (source | background | linear paste | blended | harmonized, and below them the
three composites enlarged where the matte's edge is softest).

Exactly one of --local (eager PyTorch in this process) or --url (a Triton server running the
compositor repository, e.g. started by 'compositor serve') says where the networks run.

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
from compositor.cli.options import add_network_options, networks_from_args
from compositor.client.remote import DEFAULT_TIMEOUT_S, PROTOCOLS, ClientError, CompositorClient
from compositor.figures import comparison_strip, edge_zoom_strip, linear_paste, stack_rows
from compositor.pipeline import EagerPipeline
from compositor.results import CompositeResult

log = logging.getLogger(__name__)


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
    where.add_argument("--url", metavar="HOST:PORT", help="Triton server (gRPC port 8001, or HTTP 8000 with --protocol http)")
    remote = parser.add_argument_group("server (with --url)")
    remote.add_argument("--protocol", choices=PROTOCOLS, default="grpc", help="gRPC (default) or HTTP")
    remote.add_argument("--timeout-s", type=float, default=DEFAULT_TIMEOUT_S, metavar="S",
                        help=f"request timeout in seconds (default {DEFAULT_TIMEOUT_S:g})")
    add_network_options(parser)
    parser.set_defaults(handler=run)


def run(args) -> int:
    if not (args.local or args.url):
        raise CommandError("say where to run: --local runs the eager pipeline in-process, --url HOST:PORT calls a Triton server")
    # Read and validate every input before any work, so a bad file costs nothing and writes nothing.
    source = imaging.read_image(args.source)
    background = imaging.read_image(args.background)
    alpha = imaging.read_image(args.alpha, mode="L") if args.alpha else None
    imaging.check_inputs(source[None], background[None], None if alpha is None else alpha[None])

    result = run_remote(args, source, background, alpha) if args.url else run_local(args, source, background, alpha)
    for path in write_outputs(args.out, source, background, result):
        print(path)
    return 0


def run_local(args, source, background, alpha) -> CompositeResult:
    pipeline = EagerPipeline(networks_from_args(args), args.resolution)
    started = time.perf_counter()
    result = pipeline(source, background, alpha)
    log.info("eager pipeline: %.0f ms for %dx%d", (time.perf_counter() - started) * 1e3, *source.shape[:2])
    return result


def run_remote(args, source, background, alpha) -> CompositeResult:
    try:
        with CompositorClient(args.url, protocol=args.protocol, timeout_s=args.timeout_s) as client:
            client.check_ready(client.model_with_alpha if alpha is not None else client.model)
            started = time.perf_counter()
            outputs = client.composite(source, background, alpha)
            latency_ms = (time.perf_counter() - started) * 1e3
    except ClientError as error:
        raise CommandError(str(error)) from None
    print(f"{args.protocol}://{args.url}: {latency_ms:.0f} ms end to end for {source.shape[0]}x{source.shape[1]}")
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
