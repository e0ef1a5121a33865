"""`compositor composite --local` and `compositor info` as a user runs them."""

import re
import subprocess
import sys

import numpy as np
import pytest
import skimage.data
from PIL import Image

from compositor import imaging
from compositor.cli import main

OUTPUTS = ["alpha.png", "blended.png", "harmonized.png", "comparison.png"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    source = imaging.resize(skimage.data.astronaut(), (333, 517))
    Image.fromarray(source).save(folder / "portrait.png")
    Image.fromarray(skimage.data.coffee()).save(folder / "background.jpg")
    return folder


@pytest.mark.slow
def test_composite_local_writes_the_outputs_at_the_source_size_and_says_modnet_has_no_weights(photos, tmp_path):
    out = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, "-m", "compositor", "composite", "--local", "--source", str(photos / "portrait.png"),
         "--background", str(photos / "background.jpg"), "--resolution", "64", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert "MODNet has no weights" in run.stderr and "MODNET_CHECKPOINT" in run.stderr
    assert "UNTRAINED" not in run.stderr  # blending and harmonization come from weights/
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUTS)
    assert np.asarray(Image.open(out / "alpha.png")).shape == (333, 517)
    for name in ("blended.png", "harmonized.png"):
        assert np.asarray(Image.open(out / name)).shape == (333, 517, 3)
    comparison = Image.open(out / "comparison.png")
    # Five panels at the source's height side by side, and below them the zoomed edge row.
    assert comparison.width >= 5 * 517 and comparison.height > 333 + 3 * 96


def _bad_files(folder):
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(folder / "gray.png")
    Image.fromarray(np.zeros((40, 40, 4), np.uint8)).save(folder / "rgba.png")
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.png").write_text("this is not an image")
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(folder / "small_alpha.png")


@pytest.mark.parametrize(
    "option, file, message",
    [
        ("--source", "gray.png", r"gray.png: expected an RGB image, got mode L \(grayscale\)"),
        ("--source", "rgba.png", r"rgba.png: expected an RGB image, got mode RGBA \(RGB with alpha\)"),
        ("--background", "empty.png", "empty.png: not a readable image"),
        ("--source", "notes.png", "notes.png: not a readable image"),
        ("--alpha", "small_alpha.png", r"alpha: size 10x10 .* does not match source 517x333 .*width x height"),
        ("--source", "missing.png", "missing.png: no such file"),
    ],
)
def test_bad_input_exits_non_zero_with_the_problem_named_and_writes_nothing(photos, tmp_path, capsys, option, file, message):
    _bad_files(tmp_path)
    args = {"--source": str(photos / "portrait.png"), "--background": str(photos / "background.jpg")}
    args[option] = str(tmp_path / file)
    out = tmp_path / "out"
    argv = ["composite", "--local", "--resolution", "64", "--out", str(out)]
    for key, value in args.items():
        argv += [key, value]
    assert main(argv) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not out.exists()


def test_composite_needs_to_be_told_where_to_run(photos, tmp_path, capsys):
    code = main(["composite", "--source", str(photos / "portrait.png"), "--background",
                 str(photos / "background.jpg"), "--out", str(tmp_path / "out")])
    assert code == 2
    assert "--local" in capsys.readouterr().err


def test_a_resolution_that_is_not_a_multiple_of_32_is_refused(photos, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["composite", "--local", "--source", "a.png", "--background", "b.png", "--out", "o", "--resolution", "500"])
    assert exit_info.value.code == 2
    assert "multiple of 32" in capsys.readouterr().err


@pytest.mark.slow
def test_info_prints_parameters_and_flops_per_network(capsys):
    assert main(["info"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == (
        "network resolution 512 (aspect buckets 512x512, 512x672, 672x512, 512x768, 768x512, 512x896, 896x512); "
        "per image at 512x512"
    )
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:]}
    assert set(rows) == {"matting", "blending", "harmonization", "total"}
    # MODNet's published size is 6.5M parameters (backbone counted once).
    assert rows["matting"][0].replace(",", "").startswith("648")
    total_gflops = sum(float(rows[n][1]) for n in ("matting", "blending", "harmonization"))
    assert abs(total_gflops - float(rows["total"][1])) < 0.02
