"""What a Triton server deploys, read from the server itself: ensemble and network names, limits,
network resolution and where each network's weights came from.

Nothing here is hard-coded on the client side: the ensembles are found among the server's ready
models by their signature (the inputs and outputs of ``compositor.contract.spec.COMPOSITE`` and
``COMPOSITE_WITH_ALPHA``), the networks by walking the ensemble's steps and matching each step's
signature against ``compositor.contract.spec.NETWORKS``, the resolution from the ``preprocess`` step's
config parameter, the batch limit from the ensemble's ``max_batch_size``. A repository generated
under other model names (or two deployments side by side on one server) works the same.

Example:
    >>> import tritonclient.grpc  # doctest: +SKIP
    >>> deployment = read_deployment(tritonclient.grpc.InferenceServerClient("localhost:8001"), "grpc", "localhost:8001")
    >>> deployment.composite, deployment.resolution  # doctest: +SKIP
    ('composite', (512, 512))

Importing this module costs no Triton client: ``read_deployment`` takes a client already made.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from compositor.client.errors import ModelNotReadyError
from compositor.contract.parameters import RESOLUTION_PARAMETER
from compositor.contract import provenance as weights_provenance
from compositor.contract.stages import PREPROCESS
from compositor.contract.spec import COMPOSITE, COMPOSITE_WITH_ALPHA, MAX_IMAGE_SIDE, NETWORKS, ModelSpec, Resolution, parse_resolution

log = logging.getLogger(__name__)


class DeploymentError(ModelNotReadyError):
    """The server answers but does not serve a compositing ensemble that the client can use."""


@dataclass(frozen=True)
class Deployment:
    """A compositing deployment as one server reports it.

    Attributes:
        url: ``host:port`` it was read from.
        protocol: ``grpc`` or ``http``.
        composite: name of the ensemble with the signature of ``spec.COMPOSITE``.
        composite_with_alpha: name of the ensemble with the signature of ``spec.COMPOSITE_WITH_ALPHA``,
            or None when the server does not serve one (then requests with a matte cannot be sent).
        max_batch_size: largest batch one request may carry (the ensemble's ``max_batch_size``).
        resolution: the server's network resolution (``spec.Resolution``): the aspect buckets
            frames are resized to (the nearest to each frame's proportions), or one fixed size.
        max_image_side: largest accepted source or background side, pixels.
        networks: served model name per network (``matting``, ``blending``, ``harmonization``).
        provenance: per network (same keys), where its weights came from, as the repository
            records it (``compositor.contract.provenance``): ``{"kind": "trained" |
            "published_checkpoint" | "untrained" | "unknown", "file", "sha256", "note"}``.
    """

    url: str
    protocol: str
    composite: str
    composite_with_alpha: str | None
    max_batch_size: int
    resolution: Resolution
    max_image_side: int = MAX_IMAGE_SIDE
    networks: dict[str, str] = field(default_factory=dict)
    provenance: dict[str, dict] = field(default_factory=dict)

    @property
    def ensembles(self) -> dict[str, str]:
        """Served ensemble name by spec name (``{"composite": ..., "composite_with_alpha": ...}``)."""
        names = {COMPOSITE.name: self.composite}
        if self.composite_with_alpha is not None:
            names[COMPOSITE_WITH_ALPHA.name] = self.composite_with_alpha
        return names

    def untrained_networks(self) -> list[str]:
        """Networks whose weights the repository records as untrained."""
        return weights_provenance.untrained_networks(self.provenance)


def read_deployment(triton_client, protocol: str, url: str, timeout_s: float | None = None) -> Deployment:
    """Read the deployment a Triton server serves, and warn (once per URL) about untrained networks.

    Args:
        triton_client: a ``tritonclient.grpc`` or ``tritonclient.http`` ``InferenceServerClient``.
        protocol: ``grpc`` or ``http`` (which of the two ``triton_client`` is).
        url: ``host:port`` of the server, for messages and the warning.
        timeout_s: gRPC deadline per call (HTTP clients carry their own timeout).

    Returns:
        The deployment.

    Raises:
        DeploymentError: no ready ensemble with the compositing signature, or an ensemble whose
            steps do not include the three networks and ``preprocess``.
        tritonclient.utils.InferenceServerException, OSError: the server could not be asked (the
            caller maps these to its own errors).
    """
    kwargs = {"client_timeout": timeout_s} if protocol == "grpc" and timeout_s is not None else {}
    where = f"{protocol}://{url}"

    def config_of(model: str) -> dict:
        if protocol == "grpc":
            raw = triton_client.get_model_config(model, as_json=True, **kwargs)
        else:  # HTTP answers JSON already
            raw = triton_client.get_model_config(model)
        return _unwrap(raw)

    index = triton_client.get_model_repository_index(as_json=True, **kwargs) if protocol == "grpc" else triton_client.get_model_repository_index()
    entries = index.get("models", []) if isinstance(index, dict) else index
    ready = sorted(e["name"] for e in entries if e.get("state") == "READY")
    configs = {}
    for name in ready:
        configs[name] = config_of(name)
    ensembles = [name for name in ready if configs[name].get("platform") == "ensemble"]
    composite = _find_ensemble(ensembles, configs, COMPOSITE)
    with_alpha = _find_ensemble(ensembles, configs, COMPOSITE_WITH_ALPHA)
    if composite is None:
        raise DeploymentError(
            f"{where} serves no ready ensemble with the inputs {', '.join(COMPOSITE.input_names())} and outputs "
            f"{', '.join(COMPOSITE.output_names())} (models there: {', '.join(ready) or 'none'}); "
            "is the server running the compositor repository?"
        )

    composite_config = configs[composite]
    steps = [step["model_name"] for step in composite_config.get("ensemble_scheduling", {}).get("step", [])]
    for step in steps:
        if step not in configs:  # a step model that is not ready would have kept the ensemble from loading
            configs[step] = config_of(step)
    roles = {_role(configs[step]): step for step in steps}
    missing = [role for role in (PREPROCESS.name, *NETWORKS) if role not in roles]
    if missing:
        raise DeploymentError(
            f"ensemble {composite!r} on {where} has no step with the signature of {', '.join(missing)} "
            f"(its steps: {', '.join(steps)}); it is not a compositor deployment this client knows"
        )

    preprocess = configs[roles[PREPROCESS.name]]
    parameters = _parameters(preprocess)
    # "512": aspect buckets; "512x512": one fixed size, which is also what repositories from
    # before aspect buckets recorded (their networks took that one size).
    if RESOLUTION_PARAMETER in parameters:
        resolution = parse_resolution(parameters[RESOLUTION_PARAMETER])
    else:  # older repositories still: the matting network's input is fixed at the resolution
        resolution = parse_resolution(tuple(int(d) for d in configs[roles["matting"]]["input"][0]["dims"][1:3]))

    networks = {name: roles[name] for name in NETWORKS}
    provenance = {name: weights_provenance.provenance_from_config(configs[model]) for name, model in networks.items()}
    deployment = Deployment(
        url=url,
        protocol=protocol,
        composite=composite,
        composite_with_alpha=with_alpha,
        max_batch_size=int(composite_config.get("max_batch_size", 0)),
        resolution=resolution,
        networks=networks,
        provenance=provenance,
    )
    log.debug("%s: %s", where, deployment)
    warn_untrained_once(url, deployment.untrained_networks())
    return deployment


def _unwrap(config: dict) -> dict:
    """The model config itself: gRPC's JSON wraps it in ``{"config": ...}``, HTTP's does not."""
    return config["config"] if "config" in config and isinstance(config["config"], dict) else config


def _signature(config: dict) -> tuple[frozenset, frozenset]:
    def tensors(key):
        return frozenset((t["name"], t.get("data_type", "")) for t in config.get(key, []))

    return tensors("input"), tensors("output")


def _spec_signature(model: ModelSpec) -> tuple[frozenset, frozenset]:
    def tensors(specs):
        return frozenset((t.name, "TYPE_" + {"uint8": "UINT8", "float32": "FP32"}[t.dtype]) for t in specs)

    return tensors(model.inputs), tensors(model.outputs)


def _find_ensemble(ensembles: list[str], configs: dict, model: ModelSpec) -> str | None:
    """The ensemble whose inputs and outputs are ``model``'s; the one of the spec's name if several are."""
    matches = [name for name in ensembles if _signature(configs[name]) == _spec_signature(model)]
    if len(matches) > 1:
        chosen = model.name if model.name in matches else matches[0]
        log.warning("several ensembles have the signature of %s (%s); using %s", model.name, ", ".join(matches), chosen)
        return chosen
    return matches[0] if matches else None


def _role(config: dict) -> str | None:
    """Which spec model a step is (``preprocess`` or a network name), by its inputs and outputs."""
    inputs, outputs = (frozenset(name for name, _ in tensors) for tensors in _signature(config))
    for spec in (PREPROCESS, *NETWORKS.values()):
        if inputs == set(spec.input_names()) and outputs == set(spec.output_names()):
            return spec.name
    return None


def _parameters(config: dict) -> dict[str, str]:
    return {key: value.get("string_value", "") for key, value in config.get("parameters", {}).items()}


_warned_urls: set[str] = set()
_warned_lock = threading.Lock()


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
    logging.getLogger("compositor.client").warning(
        "the server at %s runs UNTRAINED (seeded) weights for: %s. Its outputs show the plumbing, not the "
        "quality. Deploy trained weights: export ('compositor export') where set-up obtained the published MODNet "
        "(scripts/setup.sh) or with its checkpoint (--modnet-checkpoint or MODNET_CHECKPOINT), with the trained "
        "weights/*.safetensors, then regenerate the "
        "repository with 'compositor repository --onnx DIR'; its PROVENANCE.md lists what each network runs.",
        url,
        ", ".join(networks),
    )
