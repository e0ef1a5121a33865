"""The Triton client library and ``compositor composite --url`` without a server: errors first.

Requests against a running server are in tests/test_triton_ensembles.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from compositor import imaging
from compositor.cli import main
from compositor.client.remote import CompositorClient, ServerUnreachableError
from compositor.serving.server import free_port

SOURCE = np.zeros((32, 48, 3), np.uint8)
BACKGROUND = np.zeros((40, 40, 3), np.uint8)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_server_that_is_not_there_is_reported_as_unreachable_with_its_url(protocol):
    url = f"127.0.0.1:{free_port()}"
    with CompositorClient(url, protocol=protocol, timeout_s=2) as client:
        with pytest.raises(ServerUnreachableError, match=rf"Triton server at {protocol}://{url} is unreachable"):
            client.composite(SOURCE, BACKGROUND)


def test_an_unknown_protocol_or_timeout_is_refused():
    with pytest.raises(ValueError, match="protocol must be one of grpc, http"):
        CompositorClient("localhost:8001", protocol="grpcs")
    with pytest.raises(ValueError, match="timeout_s must be > 0"):
        CompositorClient("localhost:8001", timeout_s=0)


@pytest.mark.parametrize(
    ("source", "background", "alpha", "message"),
    [
        (np.zeros((32, 48, 4), np.uint8), BACKGROUND, None, r"source: expected 3 channel\(s\), got 4 \(RGBA\)"),
        (SOURCE.astype(np.float32), BACKGROUND, None, "source: expected uint8 pixels, got float32"),
        (SOURCE, BACKGROUND, np.zeros((16, 16, 1), np.uint8), "alpha: size 16x16"),
        ([[0]], BACKGROUND, None, "source: expected a numpy array, got list"),
    ],
)
def test_bad_frames_fail_locally_before_anything_is_sent(source, background, alpha, message):
    # No server at this port: a request would raise ServerUnreachableError instead.
    with CompositorClient(f"127.0.0.1:{free_port()}") as client:
        with pytest.raises(imaging.ImageError, match=message):
            client.composite(source, background, alpha)


def test_composite_command_names_the_unreachable_server_and_exits_2(tmp_path, capsys):
    imaging.write_image(tmp_path / "source.png", SOURCE)
    imaging.write_image(tmp_path / "background.png", BACKGROUND)
    url = f"127.0.0.1:{free_port()}"
    code = main(["composite", "--url", url, "--source", str(tmp_path / "source.png"),
                 "--background", str(tmp_path / "background.png"), "--out", str(tmp_path / "out"), "--timeout-s", "2"])
    assert code == 2
    assert f"grpc://{url} is unreachable" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_composite_command_accepts_only_one_of_local_and_url(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["composite", "--local", "--url", "localhost:8001", "--source", "s.png", "--background", "b.png", "--out", "o"])
    assert exit_info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
