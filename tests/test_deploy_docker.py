"""The container images (deploy/docker/): lint, the deployment contract's static facts, and the CPU
image built and run with podman.

Checked statically for both images: hadolint finds nothing; they run as uid/gid 10001, expose
8000/8001/8002, ask Triton's /v2/health/ready in their health check and carry the provenance
labels; the entry points parse and exec ``compositor serve`` (over the GPU image's own Triton with
``--triton-root``); the pins agree with requirements.lock and the GPU image's TensorRT with its base
image. The slow test builds the CPU image from the session's 64x64 repository on a local Debian
base image (no registry is reachable here), runs it and composites a photo through it.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "deploy" / "docker"
DOCKERFILES = {"cpu": DOCKER / "Dockerfile.cpu", "gpu": DOCKER / "Dockerfile.gpu"}
ENTRYPOINTS = {"cpu": DOCKER / "entrypoint-cpu.sh", "gpu": DOCKER / "entrypoint-gpu.sh"}
HADOLINT = Path(sys.executable).parent / "hadolint"


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` pairs, continuation lines joined and comments dropped."""
    result, pending = [], ""
    for line in dockerfile.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        text = (pending + line).strip()
        pending = ""
        keyword, _, arguments = text.partition(" ")
        result.append((keyword.upper(), arguments.strip()))
    return result


def last(dockerfile: Path, keyword: str) -> str:
    found = [arguments for k, arguments in instructions(dockerfile) if k == keyword]
    assert found, f"{dockerfile.name} has no {keyword}"
    return found[-1]


@pytest.mark.parametrize("image", DOCKERFILES)
def test_hadolint_finds_nothing_in_the_dockerfile(image):
    run = subprocess.run([str(HADOLINT), "--no-color", str(DOCKERFILES[image])], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "ignore" not in DOCKERFILES[image].read_text().lower(), "no hadolint ignores"


@pytest.mark.parametrize("image", DOCKERFILES)
def test_the_image_runs_as_the_non_root_user_10001(image):
    dockerfile = DOCKERFILES[image]
    assert last(dockerfile, "USER") == "10001:10001"
    run_lines = " ".join(arguments for keyword, arguments in instructions(dockerfile) if keyword == "RUN")
    assert "groupadd --gid 10001 compositor" in run_lines
    assert "useradd --uid 10001 --gid 10001" in run_lines
    # USER comes after the last RUN: nothing the server runs is root's.
    keywords = [keyword for keyword, _ in instructions(dockerfile)]
    assert keywords.index("USER") > max(i for i, k in enumerate(keywords) if k == "RUN")


@pytest.mark.parametrize("image", DOCKERFILES)
def test_the_image_exposes_http_grpc_and_metrics(image):
    assert last(DOCKERFILES[image], "EXPOSE").split() == ["8000", "8001", "8002"]


@pytest.mark.parametrize("image", DOCKERFILES)
def test_the_health_check_runs_the_readiness_script_the_image_copies(image):
    dockerfile = DOCKERFILES[image]
    healthcheck = last(dockerfile, "HEALTHCHECK")
    assert healthcheck.split("CMD", 1)[1].strip() == '["python3", "/usr/local/bin/compositor-healthcheck.py"]'
    copies = [arguments for keyword, arguments in instructions(dockerfile) if keyword == "COPY"]
    assert "deploy/docker/healthcheck.py /usr/local/bin/compositor-healthcheck.py" in copies
    assert "/v2/health/ready" in (DOCKER / "healthcheck.py").read_text()


class _Health(BaseHTTPRequestHandler):
    ready = False

    def do_GET(self):  # noqa: N802 - the http.server API
        status = 200 if self.path == "/v2/health/ready" and _Health.ready else 400
        self.send_response(status)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_the_health_check_script_passes_only_when_triton_says_ready():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]

    def check(port: int) -> subprocess.CompletedProcess:
        env = {"COMPOSITOR_HTTP_PORT": str(port), "http_proxy": "http://127.0.0.1:9", "PATH": "/usr/bin:/bin"}
        return subprocess.run([sys.executable, str(DOCKER / "healthcheck.py")], capture_output=True, text=True, env=env, timeout=30)

    try:
        _Health.ready = False
        not_ready = check(port)
        _Health.ready = True
        ready = check(port)
    finally:
        server.shutdown()
        server.server_close()
    closed = check(port)
    assert (not_ready.returncode, ready.returncode, closed.returncode) == (1, 0, 1)
    assert "/v2/health/ready: HTTP Error 400" in not_ready.stderr


