"""A new user's first runs: every mistake gets a message that says what is wrong and what to do."""

import subprocess
import sys
import threading
import tomllib
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import numpy as np
import pytest

from compositor import imaging
from compositor.cli import main
from compositor.client.remote import CompositorClient, InvalidURLError, ServerUnreachableError
from compositor.serving.server import free_port

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def photos(tmp_path):
    imaging.write_image(tmp_path / "source.png", np.full((32, 48, 3), 90, np.uint8))
    imaging.write_image(tmp_path / "background.png", np.full((40, 40, 3), 200, np.uint8))
    return tmp_path


def composite(photos, *extra) -> list[str]:
    return ["composite", "--source", str(photos / "source.png"), "--background", str(photos / "background.png"), *extra]


@pytest.fixture(scope="module")
def http_port():
    """A plain HTTP/1.1 server (not Triton) on a free port, as Triton's HTTP endpoint would answer."""

    class NotFound(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_version_prints_the_version_of_the_project():
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    run = subprocess.run([sys.executable, "-m", "compositor", "--version"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == f"compositor {version}"


@pytest.mark.parametrize(
    "extra, flags",
    [
        (["--resolution", "64"], "--resolution does not apply with --url"),
        (["--modnet-checkpoint", "/nonexistent/modnet.ckpt"], "--modnet-checkpoint does not apply with --url"),
        (["--blending-checkpoint", "b.safetensors", "--untrained"], "--blending-checkpoint, --untrained do not apply with --url"),
    ],
)
def test_url_refuses_the_options_of_local_mode_and_names_them(photos, capsys, extra, flags):
    code = main(composite(photos, "--url", f"127.0.0.1:{free_port()}", "--out", str(photos / "out"), *extra))
    assert code == 2
    err = capsys.readouterr().err
    assert flags in err and "use --local" in err
    assert not (photos / "out").exists()


def test_local_refuses_the_options_of_url_mode_and_names_them(photos, capsys):
    code = main(composite(photos, "--local", "--protocol", "http", "--timeout-s", "5", "--out", str(photos / "out")))
    assert code == 2
    assert "--protocol, --timeout-s do not apply with --local" in capsys.readouterr().err
    assert not (photos / "out").exists()


def test_an_output_folder_that_is_a_file_is_refused_before_any_work(photos):
    (photos / "taken").write_text("keep me")
    # In a fresh interpreter: the refusal must come before the networks (PyTorch) are loaded.
    code = (
        "import sys\nfrom compositor.cli import main\n"
        f"code = main({composite(photos, '--local', '--out', str(photos / 'taken'))!r})\n"
        "assert 'torch' not in sys.modules, 'the networks were loaded before the output was checked'\n"
        "sys.exit(code)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr
    assert f"error: --out {photos / 'taken'}: exists and is not a folder" in run.stderr
    assert "Traceback" not in run.stderr
    assert (photos / "taken").read_text() == "keep me"


def test_an_output_folder_under_a_file_is_refused(photos, capsys):
    (photos / "taken").write_text("keep me")
    assert main(composite(photos, "--local", "--out", str(photos / "taken" / "out"))) == 2
    assert f"{photos / 'taken'} is a file, so no folder can be made under it" in capsys.readouterr().err


def test_a_folder_given_as_source_says_it_is_a_folder(photos, capsys):
    (photos / "folder").mkdir()
    code = main(["composite", "--local", "--source", str(photos / "folder"), "--background",
                 str(photos / "background.png"), "--out", str(photos / "out")])
    assert code == 2
    assert f"{photos / 'folder'}: is a folder, not an image file" in capsys.readouterr().err


def test_a_missing_modnet_checkpoint_is_an_error_not_a_traceback(photos, capsys):
    code = main(composite(photos, "--local", "--resolution", "64", "--modnet-checkpoint",
                          str(photos / "missing.ckpt"), "--out", str(photos / "out")))
    assert code == 2
    assert f"MODNet checkpoint not found: {photos / 'missing.ckpt'}" in capsys.readouterr().err
    assert not (photos / "out").exists()


def test_a_weights_file_that_is_not_one_is_an_error_not_a_traceback(photos, capsys):
    (photos / "notes.safetensors").write_text("not weights")
    code = main(composite(photos, "--local", "--resolution", "64", "--blending-checkpoint",
                          str(photos / "notes.safetensors"), "--out", str(photos / "out")))
    assert code == 2
    assert "notes.safetensors is not a safetensors weights file" in capsys.readouterr().err


def test_a_url_with_the_scheme_of_its_protocol_is_accepted_and_the_other_scheme_is_refused(photos, capsys):
    port = free_port()
    assert CompositorClient(f"http://127.0.0.1:{port}", protocol="http").url == f"127.0.0.1:{port}"
    assert CompositorClient(f"grpc://127.0.0.1:{port}").url == f"127.0.0.1:{port}"
    assert CompositorClient("localhost").url == "localhost:8001"
    with pytest.raises(InvalidURLError, match=r"http:// is for --protocol http \(Triton's HTTP port, default 8000\); "
                       r"for gRPC give host:port without a scheme, e.g. 127.0.0.1:8001"):
        CompositorClient(f"http://127.0.0.1:{port}")
    code = main(composite(photos, "--url", "http://127.0.0.1:8001", "--out", str(photos / "out")))
    assert code == 2
    assert "error: http://127.0.0.1:8001: http:// is for --protocol http" in capsys.readouterr().err


def test_a_refused_connection_says_to_start_the_server(photos, capsys):
    url = f"127.0.0.1:{free_port()}"
    code = main(composite(photos, "--url", f"http://{url}", "--protocol", "http", "--out", str(photos / "out")))
    assert code == 2
    err = capsys.readouterr().err
    assert f"Triton server at http://{url} is unreachable: connection refused at {url}: is the server running? " \
           "start it with `compositor serve --repository model_repository`" in err


def test_grpc_aimed_at_an_http_port_says_it_may_be_the_http_port(http_port):
    with CompositorClient(f"127.0.0.1:{http_port}", timeout_s=5) as client:
        with pytest.raises(ServerUnreachableError) as error:
            client.check_ready()
    assert str(error.value) == (
        f"Triton server at grpc://127.0.0.1:{http_port} does not speak gRPC: 127.0.0.1:{http_port} answers HTTP/1.1, "
        "so it may be Triton's HTTP port; use the gRPC port (default 8001), or --protocol http for this one"
    )
    assert error.value.__cause__ is not None  # the gRPC error stays attached


def test_a_server_that_accepts_but_never_answers_is_a_timeout_not_unreachable():
    import socket

    from compositor.client.remote import RequestTimeoutError

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        for protocol in ("grpc", "http"):
            with CompositorClient(f"127.0.0.1:{port}", protocol=protocol, timeout_s=1) as client:
                with pytest.raises(RequestTimeoutError, match=rf"{protocol}://127.0.0.1:{port}: no response within 1 s"):
                    client.check_ready()


def test_train_and_evaluate_refuse_output_paths_that_cannot_be_written_before_any_work(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert main(["train", "blending", "--synthetic", "--out", str(tmp_path / "file" / "w.safetensors")]) == 2
    assert f"--out {tmp_path / 'file' / 'w.safetensors'}: {tmp_path / 'file'} is a file" in capsys.readouterr().err
    (tmp_path / "folder").mkdir()
    assert main(["evaluate", "--synthetic", "--json", str(tmp_path / "folder")]) == 2
    assert f"--json {tmp_path / 'folder'}: is a folder; give a file name" in capsys.readouterr().err


def test_bench_refuses_an_unknown_mode_and_a_readme_without_markers(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--modes", "eager,tensorrt", "--json", str(tmp_path / "r.json")])
    assert exit_info.value.code == 2
    assert "unknown mode(s) tensorrt; choose from eager,onnxruntime,triton" in capsys.readouterr().err
    (tmp_path / "README.md").write_text("# no markers\n")
    assert main(["bench", "--json", str(tmp_path / "r.json"), "--readme", str(tmp_path / "README.md")]) == 2
    assert "no performance markers" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()
