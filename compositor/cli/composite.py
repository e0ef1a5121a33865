"""Composite a portrait onto a new, complete background (in-process with --local, or via Triton).

Writes DIR/alpha.png, DIR/blended.png, DIR/harmonized.png at the source's size and
DIR/comparison.png (source | matte | background | linear paste | blended | harmonized; below them the
three composites enlarged where the matte's edge is softest; last, the source composited over
itself with its own matte, an already harmonious input, with what the harmonizer made of it).

Exactly one of --local (eager PyTorch in this process) or --url (a Triton server running the
compositor repository, e.g. started by 'compositor serve') says where the networks run.
--resolution and the weights options apply to --local only (a server runs what it was deployed
with); --protocol, --timeout-s, --max-in-flight and --shared-memory to --url only. --url may list
several servers (host1:8001,host2:8001): requests are spread over them, and one that fails is
skipped until it is ready again.

With --url, --source may also be:
  a folder: every file in it is composited onto --background (one image, or a folder whose files
    are matched to the sources by name, portrait.jpg with portrait.png; --alpha may be a folder of
    mattes matched the same way); each success is written as OUT/<name>/{alpha,blended,harmonized}.png,
    each failure printed as '<file>: <reason>' while the rest go on, then a summary line; the exit
    status is 1 when any item failed.
  a video (.mp4, .mov, .mkv, ...): every frame is composited in order onto --background (an image,
    or a video whose frame i goes behind frame i, looped when shorter) and written to --out
    (a video file) at the source's size and frame rate, with its audio copied; --video-output picks
    the output shown; --temporal-smoothing applies MODNet's one-frame-delay rule to the mattes.

Example:
  compositor composite --local --source portrait.jpg --background beach.jpg --out out/
  compositor composite --url localhost:8001 --source portrait.jpg --background beach.jpg --out out/
  # over HTTP: only a server started with --allow-http-inference accepts it
  compositor composite --url localhost:8000 --protocol http --source portrait.jpg --background beach.jpg \\
      --alpha matte.png --out out/
  compositor composite --local --source portrait.jpg --background beach.jpg --alpha matte.png \\
      --resolution 256x384 --modnet-checkpoint modnet_photographic_portrait_matting.ckpt --out out/
  compositor composite --url host1:8001,host2:8001 --source portraits/ --background beach.jpg --out out/
  compositor composite --url localhost:8001 --source talk.mp4 --background beach.mp4 --out talk_beach.mp4 \\
      --temporal-smoothing --shared-memory
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np

from compositor import imaging
from compositor.cli import CommandError, subcommand_parser
from compositor.cli.options import (
    add_network_options,
    check_output_dir,
    check_output_file,
    networks_from_args,
    positive_float,
    positive_int,
    unit_fraction,
)
from compositor.client.pool import DEFAULT_MAX_IN_FLIGHT
from compositor.client.remote import DEFAULT_TIMEOUT_S
from compositor.client.urls import PROTOCOLS
from compositor.client.video import VIDEO_OUTPUTS
from compositor.figures import comparison_strip, edge_zoom_strip, harmony_check_strip, linear_paste, stack_rows
from compositor.media.video import is_video
from compositor.results import CompositeResult
from compositor.contract.spec import DEFAULT_RESOLUTION
from compositor.media.temporal_smoothing import DEFAULT_THRESHOLD

log = logging.getLogger(__name__)

# Options of one mode that the other cannot use: a user who gives them means something that would
# not happen, so they are refused rather than ignored.
LOCAL_ONLY = ("resolution", "modnet_checkpoint", "blending_checkpoint", "harmonization_checkpoint", "untrained")
REMOTE_ONLY = ("protocol", "timeout_s", "max_in_flight", "shared_memory")
VIDEO_ONLY = ("temporal_smoothing", "smoothing_threshold", "video_output")


def register(subparsers) -> None:
    parser = subcommand_parser(subparsers, __name__, __doc__)
    parser.add_argument("--source", required=True, type=Path,
                        help="portrait photo (RGB image file); with --url also a folder of them, or a video")
    parser.add_argument("--background", required=True, type=Path,
                        help="new complete background (RGB, any size); a folder matched by name to a folder of "
                        "sources, or a video behind a video")
    parser.add_argument("--alpha", type=Path,
                        help="optional grayscale matte at the source's size (skips MODNet); a folder of them "
                        "(matched by name) with a folder of sources")
    parser.add_argument("--out", required=True, type=Path,
                        help="output folder (created if missing); a video file for a video source")
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
    remote.add_argument("--max-in-flight", type=positive_int, metavar="N",
                        help=f"requests outstanding at once, over all servers (default {DEFAULT_MAX_IN_FLIGHT})")
    remote.add_argument("--shared-memory", action=argparse.BooleanOptionalAction, default=None,
                        help="pass frames through system shared memory instead of the socket (default off); only "
                        "for a server on this same host, since the regions live in this machine's /dev/shm")
    video = parser.add_argument_group("video (a video --source with --url only)")
    video.add_argument("--video-output", choices=VIDEO_OUTPUTS,
                       help="which output becomes the video (default harmonized, the finished composite)")
    video.add_argument("--temporal-smoothing", action="store_true",
                       help="MODNet's one-frame-delay rule: a matte pixel that jumps away from both neighbouring "
                       "frames while they agree takes their mean; a changed frame is composited again with "
                       "the smoothed matte")
    video.add_argument("--smoothing-threshold", type=unit_fraction, metavar="T",
                       help=f"how far (fraction of full scale, 0..1) counts as a jump and as agreeing (default "
                       f"{DEFAULT_THRESHOLD:g}, about {DEFAULT_THRESHOLD * 255:.0f} of 255 levels)")
    add_network_options(parser)
    # None marks "not given", so that run() can refuse an option of the other mode; the help
    # still shows the real default.
    parser.set_defaults(handler=run, resolution=None)


def run(args) -> int:
    if not (args.local or args.url):
        raise CommandError("say where to run: --local runs the eager pipeline in-process, --url HOST:PORT calls a Triton server")
    _refuse_options_of_the_other_mode(args)
    mode = "folder" if args.source.is_dir() else "video" if is_video(args.source) else "image"
    if mode != "image" and args.local:
        what = "is a folder, not an image file; a folder" if mode == "folder" else "is a video; a video"
        raise CommandError(f"{args.source}: {what} is composited through a server: use --url HOST:PORT "
                           "(start one with 'compositor serve')")
    if mode != "video":
        given = _given(args, VIDEO_ONLY)
        if given:
            raise CommandError(f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} to a video --source only")
    elif args.smoothing_threshold is not None and not args.temporal_smoothing:
        raise CommandError("--smoothing-threshold sets --temporal-smoothing's threshold: add --temporal-smoothing")
    if mode == "folder":
        return run_folder(args)
    if mode == "video":
        return run_video(args)
    # Read and validate every input, and check the output folder, before any work, so a mistake
    # costs nothing and writes nothing.
    source = imaging.read_image(args.source)
    background = imaging.read_image(args.background)
    alpha = imaging.read_image(args.alpha, mode="L") if args.alpha else None
    imaging.check_inputs(source[None], background[None], None if alpha is None else alpha[None])
    check_output_dir(args.out, "--out")

    result = run_remote(args, source, background, alpha) if args.url else run_local(args, source, background, alpha)
    # The comparison's last row: the photo over itself with its own matte, an already harmonious
    # input, which the harmonizer should leave alone.
    run = run_remote if args.url else run_local
    harmonious = run(args, source, source, result.alpha).harmonized
    for path in write_outputs(args.out, source, background, result, harmonious):
        print(path)
    return 0


def _refuse_options_of_the_other_mode(args) -> None:
    mode, others = ("--url", LOCAL_ONLY) if args.url else ("--local", REMOTE_ONLY)
    given = _given(args, others)
    if not given:
        return
    one = len(given) == 1
    if args.url:
        reason = ("a server runs the networks, weights and resolution it was exported and deployed with "
                  f"(set them with 'compositor export'); drop {'it' if one else 'them'}, or use --local")
    else:
        reason = f"{'it sets' if one else 'they set'} how to reach a Triton server with --url HOST:PORT; drop {'it' if one else 'them'}"
    raise CommandError(f"{', '.join(given)} {'does' if one else 'do'} not apply with {mode}: {reason}")


def _given(args, names: tuple[str, ...]) -> list[str]:
    """The flags (``--max-in-flight``) of the options among ``names`` that the user gave."""
    return ["--" + name.replace("_", "-") for name in names if getattr(args, name) not in (None, False)]


def _size(image) -> str:
    """An image's size as image tools print it: width x height."""
    return f"{image.shape[1]}x{image.shape[0]} (width x height)"


