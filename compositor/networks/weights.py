"""Weight files of our own networks: safetensors with architecture and provenance metadata.

safetensors holds tensors only, so loading never unpickles code from a file we did not write.
The header's metadata carries the architecture name, its hyperparameters and how the weights were
made, so a weights file is self-describing (MODNet keeps the official checkpoint format instead:
see ``modnet_checkpoint``).

safetensors and the networks (PyTorch) are imported by the functions that use them, so importing
this module, for its error types, costs nothing.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from compositor.errors import CompositorError
from compositor.atomic_files import atomic_path

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger(__name__)

FORMAT = "compositor-weights/1"


class WeightsError(CompositorError, ValueError):
    """A weights or checkpoint file is unusable: not the expected format, architecture or shapes."""


class WeightsNotFoundError(WeightsError, FileNotFoundError):
    """A weights or checkpoint file does not exist."""


def architectures() -> dict[str, type[nn.Module]]:
    """The networks a weights file can hold, by class name."""
    from compositor.networks.blending import BlendingUNet
    from compositor.networks.harmonization import HarmonizationUNet
    from compositor.networks.modnet import MODNet

    return {cls.__name__: cls for cls in (BlendingUNet, HarmonizationUNet, MODNet)}


def shared_aliases(model: nn.Module) -> dict[str, str]:
    """State-dict keys whose tensor is the same as an earlier key's: ``{alias: first key}``.

    MODNet holds its encoder twice (``backbone.*`` and ``lr_branch.backbone.*``, one module);
    safetensors refuses to store shared tensors, so a file holds each once and loading restores
    the aliases.
    """
    first: dict[int, str] = {}
    aliases = {}
    for key, tensor in model.state_dict(keep_vars=True).items():
        owner = first.setdefault(id(tensor), key)
        if owner != key:
            aliases[key] = owner
    return aliases


def check_file(path: Path, what: str) -> None:
    """Raise ``WeightsNotFoundError`` unless ``path`` is a file; ``what`` names it in the message."""
    if path.is_dir():
        raise WeightsNotFoundError(f"{what} {path} is a folder; give the file")
    if not path.is_file():
        raise WeightsNotFoundError(f"{what} {path} does not exist")


def save_network(model: nn.Module, path: str | Path, provenance: dict | None = None, half: bool = False) -> Path:
    """Write ``model``'s weights, architecture and provenance to a safetensors file (atomically).

    Args:
        model: a ``BlendingUNet``, ``HarmonizationUNet`` or ``MODNet``.
        path: destination, conventionally ``*.safetensors``.
        provenance: how the weights were made (data, steps, seed, commit); stored verbatim as JSON.
        half: store floating-point tensors as float16 (half the file; loading casts them back to the
            network's float32, so what runs is exactly what the file holds).
    """
    from safetensors.torch import save_file

    architecture = type(model).__name__
    if architecture not in architectures():
        raise ValueError(f"cannot save {architecture}: known architectures are {sorted(architectures())}")
    path = Path(path)
    metadata = {
        "format": FORMAT,
        "architecture": architecture,
        "hyperparameters": json.dumps(model.hyperparameters),
        "provenance": json.dumps(provenance or {}),
        "storage_dtype": "float16" if half else "float32",
    }
    aliases = shared_aliases(model)
    tensors = {
        key: (value.half() if half and value.is_floating_point() else value).detach().cpu().contiguous()
        for key, value in model.state_dict().items()
        if key not in aliases
    }
    with atomic_path(path) as temporary:
        save_file(tensors, str(temporary), metadata=metadata)
    return path


def read_metadata(path: str | Path) -> dict:
    """The metadata of a weights file, with ``hyperparameters`` and ``provenance`` decoded.

    Raises:
        WeightsNotFoundError: no such file.
        WeightsError: not a safetensors file written by ``save_network``.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    check_file(path, "weights file")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
    except (SafetensorError, OSError, ValueError) as error:
        raise WeightsError(f"{path} is not a safetensors weights file ({error})") from error
    if metadata.get("format") != FORMAT:
        raise WeightsError(f"{path} is not a compositor weights file (metadata format {metadata.get('format')!r})")
    try:
        metadata["hyperparameters"] = json.loads(metadata["hyperparameters"])
        metadata["provenance"] = json.loads(metadata.get("provenance", "{}"))
    except (KeyError, ValueError) as error:
        raise WeightsError(f"{path}: damaged metadata ({type(error).__name__}: {error})") from error
    return metadata


def describe_provenance(provenance: dict) -> str:
    """One line on how weights were made (the full record stays in the file's metadata)."""
    if not provenance:
        return "no provenance recorded"
    if provenance.get("kind") == "published":
        return (f"{provenance.get('model')}, converted from {provenance.get('obtained_from')} (ONNX sha256 "
                f"{str(provenance.get('onnx_sha256'))[:12]}), Apache-2.0 (MODNet)")
    if provenance.get("trained_by") == "compositor train":
        return (f"trained by compositor train on {provenance.get('data', {}).get('data', '?')}: step "
                f"{provenance.get('best_step')} of {provenance.get('steps_trained')}, commit {provenance.get('commit')}")
    return ", ".join(f"{key}={value}" for key, value in list(provenance.items())[:4])


def load_network(path: str | Path, expected: type[nn.Module] | None = None) -> nn.Module:
    """Rebuild a network from a weights file, in eval mode.

    Args:
        path: a file written by ``save_network``.
        expected: if given, the architecture the caller needs; another one is a ``WeightsError``.

    Raises:
        WeightsNotFoundError: no such file.
        WeightsError: not a weights file, another architecture, or tensors that do not fit it.
    """
    from safetensors import safe_open

    metadata = read_metadata(path)
    architecture = metadata.get("architecture")
    known = architectures()
    if architecture not in known:
        raise WeightsError(f"{path}: unknown architecture {architecture!r} (known: {', '.join(sorted(known))})")
    cls = known[architecture]
    if expected is not None and cls is not expected:
        raise WeightsError(f"{path} holds a {architecture}, but a {expected.__name__} is needed here")
    try:
        model = cls(**metadata["hyperparameters"])
    except (TypeError, ValueError) as error:
        raise WeightsError(f"{path}: its hyperparameters do not build a {architecture} ({error})") from error
    with safe_open(str(path), framework="pt") as handle:
        state = {key: handle.get_tensor(key) for key in handle.keys()}
    for alias, key in shared_aliases(model).items():
        if key in state:
            state.setdefault(alias, state[key])
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:  # missing, unexpected or mis-shaped tensors
        raise WeightsError(f"{path}: its tensors do not fit a {architecture}: {error}") from error
    log.info("loaded %s from %s (%s)", architecture, path, describe_provenance(metadata["provenance"]))
    return model.eval()
