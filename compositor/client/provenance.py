"""Where a deployment's weights came from, read from the network models' configs on the server.

``compositor repository`` writes each network's provenance record (kind, file name, SHA-256, note)
into its ``config.pbtxt`` as the parameter ``weights_provenance`` (``PROVENANCE_PARAMETER``). The
client reads it from ``get_model_config(..., as_json=True)`` and warns once per server and process
when a network is untrained, so a deployment of seeded weights does not pass for a real one.

A light module (json and logging only): no tritonclient, no numpy.

Example:
    >>> config = grpc_client.get_model_config("matting", as_json=True)  # doctest: +SKIP
    >>> provenance_from_config(config)["kind"]                            # doctest: +SKIP
    'untrained'
"""

from __future__ import annotations

import json
import logging
import threading

from compositor.serving.conventions import PROVENANCE_FIELDS, PROVENANCE_KINDS, PROVENANCE_PARAMETER, unknown_provenance

log = logging.getLogger("compositor.client")

_warned_urls: set[str] = set()
_warned_lock = threading.Lock()


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
    if not isinstance(record, dict) or record.get("kind") not in PROVENANCE_KINDS:
        return unknown_provenance(f"model {name!r}: {PROVENANCE_PARAMETER} is not a provenance record: {text[:200]}")
    return {key: record.get(key) for key in PROVENANCE_FIELDS}


def summary(provenance_by_network: dict[str, dict]) -> str:
    """One line: each network's kind, with its file and the start of its SHA-256 when there is one."""
    return "; ".join(
        f"{name} {record['kind']}" + (f" ({record['file']}, sha256 {record['sha256'][:12]})" if record.get("sha256") else "")
        for name, record in provenance_by_network.items()
    )


def untrained_networks(provenance_by_network: dict[str, dict]) -> list[str]:
    """The networks whose record says ``untrained``, in the order given."""
    return [name for name, record in provenance_by_network.items() if (record or {}).get("kind") == "untrained"]


def warn_untrained_once(url: str, networks: list[str]) -> None:
    """Log one WARNING per process and ``url`` naming the untrained ``networks`` (none: nothing).

    Logged on the ``compositor.client`` logger; later calls for the same ``url`` stay silent, so a
    pool of clients or a long batch job says it once.
    """
    if not networks:
        return
    with _warned_lock:
        if url in _warned_urls:
            return
        _warned_urls.add(url)
    log.warning(
        "the server at %s runs UNTRAINED (seeded) weights for: %s. Its outputs show the plumbing, not the "
        "quality. Deploy trained weights: export ('compositor export') where set-up obtained the published MODNet "
        "(scripts/setup.sh) or with its checkpoint (--modnet-checkpoint or MODNET_CHECKPOINT), with the trained "
        "weights/*.safetensors, then regenerate the "
        "repository with 'compositor repository --onnx DIR'; its PROVENANCE.md lists what each network runs.",
        url,
        ", ".join(networks),
    )
