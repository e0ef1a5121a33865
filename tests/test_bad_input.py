"""Bad input against the real server: both ensembles, gRPC and HTTP, through the client and raw.

Every bad request is sent five ways where it can be: through ``CompositorClient`` (``validate=False``,
so the server, not the client, has to refuse it) over gRPC and over HTTP, as a hand-built
``tritonclient.grpc`` request, and as raw KServe-v2 HTTP requests (a JSON body with ``data`` lists,
and the binary-data extension); a declared shape the data does not fill can only be sent raw. For
each one the test checks that the error names the problem, that the server is still ready and
answers the next good request with exactly the bytes it gave before any bad request, and that the server's resident memory (``tritonserver`` plus its Python-backend
stubs, sampled every ~20 ms while the request runs) stays under 4 GiB. The table of cases, errors
and peak memory is printed (``pytest -s``) and written to ``bad_input.json`` in a temporary folder.

The default, validating client refuses the same frames itself, before any request goes out.

One weakness is Triton's own: its HTTP/JSON front end allocates the shape a request declares before
reading the data, so a few bytes declaring exabytes end the server (a strict xfail records it, on a server
that lets the caller in); the containment, ``--http-restricted-api=inference:<header>=<key>``,
refuses a caller without the key before the body is parsed, and is ``compositor serve``'s default
(``--allow-http-inference`` lifts it). gRPC and the HTTP binary extension
compare the declared size with the bytes carried first and are not affected.

The CLI cases (files that are not images, truncated PNG/JPEG, a video with no frames) check that
the error is named and that nothing is written for the failed item.
"""

from __future__ import annotations

import http.client
import json
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import skimage.data

from compositor import imaging
from compositor.cli import main
from compositor.client.remote import ClientError, CompositorClient
from compositor.contract.spec import MAX_IMAGE_SIDE

from triton_probes import family_rss, http_status, stub_command_lines

pytestmark = pytest.mark.triton

MAX_SERVER_RSS_BYTES = 4 * 1024**3
"""The issue's bound on the server's resident memory (Triton and its stubs) during a bad request."""
SAMPLE_INTERVAL_S = 0.02
PROTOCOLS = ("grpc", "http")
PATHS = ("client-grpc", "client-http", "raw-grpc", "raw-http-json", "raw-http-binary")
DTYPES = {"UINT8": np.uint8, "INT16": np.int16, "FP32": np.float32}

SOURCE = imaging.resize(skimage.data.astronaut(), (40, 48))
BACKGROUND = imaging.resize(skimage.data.coffee(), (30, 36))
MATTE = (np.arange(40 * 48, dtype=np.uint32).reshape(40, 48, 1) % 256).astype(np.uint8)

TABLE: list[dict] = []


# --- Fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(small_server):
    return small_server


@pytest.fixture(scope="module")
def clients(server):
    made = {p: CompositorClient(server.grpc_url if p == "grpc" else server.http_url, protocol=p, timeout_s=60, validate=False)
            for p in PROTOCOLS}
    yield made
    for client in made.values():
        client.close()


@pytest.fixture(scope="module")
def known_answers(clients):
    """Each ensemble's answer to a good request, taken before any bad request (over gRPC)."""
    client = clients["grpc"]
    return {"composite": client.composite(SOURCE, BACKGROUND), "composite_with_alpha": client.composite(SOURCE, BACKGROUND, MATTE)}


@pytest.fixture(scope="module", autouse=True)
def table_report(tmp_path_factory):
    """Prints the table of bad inputs and writes it to ``bad_input.json`` once the module is done."""
    yield
    if not TABLE:
        return
    path = tmp_path_factory.mktemp("bad_input") / "bad_input.json"
    path.write_text(json.dumps(TABLE, indent=1))
    print(f"\n\nBad inputs ({len(TABLE)} requests; table also in {path}):")
    print(f"{'case':<34} {'model':<21} {'path':<16} {'peak RSS MiB':>12}  error")
    for row in TABLE:
        print(f"{row['case']:<34} {row['model']:<21} {row['path']:<16} {row['peak_rss_mib']:>12.0f}  {row['error']}")


# --- Memory ---------------------------------------------------------------------------------------


class PeakRss:
    """Samples ``family_rss`` in a background thread while the ``with`` block runs; ``peak`` in bytes."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, family_rss(self.pid))
            if self._done.wait(SAMPLE_INTERVAL_S):
                self.peak = max(self.peak, family_rss(self.pid))
                return

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._done.set()
        self._thread.join()


# --- Requests -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tensor:
    """One request input: ``shape`` is what the request declares; ``data`` what it carries."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray


def tensor(name: str, array: np.ndarray, datatype: str = "UINT8", shape: tuple[int, ...] | None = None) -> Tensor:
    array = np.ascontiguousarray(array, dtype=DTYPES[datatype])
    return Tensor(name, datatype, tuple(array.shape) if shape is None else shape, array)


def good_inputs(model: str) -> dict[str, Tensor]:
    inputs = {"source": tensor("source", SOURCE[None]), "background": tensor("background", BACKGROUND[None])}
    if model == "composite_with_alpha":
        inputs["alpha"] = tensor("alpha", MATTE[None])
    return inputs


OUTPUTS = ("blended", "harmonized")


class Refused(Exception):
    """A request the server (or a layer in front of its models) refused; the message is its error."""


def send_client(clients, protocol, model, inputs: dict[str, Tensor]) -> None:
    try:
        clients[protocol].infer(model, {t.name: t.data for t in inputs.values()}, list(OUTPUTS))
    except ClientError as error:
        raise Refused(str(error)) from error


def send_raw_grpc(server, model, inputs: dict[str, Tensor]) -> None:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    request = []
    for t in inputs.values():
        item = grpcclient.InferInput(t.name, list(t.data.shape), t.datatype)
        item.set_data_from_numpy(t.data)
        item.set_shape(list(t.shape))  # the declared shape, which may claim more than the data
        request.append(item)
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        try:
            client.infer(model, request, outputs=[grpcclient.InferRequestedOutput(n) for n in OUTPUTS], client_timeout=60)
        except InferenceServerException as error:
            raise Refused(f"{error.message()} [{error.status()}]") from error


