"""``compositor serve --replicas N``: port blocks, log names, and a replica killed mid-run.

The end-to-end test runs the command as a user would, sends a stream of requests through the
client's several-server mode (``CompositorPool``), kills one replica's Triton with SIGKILL while
requests are in flight, and checks that every request is answered exactly once, in order, with the
same bytes a single server gives, and that the command starts the replica again on its ports.
"""

from __future__ import annotations

import collections
import signal
import socket
from pathlib import Path

import numpy as np
import psutil
import pytest
import skimage.data

from compositor import imaging
from compositor.cli import main
from compositor.client.pool import CompositeRequest, CompositorPool
from compositor.client.remote import CompositorClient
from compositor.serving.replicas import ReplicaOptionsError, ReplicaPorts, replica_log_path, replica_ports
from compositor.serving.server import free_port

from triton_probes import ServeProcess, processes_serving, serve_command


def test_replicas_take_consecutive_blocks_of_the_first_replicas_ports():
    assert replica_ports(8001, 8000, 8002, 3) == [
        ReplicaPorts(grpc=8001, http=8000, metrics=8002),
        ReplicaPorts(grpc=8004, http=8003, metrics=8005),
        ReplicaPorts(grpc=8007, http=8006, metrics=8008),
    ]
    # Ports that are not adjacent: the block is their whole span, so no two replicas overlap.
    assert replica_ports(9001, 9000, 9100, 2)[1] == ReplicaPorts(grpc=9102, http=9101, metrics=9201)
    assert replica_ports(8001, 8000, 8002, 1) == [ReplicaPorts(8001, 8000, 8002)]
    assert replica_ports(65531, 65530, 65532, 2)[1] == ReplicaPorts(65534, 65533, 65535)  # fits exactly


@pytest.mark.parametrize(
    ("ports", "replicas", "message"),
    [
        ((8001, 8000, 8002), 0, "--replicas must be within 1-64, not 0"),
        ((8001, 8000, 8002), 65, "--replicas must be within 1-64, not 65"),
        ((8001, 8001, 8002), 2, "ports must differ, not 8001, 8001, 8002"),
        ((65531, 65530, 65532), 3, "3 replicas need ports up to 65538"),
    ],
)
def test_impossible_replica_layouts_are_refused_with_the_reason(ports, replicas, message):
    with pytest.raises(ReplicaOptionsError, match=message):
        replica_ports(*ports, replicas)


def test_each_replica_and_each_restart_writes_its_own_log(tmp_path):
    log = tmp_path / "triton.log"
    assert replica_log_path(log, 0, 1, 0) == log
    assert replica_log_path(log, 0, 1, 2) == tmp_path / "triton.restart2.log"
    assert replica_log_path(log, 1, 2, 0) == tmp_path / "triton.replica1.log"
    assert replica_log_path(log, 1, 2, 1) == tmp_path / "triton.replica1.restart1.log"
    assert replica_log_path(None, 1, 2, 1) is None


def test_the_serve_command_refuses_ports_past_65535_before_starting_anything(tmp_path, capsys):
    repository = tmp_path / "repository"
    repository.mkdir()
    code = main(["serve", "--repository", str(repository), "--replicas", "3", "--grpc-port", "65531",
                 "--http-port", "65530", "--metrics-port", "65532"])
    assert code == 2
    assert "3 replicas need ports up to 65538" in capsys.readouterr().err


def free_port_block(size: int) -> int:
    """The first of ``size`` consecutive free loopback ports."""
    for _ in range(50):
        first = free_port()
        if first + size > 65535:
            continue
        sockets = []
        try:
            for port in range(first, first + size):
                probe = socket.socket()
                sockets.append(probe)
                probe.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for probe in sockets:
                probe.close()
    raise AssertionError(f"no {size} consecutive free ports found")


