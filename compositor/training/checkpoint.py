"""Training checkpoints as safetensors: weights, optimizer moments and counters, nothing pickled.

``torch.save`` would pickle the optimizer state; a checkpoint a colleague sends should never run
code on load. Tensors go in as named tensors (``model.*``, ``optimizer.<n>.<field>``, ...), and the
rest (step, best metric, the data generators' states, the optimizer's hyperparameters) as JSON in
the header.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from compositor.errors import CompositorError
from compositor.atomic_files import atomic_path

FORMAT = "compositor-training-checkpoint/1"


class CheckpointError(CompositorError, ValueError):
    """A training checkpoint is unusable: not one, damaged, or made for another run."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """No training checkpoint where one was asked for (``--resume``)."""


def _optimizer_tensors(prefix: str, optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, fields in state["state"].items():
        for name, value in fields.items():
            if torch.is_tensor(value):
                tensors[f"{prefix}.{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _restore_optimizer(prefix: str, optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith(prefix + "."):
            index, name = key[len(prefix) + 1 :].split(".", 1)
            state.setdefault(int(index), {})[name] = value
    for key, value in meta["scalars"].items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(path: Path, modules: dict[str, torch.nn.Module], optimizers: dict[str, torch.optim.Optimizer], info: dict) -> None:
    """Write modules' weights, optimizers' states and the JSON-able ``info`` to ``path`` atomically."""
    tensors: dict[str, torch.Tensor] = {}
    optimizer_meta = {}
    for name, module in modules.items():
        tensors.update({f"{name}.{k}": v.detach().cpu().contiguous() for k, v in module.state_dict().items()})
    for name, optimizer in optimizers.items():
        optimizer_tensors, optimizer_meta[name] = _optimizer_tensors(name, optimizer)
        tensors.update(optimizer_tensors)
    metadata = {"format": FORMAT, "info": json.dumps(info), "optimizers": json.dumps(optimizer_meta)}
    from safetensors.torch import save_file

    with atomic_path(path) as temporary:
        save_file(tensors, str(temporary), metadata=metadata)


def load_checkpoint(path: Path, modules: dict[str, torch.nn.Module], optimizers: dict[str, torch.optim.Optimizer]) -> dict:
    """Restore what ``save_checkpoint`` wrote into ``modules`` and ``optimizers``; returns ``info``.

    Raises:
        CheckpointError: not a training checkpoint, or one whose tensors do not fit ``modules``.
    """
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{path} is not a safetensors training checkpoint ({error})") from error
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a compositor training checkpoint (format {metadata.get('format')!r})")
    for name, module in modules.items():
        prefix = name + "."
        try:
            module.load_state_dict({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}, strict=True)
        except RuntimeError as error:  # missing, unexpected or mis-shaped tensors
            raise CheckpointError(f"{path}: its {name} tensors do not fit this run's network: {error}") from error
    optimizer_meta = json.loads(metadata["optimizers"])
    for name, optimizer in optimizers.items():
        _restore_optimizer(name, optimizer, tensors, optimizer_meta[name])
    return json.loads(metadata["info"])