def post(server, path: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    host, port = server.http_url.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        connection.request("POST", path, body=body, headers={"Content-Type": "application/octet-stream", **(headers or {})})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def raise_for_http(status: int, body: bytes) -> None:
    if status != 200:
        try:
            message = json.loads(body)["error"]
        except (ValueError, KeyError, TypeError):
            message = body.decode(errors="replace")
        raise Refused(f"{message} [{status}]")


def send_raw_json(server, model, inputs: dict[str, Tensor]) -> None:
    body = {"inputs": [{"name": t.name, "shape": list(t.shape), "datatype": t.datatype, "data": t.data.ravel().tolist()}
                       for t in inputs.values()],
            "outputs": [{"name": n} for n in OUTPUTS]}
    raise_for_http(*post(server, f"/v2/models/{model}/infer", json.dumps(body).encode()))


def send_raw_binary(server, model, inputs: dict[str, Tensor]) -> None:
    header = {"inputs": [{"name": t.name, "shape": list(t.shape), "datatype": t.datatype,
                          "parameters": {"binary_data_size": t.data.nbytes}} for t in inputs.values()],
              "outputs": [{"name": n, "parameters": {"binary_data": True}} for n in OUTPUTS]}
    header_bytes = json.dumps(header).encode()
    body = header_bytes + b"".join(t.data.tobytes() for t in inputs.values())
    raise_for_http(*post(server, f"/v2/models/{model}/infer", body, {"Inference-Header-Content-Length": str(len(header_bytes))}))


def send(path, server, clients, model, inputs) -> None:
    if path.startswith("client-"):
        send_client(clients, path.removeprefix("client-"), model, inputs)
    elif path == "raw-grpc":
        send_raw_grpc(server, model, inputs)
    elif path == "raw-http-json":
        send_raw_json(server, model, inputs)
    else:
        send_raw_binary(server, model, inputs)


def is_ready(server) -> bool:
    return http_status(f"http://{server.http_url}/v2/health/ready", timeout_s=10) == 200


def refuse_and_recover(server, clients, known_answers, case, model, path, attempt) -> str:
    """Runs ``attempt`` (which must raise ``Refused``) under ``PeakRss``; checks memory, readiness and
    the next good request; records a table row; returns the error text."""
    with PeakRss(server.pid) as rss:
        with pytest.raises(Refused) as caught:
            attempt()
    error = str(caught.value)
    TABLE.append({"case": case, "model": model, "path": path, "error": error[:120], "peak_rss_mib": rss.peak / 2**20})
    assert 0 < rss.peak < MAX_SERVER_RSS_BYTES, f"server RSS peaked at {rss.peak / 2**20:.0f} MiB"
    assert is_ready(server), "the server is not ready after the bad request"
    protocol = "http" if "http" in path else "grpc"
    alpha = MATTE if model == "composite_with_alpha" else None
    outputs = clients[protocol].composite(SOURCE, BACKGROUND, alpha)
    for name in OUTPUTS:
        assert np.array_equal(outputs[name], known_answers[model][name]), f"{name} differs after the bad request"
    return error


# --- The bad tensors ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """A bad request: ``changes`` replace inputs of the good one; ``message`` must be in its error."""

    name: str
    changes: dict[str, Tensor]
    message: str
    models: tuple[str, ...] = ("composite", "composite_with_alpha")
    paths: tuple[str, ...] = PATHS


DISHONEST_PATHS = ("raw-grpc", "raw-http-json", "raw-http-binary")

CASES = [
    Case("dtype float32", {"source": tensor("source", SOURCE[None], "FP32")},
         r"inference input 'source' data-type is 'FP32', but model '\w+' expects 'UINT8'"),
    Case("dtype int16", {"background": tensor("background", BACKGROUND[None], "INT16")},
         r"inference input 'background' data-type is 'INT16', but model '\w+' expects 'UINT8'"),
    # Triton reads the first dimension as the batch, so an unbatched 2-D image is first a batch mismatch.
    Case("rank 2 (40x48)", {"source": tensor("source", SOURCE[..., 0])}, r"input 'source' batch size does not match other inputs"),
    Case("rank 2 (1x5760, flattened)", {"source": tensor("source", SOURCE.reshape(1, -1))},
         r"unexpected shape for input 'source' for model '\w+'. Expected \[-1,-1,-1,3\], got \[1,5760\]"),
    Case("rank 5", {"source": tensor("source", SOURCE[None, None])},
         r"unexpected shape for input 'source' for model '\w+'. Expected \[-1,-1,-1,3\], got \[1,1,40,48,3\]"),
    Case("1 channel", {"source": tensor("source", SOURCE[None, ..., :1])},
         r"unexpected shape for input 'source' for model '\w+'. Expected \[-1,-1,-1,3\], got \[1,40,48,1\]"),
    Case("4 channels (RGBA)", {"background": tensor("background", np.concatenate([BACKGROUND, BACKGROUND[..., :1]], -1)[None])},
         r"unexpected shape for input 'background' for model '\w+'. Expected \[-1,-1,-1,3\], got \[1,30,36,4\]"),
    Case("zero height", {"source": tensor("source", np.zeros((1, 0, 48, 3)))}, r"source.*empty"),
    Case("batches disagree (2 vs 1)", {"source": tensor("source", np.stack([SOURCE, SOURCE]))}, r"input 'source' batch size does not match other inputs"),
    Case(f"side over {MAX_IMAGE_SIDE}", {"source": tensor("source", np.zeros((1, MAX_IMAGE_SIDE + 1, 1, 3)))},
         r"exceeds the 8192-pixel side limit", models=("composite",)),
    Case("batch 9 (max_batch_size 8)", {"source": tensor("source", np.zeros((9, 4, 4, 3))),
                                       "background": tensor("background", np.zeros((9, 4, 4, 3)))},
         r"inference request batch-size must be <= 8 for '\w+'", models=("composite",)),
    Case(f"side over {MAX_IMAGE_SIDE}", {"source": tensor("source", np.zeros((1, MAX_IMAGE_SIDE + 1, 1, 3))),
                                         "alpha": tensor("alpha", np.zeros((1, MAX_IMAGE_SIDE + 1, 1, 1)))},
         r"exceeds the 8192-pixel side limit", models=("composite_with_alpha",)),
    Case("declared 4000x4000, carries 12 values", {"source": tensor("source", np.zeros((1, 2, 2, 3)), shape=(1, 4000, 4000, 3))},
         r"input byte size mismatch for input 'source' for model '\w+'. Expected 48000000, got 12"
         r"|Unable to parse 'data': Shape does not match true shape of 'data' field", paths=DISHONEST_PATHS),
    Case("declared 8x8192x8192 (1.6 GB), carries 12 values",
         {"source": tensor("source", np.zeros((1, 2, 2, 3)), shape=(8, 8192, 8192, 3)),
          "background": tensor("background", np.zeros((1, 2, 2, 3)), shape=(8, 8192, 8192, 3))},
         r"input byte size mismatch for input '\w+' for model '\w+'. Expected 1610612736, got 12"
         r"|Unable to parse 'data': Shape does not match true shape of 'data' field", paths=DISHONEST_PATHS, models=("composite",)),
    # Over HTTP/JSON this one kills Triton (see test_an_http_json_request_declaring_exabytes_...).
    Case("declared 2^30x2^30 (3 EiB), carries 12 values",
         {"source": tensor("source", np.zeros((1, 2, 2, 3)), shape=(1, 1 << 30, 1 << 30, 3))},
         r"input byte size mismatch for input 'source' for model '\w+'. Expected 3458764513820540928, got 12",
         paths=("raw-grpc", "raw-http-binary")),
    Case("matte of the wrong size", {"alpha": tensor("alpha", MATTE[None, :20, :24])},
         r"alpha: size 24x20 \(batch 1\) does not match source 48x40", models=("composite_with_alpha",)),
    Case("matte batch 2, source batch 1", {"alpha": tensor("alpha", np.stack([MATTE, MATTE]))},
         r"input '(background|source)' batch size does not match other inputs", models=("composite_with_alpha",)),
    Case("matte with 3 channels", {"alpha": tensor("alpha", np.repeat(MATTE, 3, -1)[None])},
         r"unexpected shape for input 'alpha' for model '\w+'. Expected \[-1,-1,-1,1\], got \[1,40,48,3\]", models=("composite_with_alpha",)),
]

PARAMS = [
    pytest.param(case, model, path, id=f"{case.name}-{model}-{path}")
    for case in CASES for model in case.models for path in case.paths
]


@pytest.mark.parametrize(("case", "model", "path"), PARAMS)
def test_a_bad_tensor_is_refused_naming_the_problem_and_the_server_serves_on(server, clients, known_answers, case, model, path):
    inputs = {**good_inputs(model), **case.changes}
    error = refuse_and_recover(server, clients, known_answers, case.name, model, path,
                               lambda: send(path, server, clients, model, inputs))
    assert re.search(case.message, error), error


LOCAL = [
    ("dtype float32", {"source": SOURCE.astype(np.float32)}, r"source: expected uint8 pixels, got float32"),
    ("rank 2", {"source": SOURCE[..., 0]}, r"source: expected shape \[B, H, W, 3\], got \[40, 48\]"),
    ("4 channels (RGBA)", {"background": np.concatenate([BACKGROUND, BACKGROUND[..., :1]], -1)},
     r"background: expected 3 channel\(s\), got 4 \(RGBA\)"),
    ("zero height", {"source": np.zeros((0, 48, 3), np.uint8)}, r"source: image is empty \(shape \[1, 0, 48, 3\]\)"),
    ("batches disagree (2 vs 1)", {"source": np.stack([SOURCE, SOURCE]), "background": BACKGROUND[None]},
     r"background: batch 1 differs from source batch 2"),
    (f"side over {MAX_IMAGE_SIDE}", {"source": np.zeros((MAX_IMAGE_SIDE + 1, 1, 3), np.uint8)},
     r"source: 1x8193 \(width x height\) exceeds the 8192-pixel side limit"),
    ("matte of the wrong size", {"alpha": MATTE[:20, :24]}, r"alpha: size 24x20 \(batch 1\) does not match source 48x40"),
]


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(("case", "frames", "message"), LOCAL, ids=[c[0] for c in LOCAL])
def test_the_validating_client_refuses_a_bad_frame_before_sending_it(server, protocol, case, frames, message):
    from compositor.imaging import ImageError

    inputs = {"source": SOURCE, "background": BACKGROUND, **frames}
    with CompositorClient(server.grpc_url if protocol == "grpc" else server.http_url, protocol=protocol) as client:
        with pytest.raises(ImageError, match=message):
            client.composite(inputs["source"], inputs["background"], inputs.get("alpha"))
        assert client.attempts == 0  # refused locally: no request went out


# --- The HTTP/JSON front end allocates what a request declares ---------------------------------------
#
# Triton 2.51's HTTP server sizes the buffer for a JSON "data" input from the declared shape before
# it reads a value: 12 values declared as 8x8192x8192x3 cost the server 1.5 GB of RSS (the table
# above), and a declared 3 EiB fails the allocation and ends the process. gRPC and the HTTP binary
# extension compare the declared size with the bytes carried first (the cases above). Triton is ours
# to configure, not to patch: the containment is an option, ``--http-restricted-api=inference:...``,
# under which a request without the header is refused before its body is parsed.

INFERENCE_KEY_HEADER = "compositor-inference-key"


@pytest.fixture(scope="module")
def restricted_server(small_repository, triton_servers):
    """A server of its own (one test ends it) whose HTTP inference API needs ``INFERENCE_KEY_HEADER``."""
    key = "test-key-0123456789"
    # Stopped at the end of the session whatever happens.
    server = triton_servers.start(small_repository, allow_shared_memory=False,
                                  extra_args=[f"--http-restricted-api=inference:{INFERENCE_KEY_HEADER}={key}"])
    return server, key


def json_declaring_exabytes() -> bytes:
    body = {"inputs": [{"name": "source", "shape": [1, 1 << 30, 1 << 30, 3], "datatype": "UINT8", "data": [7] * 12},
                       {"name": "background", "shape": [1, 2, 2, 3], "datatype": "UINT8", "data": [7] * 12}]}
    return json.dumps(body).encode()


@pytest.mark.slow
def test_with_http_inference_restricted_a_json_request_declaring_exabytes_without_the_key_is_refused_unparsed(restricted_server):
    server, _ = restricted_server
    with PeakRss(server.pid) as rss:
        status, body = post(server, "/v2/models/composite/infer", json_declaring_exabytes())
    TABLE.append({"case": "declared 3 EiB, JSON, no inference key", "model": "composite", "path": "raw-http-json (restricted)",
                  "error": body.decode()[:120], "peak_rss_mib": rss.peak / 2**20})
    assert status == 403
    assert f"This API is restricted, expecting header '{INFERENCE_KEY_HEADER}'" in body.decode()
    assert 0 < rss.peak < MAX_SERVER_RSS_BYTES
    assert server.is_running() and is_ready(server)


def test_the_http_client_refused_inference_says_how_to_open_it(restricted_server):
    """What a user of ``--protocol http`` meets on a server with HTTP inference closed (``compositor serve``'s default)."""
    server, _ = restricted_server
    with CompositorClient(server.http_url, protocol="http") as client:
        with pytest.raises(ClientError, match=r"refuses inference over HTTP .*use gRPC.*--allow-http-inference"):
            client.composite(SOURCE, BACKGROUND)
    assert server.is_running() and is_ready(server)


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=AssertionError,
                   reason="Triton 2.51's HTTP/JSON parser allocates the declared shape before reading the data: a "
                          "declared 3 EiB input ends the server; contained by default (compositor serve refuses HTTP "
                          "inference unless --allow-http-inference)")