def tritonserver_on(grpc_port: int) -> psutil.Process:
    for process in psutil.process_iter(["name", "cmdline"]):
        if process.info["name"] == "tritonserver" and f"--grpc-port={grpc_port}" in (process.info["cmdline"] or ()):
            return process
    raise AssertionError(f"no tritonserver on gRPC port {grpc_port}")


PHOTOS = ("astronaut", "chelsea", "coffee")
REQUESTS = 40
KILL_BEFORE = 12
"""The victim is killed as request 12 is read: the pool has others in flight on both replicas then."""


@pytest.mark.triton
@pytest.mark.slow
def test_a_replica_killed_mid_run_loses_no_request_and_is_started_again(triton_servers, tmp_path):
    repository = triton_servers.repository()
    http = free_port_block(6)
    command = serve_command(repository, {"http_port": http, "grpc_port": http + 1, "metrics_port": http + 2}) + [
        "--replicas", "2", "--log-file", str(tmp_path / "triton.log"), "--print-log"]
    serve = ServeProcess(command)
    urls = [f"127.0.0.1:{http + 1}", f"127.0.0.1:{http + 4}"]
    # Big enough frames that requests overlap (resizing dominates at a 64x64 network resolution).
    sources = [imaging.resize(getattr(skimage.data, name)(), (720, 720)) for name in PHOTOS]
    background = imaging.resize(skimage.data.rocket(), (720, 720))
    try:
        serve.wait_for("2 replicas; spread requests over them", timeout_s=90)
        assert f"--url {','.join(urls)}" in serve.text
        victim = tritonserver_on(http + 4)

        def requests():
            for i in range(REQUESTS):
                if i == KILL_BEFORE:
                    victim.kill()
                yield CompositeRequest(i, sources[i % 3], background)

        with CompositorPool(",".join(urls), max_in_flight=4) as pool:
            outcomes = list(pool.map(requests()))
        answered = collections.Counter(o.server for o in outcomes if o.ok)
        assert [o.key for o in outcomes] == list(range(REQUESTS))
        assert [str(o.error) for o in outcomes if not o.ok] == []
        assert answered[urls[0]] + answered[urls[1]] == REQUESTS
        assert answered[urls[1]] > 0, answered  # the victim took its share before it was killed
        resent = [o.key for o in outcomes if o.attempts > 1]
        assert resent, "no request was in flight on the killed replica: the test did not test failover"
        assert all(outcomes[key].server == urls[0] for key in resent)

        serve.wait_for("replica 1 restarted (1 of at most 5)", timeout_s=90)
        # --print-log: each replica's log on stdout, its lines marked with the replica's number.
        serve.wait_for("[replica 1] ", timeout_s=10)
        assert any(line.startswith("[replica 0] ") and "successfully loaded 'composite'" in line for line in serve.output)
        assert victim.pid != tritonserver_on(http + 4).pid
        # The restarted replica and the survivor give what every outcome got: the same bytes but for
        # rounding. A request batched with others by Triton's dynamic batcher runs ONNX Runtime's
        # kernels at another batch size, whose float sums can differ in the last bit: seen here, one
        # pixel one level apart in 4 of 240 outputs. A wrong or swapped result differs everywhere.
        for url in urls:
            with CompositorClient(url) as client:
                single = [client.composite(source, background) for source in sources]
            for outcome in outcomes:
                for name in ("alpha", "blended", "harmonized"):
                    got, want = getattr(outcome.result, name).astype(int), single[outcome.key % 3][name].astype(int)
                    assert np.abs(got - want).max() <= 1 and np.count_nonzero(got != want) <= 10, (url, outcome.key, name)

        serve.process.send_signal(signal.SIGINT)
        assert serve.process.wait(timeout=60) == 0, serve.text
        serve.wait_for("SIGINT: every replica stopped")
    finally:
        serve.kill()
    assert not processes_serving(repository)
    # The killed run's log is kept beside the restarted one's.
    logs = sorted(path.name for path in Path(tmp_path).glob("triton*.log"))
    assert logs == ["triton.replica0.log", "triton.replica1.log", "triton.replica1.restart1.log"]
