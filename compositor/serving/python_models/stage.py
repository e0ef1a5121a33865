"""What the ``preprocess`` and ``postprocess`` Python-backend models share: reading a request's
tensors by the names in the model's own config, and answering bad input with an error response.

Imported by those models; it needs ``triton_python_backend_utils`` and so
only imports inside Triton's Python-backend stub.
"""

import json
from abc import ABC, abstractmethod

import triton_python_backend_utils as pb_utils


class StageModel(ABC):
    """Base of a per-request stage: ``run(request, inputs)`` returns one ``InferenceResponse``."""

    def initialize(self, args):
        self.config = json.loads(args["model_config"])
        self.input_names = [t["name"] for t in self.config["input"]]
        self.outputs = {t["name"]: pb_utils.triton_string_to_numpy(t["data_type"]) for t in self.config["output"]}

    def execute(self, requests):
        return [self._respond(request) for request in requests]

    def _respond(self, request):
        inputs = {}
        for name in self.input_names:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is not None:  # optional inputs (alpha) may be absent
                inputs[name] = tensor.as_numpy()
        try:
            return self.run(request, inputs)
        except ValueError as error:  # imaging.ImageError: the client's data, not the server, is at fault
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(str(error), pb_utils.TritonError.INVALID_ARG))

    @abstractmethod
    def run(self, request, inputs):
        """Answer one request from its input arrays (by config name)."""
