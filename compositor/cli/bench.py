"""Benchmark eager PyTorch, in-process ONNX Runtime and the Triton ensemble; percentiles and plots.

Times the full chain end to end at each concurrency and each network alone (concurrency 1), after a
warm-up, in windows repeated until throughput is stable. Reports p50/p90/p95/p99 latency (ms),
throughput (images/s), Triton's server-side breakdown, peak memory, and achieved GFLOP/s against
the machine's measured peak, with perf_analyzer / model_analyzer field names.

Example:
  compositor bench --quick --json benchmarks/results/quick.json --markdown quick.md --plot quick.png
  compositor bench --modes onnxruntime,triton --concurrency 1,2,4 --duration-s 20 --json out.json
  compositor bench --modes triton --url 127.0.0.1:8001 --json remote.json   # a running server
  compositor bench --modes triton --url 127.0.0.1:8001,127.0.0.1:8004 --no-networks --json two.json  # replicas
  benchmarks/cpu.sh     # the full run behind the README's table
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from compositor.bench import MODES
from compositor.cli import CommandError, subcommand_parser
from compositor.cli.options import (
    add_network_options,
    check_output_file,
    comma_choices,
    networks_from_args,
    positive_float,
    positive_int,
    positive_int_list,
)
from compositor.atomic_files import write_json

QUICK = {"concurrency": (1, 2), "window_s": 3.0, "min_requests": 5, "max_windows": 3}


def register(subparsers) -> None:
    parser = subcommand_parser(subparsers, __name__, __doc__)
    parser.add_argument("--modes", type=comma_choices(MODES), default=MODES, help=f"comma-separated subset of {','.join(MODES)} (default all)")
    parser.add_argument("--concurrency", type=positive_int_list, help="full-chain concurrency levels (default 1,2,4,8; --quick 1,2)")
    parser.add_argument("--batch", type=positive_int, default=1, help="images per request (default 1)")
    parser.add_argument("--duration-s", type=positive_float, help="minimum seconds per measurement window (default 10; --quick 3)")
    parser.add_argument("--quick", action="store_true", help="short windows, concurrency 1,2: under 5 minutes on 2 cores")
    parser.add_argument("--no-networks", action="store_true", help="full chain only, not each network alone")
    parser.add_argument("--onnx", type=Path, help="exported FP32 ONNX folder (default: export into a temporary folder)")
    parser.add_argument(
        "--url",
        help="gRPC host:port of a running Triton server, or several separated by commas (the chain then goes "
        "through the client's several-server mode; each network alone to the first) (default: start one)",
    )
    parser.add_argument("--json", required=True, type=Path, help="results JSON (always has `results`)")
    parser.add_argument("--markdown", type=Path, help="also write the results table as markdown")
    parser.add_argument("--plot", type=Path, help="also write a throughput/latency plot (PNG)")
    parser.add_argument("--readme", type=Path, help="regenerate the performance section of this README from the results")
    add_network_options(parser)
    parser.set_defaults(handler=run)


def run(args) -> int:
    _check_outputs(args)
    # Imported here: the benchmark needs PyTorch, ONNX Runtime and matplotlib; --help needs none.
    from compositor.bench.load import LoadSettings
    from compositor.bench.report import markdown, plot, readme_section, update_readme
    from compositor.bench.throughput import BenchSettings, run_benchmark

    load = LoadSettings(
        window_s=args.duration_s or (QUICK["window_s"] if args.quick else 10.0),
        min_requests=QUICK["min_requests"] if args.quick else 10,
        max_windows=QUICK["max_windows"] if args.quick else 4,
    )
    settings = BenchSettings(
        modes=args.modes,
        resolution=args.resolution,
        concurrency=args.concurrency or (QUICK["concurrency"] if args.quick else (1, 2, 4, 8)),
        batch=args.batch,
        load=load,
        networks_alone=not args.no_networks,
        onnx_dir=args.onnx,
        url=args.url,
    )
    command = "compositor " + shlex.join(sys.argv[1:]) if sys.argv[0].endswith(("compositor", "__main__.py")) else ""
    report = run_benchmark(networks_from_args(args), settings, command=command)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.json, report)
    print(f"wrote {args.json}")
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(markdown(report))
        print(f"wrote {args.markdown}")
    if args.plot:
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        plot(report, args.plot)
        print(f"wrote {args.plot}")
    if args.readme:
        relative = lambda path: os.path.relpath(path, args.readme.parent) if path else None  # noqa: E731
        update_readme(args.readme, readme_section(report, relative(args.json), relative(args.plot)))
        print(f"updated the performance section of {args.readme}")
    print(markdown(report))
    return 0


def _check_outputs(args) -> None:
    """Every output path is writable, --onnx a folder and --readme has the markers, before minutes of measuring."""
    if args.onnx is not None and not args.onnx.is_dir():
        raise CommandError(f"--onnx {args.onnx}: not a folder (make one with 'compositor export --out {args.onnx}')")
    for option in ("json", "markdown", "plot"):
        if getattr(args, option) is not None:
            check_output_file(getattr(args, option), f"--{option}")
    if args.readme is not None:
        if not args.readme.is_file():
            raise CommandError(f"--readme {args.readme}: no such file")
        # Checked as update_readme will, before minutes of measuring (numpy-importing module: here, not at --help).
        from compositor.bench.report import README_END, README_START, readme_section_span

        if readme_section_span(args.readme.read_text()) is None:
            raise CommandError(f"--readme {args.readme}: no performance markers ({README_START} ... {README_END})")
