"""What the ``preprocess`` and ``postprocess`` Python-backend models share: reading a request's
tensors by the names in the model's own config, and answering each request on its own, bad input
with an INVALID_ARG error and a bug with an INTERNAL one (``error_boundary``).

Imported by those models; it needs ``triton_python_backend_utils`` and so
only imports inside Triton's Python-backend stub.
"""

import json
from abc import ABC, abstractmethod

import triton_python_backend_utils as pb_utils

from compositor.serving.python_models.error_boundary import error_response


class StageModel(ABC):
    """Base of a per-request stage: ``run(request, inputs)`` returns one ``InferenceResponse``."""

    def initialize(self, args):
        self.config = json.loads(args["model_config"])
        self.name = self.config["name"]
        self.input_names = [t["name"] for t in self.config["input"]]
        self.outputs = {t["name"]: pb_utils.triton_string_to_numpy(t["data_type"]) for t in self.config["output"]}

    def execute(self, requests):
        return [self._respond(request) for request in requests]

    def _respond(self, request):
        try:
            inputs = {}
            for name in self.input_names:
                tensor = pb_utils.get_input_tensor_by_name(request, name)
                if tensor is not None:  # optional inputs (alpha) may be absent
                    inputs[name] = tensor.as_numpy()
            return self.run(request, inputs)
        except Exception as error:  # noqa: BLE001 - one request's failure must not fail the others
            return error_response(self.name, error)

    @abstractmethod
    def run(self, request, inputs):
        """Answer one request from its input arrays (by config name)."""