@pytest.mark.parametrize("image", DOCKERFILES)
def test_the_image_carries_the_weights_provenance_and_oci_labels(image):
    dockerfile = DOCKERFILES[image]
    labels = " ".join(arguments for keyword, arguments in instructions(dockerfile) if keyword == "LABEL")
    assert 'ai.compositor.weights.provenance="${WEIGHTS_PROVENANCE}"' in labels
    for key in ("title", "description", "version", "revision", "created"):
        assert f"org.opencontainers.image.{key}=" in labels
    assert f'org.opencontainers.image.title="compositor-{image}"' in labels
    args = [arguments for keyword, arguments in instructions(dockerfile) if keyword == "ARG"]
    assert "WEIGHTS_PROVENANCE=unknown" in args and "VERSION=0.1.0" in args


def test_the_provenance_label_is_the_export_reports_records_in_one_line(tmp_path):
    records = {
        "matting": {"kind": "published", "file": "modnet.ckpt", "sha256": "a" * 64, "note": "MODNet"},
        "blending": {"kind": "trained", "file": "blending.safetensors", "sha256": "b" * 64, "note": "x"},
        "harmonization": {"kind": "untrained", "file": None, "sha256": None, "note": "seeded"},
    }
    (tmp_path / "export_report.json").write_text(json.dumps({"weights": {"provenance": records}}))
    script = DOCKER / "provenance_label.py"

    run = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=30)
    missing = subprocess.run([sys.executable, str(script), str(tmp_path / "nowhere")], capture_output=True, text=True, timeout=30)

    assert run.returncode == 0, run.stderr
    assert run.stdout.count("\n") == 1
    assert json.loads(run.stdout) == {name: {k: r[k] for k in ("kind", "file", "sha256")} for name, r in records.items()}
    assert missing.returncode == 1 and "nowhere/export_report.json" in missing.stderr


@pytest.mark.parametrize("image", ENTRYPOINTS)
def test_the_entry_point_is_valid_strict_bash(image):
    script = ENTRYPOINTS[image]
    run = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash\n") and "\nset -euo pipefail\n" in text
    assert script.stat().st_mode & 0o111, "executable"
    assert re.search(r"^exec compositor serve ", text, re.MULTILINE), "the server replaces the shell (signals)"


def test_the_cpu_entry_point_serves_the_baked_repository_on_all_interfaces():
    text = ENTRYPOINTS["cpu"].read_text()
    assert "--host 0.0.0.0" in text
    assert "${COMPOSITOR_REPOSITORY:-/opt/compositor/model_repository}" in text
    assert "COPY ${MODEL_REPOSITORY} /opt/compositor/model_repository" in DOCKERFILES["cpu"].read_text()


def test_the_gpu_entry_point_runs_the_images_triton_through_compositor_serve():
    # The same flags, API locks and model-process watch as everywhere else come from serve itself;
    # tests/test_installed_triton.py runs serve --triton-root over that container's layout.
    text = ENTRYPOINTS["gpu"].read_text()
    assert "exec compositor serve \\\n  --host 0.0.0.0 \\\n" in text
    assert '--triton-root "${COMPOSITOR_TRITON_ROOT:-/opt/tritonserver}"' in text
    assert '--repository "$repository"' in text and "--print-log" in text
    commands = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    assert not any(line.lstrip().startswith(("tritonserver", "exec tritonserver")) for line in commands)
    assert 'compositor engines --onnx "$export_dir" --cache "$cache" --path-file /tmp/compositor/engines.path 2>&1' in text
    assert "tail -n" not in text  # the build log is never cut to its last line
    assert 'compositor repository --onnx "$engines" --flavor tensorrt' in text
    assert "cache=${COMPOSITOR_ENGINE_CACHE:-/var/cache/compositor/engines}" in text


