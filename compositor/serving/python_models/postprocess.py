"""Triton Python-backend model ``postprocess``: residual upsampling back to the source canvas.

Served through the repository's ``postprocess/1/model.py``, which imports this class. It calls
``compositor.imaging.postprocess`` unchanged, the very function the eager pipeline calls, passing
every input of this model's config by name (the config's input names are that function's
parameter names; ``alpha``, the client's matte, is optional). Outputs are cast to the data types
of the config. Not batched across requests: every request has its own frame size.
"""

import triton_python_backend_utils as pb_utils

from compositor import imaging
from compositor.serving.python_models.stage import StageModel


class TritonPythonModel(StageModel):
    def run(self, request, inputs):
        results = imaging.postprocess(**inputs)
        # Only what the ensemble asked for: with the client's matte, alpha would only echo it.
        wanted = set(request.requested_output_names()) or set(self.outputs)
        tensors = [
            pb_utils.Tensor(name, results[name].astype(dtype, copy=False))
            for name, dtype in self.outputs.items()
            if name in wanted
        ]
        return pb_utils.InferenceResponse(output_tensors=tensors)
