"""Security defaults: what a client that can reach the server's ports can and cannot do, and what
the code never does with untrusted data (unpickle it, hand it to a shell).

The loopback bind of all three endpoints is tested in ``test_server.py``
(``test_the_server_binds_only_to_loopback_and_is_ready``).
"""

from __future__ import annotations

import ast
import functools
import json
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

import compositor
from compositor.serving.server import TritonServer

from triton_probes import free_ports, write_identity_repository

PACKAGE_DIR = Path(compositor.__file__).parent

@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> Path:
    return write_identity_repository(tmp_path_factory.mktemp("repository"))


def start_server(repository: Path, **options) -> TritonServer:
    return TritonServer(repository, **free_ports(), **options).start()


@pytest.fixture(scope="module")
def default_server(repository):
    server = start_server(repository)
    yield server
    server.stop()


def http(server: TritonServer, method: str, path: str, body: dict | None = None) -> tuple[int, str]:
    data = json.dumps(body).encode() if body is not None else (b"{}" if method == "POST" else None)
    request = urllib.request.Request(f"http://{server.http_url}{path}", method=method, data=data)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


RESTRICTED_HTTP = [
    ("GET", "/v2/systemsharedmemory/status"),
    ("POST", "/v2/systemsharedmemory/region/stolen/register"),
    ("GET", "/v2/cudasharedmemory/status"),
    ("GET", "/v2/trace/setting"),
    ("POST", "/v2/trace/setting"),
    ("GET", "/v2/logging"),
    ("POST", "/v2/logging"),
]


@pytest.mark.triton
@pytest.mark.parametrize(("method", "path"), RESTRICTED_HTTP)
def test_the_shared_memory_trace_and_logging_apis_are_refused_over_http_by_default(default_server, method, path):
    status, body = http(default_server, method, path)
    assert status == 403, body
    assert "This API is restricted" in body


@pytest.mark.triton
def test_the_shared_memory_trace_and_logging_apis_are_refused_over_grpc_by_default(default_server):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(default_server.grpc_url)
    calls = {
        "shared memory status": client.get_system_shared_memory_status,
        "shared memory register": lambda: client.register_system_shared_memory("stolen", "/stolen", 64),
        "trace settings": client.get_trace_settings,
        "trace update": lambda: client.update_trace_settings(settings={"trace_level": ["TIMESTAMPS"]}),
        "log settings": client.get_log_settings,
        "log update": lambda: client.update_log_settings({"log_verbose_level": 1}),
    }
    for call in calls.values():
        # Triton 2.51 answers UNAVAILABLE (not PERMISSION_DENIED), with this message.
        with pytest.raises(InferenceServerException, match="This protocol is restricted, expecting header"):
            call()


@pytest.mark.triton
def test_models_cannot_be_loaded_or_unloaded_over_either_protocol(default_server):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    for action in ("load", "unload"):
        status, body = http(default_server, "POST", f"/v2/repository/models/identity/{action}")
        assert status >= 400 and "not allowed" in body, (action, status, body)
    client = grpcclient.InferenceServerClient(default_server.grpc_url)
    with pytest.raises(InferenceServerException, match="not allowed"):
        client.load_model("identity")
    with pytest.raises(InferenceServerException, match="not allowed"):
        client.unload_model("identity")
    assert client.is_model_ready("identity")


@pytest.mark.triton
def test_inference_health_metadata_and_the_repository_index_stay_open(default_server):
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(default_server.grpc_url)
    assert client.is_server_ready()
    assert [m.name for m in client.get_model_repository_index().models] == ["identity"]
    assert client.get_model_config("identity").config.name == "identity"
    data = np.array([[0.5, -2.0, 3.25]], dtype=np.float32)
    infer_input = grpcclient.InferInput("INPUT0", list(data.shape), "FP32")
    infer_input.set_data_from_numpy(data)
    np.testing.assert_array_equal(client.infer("identity", [infer_input]).as_numpy("OUTPUT0"), data)
    assert http(default_server, "GET", "/v2/models/identity/config")[0] == 200


@pytest.mark.triton
def test_allow_shared_memory_opens_only_the_shared_memory_api_and_the_secret_is_never_logged(repository, caplog):
    import psutil

    caplog.set_level("INFO", logger="compositor.serving.server")
    server = start_server(repository, allow_shared_memory=True)
    try:
        assert http(server, "GET", "/v2/systemsharedmemory/status") == (200, "[]")
        assert http(server, "GET", "/v2/trace/setting")[0] == 403
        assert http(server, "GET", "/v2/logging")[0] == 403
        restriction = [a for a in psutil.Process(server.pid).cmdline() if a.startswith("--http-restricted-api=")]
        assert len(restriction) == 1 and restriction[0].startswith("--http-restricted-api=trace,logging,inference:")
        secret = restriction[0].rsplit("=", 1)[1]
        assert len(secret) >= 32
    finally:
        server.stop()
    assert "starting Triton" in caplog.text
    assert secret not in caplog.text
    assert secret not in server.log_path.read_text()


def test_the_serve_command_refuses_shared_memory_unless_asked():
    from compositor.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["serve", "--repository", "r"]).allow_shared_memory is False
    assert parser.parse_args(["serve", "--repository", "r", "--allow-shared-memory"]).allow_shared_memory is True
    assert parser.parse_args(["serve", "--repository", "r"]).allow_http_inference is False
    assert parser.parse_args(["serve", "--repository", "r", "--allow-http-inference"]).allow_http_inference is True