def pins(path: Path) -> dict[str, str]:
    found = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            found[re.sub(r"\[.*\]", "", name).lower().replace("_", "-")] = version
    return found


def test_the_images_pin_what_requirements_lock_pins_and_install_no_torch():
    lock = pins(ROOT / "requirements.lock")
    cpu, gpu = pins(DOCKER / "requirements-cpu.txt"), pins(DOCKER / "requirements-gpu.txt")
    assert all(version for version in {**cpu, **gpu}.values()), "every package pinned with =="
    assert {name: v for name, v in cpu.items() if lock.get(name) != v} == {}
    # Pillow 13 has no wheels for the Triton image's Python 3.10 (see requirements-gpu.txt).
    assert {name: v for name, v in gpu.items() if name in lock and lock[name] != v} == {"pillow": "12.3.0"}
    assert "torch" not in cpu and "torch" not in gpu
    for dockerfile in DOCKERFILES.values():
        assert "--no-deps /tmp/compositor-src" in dockerfile.read_text(), "the package's own list includes torch"
    assert "--no-deps nvidia-pytriton==" + lock["nvidia-pytriton"] in DOCKERFILES["cpu"].read_text()


def test_the_gpu_image_builds_engines_with_the_tensorrt_of_its_triton_base_image():
    # Triton release -> its TensorRT (NVIDIA's release notes); a plan loads only in the TensorRT that built it.
    triton_tensorrt = {"24.10": "10.5.0"}
    base = re.fullmatch(r"BASE_IMAGE=nvcr\.io/nvidia/tritonserver:(\d+\.\d+)-py3",
                        next(a for k, a in instructions(DOCKERFILES["gpu"]) if k == "ARG"))
    assert base, "the first ARG names the Triton base image"
    assert pins(DOCKER / "requirements-gpu.txt")["tensorrt-cu12-bindings"] == triton_tensorrt[base.group(1)]
    assert last(DOCKERFILES["gpu"], "ENV").startswith("COMPOSITOR_ENGINE_CACHE=/var/cache/compositor/engines")
    assert last(DOCKERFILES["gpu"], "VOLUME") == '["/var/cache/compositor/engines"]'


def test_the_cpu_image_uses_python_3_11_the_python_this_machine_serves_with():
    base = next(a for k, a in instructions(DOCKERFILES["cpu"]) if k == "ARG")
    assert base == "BASE_IMAGE=python:3.11-slim-bookworm"
    assert sys.version_info[:2] == (3, 11), "the suite's server runs Python 3.11: the image must too"


# --- The CPU image, built and run with podman ------------------------------------------------------

BASE_IMAGE = "localhost/compositor-test-base:bookworm"


