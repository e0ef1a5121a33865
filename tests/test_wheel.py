"""The package as a user installs it: a wheel built from the checkout, installed into a fresh virtual
environment outside it, compositing a photo with the trained weights it carries."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import skimage.data

from compositor.imaging import write_image

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


SKIPPED_WITHOUT_GIT = {".git", ".venv", "artifacts", "build", "dist", "__pycache__", ".pytest_cache"}


def source_copy(destination: Path) -> Path:
    """The checkout's files (committed, or new and not ignored) copied to ``destination``, so that the
    build's own folders (build/, *.egg-info) never appear in the checkout. A tree that is not a git
    checkout is copied whole but for its environments and build outputs."""
    try:
        listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                                capture_output=True, check=True).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError):
        shutil.copytree(ROOT, destination, symlinks=True, dirs_exist_ok=True,
                        ignore=lambda folder, names: [n for n in names if n in SKIPPED_WITHOUT_GIT or n.endswith(".egg-info")])
        return destination
    for name in filter(None, listed):
        source, target = ROOT / name, destination / name
        if not source.exists() and not source.is_symlink():  # deleted in the work tree
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            target.symlink_to(os.readlink(source))
        else:
            shutil.copy2(source, target)
    return destination


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    source = source_copy(tmp_path_factory.mktemp("source"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(source)],
                   check=True, capture_output=True, timeout=300)
    (built,) = out.glob("compositor-*.whl")
    return built


def test_the_wheel_carries_the_trained_weights_and_not_the_downloaded_modnet(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for trained in ("blending", "harmonization"):
        assert f"compositor/weights/{trained}.safetensors" in names
    assert "compositor/weights/MODEL_CARD.md" in names
    assert not [n for n in names if "modnet_photographic_portrait_matting" in n]
    assert not [n for n in names if n.startswith("tests/") or "/tests/" in n]


def test_an_installed_wheel_composites_a_photo_with_its_own_weights_outside_the_checkout(wheel, tmp_path):
    # A fresh environment whose only compositor is the wheel's; the dependencies (torch and the
    # rest, gigabytes) come from this environment's site-packages, appended to its path by a .pth
    # file (a path added that way has its own .pth files ignored: the checkout's editable hook stays off).
    environment = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(environment)], check=True, timeout=120)
    python = environment / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
                   check=True, capture_output=True, timeout=300)

    work = tmp_path / "work"
    write_image(work / "portrait.png", skimage.data.astronaut()[::4, ::4])
    write_image(work / "beach.png", skimage.data.coffee()[::4, ::4])
    environment_variables = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSITOR_", "MODNET_", "PYTHON"))}
    run = subprocess.run(
        [str(environment / "bin" / "compositor"), "composite", "--local", "--source", "portrait.png",
         "--background", "beach.png", "--out", "out"],
        cwd=work, capture_output=True, text=True, timeout=300, env=environment_variables,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    installed = site / "compositor" / "weights"
    assert f"loaded BlendingUNet from {installed / 'blending.safetensors'}" in run.stderr, run.stderr[-3000:]
    assert f"loaded HarmonizationUNet from {installed / 'harmonization.safetensors'}" in run.stderr
    assert str(ROOT) not in run.stderr  # nothing came from the checkout
    assert sorted(p.name for p in (work / "out").iterdir()) == ["alpha.png", "blended.png", "comparison.png", "harmonized.png"]
