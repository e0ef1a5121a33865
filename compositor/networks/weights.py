"""Weight files of our own networks: safetensors with architecture and provenance metadata.

safetensors holds tensors only, so loading never unpickles code from a file we did not write.
The header's metadata carries the architecture name, its hyperparameters and how the weights were
made, so a weights file is self-describing (MODNet keeps the official checkpoint format instead:
see ``modnet_checkpoint``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from compositor.files import atomic_path
from compositor.networks.blending import BlendingUNet
from compositor.networks.harmonization import HarmonizationUNet

log = logging.getLogger(__name__)

ARCHITECTURES: dict[str, type[nn.Module]] = {cls.__name__: cls for cls in (BlendingUNet, HarmonizationUNet)}
FORMAT = "compositor-weights/1"


def save_network(model: nn.Module, path: str | Path, provenance: dict | None = None, half: bool = False) -> Path:
    """Write ``model``'s weights, architecture and provenance to a safetensors file (atomically).

    Args:
        model: a ``BlendingUNet`` or ``HarmonizationUNet``.
        path: destination, conventionally ``*.safetensors``.
        provenance: how the weights were made (data, steps, seed, commit); stored verbatim as JSON.
        half: store floating-point tensors as float16 (half the file; loading casts them back to the
            network's float32, so what runs is exactly what the file holds).
    """
    architecture = type(model).__name__
    if architecture not in ARCHITECTURES:
        raise ValueError(f"cannot save {architecture}: known architectures are {sorted(ARCHITECTURES)}")
    path = Path(path)
    metadata = {
        "format": FORMAT,
        "architecture": architecture,
        "hyperparameters": json.dumps(model.hyperparameters),
        "provenance": json.dumps(provenance or {}),
        "storage_dtype": "float16" if half else "float32",
    }
    tensors = {
        key: (value.half() if half and value.is_floating_point() else value).detach().cpu().contiguous()
        for key, value in model.state_dict().items()
    }
    with atomic_path(path) as temporary:
        save_file(tensors, str(temporary), metadata=metadata)
    return path


def read_metadata(path: str | Path) -> dict:
    """The metadata of a weights file, with ``hyperparameters`` and ``provenance`` decoded."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
    except (SafetensorError, OSError, ValueError) as error:
        raise ValueError(f"{path} is not a safetensors weights file ({error})") from None
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{path} is not a compositor weights file (metadata format {metadata.get('format')!r})")
    metadata["hyperparameters"] = json.loads(metadata["hyperparameters"])
    metadata["provenance"] = json.loads(metadata.get("provenance", "{}"))
    return metadata


def describe_provenance(provenance: dict) -> str:
    """One line on how weights were made (the full record stays in the file's metadata)."""
    if not provenance:
        return "no provenance recorded"
    if provenance.get("trained_by") == "compositor train":
        return (f"trained by compositor train on {provenance.get('data', {}).get('data', '?')}: step "
                f"{provenance.get('best_step')} of {provenance.get('steps_trained')}, commit {provenance.get('commit')}")
    return ", ".join(f"{key}={value}" for key, value in list(provenance.items())[:4])


def load_network(path: str | Path, expected: type[nn.Module] | None = None) -> nn.Module:
    """Rebuild a network from a weights file, in eval mode.

    Args:
        path: a file written by ``save_network``.
        expected: if given, the architecture the caller needs; another one is a ValueError.
    """
    metadata = read_metadata(path)
    architecture = metadata["architecture"]
    if architecture not in ARCHITECTURES:
        raise ValueError(f"{path}: unknown architecture {architecture!r}")
    cls = ARCHITECTURES[architecture]
    if expected is not None and cls is not expected:
        raise ValueError(f"{path} holds a {architecture}, but a {expected.__name__} is needed here")
    model = cls(**metadata["hyperparameters"])
    with safe_open(str(path), framework="pt") as handle:
        state = {key: handle.get_tensor(key) for key in handle.keys()}
    model.load_state_dict(state, strict=True)
    log.info("loaded %s from %s (%s)", architecture, path, describe_provenance(metadata["provenance"]))
    return model.eval()
