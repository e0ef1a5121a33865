"""The Python-backend models' error boundary, through the real Triton server.

A request the client got wrong must come back as INVALID_ARG with the problem named, and a bug in
a model as INTERNAL, with its traceback in the server log. The models here are real models in a
real server: ``stage`` is a stage model built on the package's ``StageModel`` that refuses negative
values as bad input (an ``ImageError``) and otherwise reaches a bug (a numpy reshape to the wrong
size, a plain ``ValueError``); ``network`` is the package's ONNX Runtime network model on an ONNX
graph whose ``Gather`` index is out of range, so every run fails inside ONNX Runtime.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from compositor.serving.server import TritonServer

from triton_probes import IDENTITY_CONFIG, free_ports

pytestmark = pytest.mark.triton

STAGE_CONFIG = IDENTITY_CONFIG.format(name="stage", instances=1)

STAGE_MODEL = '''\
import triton_python_backend_utils as pb_utils

from compositor.imaging import ImageError
from compositor.serving.python_models.stage import StageModel


class TritonPythonModel(StageModel):
    def run(self, request, inputs):
        values = inputs["INPUT0"]
        if (values < 0).any():
            raise ImageError("INPUT0: negative values are not a picture")
        output = values.reshape(-1, 7)  # the bug: a plain numpy ValueError, not the client's fault
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("OUTPUT0", output)])
'''

NETWORK_CONFIG = """\
name: "network"
backend: "python"
max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ 3 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 1 ] } ]
instance_group [ { kind: KIND_CPU count: 1 } ]
parameters { key: "intra_op_thread_count" value { string_value: "1" } }
"""

NETWORK_MODEL = "from compositor.serving.python_models.onnxruntime_network import TritonPythonModel  # noqa: F401\n"

ENSEMBLE_CONFIG = """\
name: "stage_ensemble"
platform: "ensemble"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
ensemble_scheduling { step [ { model_name: "stage" model_version: -1
  input_map { key: "INPUT0" value: "INPUT0" } output_map { key: "OUTPUT0" value: "OUTPUT0" } } ] }
"""


def write_model(repository: Path, name: str, config: str, model: str | None = None) -> Path:
    (repository / name / "1").mkdir(parents=True)
    (repository / name / "config.pbtxt").write_text(config)
    if model is not None:
        (repository / name / "1" / "model.py").write_text(model)
    return repository / name / "1"


def write_out_of_range_gather(path: Path) -> None:
    """``y = x[:, [5]]`` for ``x`` of shape [batch, 3]: a valid graph that fails on every run."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])
    index = helper.make_tensor("index", TensorProto.INT64, [1], [5])
    graph = helper.make_graph([helper.make_node("Gather", ["x", "index"], ["y"], axis=1)], "broken", [x], [y], [index])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repository = tmp_path_factory.mktemp("repository")
    write_model(repository, "stage", STAGE_CONFIG, STAGE_MODEL)
    write_model(repository, "stage_ensemble", ENSEMBLE_CONFIG)
    write_out_of_range_gather(write_model(repository, "network", NETWORK_CONFIG, NETWORK_MODEL) / "model.onnx")
    log_path = tmp_path_factory.mktemp("log") / "tritonserver.log"
    with TritonServer(repository, **free_ports(), log_path=log_path, allow_http_inference=True) as server:  # its HTTP tests
        yield server


def grpc_error(server, model: str, name: str, values: np.ndarray):
    """The ``InferenceServerException`` a gRPC request gets (the test fails if it succeeds)."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    infer_input = grpcclient.InferInput(name, list(values.shape), "FP32")
    infer_input.set_data_from_numpy(values)
    with grpcclient.InferenceServerClient(server.grpc_url) as client, pytest.raises(InferenceServerException) as caught:
        client.infer(model, [infer_input])
    return caught.value


def http_error(server, model: str, name: str, values: np.ndarray):
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    infer_input = httpclient.InferInput(name, list(values.shape), "FP32")
    infer_input.set_data_from_numpy(values)
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        with pytest.raises(InferenceServerException) as caught:
            client.infer(model, [infer_input])
    finally:
        client.close()
    return caught.value


def wait_for_log(server, pattern: str, timeout_s: float = 10.0) -> str:
    """The server log once it matches ``pattern`` (the stub's log lines arrive through the server)."""
    deadline = time.monotonic() + timeout_s
    while True:
        text = server.log_path.read_text(errors="replace")
        if re.search(pattern, text) or time.monotonic() > deadline:
            return text
        time.sleep(0.1)


@pytest.mark.parametrize("model", ["stage", "stage_ensemble"])
def test_bad_input_is_the_clients_error_with_the_problem_named(server, model):
    error = grpc_error(server, model, "INPUT0", np.full((1, 3), -1.0, np.float32))
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert "INPUT0: negative values are not a picture" in error.message()
    error = http_error(server, model, "INPUT0", np.full((1, 3), -1.0, np.float32))
    assert error.status() == "400"
    assert "INPUT0: negative values are not a picture" in error.message()


@pytest.mark.parametrize("model", ["stage", "stage_ensemble"])
def test_a_bug_in_a_stage_model_is_an_internal_error_with_its_traceback_in_the_server_log(server, model):
    error = grpc_error(server, model, "INPUT0", np.ones((1, 3), np.float32))
    assert error.status() == "StatusCode.INTERNAL"
    assert "stage: internal error: ValueError: cannot reshape array of size 3" in error.message()
    assert "traceback is in the server log" in error.message()
    assert http_error(server, model, "INPUT0", np.ones((1, 3), np.float32)).status() == "500"
    log = wait_for_log(server, r"stage: internal error answering a request.*Traceback.*in run")
    assert re.search(r"stage: internal error answering a request.*Traceback.*in run.*values.reshape\(-1, 7\)", log)


def test_onnx_runtime_failing_in_a_network_model_is_an_internal_error(server):
    error = grpc_error(server, "network", "x", np.ones((2, 3), np.float32))
    assert error.status() == "StatusCode.INTERNAL"
    assert re.search(r"network: internal error: \w+: .*Gather", error.message())
    log = wait_for_log(server, r"network: internal error answering a request.*Traceback.*_run_batch")
    assert re.search(r"network: internal error answering a request.*Traceback.*_run_batch", log)


def test_the_server_keeps_serving_after_errors(server):
    import tritonclient.grpc as grpcclient

    grpc_error(server, "stage", "INPUT0", np.ones((1, 3), np.float32))
    values = np.arange(7, dtype=np.float32)[None]
    infer_input = grpcclient.InferInput("INPUT0", list(values.shape), "FP32")
    infer_input.set_data_from_numpy(values)
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        np.testing.assert_array_equal(client.infer("stage", [infer_input]).as_numpy("OUTPUT0"), values)