def test_an_http_json_request_declaring_exabytes_leaves_the_server_running(restricted_server):
    server, key = restricted_server
    regions = [Path("/dev/shm") / argv[2] for _, argv in stub_command_lines(server.pid)]
    with PeakRss(server.pid) as rss:
        try:
            status, body = post(server, "/v2/models/composite/infer", json_declaring_exabytes(), {INFERENCE_KEY_HEADER: key})
            error = body.decode()
        except (ConnectionError, http.client.HTTPException) as failure:
            status, error = None, f"{type(failure).__name__}: {failure}"
    deadline = time.monotonic() + 5
    while server.is_running() and time.monotonic() < deadline:  # a dying server takes a moment to exit
        time.sleep(0.1)
    if not server.is_running():
        # A crashed Triton leaves its stubs' shared memory behind; a few runs would fill /dev/shm.
        for region in regions:
            region.unlink(missing_ok=True)
    TABLE.append({"case": "declared 3 EiB, JSON, with the key", "model": "composite", "path": "raw-http-json",
                  "error": f"{error[:100]} (server running: {server.is_running()})", "peak_rss_mib": rss.peak / 2**20})
    assert server.is_running(), f"the server died ({error})"
    assert status == 400, error


# --- Bodies that are not requests ---------------------------------------------------------------


