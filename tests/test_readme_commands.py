"""The README's two commands, as a new user meets them."""

import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from compositor.bench.report import readme_section
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


@pytest.mark.triton
def test_the_demo_runs_end_to_end_and_writes_the_composite(tmp_path):
    # The real script at a small network resolution, on free ports, in a scratch folder.
    env = {
        **os.environ,
        "COMPOSITOR_RESOLUTION": "64",
        "COMPOSITOR_WORKDIR": str(tmp_path),
        "COMPOSITOR_HTTP_PORT": str(free_port()),
        "COMPOSITOR_GRPC_PORT": str(free_port()),
        "COMPOSITOR_METRICS_PORT": str(free_port()),
    }
    run = subprocess.run([str(ROOT / "scripts" / "demo.sh")], env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert re.search(r"grpc://127\.0\.0\.1:\d+: \d+ ms end to end for 512x512", run.stdout)
    assert re.search(r"^\| triton \| chain \| 1 \|", run.stdout, re.M)
    output = tmp_path / "demo" / "output"
    assert np.asarray(Image.open(output / "harmonized.png")).shape == (512, 512, 3)  # astronaut's size
    assert Image.open(output / "comparison.png").width > 5 * 300
    assert "done in" in run.stdout


def test_the_readme_performance_section_is_generated_from_the_committed_results():
    results = json.loads((ROOT / "benchmarks" / "results" / "cpu.json").read_text())
    section = readme_section(results, "benchmarks/results/cpu.json", "benchmarks/results/cpu.png")
    assert section in (ROOT / "README.md").read_text(), "regenerate with benchmarks/cpu.sh (or compositor bench --readme)"
