"""The README's commands, as a new user meets them: the two commands and the deployment, step by step."""

import json
import os
import re
import shlex
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import skimage.data

from compositor.bench.report import readme_section
from compositor.client.remote import CompositorClient, ModelNotReadyError
from compositor.serving.server import free_port

ROOT = Path(__file__).resolve().parents[1]


def readme_commands():
    block = re.search(r"## Two commands\n\n```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    return [line.split("#")[0].strip() for line in block.strip().splitlines()]


def test_the_readme_opens_with_the_demo_and_the_test_command_and_ci_runs_the_latter():
    assert readme_commands() == ["scripts/demo.sh", "scripts/test.sh"]
    for script in readme_commands():
        assert os.access(ROOT / script, os.X_OK), script
    assert "scripts/test.sh" in (ROOT / ".ci" / "run").read_text()


def _committed_repository_state() -> dict[str, bytes]:
    """The committed model repository's tracked files, by path, as they are on disk now."""
    tracked = subprocess.run(["git", "ls-files", "model_repository"], cwd=ROOT, capture_output=True, text=True, check=True)
    return {name: (ROOT / name).read_bytes() for name in tracked.stdout.split()}


@pytest.mark.triton
def test_the_demo_runs_end_to_end_and_writes_the_composite(tmp_path):
    # The real script at a small network resolution, on free ports, in a scratch folder. MODNet: a
    # small ONNX made from the shared fixture, converted as set-up converts the published one (the
    # suite never uses the download), so the demo takes its main path: the whole ensemble.
    from compositor import published_modnet
    from compositor.networks.defaults import MODNET_WEIGHTS_VARIABLE
    from modnet_onnx_fixture import export_fixture_modnet_onnx, fixture_modnet

    onnx_path = export_fixture_modnet_onnx(tmp_path / "modnet.onnx", fixture_modnet())
    weights = published_modnet.convert(onnx_path, tmp_path / "modnet.safetensors", "the test fixture",
                                       {"astronaut": skimage.data.astronaut()[::4, ::4]})
    env = {
        **os.environ,
        MODNET_WEIGHTS_VARIABLE: str(weights),
        "COMPOSITOR_RESOLUTION": "64",
        "COMPOSITOR_WORKDIR": str(tmp_path),
        "COMPOSITOR_HTTP_PORT": str(free_port()),
        "COMPOSITOR_GRPC_PORT": str(free_port()),
        "COMPOSITOR_METRICS_PORT": str(free_port()),
    }
    committed_before = _committed_repository_state()
    run = subprocess.run([str(ROOT / "scripts" / "demo.sh")], env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    # Everything under the working folder: the committed model_repository/ is left as it was.
    assert (tmp_path / "demo" / "model_repository" / "composite" / "config.pbtxt").is_file()
    assert _committed_repository_state() == committed_before
    assert "MODNet with the published weights (the full composite ensemble)" in run.stdout
    assert "composite_with_alpha" in run.stdout and (tmp_path / "demo" / "output_with_alpha" / "harmonized.png").is_file()
    assert re.search(r"grpc://127\.0\.0\.1:\d+: \d+ ms end to end for a 512x512 \(width x height\) image", run.stdout)
    # The latency row comes with the table's header, so it reads on its own.
    assert re.search(r"^\| mode \| workload \| concurrency \| throughput \(img/s\) \| p50 \(ms\) .*\n\|---.*\n\| triton \| chain \| 1 \|",
                     run.stdout, re.M)
    output = tmp_path / "demo" / "output"
    assert np.asarray(Image.open(output / "harmonized.png")).shape == (512, 512, 3)  # astronaut's size
    assert Image.open(output / "comparison.png").width > 5 * 300
    assert "done in" in run.stdout


def test_the_readme_performance_section_is_generated_from_the_committed_results():
    results = json.loads((ROOT / "benchmarks" / "results" / "cpu.json").read_text())
    section = readme_section(results, "benchmarks/results/cpu.json", "benchmarks/results/cpu.png")
    assert section in (ROOT / "README.md").read_text(), "regenerate with benchmarks/cpu.sh (or compositor bench --readme)"


def deployment_commands() -> list[str]:
    block = re.search(r"### A deployment, step by step\n.*?```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    return [line.split("#")[0].strip() for line in block.strip().splitlines()]


def _wait_ready(http_port: int, server: subprocess.Popen, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert server.poll() is None, "the server exited before it was ready"
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/health/ready", timeout=2).status == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"the server was not ready within {timeout_s} s")


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    """The README's deployment block, run for real in a scratch folder.

    Substituted only what a test must: the export gets ``--resolution 64`` (the repository reads
    it from the export's report), the server free ports instead of 8000-8002 (and the client the
    gRPC one), and the photos are scikit-image's.
    """
    work = tmp_path_factory.mktemp("deployment")
    Image.fromarray(skimage.data.astronaut()[:, 64:448]).save(work / "portrait.jpg")  # 384 wide, 512 high
    Image.fromarray(skimage.data.rocket()).save(work / "beach.jpg")
    ports = {"grpc": free_port(), "http": free_port(), "metrics": free_port()}
    commands = deployment_commands()
    assert commands[0] == "source .venv/bin/activate"
    env = {**os.environ, "VIRTUAL_ENV": str(ROOT / ".venv"), "PATH": f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}"}
    results, server = [], None
    try:
        for command in commands[1:]:
            argv = shlex.split(command.removesuffix("&"))
            if argv[:2] == ["compositor", "export"]:
                argv += ["--resolution", "64"]
            if argv[:2] == ["compositor", "serve"]:
                assert command.endswith("&"), "the README starts the server in the background"
                argv += ["--grpc-port", str(ports["grpc"]), "--http-port", str(ports["http"]),
                         "--metrics-port", str(ports["metrics"]), "--log-file", str(work / "triton.log")]
                server = subprocess.Popen(argv, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                _wait_ready(ports["http"], server)
                continue
            argv = [arg.replace("127.0.0.1:8001", f"127.0.0.1:{ports['grpc']}") for arg in argv]
            run = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=600)
            results.append(run)
            assert run.returncode == 0, f"{command}\n{run.stdout[-2000:]}{run.stderr[-3000:]}"
        yield {"work": work, "ports": ports, "results": results, "env": env}
    finally:
        if server is not None:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                server.kill()


@pytest.mark.triton
def test_the_readme_deployment_runs_step_by_step_and_composites_over_grpc(deployment):
    work, ports = deployment["work"], deployment["ports"]
    composite = deployment["results"][-1]
    assert re.search(rf"^grpc://127\.0\.0\.1:{ports['grpc']}: \d+ ms end to end for a 384x512 \(width x height\) image$",
                     composite.stdout, re.M), composite.stdout
    for name in ("blended.png", "harmonized.png"):
        assert np.asarray(Image.open(work / "out" / name)).shape == (512, 384, 3)
    assert np.asarray(Image.open(work / "out" / "alpha.png")).shape == (512, 384)
    assert (work / "out" / "comparison.png").is_file()


@pytest.mark.triton
def test_a_real_triton_server_aimed_at_with_the_wrong_port_or_model_gets_the_right_message(deployment):
    work, ports, env = deployment["work"], deployment["ports"], deployment["env"]
    argv = ["compositor", "composite", "--source", "portrait.jpg", "--background", "beach.jpg", "--out", "wrong/"]
    grpc_at_http = subprocess.run(argv + ["--url", f"127.0.0.1:{ports['http']}"], cwd=work, env=env,
                                  capture_output=True, text=True, timeout=120)
    assert grpc_at_http.returncode == 2
    assert (f"error: Triton server at grpc://127.0.0.1:{ports['http']} does not speak gRPC: 127.0.0.1:{ports['http']} "
            "answers HTTP/1.1, so it may be Triton's HTTP port; use the gRPC port (default 8001), or --protocol http "
            "for this one") in grpc_at_http.stderr
    http_at_grpc = subprocess.run(argv + ["--url", f"127.0.0.1:{ports['grpc']}", "--protocol", "http"], cwd=work, env=env,
                                  capture_output=True, text=True, timeout=120)
    assert http_at_grpc.returncode == 2
    assert f"error: Triton server at http://127.0.0.1:{ports['grpc']} does not answer HTTP/1.1" in http_at_grpc.stderr
    assert ("it may be Triton's gRPC port; use the HTTP port (default 8000), or --protocol grpc for this one"
            in http_at_grpc.stderr)
    assert not (work / "wrong").exists()
    # A model the server does not have: the server answers, so it is not "unreachable".
    for protocol in ("grpc", "http"):
        with CompositorClient(f"127.0.0.1:{ports[protocol]}", protocol=protocol, model="no_such_model") as client:
            with pytest.raises(ModelNotReadyError, match=r"model 'no_such_model' is not on .* \(models there: .*composite READY"):
                client.check_ready()


def readme_python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


@pytest.mark.triton
def test_the_readme_python_blocks_run_against_a_real_server(small_server, tmp_path, monkeypatch):
    """Each block as written, with only the addresses pointed at the test server (the second block's
    two hosts become this one, by address and by name) and the photos it names written first."""
    blocks = readme_python_blocks()
    assert len(blocks) >= 2
    monkeypatch.chdir(tmp_path)
    from compositor.imaging import write_image

    portrait, beach = skimage.data.astronaut()[::4, ::4], skimage.data.coffee()[::4, ::4]
    write_image(tmp_path / "portrait.jpg", portrait)
    write_image(tmp_path / "beach.jpg", beach)
    url = small_server.grpc_url
    for block in blocks:
        code = block.replace("host1:8001,host2:8001", f"{url},{url.replace('127.0.0.1', 'localhost')}").replace("127.0.0.1:8001", url)
        namespace = {"jobs": [("a", portrait, beach), ("b", portrait[:, :96], beach)]}
        exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - the README's own code
        if "out" in namespace:
            assert namespace["out"]["harmonized"].shape == portrait.shape
        if "outcome" in namespace:
            assert namespace["outcome"].key == "b" and namespace["outcome"].error is None
