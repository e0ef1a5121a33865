"""Print each network's parameters and FLOPs per image at the reference bucket of the network resolution.

FLOPs grow with the pixels: with aspect buckets (--resolution N) they are counted at the square
bucket NxN; a wider bucket costs its pixels over N*N times as much (512x896: 1.75x).

Example:
  compositor info
  compositor info --resolution 256x384 --modnet-checkpoint modnet_photographic_portrait_matting.ckpt
"""

from __future__ import annotations

from compositor.cli import subcommand_parser
from compositor.cli.options import add_network_options, networks_from_args
from compositor.contract.spec import format_size


def register(subparsers) -> None:
    parser = subcommand_parser(subparsers, __name__, __doc__)
    add_network_options(parser)
    parser.set_defaults(handler=run)


def run(args) -> int:
    # Imported here: PyTorch takes seconds to import, and --help needs none of it.
    from compositor.networks.complexity import complexity_table
    from compositor.networks.contract import contract_models

    models = contract_models(networks_from_args(args))
    reference = args.resolution.reference
    rows = complexity_table(models, reference)
    print(f"network resolution {args.resolution.describe()}; per image at {format_size(reference)}")
    print(f"{'network':<15}{'parameters':>14}{'GFLOPs':>10}")
    for row in rows:
        print(f"{row['network']:<15}{row['parameters']:>14,}{row['gflops']:>10.2f}")
    print(f"{'total':<15}{sum(r['parameters'] for r in rows):>14,}{sum(r['gflops'] for r in rows):>10.2f}")
    return 0
