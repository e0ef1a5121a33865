"""Triton Python-backend model running one network (matting, blending or harmonization) in ONNX Runtime.

In the ``python`` repository flavour, ``<network>/1/model.py`` imports this class; next to it lies the FP32
``model.onnx``. Tensor names and dtypes come from the model's own ``config.pbtxt`` (generated from
``compositor.contract.spec``), and ``initialize`` checks that the ONNX graph has the same inputs, at the
same network resolution, so a stale or mismatched export fails at load time with a clear message.

Triton's dynamic batcher hands ``execute`` several requests at once; they are concatenated along
the batch axis, run as one ONNX Runtime call, and split back, one response per request.
"""

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils

from compositor.onnx_runtime import create_session
from compositor.contract.parameters import INTRA_OP_THREADS_PARAMETER, MODEL_FILE
from compositor.serving.python_models.error_boundary import error_response

ONNX_FILE = MODEL_FILE["python"]


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.name = config["name"]
        self.inputs = {t["name"]: pb_utils.triton_string_to_numpy(t["data_type"]) for t in config["input"]}
        self.outputs = {t["name"]: pb_utils.triton_string_to_numpy(t["data_type"]) for t in config["output"]}
        input_dims = {t["name"]: [int(d) for d in t["dims"]] for t in config["input"]}
        threads = int(config.get("parameters", {}).get(INTRA_OP_THREADS_PARAMETER, {}).get("string_value", "0"))

        path = os.path.join(args["model_repository"], args["model_version"], ONNX_FILE)
        if not os.path.isfile(path):
            raise pb_utils.TritonModelException(
                f"{self.name}: {path} is missing; generate the repository with "
                "'compositor repository --onnx DIR --flavor python'"
            )
        # Each model instance is its own process, and the ensemble runs several at once (preprocess
        # of one request while another is in a network): idle threads must not spin on the cores.
        self.session = create_session(path, intra_op_threads=threads, allow_spinning=False)
        _check_graph(self.name, self.session, input_dims, list(self.outputs))

    def execute(self, requests):
        # Triton has checked the requests' names, shapes and data types against the config, so any
        # failure here is the server's (an export that does not run, a bug): INTERNAL, with the
        # traceback in the server log, for every request of the batch.
        try:
            return self._run_batch(requests)
        except Exception as error:  # noqa: BLE001 - a failed batch gets error responses, the server goes on
            return [error_response(self.name, error) for _ in requests]

    def _run_batch(self, requests):
        batches = [{name: pb_utils.get_input_tensor_by_name(r, name).as_numpy() for name in self.inputs} for r in requests]
        sizes = [len(next(iter(b.values()))) for b in batches]
        feeds = {
            name: np.ascontiguousarray(np.concatenate([b[name] for b in batches]) if len(batches) > 1 else batches[0][name], dtype=dtype)
            for name, dtype in self.inputs.items()
        }
        results = self.session.run(list(self.outputs), feeds)

        responses, start = [], 0
        for size in sizes:
            tensors = [
                pb_utils.Tensor(name, np.ascontiguousarray(result[start : start + size], dtype=dtype))
                for (name, dtype), result in zip(self.outputs.items(), results)
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += size
        return responses

    def finalize(self):
        self.session = None


def _check_graph(name, session, input_dims, output_names):
    graph_inputs = {i.name: i.shape for i in session.get_inputs()}
    if set(graph_inputs) != set(input_dims):
        raise pb_utils.TritonModelException(
            f"{name}: model.onnx has inputs {sorted(graph_inputs)}, the config expects {sorted(input_dims)}; "
            "re-export with 'compositor export'"
        )
    for input_name, dims in input_dims.items():
        # The graph's batch axis is symbolic; every other axis must equal the config's dims.
        if [d if isinstance(d, int) else -1 for d in graph_inputs[input_name][1:]] != dims:
            raise pb_utils.TritonModelException(
                f"{name}: input {input_name!r} of model.onnx has shape {graph_inputs[input_name]}, the config "
                f"expects [batch, {', '.join(map(str, dims))}]; export and repository must use the same resolution"
            )
    graph_outputs = {o.name for o in session.get_outputs()}
    if not set(output_names) <= graph_outputs:
        raise pb_utils.TritonModelException(
            f"{name}: model.onnx has outputs {sorted(graph_outputs)}, the config expects {sorted(output_names)}"
        )
