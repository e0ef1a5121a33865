"""Parameter and FLOP counts of the networks at one network size (``compositor info``, benchmarks).

Sizes here are one bucket, (height, width); callers with a ``spec.Resolution`` pass its
``reference`` (the square bucket).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from compositor.contract.spec import CHAIN, CHAIN_INPUTS, NETWORKS


def example_inputs(name: str, size: tuple[int, int], batch: int = 1) -> list[torch.Tensor]:
    """Random [0, 1] inputs of network ``name`` in the spec's order (alpha/mask in [0, 1] too)."""
    generator = torch.Generator().manual_seed(0)
    return [
        torch.rand((batch, *tensor.resolved_shape(size)), generator=generator)
        for tensor in NETWORKS[name].inputs
    ]


def example_chain_inputs(size: tuple[int, int], batch: int = 1) -> list[torch.Tensor]:
    """Random [0, 1] chain inputs (``spec.CHAIN_INPUTS``, in order), each shaped as the network input that reads it."""
    shapes = {}
    for step in CHAIN:
        for input_name, chain_name in step.inputs:
            tensor = next(t for t in NETWORKS[step.network].inputs if t.name == input_name)
            shapes.setdefault(chain_name, tensor.resolved_shape(size))
    generator = torch.Generator().manual_seed(0)
    return [torch.rand((batch, *shapes[name]), generator=generator) for name in CHAIN_INPUTS]


def count_parameters(model: nn.Module) -> int:
    """Number of distinct parameters (MODNet's shared backbone counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


@torch.inference_mode()
def count_flops(model: nn.Module, inputs: list[torch.Tensor]) -> int:
    """FLOPs of one forward pass (multiply and add counted separately: 2 per MAC).

    Counts convolutions and matrix products, which dominate; elementwise ops are not counted.
    """
    with FlopCounterMode(display=False) as counter:
        model(*inputs)
    return int(counter.get_total_flops())


def complexity_table(models: dict[str, nn.Module], size: tuple[int, int]) -> list[dict]:
    """One row per contract model: ``network``, ``parameters``, ``gflops`` per image at ``size`` (height, width)."""
    rows = []
    for name, model in models.items():
        flops = count_flops(model, example_inputs(name, size))
        rows.append({"network": name, "parameters": count_parameters(model), "gflops": flops / 1e9})
    return rows
