"""The weights' provenance record: where each network's weights came from, and how it travels.

The export records it (``export_report.json``, ``weights.provenance``); ``compositor repository``
writes each network's record (kind, file name, SHA-256, note) into its ``config.pbtxt`` as the
parameter ``weights_provenance`` (``PROVENANCE_PARAMETER``); the client reads it back from
``get_model_config(..., as_json=True)`` and warns once per server and process when a network is
untrained, so a deployment of seeded weights does not pass for a real one.

A light module (json only): no tritonclient, no numpy.

Example:
    >>> config = grpc_client.get_model_config("matting", as_json=True)  # doctest: +SKIP
    >>> provenance_from_config(config)["kind"]                            # doctest: +SKIP
    'untrained'
"""

from __future__ import annotations

import json

PROVENANCE_PARAMETER = "weights_provenance"
"""Config parameter of each network model (``matting``, ``blending``, ``harmonization``): where its
weights came from, as a JSON string ``{"kind", "file", "sha256", "note"}`` (``PROVENANCE_KINDS``).
The export records it (``export_report.json``, ``weights.provenance``), the repository generator
copies it into the configs, and the client reads it back to warn about untrained networks."""

PROVENANCE_KINDS = ("trained", "published", "published_checkpoint", "untrained", "unknown")
"""``trained``: our safetensors file (``weights/``); ``published``: the published MODNet converted by
set-up (``weights/modnet_photographic_portrait_matting.safetensors``); ``published_checkpoint``: a
MODNet checkpoint in the published format; ``untrained``: the seeded initialisation; ``unknown``: not recorded (a
repository generated without an export, or from an export made before provenance was recorded)."""

PROVENANCE_FIELDS = ("kind", "file", "sha256", "note")
"""The fields of a provenance record, in the order they are written."""


def provenance_record(kind: str, file: str | None = None, sha256: str | None = None, note: str | None = None) -> dict:
    """A record with every field, in ``PROVENANCE_FIELDS`` order.

    Raises:
        ValueError: ``kind`` is not one of ``PROVENANCE_KINDS``.
    """
    if kind not in PROVENANCE_KINDS:
        raise ValueError(f"weights provenance kind must be one of {', '.join(PROVENANCE_KINDS)}, not {kind!r}")
    return {"kind": kind, "file": file, "sha256": sha256, "note": note}


def as_provenance_record(value) -> dict | None:
    """``value``'s fields as a record when it is one (a dict with a known kind), else None."""
    if not isinstance(value, dict) or value.get("kind") not in PROVENANCE_KINDS:
        return None
    return {key: value.get(key) for key in PROVENANCE_FIELDS}


def unknown_provenance(note: str) -> dict:
    """A provenance record of kind ``unknown``: nothing is known about the weights but ``note``."""
    return provenance_record("unknown", note=note)


def provenance_from_config(config: dict) -> dict:
    """The weights' provenance record in a model's config.

    Args:
        config: the model config as JSON, as tritonclient's ``get_model_config(name, as_json=True)``
            returns it: over gRPC wrapped as ``{"config": {...}}``, over HTTP the config itself.

    Returns:
        ``{"kind", "file", "sha256", "note"}``; kind ``unknown`` (the note says why) when the
        config has no such parameter (a repository from before provenance was recorded) or its
        value is not a readable record.
    """
    if isinstance(config.get("config"), dict):
        config = config["config"]
    parameter = (config.get("parameters") or {}).get(PROVENANCE_PARAMETER)
    name = config.get("name", "?")
    if parameter is None:
        return unknown_provenance(f"model {name!r} has no {PROVENANCE_PARAMETER} parameter (repository generated before it was recorded)")
    # gRPC's JSON keeps the proto field names (string_value); accept the camelCase form too.
    text = parameter.get("string_value", parameter.get("stringValue")) if isinstance(parameter, dict) else None
    try:
        record = json.loads(text)
    except (TypeError, ValueError) as error:
        return unknown_provenance(f"model {name!r}: unreadable {PROVENANCE_PARAMETER} ({type(error).__name__}: {error})")
    checked = as_provenance_record(record)
    if checked is None:
        return unknown_provenance(f"model {name!r}: {PROVENANCE_PARAMETER} is not a provenance record: {text[:200]}")
    return checked


def summary(provenance_by_network: dict[str, dict]) -> str:
    """One line: each network's kind, with its file and the start of its SHA-256 when there is one."""
    return "; ".join(
        f"{name} {record['kind']}" + (f" ({record['file']}, sha256 {record['sha256'][:12]})" if record.get("sha256") else "")
        for name, record in provenance_by_network.items()
    )


def untrained_networks(provenance_by_network: dict[str, dict]) -> list[str]:
    """The networks whose record says ``untrained``, in the order given."""
    return [name for name, record in provenance_by_network.items() if (record or {}).get("kind") == "untrained"]
