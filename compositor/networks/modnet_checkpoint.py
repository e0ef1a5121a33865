"""Read and write MODNet weights in the layout of the published checkpoint.

The official ``modnet_photographic_portrait_matting.ckpt`` is a plain state dict saved from
``nn.DataParallel``: every key starts with ``module.``, and the MobileNetV2 encoder appears twice
(``module.backbone.*`` and ``module.lr_branch.backbone.*``) because the low-resolution branch holds
the same module. Loading strips the prefix and needs neither DataParallel nor a GPU; saving adds it
back so that our own trained weights work with upstream tools too.

Example:
    >>> official = "modnet_photographic_portrait_matting.ckpt"
    >>> model = load_modnet_checkpoint(official)  # doctest: +SKIP
    >>> save_modnet_checkpoint(model, "artifacts/modnet_finetuned.ckpt")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Mapping
from os import PathLike
from pathlib import Path

import torch
from torch import Tensor, nn

from compositor.networks.modnet import MODNet
from compositor.networks.weights import WeightsError, WeightsNotFoundError

__all__ = ["load_modnet_checkpoint", "modnet_state_dict_from_checkpoint", "save_modnet_checkpoint"]

logger = logging.getLogger(__name__)

#: Prefix that ``nn.DataParallel`` puts in front of every key; the official checkpoint has it.
DATAPARALLEL_PREFIX = "module."

# How many offending keys an error message lists before it says "and N more".
_KEYS_SHOWN = 5


def modnet_state_dict_from_checkpoint(path: str | PathLike[str]) -> dict[str, Tensor]:
    """Read a MODNet checkpoint into a state dict with plain (unprefixed) keys.

    Accepts the official layout (a state dict whose keys start with ``module.``), a state dict
    without the prefix, or either of them under a ``"state_dict"`` entry. Only tensors are
    unpickled (``weights_only=True``), on the CPU.

    Args:
        path: checkpoint file.

    Returns:
        The state dict, keys without the ``module.`` prefix. Its keys are not checked against
        MODNet here; :func:`load_modnet_checkpoint` does that.

    Raises:
        WeightsNotFoundError: if ``path`` does not exist (a ``FileNotFoundError``).
        WeightsError: if the file is not a PyTorch checkpoint holding a state dict of tensors (a
            ``ValueError``).
    """
    path = Path(path)
    if path.is_dir():
        raise WeightsNotFoundError(f"MODNet checkpoint {path} is a folder; give the .ckpt file")
    if not path.is_file():
        raise WeightsNotFoundError(f"MODNet checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as error:
        raise WeightsError(
            f"{path} is not a PyTorch checkpoint that can be loaded safely: {error}"
        ) from error

    if isinstance(payload, Mapping) and isinstance(payload.get("state_dict"), Mapping):
        payload = payload["state_dict"]
    if not isinstance(payload, Mapping) or not payload:
        raise WeightsError(f"{path} does not hold a state dict (found {type(payload).__name__})")
    not_tensors = [key for key, value in payload.items() if not isinstance(value, Tensor)]
    if not_tensors:
        raise WeightsError(
            f"{path} is not a plain state dict: entries that are not tensors: {_some(not_tensors)}"
        )
    return {key.removeprefix(DATAPARALLEL_PREFIX): value for key, value in payload.items()}


def load_modnet_checkpoint(path: str | PathLike[str]) -> MODNet:
    """Build a :class:`MODNet` with the weights of ``path``, in eval mode, on the CPU.

    Args:
        path: checkpoint in the official layout (see module docstring) or without the prefix.

    Returns:
        The model in eval mode; move it to a device yourself.

    Raises:
        WeightsNotFoundError: if ``path`` does not exist.
        WeightsError: if the file is not a MODNet checkpoint: missing or unexpected keys, shapes
            that differ, or two different copies of the shared encoder.
    """
    state_dict = modnet_state_dict_from_checkpoint(path)
    model = MODNet()
    _check_matches_modnet(state_dict, model.state_dict(), path)
    model.load_state_dict(state_dict, strict=True)
    logger.info("loaded MODNet weights from %s (%d tensors)", path, len(state_dict))
    return model.eval()


def save_modnet_checkpoint(model: MODNet, path: str | PathLike[str]) -> Path:
    """Save ``model``'s weights in the official layout (``module.`` prefix, encoder listed twice).

    The two encoder entries share storage, so the file holds the encoder once, like the
    published checkpoint. Tensors are written from the CPU whatever device the model is on.

    Args:
        model: the network; a ``DataParallel``/``DistributedDataParallel`` wrapper is unwrapped.
        path: destination file; missing parent folders are created.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model = model.module
    # Copy each storage to the CPU once, so the entries that share it (the encoder) still share
    # it in the file instead of being written twice.
    on_cpu: dict[tuple[int, torch.device], Tensor] = {}
    state_dict = {}
    for key, tensor in model.state_dict().items():
        source = (tensor.data_ptr(), tensor.device)
        if source not in on_cpu:
            on_cpu[source] = tensor.detach().cpu()
        state_dict[DATAPARALLEL_PREFIX + key] = on_cpu[source]

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state_dict, path)
    logger.info("saved MODNet weights to %s (%d tensors)", path, len(state_dict))
    return path


def _check_matches_modnet(
    state_dict: Mapping[str, Tensor], expected: Mapping[str, Tensor], path: Path
) -> None:
    """Raise ``WeightsError``, naming the first offending keys, if ``state_dict`` is not MODNet's."""
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    if missing or unexpected:
        raise WeightsError(
            f"{path} is not a MODNet checkpoint: {len(missing)} missing keys {_some(missing)}, "
            f"{len(unexpected)} unexpected keys {_some(unexpected)}"
        )
    wrong_shape = [
        f"{key} {tuple(state_dict[key].shape)} != {tuple(tensor.shape)}"
        for key, tensor in expected.items()
        if state_dict[key].shape != tensor.shape
    ]
    if wrong_shape:
        raise WeightsError(
            f"{path} is not a MODNet checkpoint with default hyperparameters: {_some(wrong_shape)}"
        )
    # Both copies load into the same parameters, so the later one would silently win; a file
    # saved from MODNet always has them equal.
    shared_prefix, alias_prefix = "backbone.", "lr_branch.backbone."
    differing = [
        key
        for key in expected
        if key.startswith(shared_prefix)
        and not torch.equal(state_dict[key], state_dict[alias_prefix + key[len(shared_prefix):]])
    ]
    if differing:
        raise WeightsError(
            f"{path} holds two different copies of the shared encoder "
            f"('{shared_prefix}*' and '{alias_prefix}*'): {_some(differing)}"
        )


def _some(items: list[str]) -> str:
    shown = ", ".join(items[:_KEYS_SHOWN])
    more = f" and {len(items) - _KEYS_SHOWN} more" if len(items) > _KEYS_SHOWN else ""
    return f"[{shown}{more}]"
