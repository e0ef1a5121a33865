"""What the command line and the client library import: heavy libraries only where they are used."""

import json
import subprocess
import sys

import pytest

from compositor.cli import COMMANDS
from compositor.serving.server import free_port

HEAVY = ("torch", "onnxruntime", "onnx", "tritonclient", "skimage", "matplotlib", "safetensors")


def imported_after(code: str) -> tuple[dict, set[str]]:
    """Run ``code`` in a fresh interpreter; return what it printed as JSON (if anything) and the top-level modules imported."""
    script = code + "\nimport sys as _sys, json as _json\nprint(_json.dumps(sorted({m.split('.')[0] for m in _sys.modules})))\n"
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.strip().splitlines()
    result = json.loads(lines[-2]) if len(lines) > 1 else {}
    return result, set(json.loads(lines[-1]))


def run_main(argv: list[str]) -> str:
    """Python code that runs ``compositor.cli.main(argv)`` and prints its exit code and stderr as JSON."""
    return f"""
import contextlib, io, json
from compositor.cli import main
err = io.StringIO()
with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
    try:
        code = main({argv!r})
    except SystemExit as exit:
        code = exit.code
print(json.dumps({{"code": code, "stderr": err.getvalue()}}))
"""


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_imports_no_heavy_library(command):
    argv = ["--help"] if command is None else [command, "--help"]
    result, modules = imported_after(run_main(argv))
    assert result["code"] == 0, result["stderr"]
    assert modules.isdisjoint(HEAVY), f"compositor {' '.join(argv)} imported {sorted(modules & set(HEAVY))}"


def test_the_top_level_help_lists_every_command_with_a_hyphen_where_its_module_has_an_underscore():
    run = subprocess.run([sys.executable, "-m", "compositor", "--help"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    for name in COMMANDS:
        assert f"    {name} " in run.stdout, name
    assert "bench-gpu" in COMMANDS and COMMANDS["bench-gpu"] == "bench_gpu"


def test_importing_the_client_library_imports_neither_torch_nor_onnx_runtime_nor_the_triton_client():
    _, modules = imported_after("import compositor.client.remote")
    assert modules.isdisjoint({"torch", "onnxruntime", "onnx", "tritonclient"}), modules & set(HEAVY)


def test_composite_url_against_a_closed_port_fails_clearly_without_importing_torch_or_onnx_runtime(tmp_path):
    from compositor.imaging import write_image
    import numpy as np

    write_image(tmp_path / "source.png", np.zeros((32, 48, 3), np.uint8))
    write_image(tmp_path / "background.png", np.zeros((40, 40, 3), np.uint8))
    argv = ["composite", "--url", f"127.0.0.1:{free_port()}", "--source", str(tmp_path / "source.png"),
            "--background", str(tmp_path / "background.png"), "--out", str(tmp_path / "out")]
    result, modules = imported_after(run_main(argv))
    assert result["code"] == 2
    assert "is the server running? start it with `compositor serve --repository model_repository`" in result["stderr"]
    assert modules.isdisjoint({"torch", "onnxruntime", "onnx"}), modules & set(HEAVY)
    assert not (tmp_path / "out").exists()
