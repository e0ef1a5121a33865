"""The generated repository on the real Triton server: both ensembles, gRPC and HTTP, against eager.

One server for the whole module (started once, on free ports) serves a ``python``-flavour
repository generated into a temporary folder from ONNX files exported at small aspect buckets
(short side 64: 64x64, 64x96, 96x64), so the suite stays fast on a 2-core CPU. The networks are the seeded untrained ones
with their zero-initialised residual heads given small random weights: otherwise blending and
harmonization would be exact identities and a wiring mistake between them could go unnoticed.

Every server output is compared with ``EagerPipeline`` on the same networks and inputs: uint8
values at most 1 level apart on at least 99.9% of the pixels (ONNX Runtime vs PyTorch rounding).
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import skimage.data

from compositor import imaging
from compositor.cli import main
from compositor.client.remote import ClientError, CompositorClient, ModelNotReadyError, RequestTimeoutError
from compositor.export.onnx_export import export_fp32
from compositor.networks.contract import contract_models
from compositor.runtimes import EagerPipeline
from compositor.serving.configs import RepositoryOptions
from compositor.serving.repository import generate_repository
from compositor.serving.server import TritonServer
from compositor.contract.spec import NETWORKS

from triton_probes import free_ports

pytestmark = pytest.mark.triton

RESOLUTION = 64
MAX_QUEUE_DELAY_US = 20_000
"""Longer than the default (1 ms) for margin: the single preprocess instance feeds the networks
one request every few ms and the networks at 64x64 finish about as fast, so with 1 ms the batcher
forms batches here (about 12 executions for 24 requests) but with little to spare on a busy CI
machine; with 20 ms it is 3 to 4."""

PROTOCOLS = ("grpc", "http")


# --- Fixtures: networks, ONNX, repository, server -------------------------------------------------


@pytest.fixture(scope="module")
def networks(nontrivial_networks):
    return nontrivial_networks


@pytest.fixture(scope="module")
def eager(networks):
    return EagerPipeline(networks, RESOLUTION)


@pytest.fixture(scope="module")
def onnx_dir(networks, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx")
    for name, module in contract_models(networks).items():
        export_fp32(module, name, out / f"{name}.onnx", RESOLUTION)
    return out


@pytest.fixture(scope="module")
def server(onnx_dir, tmp_path_factory):
    repository = tmp_path_factory.mktemp("repository")
    generate_repository(repository, RepositoryOptions(resolution=RESOLUTION, max_queue_delay_us=MAX_QUEUE_DELAY_US), export_dir=onnx_dir)
    log_path = tmp_path_factory.mktemp("log") / "tritonserver.log"
    with TritonServer(repository, **free_ports(), log_path=log_path, allow_http_inference=True) as server:  # its HTTP tests
        yield server


def _url(server, protocol):
    return server.grpc_url if protocol == "grpc" else server.http_url


@pytest.fixture(scope="module", params=PROTOCOLS)
def client(request, server):
    with CompositorClient(_url(server, request.param), protocol=request.param, timeout_s=60) as client:
        yield client


# --- Data and comparison ----------------------------------------------------------------------------


def photo(name: str, size: tuple[int, int] | None = None) -> np.ndarray:
    image = getattr(skimage.data, name)()
    return image if size is None else imaging.resize(image, size)


def soft_matte(height: int, width: int) -> np.ndarray:
    """A portrait-like matte: an ellipse with a soft edge, uint8 [H, W, 1]."""
    y, x = np.mgrid[0:height, 0:width]
    radius = np.hypot((y - 0.55 * height) / (0.42 * height), (x - 0.5 * width) / (0.3 * width))
    return (np.clip((1.1 - radius) / 0.2, 0, 1) * 255 + 0.5).astype(np.uint8)[..., None]


def assert_close(actual: np.ndarray, expected: np.ndarray, name: str) -> None:
    assert actual.shape == expected.shape and actual.dtype == expected.dtype == np.uint8, name
    diff = np.abs(actual.astype(np.int16) - expected.astype(np.int16))
    within = float(np.mean(diff <= 1))
    assert within >= 0.999, f"{name}: only {within:.4%} of values within 1 level (max diff {diff.max()})"


def assert_matches_eager(outputs: dict, expected, names=("alpha", "blended", "harmonized")) -> None:
    for name in names:
        assert_close(outputs[name], getattr(expected, name), name)


# --- Tests ------------------------------------------------------------------------------------------


def test_the_perturbed_networks_change_the_composite_so_the_comparison_means_something(eager):
    source, background = photo("astronaut", (128, 128)), photo("coffee", (128, 128))
    result = eager(source, background)
    weight = result.alpha / np.float32(255)
    linear = weight * source + (1 - weight) * imaging.cover_resize(background[None], (128, 128))[0]
    assert np.abs(result.blended - linear).mean() > 1.0
    assert np.abs(result.harmonized.astype(int) - result.blended).mean() > 1.0


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_composite_returns_what_the_eager_pipeline_returns(server, eager, protocol):
    source, background = photo("astronaut"), photo("coffee")
    with CompositorClient(_url(server, protocol), protocol=protocol) as client:
        outputs = client.composite(source, background)
    assert sorted(outputs) == ["alpha", "blended", "harmonized"]
    assert_matches_eager(outputs, eager(source, background))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_composite_with_alpha_uses_the_clients_matte_and_returns_what_eager_returns(server, eager, protocol):
    source, background = photo("chelsea"), photo("rocket")
    alpha = soft_matte(*source.shape[:2])
    with CompositorClient(_url(server, protocol), protocol=protocol) as client:
        outputs = client.composite(source, background, alpha)
    assert np.array_equal(outputs["alpha"], alpha)
    assert_matches_eager(outputs, eager(source, background, alpha), names=("blended", "harmonized"))


def test_a_batch_of_four_in_one_request_equals_eager_frame_by_frame(client, eager):
    size = (240, 320)
    sources = np.stack([photo(n, size) for n in ("astronaut", "chelsea", "coffee", "rocket")])
    backgrounds = np.stack([photo(n, (300, 300)) for n in ("rocket", "coffee", "immunohistochemistry", "astronaut")])
    outputs = client.composite(sources, backgrounds)
    assert outputs["harmonized"].shape == (4, *size, 3)
    assert_matches_eager(outputs, eager(sources, backgrounds))


def test_sources_of_different_sizes_in_one_run_each_equal_eager(client, eager):
    cases = [
        (photo("astronaut"), photo("coffee")),
        (photo("chelsea"), photo("astronaut", (720, 1280))),
        (photo("rocket", (120, 460)), photo("chelsea")),
        (photo("coffee", (401, 97)), photo("rocket")),
    ]
    def send(case):
        # A client per thread: the HTTP client is not thread-safe.
        with CompositorClient(client.url, protocol=client.protocol) as own:
            return own.composite(*case)

    # Concurrently, so requests of different sizes meet in the networks' dynamic batcher (which
    # batches those of one bucket and runs the others apart).
    with ThreadPoolExecutor(len(cases)) as pool:
        results = list(pool.map(send, cases))
    for (source, background), outputs in zip(cases, results):
        assert outputs["harmonized"].shape == source.shape
        assert_matches_eager(outputs, eager(source, background))


def test_the_ensemble_runs_a_3_2_frame_at_its_bucket_and_a_square_one_at_the_square_bucket(client, eager, networks):
    three_two = (photo("astronaut", (240, 360)), photo("coffee", (300, 300)))  # 360x240, width x height
    square = (photo("astronaut", (200, 200)), photo("coffee", (300, 300)))
    squashed = EagerPipeline(networks, "64x64")  # what the fixed square resolution made of the 3:2 frame

    for source, background in (three_two, square):
        outputs = client.composite(source, background)
        assert outputs["harmonized"].shape == source.shape
        assert_matches_eager(outputs, eager(source, background))
    # The 3:2 bucket is not the square one in disguise: squashing gives another matte.
    outputs = client.composite(*three_two)
    differs = np.abs(outputs["alpha"].astype(np.int16) - squashed(*three_two).alpha.astype(np.int16)) > 1
    assert differs.mean() > 0.01


def _counts(triton_client, model):
    stats = triton_client.get_inference_statistics(model).model_stats[0]
    return stats.inference_count, stats.execution_count


def test_the_dynamic_batcher_forms_batches_under_concurrent_load(server):
    import tritonclient.grpc as grpcclient

    source, background = photo("astronaut", (96, 96)), photo("coffee", (96, 96))
    with grpcclient.InferenceServerClient(server.grpc_url) as stats_client:
        before = {m: _counts(stats_client, m) for m in NETWORKS}
        with CompositorClient(server.grpc_url) as client, ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda _: client.composite(source, background), range(24)))
        after = {m: _counts(stats_client, m) for m in NETWORKS}
    for model in NETWORKS:
        inferences = after[model][0] - before[model][0]
        executions = after[model][1] - before[model][1]
        assert inferences == 24, model
        assert executions < inferences, f"{model}: {executions} executions for {inferences} inferences: no batching"


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"source": np.zeros((1, 64, 64, 4), np.uint8)}, r"source"),
        ({"alpha": np.zeros((1, 32, 32, 1), np.uint8)}, r"alpha: size 32x32 \(batch 1\) does not match source 48x64 \(batch 1\); sizes are width x height"),
        # Caught by Triton itself, before preprocess: every input of a request shares its batch size.
        ({"background": np.zeros((2, 64, 64, 3), np.uint8)}, r"batch size does not match other inputs"),
    ],
)
def test_bad_input_gets_a_clear_invalid_argument_error_and_the_server_keeps_serving(client, inputs, message):
    frames = {"source": photo("astronaut", (64, 48))[None], "background": photo("coffee", (50, 50))[None], **inputs}
    unchecked = CompositorClient(client.url, protocol=client.protocol, validate=False)
    model = "composite_with_alpha" if "alpha" in frames else "composite"
    names = ["blended", "harmonized"]
    with pytest.raises(ClientError, match=message) as caught:
        unchecked.infer(model, frames, names)
    # The client's fault, not the server's: gRPC INVALID_ARGUMENT, HTTP 400 (a bug would be INTERNAL, 500).
    assert re.search(r"\[(StatusCode.INVALID_ARGUMENT|400)\]$", str(caught.value)), str(caught.value)
    outputs = unchecked.composite(photo("astronaut", (64, 48)), photo("coffee", (50, 50)))
    assert outputs["harmonized"].shape == (64, 48, 3)
    unchecked.close()


def test_a_model_the_server_does_not_serve_is_reported_as_not_ready(server):
    with CompositorClient(server.grpc_url, model="no_such_ensemble") as client:
        with pytest.raises(ModelNotReadyError, match="no_such_ensemble"):
            client.composite(photo("astronaut", (64, 64)), photo("coffee", (64, 64)))


def test_a_request_slower_than_its_timeout_raises_a_timeout_error(server):
    # Every call of the client has the timeout, its readiness check included: whichever runs out reports it.
    with CompositorClient(server.grpc_url, timeout_s=0.001) as client:
        with pytest.raises(RequestTimeoutError, match="no response within 0.001 s"):
            client.composite(photo("astronaut"), photo("coffee"))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_composite_command_with_url_writes_the_outputs_and_prints_the_latency(server, eager, protocol, tmp_path, capsys):
    source, background = photo("chelsea"), photo("coffee")
    imaging.write_image(tmp_path / "source.png", source)
    imaging.write_image(tmp_path / "background.png", background)
    out = tmp_path / "out"
    code = main(["composite", "--url", _url(server, protocol), "--protocol", protocol, "--source", str(tmp_path / "source.png"),
                 "--background", str(tmp_path / "background.png"), "--out", str(out)])
    assert code == 0
    assert "ms end to end" in capsys.readouterr().out
    assert_close(imaging.read_image(out / "harmonized.png"), eager(source, background).harmonized, "harmonized")
    assert (out / "comparison.png").is_file() and (out / "alpha.png").is_file()