IDENTITY_REQUEST = {"inputs": [{"name": "INPUT0", "shape": [1, 3], "datatype": "FP32", "data": [0.5, -2.0, 3.25]}]}


@pytest.mark.triton
def test_inference_over_http_is_refused_by_default_and_grpc_health_and_metadata_stay_open(default_server):
    """Triton's HTTP/JSON front end allocates what a request declares (``HTTP_RESTRICTED_APIS``):
    refused before the body is parsed, while gRPC inference and HTTP health and metadata answer."""
    import tritonclient.grpc as grpcclient

    status, body = http(default_server, "POST", "/v2/models/identity/infer", IDENTITY_REQUEST)
    assert status == 403 and "This API is restricted" in body, (status, body)
    assert http(default_server, "GET", "/v2/health/ready")[0] == 200
    assert http(default_server, "GET", "/v2/models/identity")[0] == 200
    client = grpcclient.InferenceServerClient(default_server.grpc_url)
    data = np.array([[1.0, 2.0, 3.0]], dtype=np.float32)
    infer_input = grpcclient.InferInput("INPUT0", list(data.shape), "FP32")
    infer_input.set_data_from_numpy(data)
    np.testing.assert_array_equal(client.infer("identity", [infer_input]).as_numpy("OUTPUT0"), data)
    grpc_restriction = [a for a in psutil_cmdline(default_server) if a.startswith("--grpc-restricted-protocol=")]
    assert len(grpc_restriction) == 1 and "inference" not in grpc_restriction[0].split(":")[0]


@pytest.mark.triton
def test_allow_http_inference_opens_inference_over_http_only(repository):
    server = start_server(repository, allow_http_inference=True)
    try:
        status, body = http(server, "POST", "/v2/models/identity/infer", IDENTITY_REQUEST)
        assert status == 200, body
        assert json.loads(body)["outputs"][0]["data"] == [0.5, -2.0, 3.25]
        assert http(server, "GET", "/v2/systemsharedmemory/status")[0] == 403
        assert http(server, "GET", "/v2/trace/setting")[0] == 403
    finally:
        server.stop()


def psutil_cmdline(server: TritonServer) -> list[str]:
    import psutil

    return psutil.Process(server.pid).cmdline()


# --- what the code never does ------------------------------------------------------------------


@functools.cache
def package_sources() -> dict[str, ast.Module]:
    sources = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        sources[str(path.relative_to(PACKAGE_DIR.parent))] = ast.parse(path.read_text(), filename=str(path))
    return sources


def dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{dotted(node.value)}.{node.attr}"
    return ""


def keyword_is_true(call: ast.Call, name: str) -> bool:
    return any(k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is True for k in call.keywords)


def offending_calls(check) -> list[str]:
    found = []
    for filename, tree in package_sources().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and (problem := check(node, dotted(node.func))):
                found.append(f"{filename}:{node.lineno}: {problem}")
    return found


def test_the_package_source_is_scanned():
    sources = package_sources()
    assert "compositor/networks/modnet_checkpoint.py" in sources and len(sources) > 30


def test_no_weights_are_loaded_by_unpickling_arbitrary_objects():
    unpicklers = {"pickle.load", "pickle.loads", "pickle.Unpickler", "dill.load", "dill.loads", "joblib.load",
                  "cloudpickle.load", "cloudpickle.loads", "yaml.unsafe_load"}

    def check(call: ast.Call, name: str) -> str | None:
        if name == "torch.load" and not keyword_is_true(call, "weights_only"):
            return "torch.load without weights_only=True"
        if name in unpicklers:
            return name
        if name in ("np.load", "numpy.load") and keyword_is_true(call, "allow_pickle"):
            return f"{name}(allow_pickle=True)"
        return None

    assert offending_calls(check) == []
    imported = [
        f"{filename}: from {node.module} import {', '.join(a.name for a in node.names)}"
        for filename, tree in package_sources().items()
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module in ("pickle", "dill", "cloudpickle")
        and any(a.name in ("load", "loads", "Unpickler") for a in node.names)
    ]
    assert imported == []


def test_no_shell_command_is_ever_built():
    def check(call: ast.Call, name: str) -> str | None:
        if name in ("os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput"):
            return name
        if any(k.arg == "shell" and not (isinstance(k.value, ast.Constant) and k.value.value is False) for k in call.keywords):
            return f"{name or 'a call'} with shell="
        return None

    assert offending_calls(check) == []


class RunsCodeWhenUnpickled:
    """Unpickling this creates ``marker``: what a malicious checkpoint would do instead."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_modnet_checkpoint_that_would_run_code_is_refused_and_the_code_does_not_run(tmp_path):
    from compositor.networks.modnet_checkpoint import load_modnet_checkpoint
    from compositor.networks.weights import WeightsError

    marker = tmp_path / "code-ran"
    checkpoint = tmp_path / "modnet.ckpt"
    torch.save({"module.backbone.weight": torch.zeros(1), "payload": RunsCodeWhenUnpickled(marker)}, checkpoint)
    assert not marker.exists()
    with pytest.raises(WeightsError, match=r"modnet\.ckpt is not a PyTorch checkpoint that can be loaded safely"):
        load_modnet_checkpoint(checkpoint)
    assert not marker.exists()
