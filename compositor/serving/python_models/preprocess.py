"""Triton Python-backend model ``preprocess``: validate a request and bring it to the network resolution.

Served through the repository's ``preprocess/1/model.py``, which imports this class. It calls ``compositor.imaging.preprocess``
unchanged, the very function the eager pipeline calls, with the request's tensors named as in this
model's config (``source``, ``background`` and the optional ``alpha``). The network resolution is
the config parameter ``resolution`` (``"512"``: aspect buckets, each request resized to the bucket
nearest its source's proportions; ``"256x384"``: one fixed size); the ``buckets`` parameter lists
the sizes that makes, and must agree with it.

One model serves both ensembles (see ``compositor.contract.stages``): a request with ``alpha``
(``composite_with_alpha``) also gets ``network_alpha`` back. Not batched across requests: every
request has its own frame size. A bad request (RGBA source, matte of the wrong size, a side over
the limit...) gets an INVALID_ARG error response naming the problem, a bug an INTERNAL one (see
``error_boundary``); the other requests and the server go on.
"""

import triton_python_backend_utils as pb_utils

from compositor import imaging
from compositor.contract.parameters import BUCKETS_PARAMETER, RESOLUTION_PARAMETER
from compositor.serving.python_models.stage import StageModel
from compositor.contract.stages import PREPARED_FIELDS
from compositor.contract.spec import format_buckets, parse_resolution


class TritonPythonModel(StageModel):
    def initialize(self, args):
        super().initialize(args)
        unknown = set(self.outputs) - set(PREPARED_FIELDS)
        if unknown:
            raise pb_utils.TritonModelException(f"preprocess: config outputs {sorted(unknown)} are not produced by imaging.preprocess")
        parameters = {key: value["string_value"] for key, value in self.config["parameters"].items()}
        self.resolution = parse_resolution(parameters[RESOLUTION_PARAMETER])
        # A hand-edited bucket list would tell clients sizes this model never makes.
        listed = parameters.get(BUCKETS_PARAMETER)
        if listed is not None and listed != format_buckets(self.resolution):
            raise pb_utils.TritonModelException(
                f"preprocess: parameter {BUCKETS_PARAMETER}={listed!r} does not match {RESOLUTION_PARAMETER}="
                f"{parameters[RESOLUTION_PARAMETER]!r}, whose buckets are {format_buckets(self.resolution)!r}; "
                "regenerate the repository with 'compositor repository'"
            )

    def run(self, request, inputs):
        prepared = imaging.preprocess(resolution=self.resolution, **inputs)
        tensors = []
        for name, dtype in self.outputs.items():
            value = getattr(prepared, PREPARED_FIELDS[name])
            if value is not None:  # network_alpha exists only when the client sent a matte
                tensors.append(pb_utils.Tensor(name, value.astype(dtype, copy=False)))
        return pb_utils.InferenceResponse(output_tensors=tensors)
