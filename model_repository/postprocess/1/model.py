"""Triton Python-backend model ``postprocess``: residual upsampling back to the source canvas.

Copied into the repository as ``postprocess/1/model.py``. It calls
``compositor.imaging.postprocess`` unchanged, the very function the eager pipeline calls, passing
every input of this model's config by name (the config's input names are that function's
parameter names; ``alpha``, the client's matte, is optional). Outputs are cast to the data types
of the config. Not batched across requests: every request has its own frame size.
"""

import json

import triton_python_backend_utils as pb_utils

from compositor import imaging


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.input_names = [t["name"] for t in config["input"]]
        self.outputs = {t["name"]: pb_utils.triton_string_to_numpy(t["data_type"]) for t in config["output"]}

    def execute(self, requests):
        return [self._run(request) for request in requests]

    def _run(self, request):
        inputs = {}
        for name in self.input_names:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is not None:  # optional inputs (alpha) may be absent
                inputs[name] = tensor.as_numpy()
        try:
            results = imaging.postprocess(**inputs)
        except ValueError as error:
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(str(error), pb_utils.TritonError.INVALID_ARG))
        # Only what the ensemble asked for: with the client's matte, alpha would only echo it.
        wanted = set(request.requested_output_names()) or set(self.outputs)
        tensors = [
            pb_utils.Tensor(name, results[name].astype(dtype, copy=False))
            for name, dtype in self.outputs.items()
            if name in wanted
        ]
        return pb_utils.InferenceResponse(output_tensors=tensors)