BODIES = [
    ("body not JSON", b"this is not json {", {}, r"JSON"),
    ("JSON without inputs", json.dumps({"outputs": [{"name": "harmonized"}]}).encode(), {}, r"inputs"),
    ("JSON with empty inputs", json.dumps({"inputs": []}).encode(), {}, r"expected 2 inputs|input"),
    ("binary header longer than body", b'{"inputs": []}', {"Inference-Header-Content-Length": "1000"}, r"header|length|size"),
    ("binary data missing", json.dumps({"inputs": [
        {"name": "source", "shape": [1, 40, 48, 3], "datatype": "UINT8", "parameters": {"binary_data_size": 5760}},
        {"name": "background", "shape": [1, 30, 36, 3], "datatype": "UINT8", "parameters": {"binary_data_size": 3240}}]}).encode(),
     "header", r"binary|size|data"),
]


@pytest.mark.parametrize("model", ["composite", "composite_with_alpha"])
@pytest.mark.parametrize(("case", "body", "headers", "message"), BODIES, ids=[b[0] for b in BODIES])
def test_a_body_that_is_not_a_request_is_refused_naming_the_problem(server, clients, known_answers, model, case, body, headers, message):
    if headers == "header":
        headers = {"Inference-Header-Content-Length": str(len(body))}
    error = refuse_and_recover(server, clients, known_answers, case, model, "raw-http",
                               lambda: raise_for_http(*post(server, f"/v2/models/{model}/infer", body, headers)))
    assert re.search(message, error), error



