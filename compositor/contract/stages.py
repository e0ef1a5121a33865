"""Tensor contract of the ensemble's own stages: the ``preprocess`` and ``postprocess`` models.

``compositor.contract.spec`` defines what clients and networks see; this module defines the tensors that
only travel *inside* the ensembles, between the Python pre/post-processing models and the
networks. Their names are the parameter names of ``compositor.imaging.preprocess`` and
``compositor.imaging.postprocess`` (``network_*`` for the float tensors at network resolution),
so each Python model calls its imaging function with the tensors named in its own config.

One ``preprocess`` and one ``postprocess`` model serve both ensembles: ``alpha`` (the client's
matte) is an *optional* input of both (``optional: true`` in the config). ``composite`` leaves it
unmapped and takes ``network_alpha`` from ``matting``; ``composite_with_alpha`` maps it, and then
``preprocess`` returns ``network_alpha`` (the matte at network resolution) and ``matting`` is not
a step at all. Separate ``*_with_alpha`` variants would duplicate two models and their configs
to express one ``if``.
"""

from __future__ import annotations

from compositor.contract.spec import COMPOSITE, COMPOSITE_WITH_ALPHA, ModelSpec, TensorSpec


def _network(name: str, channels: int) -> TensorSpec:
    return TensorSpec(name, "float32", (channels, "H", "W"))


_BACKGROUND_FULL = TensorSpec("background_full", "uint8", (-1, -1, 3))
_SOURCE, _BACKGROUND, _ALPHA = COMPOSITE_WITH_ALPHA.inputs

PREPROCESS = ModelSpec(
    "preprocess",
    inputs=(_SOURCE, _BACKGROUND, _ALPHA),
    outputs=(
        _network("network_source", 3),
        _network("network_background", 3),
        _network("network_alpha", 1),
        _BACKGROUND_FULL,
    ),
)
"""uint8 NHWC frames in; network-resolution float32 NCHW tensors and the full-size background out.

``network_alpha`` is only produced when the request carries ``alpha``."""

POSTPROCESS = ModelSpec(
    "postprocess",
    inputs=(
        _SOURCE,
        _BACKGROUND_FULL,
        _network("network_source", 3),
        _network("network_background", 3),
        _network("network_alpha", 1),
        _network("network_refined_alpha", 1),
        _network("network_blended", 3),
        _network("network_harmonized", 3),
        _ALPHA,
    ),
    outputs=COMPOSITE.outputs,
)
"""Residual upsampling of the network outputs back to the source canvas (uint8 NHWC out)."""

STAGES: dict[str, ModelSpec] = {m.name: m for m in (PREPROCESS, POSTPROCESS)}

OPTIONAL_INPUTS: dict[str, frozenset[str]] = {
    "preprocess": frozenset({"alpha"}),
    "postprocess": frozenset({"alpha"}),
}
"""Inputs a request may leave out (Triton ``optional: true``), per stage model."""

PREPARED_FIELDS: dict[str, str] = {
    "network_source": "source",
    "network_background": "background",
    "network_alpha": "alpha",
    "background_full": "background_full",
}
"""``preprocess`` output name -> attribute of ``compositor.imaging.Prepared`` that fills it."""