def podman_missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root: rootful podman and debootstrap (as on CI)"
    for tool in ("podman", "runc", "debootstrap"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (.ci/run installs podman, runc and debootstrap)"
    return None


def podman_run_options() -> list[str]:
    """What `podman run` needs on these machines (deploy/docker/README.md, "Checked here")."""
    nofile_soft, nofile_hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return [
        # crun refuses cgroup v1 with a v2 hierarchy mounted beside it ("hybrid mode").
        "--runtime", "runc",
        # podman's default limits (nofile 1048576) exceed what this VM allows a process to set.
        "--ulimit", f"nofile={nofile_soft}:{nofile_hard}", "--ulimit", "nproc=8192:8192",
    ]  # fmt: skip


def podman(*arguments: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
    run = subprocess.run(["podman", *arguments], capture_output=True, text=True, timeout=timeout)
    if check and run.returncode != 0:
        pytest.fail(f"podman {' '.join(arguments[:2])} failed ({run.returncode}):\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
    return run


def build_context(directory: Path, repository: Path) -> Path:
    """What Dockerfile.cpu copies from the repository root, and the model repository where it looks."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "build")
    directory.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, directory / name)
    shutil.copytree(ROOT / "compositor", directory / "compositor", ignore=ignore)
    shutil.copytree(DOCKER, directory / "deploy" / "docker", ignore=ignore)
    shutil.copytree(repository, directory / "deploy" / "docker" / "build" / "model_repository")
    return directory


def wait_ready(url: str, container: str, timeout_s: float = 180) -> None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with opener.open(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        state = podman("inspect", "--format", "{{.State.Status}}", container, check=False).stdout.strip()
        if state not in ("running", "created", "configured"):
            break
        time.sleep(0.5)
    logs = podman("logs", container, check=False)
    pytest.fail(f"the container was not ready at {url}:\n{logs.stdout[-3000:]}\n{logs.stderr[-3000:]}")


@pytest.mark.slow
@pytest.mark.triton
def test_the_cpu_image_builds_runs_as_10001_and_composites_like_the_local_server(
    small_export, small_repository, small_server, tmp_path
):
    from compositor.client.remote import CompositorClient
    from compositor.serving.server import free_port

    if reason := podman_missing():
        pytest.skip(reason)
    base = subprocess.run([str(DOCKER / "podman-test-base.sh"), BASE_IMAGE], capture_output=True, text=True, timeout=600)
    assert base.returncode == 0, base.stderr[-3000:]
    context = build_context(tmp_path / "context", small_repository)
    image, container = f"localhost/compositor-cpu:test-{os.getpid()}", f"compositor-cpu-test-{os.getpid()}"
    label = subprocess.run([sys.executable, str(DOCKER / "provenance_label.py"), str(small_export.directory)],
                           capture_output=True, text=True, check=True).stdout.strip()
    ports = {8000: free_port(), 8001: free_port(), 8002: free_port()}
    try:
        podman(
            "build", "--format", "docker",
            # chroot isolation: the OCI runtimes cannot set podman's default rlimits here (README).
            "--isolation", "chroot",
            # pip inside the build reaches the package index through this machine's TLS set-up.
            *(option for path in ("/etc/ssl/certs", "/etc/pip.conf") if Path(path).exists()
              for option in ("--volume", f"{path}:{path}:ro")),
            "--build-arg", f"BASE_IMAGE={BASE_IMAGE}", "--build-arg", f"WEIGHTS_PROVENANCE={label}",
            "--file", "deploy/docker/Dockerfile.cpu", "--tag", image, str(context),
            timeout=900,
        )  # fmt: skip
        inspected = json.loads(podman("image", "inspect", image).stdout)[0]
        config = inspected["Config"]
        assert config["User"] == "10001:10001"
        assert set(config["ExposedPorts"]) == {"8000/tcp", "8001/tcp", "8002/tcp"}
        assert config["Labels"]["ai.compositor.weights.provenance"] == label
        assert "compositor-healthcheck.py" in " ".join(inspected["Healthcheck"]["Test"])

        podman("run", "--detach", "--name", container, *podman_run_options(), "--shm-size", "512m",
               *(option for inside, outside in ports.items() for option in ("--publish", f"127.0.0.1:{outside}:{inside}")),
               image)  # fmt: skip
        wait_ready(f"http://127.0.0.1:{ports[8000]}/v2/health/ready", container)

        assert podman("exec", container, "id", "-u").stdout.strip() == "10001"
        # Triton's own log reaches the container's stdout (compositor serve --print-log): `docker logs`.
        deadline = time.monotonic() + 10
        while "successfully loaded 'composite'" not in podman("logs", container).stdout:
            assert time.monotonic() < deadline, podman("logs", container).stdout[-3000:]
            time.sleep(0.5)
        assert podman("exec", container, "python3", "/usr/local/bin/compositor-healthcheck.py", check=False).returncode == 0
        provenance = podman("exec", container, "cat", "/opt/compositor/model_repository/PROVENANCE.md").stdout
        assert provenance == (small_repository / "PROVENANCE.md").read_text()
        with pytest.raises(urllib.error.HTTPError, match="403"):
            urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
                f"http://127.0.0.1:{ports[8000]}/v2/systemsharedmemory/status", timeout=10)

        rng = np.random.default_rng(7)
        source = rng.integers(0, 256, (80, 60, 3), dtype=np.uint8)
        background = rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)
        with CompositorClient(f"127.0.0.1:{ports[8001]}", protocol="grpc", timeout_s=120) as client:
            from_container = client.composite(source, background)
        with CompositorClient(small_server.grpc_url, protocol="grpc", timeout_s=120) as client:
            from_local = client.composite(source, background)
        assert set(from_container) == {"alpha", "blended", "harmonized"}
        for name, expected in from_local.items():
            difference = np.abs(from_container[name].astype(int) - expected.astype(int)).max()
            assert from_container[name].shape == expected.shape and difference <= 1, (name, difference)

        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
                f"http://127.0.0.1:{ports[8002]}/metrics", timeout=10) as response:
            assert "nv_inference_request_success" in response.read().decode()

        podman("stop", "--time", "60", container, timeout=120)
        assert podman("inspect", "--format", "{{.State.ExitCode}}", container).stdout.strip() == "0"
    finally:
        podman("rm", "--force", container, check=False)
        podman("rmi", "--force", image, check=False)


@pytest.mark.slow
def test_the_gpu_entry_point_shows_the_whole_engine_build_output_and_keeps_it_in_the_cache(small_export, tmp_path):
    """The entry point's engine step, run for real up to where this machine stops it: `compositor
    engines` finds no TensorRT (exit 3), and its message reaches stderr and the cache's build log;
    the container ends with that status instead of serving without engines."""
    cache = tmp_path / "cache"
    environment = {**os.environ, "COMPOSITOR_EXPORT": str(small_export.directory), "COMPOSITOR_ENGINE_CACHE": str(cache),
                   "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    run = subprocess.run(["bash", str(ENTRYPOINTS["gpu"])], capture_output=True, text=True, env=environment, timeout=300)
    assert run.returncode == 3, run.stderr[-2000:]
    assert "no TensorRT engine was built" in run.stderr
    (log,) = cache.glob("engines-build-*.log")
    assert "no TensorRT engine was built" in log.read_text()
    assert "compositor serve" not in run.stderr and run.stdout == ""


def test_the_gpu_images_tensorrt_module_is_the_bindings_package_under_its_own_name(tmp_path):
    """deploy/docker/tensorrt_frontend over a stand-in tensorrt_bindings (the real one needs CUDA):
    `import tensorrt` gives the bindings module itself, which the export's TensorRT check accepts."""
    standin = tmp_path / "tensorrt_bindings"
    standin.mkdir()
    (standin / "__init__.py").write_text(
        "__version__ = '10.5.0'\n"
        "class NetworkDefinitionCreationFlag:\n    STRONGLY_TYPED = 1\n"
        "class Builder:\n    pass\n"
    )
    code = (
        "import tensorrt, tensorrt_bindings\n"
        "assert tensorrt is tensorrt_bindings and tensorrt.Builder is tensorrt_bindings.Builder\n"
        "from compositor.export.tensorrt import import_tensorrt\n"
        "print(import_tensorrt().__version__)\n"
    )
    paths = [str(tmp_path), str(DOCKER / "tensorrt_frontend"), os.environ.get("PYTHONPATH", "")]
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, paths))})
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "10.5.0"
    dockerfile = DOCKERFILES["gpu"].read_text()
    assert "COPY deploy/docker/tensorrt_frontend/tensorrt /tmp/tensorrt_frontend/tensorrt" in dockerfile
    assert "python3 -c \"import tensorrt, polygraphy.backend.trt;" in dockerfile  # the build fails without them


def test_the_gpu_entry_point_sizes_the_cuda_memory_pool_and_the_cpu_stages():
    text = ENTRYPOINTS["gpu"].read_text()
    assert '--triton-arg="--cuda-memory-pool-byte-size=0:$cuda_pool"' in text
    assert "cuda_pool=${COMPOSITOR_CUDA_MEMORY_POOL_BYTES:-1073741824}" in text
    # 1 GiB holds the hand-offs of a batch of 8 at the widest bucket several times over
    assert 1073741824 > 5 * 8 * 3 * 512 * 896 * 4
    assert '--triton-arg="--pinned-memory-pool-byte-size=$pinned_pool"' in text
    assert '${stage_instances:+--stage-instances "$stage_instances"}' in text