def run_local(args, source, background, alpha) -> CompositeResult:
    # Imported here: PyTorch takes seconds to import, and --url and --help need none of it.
    from compositor.runtimes import EagerPipeline

    pipeline = EagerPipeline(networks_from_args(args), args.resolution or DEFAULT_RESOLUTION)
    started = time.perf_counter()
    result = pipeline(source, background, alpha)
    log.info("eager pipeline: %.0f ms for a %s image", (time.perf_counter() - started) * 1e3, _size(source))
    return result


def run_remote(args, source, background, alpha) -> CompositeResult:
    from compositor.client.remote import CompositorClient

    protocol = args.protocol or "grpc"
    if "," in args.url:
        return _run_remote_pool(args, source, background, alpha)
    with CompositorClient(args.url, protocol=protocol, timeout_s=args.timeout_s or DEFAULT_TIMEOUT_S,
                          shared_memory=bool(args.shared_memory)) as client:
        client.check_ready(client.model_with_alpha if alpha is not None else client.model)
        started = time.perf_counter()
        outputs = client.composite(source, background, alpha)
        latency_ms = (time.perf_counter() - started) * 1e3
        url = client.url
    print(f"{protocol}://{url}: {latency_ms:.0f} ms end to end for a {_size(source)} image")
    return CompositeResult(**outputs)


