"""The ``compositor`` command line: one subcommand per module in this package.

Each subcommand module has a docstring (its ``--help`` text, with a runnable example) and a
``register(subparsers)`` function that adds its parser and sets ``handler``. ``main`` only parses
and dispatches; the work lives in library functions.

Subcommand modules stay light at import time (PyTorch, ONNX, Triton's client and the plotting
libraries are imported inside the handlers), so ``compositor --help`` can list every command and
``compositor COMMAND --help`` answers at once.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from compositor.errors import CompositorError

# Command name -> module in this package, in the order ``compositor --help`` lists them.
COMMANDS = {
    "composite": "composite",
    "info": "info",
    "export": "export",
    "engines": "engines",
    "repository": "repository",
    "serve": "serve",
    "bench": "bench",
    "bench-gpu": "bench_gpu",
    "train": "train",
    "evaluate": "evaluate",
}


class CommandError(CompositorError):
    """A user-facing failure: printed as ``error: ...`` with exit code 2, no traceback."""


def version() -> str:
    """The installed distribution's version, else the package's ``__version__``."""
    from importlib import metadata

    try:
        return metadata.version("compositor")
    except metadata.PackageNotFoundError:
        import compositor

        return getattr(compositor, "__version__", "unknown")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; with ``only`` (a command name), just that subcommand's module is imported."""
    parser = argparse.ArgumentParser(
        prog="compositor",
        description="Realistic portrait compositing: matting -> blending -> harmonization, "
        "eager PyTorch, ONNX Runtime, TensorRT and Triton.",
        epilog="Run 'compositor COMMAND --help' for each command's options and an example.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in COMMANDS.items():
        if only is not None and name != only:
            continue
        try:
            module = importlib.import_module(f"{__name__}.{module_name}")
        except ModuleNotFoundError as error:
            if error.name != f"{__name__}.{module_name}":
                raise
            continue  # subcommand not built yet
        module.register(subparsers)
    return parser


def subcommand_parser(subparsers, module_name: str, module_doc: str) -> argparse.ArgumentParser:
    """Add a subparser whose help is the module docstring (first line = summary).

    The command's name is the module's with ``_`` written ``-`` (``bench_gpu`` -> ``bench-gpu``).
    """
    summary = module_doc.strip().splitlines()[0]
    return subparsers.add_parser(
        module_name.rsplit(".", 1)[-1].replace("_", "-"),
        help=summary,
        description=module_doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``compositor`` console script. Returns the process exit code.

    The project's own errors (``CompositorError``: bad input, a missing file, a server that cannot
    be reached) print as ``error: ...`` and exit 2; anything else is a bug and keeps its traceback.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    chosen = next((arg for arg in argv if not arg.startswith("-")), None)
    parser = build_parser(only=chosen if chosen in COMMANDS else None)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.handler(args) or 0)
    except CompositorError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
