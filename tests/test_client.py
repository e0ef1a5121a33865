"""The Triton client library and ``compositor composite --url`` without a server: errors first.

Requests against a running server are in tests/test_triton_ensembles.py (the ensembles),
tests/test_deployment.py (what the client reads from a server) and tests/test_client_pool.py
(many requests, several servers).
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from compositor import imaging
from compositor.cli import main
from compositor.client.pool import CompositorPool, parse_urls
from compositor.client.remote import CompositorClient, InvalidURLError, ServerUnreachableError
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
    with pytest.raises(ValueError, match="retries and backoff_s must be >= 0, got -1 and 0.2"):
        CompositorClient("localhost:8001", retries=-1)
    with pytest.raises(ValueError, match="max_in_flight must be >= 1, got 0"):
        CompositorPool("localhost:8001", max_in_flight=0)


def test_a_url_list_follows_the_single_url_rules():
    assert parse_urls("h1:9001, grpc://h2 ,[::1]:7", "grpc") == ["h1:9001", "h2:8001", "[::1]:7"]
    with pytest.raises(InvalidURLError, match="http:// is for --protocol http"):
        parse_urls("h1:8001,http://h2:8000", "grpc")
    with pytest.raises(InvalidURLError, match="h1:8001 is listed more than once"):
        parse_urls("h1,h1:8001", "grpc")
    with pytest.raises(InvalidURLError, match="several separated by commas"):
        parse_urls("h1:8001,", "grpc")


def test_no_server_up_at_start_is_an_error_naming_every_url_within_the_timeout():
    urls = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    started = time.monotonic()
    with pytest.raises(ServerUnreachableError) as caught:
        CompositorPool(",".join(urls), timeout_s=2)
    assert time.monotonic() - started < 6
    for url in urls:
        assert f"grpc://{url}: Triton server at grpc://{url} is unreachable: connection refused" in str(caught.value)


def test_a_server_that_accepts_but_never_answers_is_down_for_a_pool_within_a_bound():
    import socket

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        urls = [f"127.0.0.1:{silent.getsockname()[1]}", f"127.0.0.1:{free_port()}"]
        started = time.monotonic()
        with pytest.raises(ServerUnreachableError) as caught:
            CompositorPool(",".join(urls), timeout_s=1)
        assert time.monotonic() - started < 3
    assert f"grpc://{urls[0]}: Triton server at grpc://{urls[0]}: no response within 1 s" in str(caught.value)
    assert f"grpc://{urls[1]}: Triton server at grpc://{urls[1]} is unreachable" in str(caught.value)


def test_a_pool_with_one_server_down_reports_it_as_the_single_client_does():
    url = f"127.0.0.1:{free_port()}"
    with pytest.raises(ServerUnreachableError, match=rf"^Triton server at grpc://{url} is unreachable: connection refused"):
        CompositorPool(url, timeout_s=2)


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