def _run_remote_pool(args, source, background, alpha) -> CompositeResult:
    """One image through several servers: the pool picks a ready one."""
    from compositor.client.pool import CompositeRequest

    with _pool(args) as pool:
        started = time.perf_counter()
        outcome = next(iter(pool.map([CompositeRequest("image", source, background, alpha)])))
        latency_ms = (time.perf_counter() - started) * 1e3
    if outcome.error is not None:
        raise outcome.error
    print(f"{args.protocol or 'grpc'}://{outcome.server}: {latency_ms:.0f} ms end to end for a {_size(source)} image")
    return outcome.result


def _pool(args):
    from compositor.client.pool import CompositorPool

    return CompositorPool(
        args.url,
        protocol=args.protocol or "grpc",
        max_in_flight=args.max_in_flight or DEFAULT_MAX_IN_FLIGHT,
        timeout_s=args.timeout_s or DEFAULT_TIMEOUT_S,
        shared_memory=bool(args.shared_memory),
    )


def _progress(total: int | None, unit: str):
    from tqdm import tqdm

    # On stderr, so that stdout carries only the results (paths and the summary line).
    return tqdm(total=total, unit=unit, file=sys.stderr, dynamic_ncols=True, disable=None)


def run_folder(args) -> int:
    """Every file of the --source folder through the server(s); exit 1 if any item failed."""
    from compositor.client.batch import composite_folder
    from compositor.media.folders import folder_items

    if not args.background.exists():
        raise CommandError(f"--background {args.background}: no such file or folder")
    if args.alpha is not None and not args.alpha.is_dir():
        raise CommandError(f"--alpha {args.alpha}: with a folder of sources, give a folder of mattes (matched by name)")
    check_output_dir(args.out, "--out")
    # One background for every item is read once, and up front: if it is unusable, nothing can succeed.
    background = None if args.background.is_dir() else imaging.read_image(args.background)
    items = folder_items(args.source, args.background, args.alpha)
    if not items:
        raise CommandError(f"--source {args.source}: the folder has no files")
    with _pool(args) as pool, _progress(len(items), "image") as bar:
        summary = composite_folder(
            pool, items, args.out, background=background,
            on_failure=lambda name, reason: bar.write(f"{name}: {reason}", file=sys.stderr),
            on_done=lambda: bar.update(1),
        )
    print(summary.line())
    return 1 if summary.failed else 0


def run_video(args) -> int:
    """Every frame of the --source video through the server(s), into the --out video."""
    from compositor.client.video import FrameFailedError, composite_video
    from compositor.media.video import CONTAINERS, probe

    if args.alpha is not None:
        raise CommandError("--alpha does not apply to a video --source (the server's MODNet mattes each frame)")
    if args.out.suffix.lower() not in CONTAINERS:
        raise CommandError(f"--out {args.out}: a video source writes a video; end the name with one of "
                           f"{', '.join(sorted(CONTAINERS))}")
    check_output_file(args.out, "--out")
    info = probe(args.source)
    background = args.background if is_video(args.background) else imaging.read_image(args.background)
    if isinstance(background, Path):
        probe(background)  # readable, before any work
    threshold = (args.smoothing_threshold if args.smoothing_threshold is not None else DEFAULT_THRESHOLD) \
        if args.temporal_smoothing else None
    with _pool(args) as pool, _progress(info.frames or None, "frame") as bar:
        try:
            summary = composite_video(pool, args.source, background, args.out, output=args.video_output or "harmonized",
                                      smoothing_threshold=threshold, on_frame=lambda: bar.update(1), info=info)
        except FrameFailedError as error:
            bar.close()
            print(f"error: {error}; no video written", file=sys.stderr)
            return 1
    print(summary.path)
    print(summary.line())
    return 0


def write_outputs(out_dir: Path, source, background, result: CompositeResult, harmonious=None) -> list[Path]:
    """Write the three outputs and the comparison strip; every file is written atomically.

    ``harmonious``: the harmonizer's output for the source over itself (an already harmonious
    input); when given, the comparison shows it in a last row (``figures.harmony_check_strip``)."""
    background_full = imaging.cover_resize(background[None], source.shape[:2])[0]
    pasted = linear_paste(source, result.alpha, background_full)
    comparison = comparison_strip(
        [
            ("source", source),
            ("matte", np.repeat(result.alpha, 3, axis=-1)),
            ("background", background_full),
            ("linear paste", pasted),
            ("blended", result.blended),
            ("harmonized", result.harmonized),
        ]
    )
    # A second row zooms in where the matte is soft: where blending and a linear paste differ.
    zoom = edge_zoom_strip(result.alpha, [("linear paste", pasted), ("blended", result.blended), ("harmonized", result.harmonized)])
    rows = [comparison, zoom]
    if harmonious is not None:
        rows.append(harmony_check_strip(source, harmonious))
    comparison = stack_rows(rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    return [
        imaging.write_image(out_dir / "alpha.png", result.alpha),
        imaging.write_image(out_dir / "blended.png", result.blended),
        imaging.write_image(out_dir / "harmonized.png", result.harmonized),
        imaging.write_image(out_dir / "comparison.png", comparison),
    ]