# --- Files through the CLI -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A good background, and sources that are not images: text, truncated PNG and JPEG, empty."""
    root = tmp_path_factory.mktemp("files")
    imaging.write_image(root / "beach.png", BACKGROUND)
    imaging.write_image(root / "whole.png", SOURCE)
    imaging.write_image(root / "whole.jpg", SOURCE)
    bad = {
        "notes.png": b"not an image, whatever its name says\n",
        "cut_png.png": (root / "whole.png").read_bytes()[: (root / "whole.png").stat().st_size // 2],
        "cut_jpeg.jpg": (root / "whole.jpg").read_bytes()[: (root / "whole.jpg").stat().st_size // 2],
        "empty.jpg": b"",
    }
    for name, data in bad.items():
        (root / name).write_bytes(data)
    return root, sorted(bad)


BAD_FILES = ["cut_jpeg.jpg", "cut_png.png", "empty.jpg", "notes.png"]


@pytest.mark.parametrize("name", BAD_FILES)
def test_a_source_file_that_is_not_a_readable_image_is_named_and_nothing_is_written(server, files, name, tmp_path, capsys):
    root, _ = files
    out = tmp_path / "out"
    code = main(["composite", "--url", server.grpc_url, "--source", str(root / name), "--background", str(root / "beach.png"),
                 "--out", str(out)])
    assert code == 2
    assert f"{root / name}: not a readable image" in capsys.readouterr().err
    assert not out.exists()


def test_a_folder_with_unreadable_files_names_each_and_writes_only_the_good_item(server, files, tmp_path, capsys):
    root, bad = files
    folder = tmp_path / "sources"
    folder.mkdir()
    for name in [*bad, "whole.png"]:
        (folder / name).write_bytes((root / name).read_bytes())
    out = tmp_path / "out"
    code = main(["composite", "--url", server.grpc_url, "--source", str(folder), "--background", str(root / "beach.png"),
                 "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1
    for name in bad:
        assert re.search(rf"{re.escape(name)}: .*not a readable image", err), (name, err)
    assert sorted(p.name for p in out.iterdir()) == ["whole"]
    assert sorted(p.name for p in (out / "whole").iterdir()) == ["alpha.png", "blended.png", "harmonized.png"]


def write_video_without_frames(path: Path) -> None:
    """A valid MP4 container (header and index written) in which no video frame was ever encoded.

    FFmpeg's MP4 muxer keeps no trace of a stream without samples, so reading it back finds no
    video stream at all: the command must say so rather than write an empty video."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 48, 40, "yuv420p"
        container.start_encoding()
        for packet in stream.encode():  # flush only: no frame was ever encoded
            container.mux(packet)


@pytest.mark.parametrize("kind", ["no frames", "zero bytes"])
def test_a_video_with_no_frames_is_named_and_no_output_is_written(server, files, kind, tmp_path, capsys):
    root, _ = files
    video = tmp_path / "talk.mp4"
    if kind == "no frames":
        write_video_without_frames(video)
    else:
        video.write_bytes(b"")
    out = tmp_path / "out.mp4"
    code = main(["composite", "--url", server.grpc_url, "--source", str(video), "--background", str(root / "beach.png"),
                 "--out", str(out)])
    err = capsys.readouterr().err
    assert code != 0
    expected = "has no video stream" if kind == "no frames" else "not a readable video"
    assert f"{video}: {expected}" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["talk.mp4"]
