"""``compositor composite --url`` on a folder of images, against a real Triton server.

One server for the module, exported at network resolution 64 from the perturbed untrained networks
(so every network changes the result). Each folder output is compared with what the single-image
command (``CompositorClient``, one request) gives for the same files: a different path through the
client, so a mix-up of items, backgrounds or outputs in the folder code shows.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import skimage.data
from PIL import Image

from compositor import imaging
from compositor.cli import main
from compositor.client.remote import CompositorClient
from compositor.serving.server import free_port

pytestmark = pytest.mark.triton

OUTPUTS = ["alpha.png", "blended.png", "harmonized.png"]


@pytest.fixture(scope="module")
def server(small_server):
    return small_server


def photo(name: str, size: tuple[int, int]) -> np.ndarray:
    return imaging.resize(getattr(skimage.data, name)(), size)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """sources/: two portraits, a truncated PNG and a text file; backgrounds/ matched by name; one background."""
    root = tmp_path_factory.mktemp("folders")
    sources, backgrounds = root / "sources", root / "backgrounds"
    sources.mkdir()
    backgrounds.mkdir()
    Image.fromarray(photo("astronaut", (48, 40))).save(sources / "astronaut.png")
    Image.fromarray(photo("chelsea", (36, 52))).save(sources / "chelsea.png")
    whole = sources / "astronaut.png"
    (sources / "broken.png").write_bytes(whole.read_bytes()[: len(whole.read_bytes()) // 2])  # truncated PNG
    (sources / "notes.txt").write_text("not an image\n")
    Image.fromarray(photo("coffee", (50, 70))).save(root / "beach.png")
    Image.fromarray(photo("rocket", (40, 40))).save(backgrounds / "astronaut.jpg")
    return root


def composite_one(server, source_path, background_path) -> dict[str, np.ndarray]:
    with CompositorClient(server.grpc_url, timeout_s=60) as client:
        return client.composite(imaging.read_image(source_path), imaging.read_image(background_path))


def read_outputs(folder) -> dict[str, np.ndarray]:
    return {name.removesuffix(".png"): np.asarray(Image.open(folder / name)) for name in OUTPUTS}


def test_a_folder_with_a_corrupt_and_a_non_image_file_composites_the_rest_and_exits_1(server, folders, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["composite", "--url", server.grpc_url, "--source", str(folders / "sources"),
                 "--background", str(folders / "beach.png"), "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 1
    assert re.search(r"^broken\.png: not a readable image", captured.err, re.M), captured.err
    assert re.search(r"^notes\.txt: not a readable image", captured.err, re.M), captured.err
    assert re.search(r"^2 composited, 2 failed, in \d+\.\d s \(\d+\.\d\d images/s\)$", captured.out, re.M), captured.out
    # Nothing at all for the failed items, not even a partial folder.
    assert sorted(p.name for p in out.iterdir()) == ["astronaut", "chelsea"]
    for name in ("astronaut", "chelsea"):
        assert sorted(p.name for p in (out / name).iterdir()) == OUTPUTS
        expected = composite_one(server, folders / "sources" / f"{name}.png", folders / "beach.png")
        outputs = read_outputs(out / name)
        np.testing.assert_array_equal(outputs["alpha"], expected["alpha"][..., 0])
        np.testing.assert_array_equal(outputs["blended"], expected["blended"])
        np.testing.assert_array_equal(outputs["harmonized"], expected["harmonized"])


def test_a_background_folder_is_matched_by_name_and_a_source_without_one_fails_saying_so(server, folders, tmp_path, capsys):
    sources = tmp_path / "sources"
    sources.mkdir()
    for name in ("astronaut.png", "chelsea.png"):
        (sources / name).write_bytes((folders / "sources" / name).read_bytes())
    out = tmp_path / "out"
    code = main(["composite", "--url", server.grpc_url, "--source", str(sources),
                 "--background", str(folders / "backgrounds"), "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 1
    assert f"chelsea.png: no background named chelsea.* in {folders / 'backgrounds'}" in captured.err
    assert "1 composited, 1 failed" in captured.out
    assert sorted(p.name for p in out.iterdir()) == ["astronaut"]
    matched = composite_one(server, sources / "astronaut.png", folders / "backgrounds" / "astronaut.jpg")
    other = composite_one(server, sources / "astronaut.png", folders / "beach.png")
    harmonized = read_outputs(out / "astronaut")["harmonized"]
    np.testing.assert_array_equal(harmonized, matched["harmonized"])
    assert not np.array_equal(harmonized, other["harmonized"])  # the background really was the matched one


def test_shared_memory_on_and_off_write_the_same_bytes(server, folders, tmp_path, capsys):
    outs = {}
    for flag in ("--shared-memory", "--no-shared-memory"):
        outs[flag] = tmp_path / flag.strip("-")
        code = main(["composite", "--url", server.grpc_url, "--source", str(folders / "sources"),
                     "--background", str(folders / "beach.png"), "--out", str(outs[flag]), flag, "--max-in-flight", "2"])
        assert code == 1  # the two bad files
    capsys.readouterr()
    on, off = outs["--shared-memory"], outs["--no-shared-memory"]
    for name in ("astronaut", "chelsea"):
        for file in OUTPUTS:
            assert (on / name / file).read_bytes() == (off / name / file).read_bytes(), f"{name}/{file}"


def test_folder_options_that_cannot_apply_are_refused_before_any_work(server, folders, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["composite", "--url", server.grpc_url, "--source", str(folders / "sources"),
                 "--background", str(folders / "beach.png"), "--out", str(out), "--temporal-smoothing"])
    assert code == 2
    assert "--temporal-smoothing applies to a video --source only" in capsys.readouterr().err
    code = main(["composite", "--local", "--source", str(folders / "sources"),
                 "--background", str(folders / "beach.png"), "--out", str(out)])
    assert code == 2
    assert "is a folder, not an image file; a folder is composited through a server: use --url" in capsys.readouterr().err
    assert not out.exists()


def test_a_url_list_with_a_server_that_is_down_still_answers_every_item_once(server, folders, tmp_path, capsys):
    dead = f"127.0.0.1:{free_port()}"
    out = tmp_path / "out"
    code = main(["composite", "--url", f"{dead},{server.grpc_url}", "--source", str(folders / "sources"),
                 "--background", str(folders / "beach.png"), "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 1
    assert "2 composited, 2 failed" in captured.out
    assert sorted(p.name for p in out.iterdir()) == ["astronaut", "chelsea"]
    # The single-image command takes the list too, and answers through the live server.
    single = tmp_path / "single"
    code = main(["composite", "--url", f"{dead},{server.grpc_url}", "--source", str(folders / "sources" / "chelsea.png"),
                 "--background", str(folders / "beach.png"), "--out", str(single)])
    assert code == 0, capsys.readouterr().err
    assert (single / "harmonized.png").read_bytes() == (out / "chelsea" / "harmonized.png").read_bytes()


def test_every_server_of_the_list_down_fails_naming_each_within_the_timeout(folders, tmp_path, capsys):
    import time

    urls = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    started = time.monotonic()
    code = main(["composite", "--url", ",".join(urls), "--source", str(folders / "sources"),
                 "--background", str(folders / "beach.png"), "--out", str(tmp_path / "out"), "--timeout-s", "2"])
    elapsed = time.monotonic() - started
    err = capsys.readouterr().err
    assert code == 2
    assert all(url in err for url in urls), err
    assert elapsed < 3 * 2 + 5  # a generous bound: the error comes within the timeout, not after minutes
    assert not (tmp_path / "out").exists()


def test_a_matte_folder_is_matched_by_name_and_its_mattes_are_used(server, folders, tmp_path, capsys):
    sources, mattes = tmp_path / "sources", tmp_path / "mattes"
    sources.mkdir()
    mattes.mkdir()
    (sources / "astronaut.png").write_bytes((folders / "sources" / "astronaut.png").read_bytes())
    y, x = np.mgrid[0:48, 0:40]
    matte = (np.clip(1.2 - np.hypot((y - 26) / 20, (x - 20) / 14), 0, 1) * 255).astype(np.uint8)
    Image.fromarray(matte).save(mattes / "astronaut.png")
    out = tmp_path / "out"
    code = main(["composite", "--url", server.grpc_url, "--source", str(sources), "--background", str(folders / "beach.png"),
                 "--alpha", str(mattes), "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    outputs = read_outputs(out / "astronaut")
    np.testing.assert_array_equal(outputs["alpha"], matte)
    with CompositorClient(server.grpc_url, timeout_s=60) as client:
        expected = client.composite(imaging.read_image(sources / "astronaut.png"), imaging.read_image(folders / "beach.png"),
                                    matte[..., None])
    np.testing.assert_array_equal(outputs["harmonized"], expected["harmonized"])
