"""System shared memory against the real server: same bytes as over the socket, regions reused,
and never left behind: not after ``close()``, an exception, Ctrl-C (SIGINT) or SIGTERM.

One server for the module (the session's 64x64 ``small_repository``). Leftovers are looked for
where they would be: the server's own shared-memory status (asked with tritonclient directly)
and ``/dev/shm``.
"""

from __future__ import annotations

import select
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc
import tritonclient.http
import tritonclient.utils

from compositor.client.remote import CompositorClient
from compositor.client.shared_memory import SharedMemoryError, SharedMemoryPool

from triton_probes import INTERRUPTIBLE

pytestmark = pytest.mark.triton

PROTOCOLS = ("grpc", "http")
OUTPUTS = {"composite": ("alpha", "blended", "harmonized"), "composite_with_alpha": ("blended", "harmonized")}
DEV_SHM = Path("/dev/shm")


@pytest.fixture(scope="module")
def server(own_server):
    return own_server


def triton_client(server, protocol: str):
    if protocol == "grpc":
        return tritonclient.grpc.InferenceServerClient(server.grpc_url)
    return tritonclient.http.InferenceServerClient(server.http_url)


def module_of(protocol: str):
    return tritonclient.grpc if protocol == "grpc" else tritonclient.http


def registered(client, protocol: str) -> set[str]:
    """Region names the server lists, read with tritonclient itself."""
    if protocol == "grpc":
        return set(client.get_system_shared_memory_status().regions)
    return {entry["name"] for entry in client.get_system_shared_memory_status()}


def files_of(name: str) -> list[str]:
    return sorted(p.name for p in DEV_SHM.iterdir() if p.name.startswith(name + "_"))


def frames(height: int = 36, width: int = 52, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "source": rng.integers(0, 256, (1, height, width, 3), dtype=np.uint8),
        "background": rng.integers(0, 256, (1, height + 7, width - 5, 3), dtype=np.uint8),
        "alpha": rng.integers(0, 256, (1, height, width, 1), dtype=np.uint8),
    }


def output_shape(name: str, source: np.ndarray) -> tuple[int, ...]:
    return (*source.shape[:3], 1 if name == "alpha" else 3)


def infer(client, protocol: str, ensemble: str, inputs: dict[str, np.ndarray], pool: SharedMemoryPool | None = None):
    """One request; through ``pool``'s regions when given, else over the socket."""
    triton = module_of(protocol)
    names = ["source", "background"] + (["alpha"] if ensemble == "composite_with_alpha" else [])
    request_inputs, requested = [], []
    for name in names:
        tensor = triton.InferInput(name, list(inputs[name].shape), "UINT8")
        pool.set_input(tensor, inputs[name]) if pool else tensor.set_data_from_numpy(inputs[name])
        request_inputs.append(tensor)
    for name in OUTPUTS[ensemble]:
        output = triton.InferRequestedOutput(name)
        if pool:
            pool.set_output(output, int(np.prod(output_shape(name, inputs["source"]))))
        requested.append(output)
    result = client.infer(ensemble, request_inputs, outputs=requested)
    if pool:
        return {n: pool.read_output(result, n, output_shape(n, inputs["source"]), np.uint8) for n in OUTPUTS[ensemble]}
    return {n: result.as_numpy(n) for n in OUTPUTS[ensemble]}


# --- Same bytes ------------------------------------------------------------------------------------


@pytest.mark.parametrize("ensemble", sorted(OUTPUTS))
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_shared_memory_gives_the_same_bytes_as_the_socket(server, protocol, ensemble):
    client = triton_client(server, protocol)
    inputs = frames()
    expected = infer(client, protocol, ensemble, inputs)
    with SharedMemoryPool(client, protocol, prefix="shmtest-same") as pool:
        for _ in range(2):  # the second request reuses the regions
            outputs = infer(client, protocol, ensemble, inputs, pool)
            for name in OUTPUTS[ensemble]:
                assert outputs[name].shape == expected[name].shape == output_shape(name, inputs["source"])
                assert np.array_equal(outputs[name], expected[name]), name


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_the_compositor_client_gives_the_same_outputs_with_and_without_shared_memory(server, protocol):
    url = server.grpc_url if protocol == "grpc" else server.http_url
    inputs = frames(40, 30, seed=3)
    source, background, alpha = inputs["source"][0], inputs["background"][0], inputs["alpha"][0]
    with CompositorClient(url, protocol=protocol) as plain, CompositorClient(url, protocol=protocol, shared_memory=True) as shm:
        for matte in (None, alpha):
            expected, actual = plain.composite(source, background, matte), shm.composite(source, background, matte)
            assert sorted(actual) == sorted(expected)
            for name in expected:
                assert np.array_equal(actual[name], expected[name]), name


# --- Regions: registered once, reused, replaced, removed ------------------------------------------------


def test_regions_are_registered_once_reused_and_replaced_by_larger_ones(server):
    client = triton_client(server, "grpc")
    with SharedMemoryPool(client, "grpc", prefix="shmtest-reuse") as pool:
        infer(client, "grpc", "composite", frames(32, 48), pool)
        first = set(pool.region_names())
        assert len(first) == 5, "source, background, alpha, blended, harmonized"
        assert first <= registered(client, "grpc") and set(files_of(pool.name)) == first
        infer(client, "grpc", "composite", frames(32, 48, seed=1), pool)
        assert set(pool.region_names()) == first, "same sizes: the same regions"
        larger = frames(64, 96)
        expected = infer(client, "grpc", "composite", larger)
        outputs = infer(client, "grpc", "composite", larger, pool)
        assert all(np.array_equal(outputs[n], expected[n]) for n in expected)
        second = set(pool.region_names())
        assert len(second) == 5 and not second & first, "every region was too small and is replaced"
        assert not first & registered(client, "grpc") and not first & set(files_of(pool.name)), "the old ones are gone"
        infer(client, "grpc", "composite", frames(32, 48), pool)
        assert set(pool.region_names()) == second, "a smaller frame fits the larger regions"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_close_unregisters_and_unlinks_every_region_and_is_idempotent(server, protocol):
    client = triton_client(server, protocol)
    pool = SharedMemoryPool(client, protocol, prefix="shmtest-close")
    infer(client, protocol, "composite_with_alpha", frames(), pool)
    names = set(pool.region_names())
    assert names and names <= registered(client, protocol) and files_of(pool.name)
    pool.close()
    pool.close()
    assert not names & registered(client, protocol)
    assert files_of(pool.name) == []
    with pytest.raises(SharedMemoryError, match="closed"):
        infer(client, protocol, "composite", frames(), pool)


def test_an_exception_inside_the_with_block_still_removes_every_region(server):
    client = triton_client(server, "grpc")
    with pytest.raises(ZeroDivisionError):
        with SharedMemoryPool(client, "grpc", prefix="shmtest-raise") as pool:
            infer(client, "grpc", "composite", frames(), pool)
            names = set(pool.region_names())
            assert names <= registered(client, "grpc")
            1 / 0
    assert not names & registered(client, "grpc")
    assert files_of(pool.name) == []


def test_a_failed_request_leaves_the_regions_usable_and_closing_removes_them(server):
    client = triton_client(server, "grpc")
    with SharedMemoryPool(client, "grpc", prefix="shmtest-fail") as pool:
        mismatched = frames(36, 52)
        mismatched["background"] = np.concatenate([mismatched["background"]] * 2)  # 2 backgrounds for 1 source
        with pytest.raises(tritonclient.utils.InferenceServerException, match="batch size does not match"):
            infer(client, "grpc", "composite", mismatched, pool)
        inputs = frames()
        assert np.array_equal(infer(client, "grpc", "composite", inputs, pool)["harmonized"],
                              infer(client, "grpc", "composite", inputs)["harmonized"])
        names = set(pool.region_names())
    assert not names & registered(client, "grpc") and files_of(pool.name) == []


def test_closing_while_a_request_still_uses_the_regions_waits_for_the_server_to_release_them(server):
    """Triton refuses to unregister a region in use; close() waits for it instead of leaving it registered."""
    client = triton_client(server, "grpc")
    pool = SharedMemoryPool(client, "grpc", prefix="shmtest-inflight")
    infer(client, "grpc", "composite", frames(), pool)  # registers the regions
    inputs = frames(720, 1280)
    done = threading.Event()
    request_inputs = []
    for name in ("source", "background"):
        tensor = tritonclient.grpc.InferInput(name, list(inputs[name].shape), "UINT8")
        pool.set_input(tensor, inputs[name])
        request_inputs.append(tensor)
    output = tritonclient.grpc.InferRequestedOutput("harmonized")
    pool.set_output(output, 720 * 1280 * 3)
    client.async_infer("composite", request_inputs, lambda result, error: done.set(), outputs=[output])
    names = set(pool.region_names())
    pool.close()
    assert not names & registered(client, "grpc") and files_of(pool.name) == []
    assert done.wait(60)


def test_pools_in_concurrent_threads_use_their_own_regions(server):
    client = triton_client(server, "grpc")
    inputs = [frames(36, 52, seed=seed) for seed in range(2)]
    expected = [infer(client, "grpc", "composite", x) for x in inputs]
    results, names, errors = [None, None], [None, None], []

    def work(index: int) -> None:
        try:
            with SharedMemoryPool(client, "grpc", prefix="shmtest-threads") as pool:
                for _ in range(3):
                    results[index] = infer(client, "grpc", "composite", inputs[index], pool)
                names[index] = set(pool.region_names())
        except Exception as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert not names[0] & names[1], "the same prefix still gives each pool its own region names"
    for index in range(2):
        assert all(np.array_equal(results[index][n], expected[index][n]) for n in expected[index])


# --- Ctrl-C and SIGTERM in another process ------------------------------------------------------------


CHILD = textwrap.dedent(
    """
    import sys
    import numpy as np
    import tritonclient.grpc as triton
    from compositor.client.shared_memory import SharedMemoryPool

    url, prefix, mode = sys.argv[1:4]
    client = triton.InferenceServerClient(url)
    rng = np.random.default_rng(0)
    source = rng.integers(0, 256, (1, 48, 64, 3), dtype=np.uint8)
    background = rng.integers(0, 256, (1, 40, 40, 3), dtype=np.uint8)

    def request(pool):
        inputs = []
        for name, value in (("source", source), ("background", background)):
            tensor = triton.InferInput(name, list(value.shape), "UINT8")
            pool.set_input(tensor, value)
            inputs.append(tensor)
        outputs = []
        for name, channels in (("alpha", 1), ("blended", 3), ("harmonized", 3)):
            output = triton.InferRequestedOutput(name)
            pool.set_output(output, 48 * 64 * channels)
            outputs.append(output)
        result = client.infer("composite", inputs, outputs=outputs)
        pool.read_output(result, "harmonized", (1, 48, 64, 3), np.uint8)

    def loop(pool):
        request(pool)
        print(pool.name, flush=True)
        while True:
            request(pool)

    if mode == "with":
        with SharedMemoryPool(client, "grpc", prefix) as pool:
            loop(pool)
    elif mode == "thread":  # pools made in worker threads: the main thread installs the handlers
        import threading
        from compositor.client.shared_memory import install_exit_handlers

        install_exit_handlers()
        worker = threading.Thread(target=lambda: loop(SharedMemoryPool(client, "grpc", prefix)), daemon=True)
        worker.start()
        worker.join()
    elif mode == "dropped":  # the owner drops the pool without closing it, then exits normally
        pool = SharedMemoryPool(client, "grpc", prefix)
        request(pool)
        print(pool.name, flush=True)
        del pool
        sys.stdin.readline()
    else:
        loop(SharedMemoryPool(client, "grpc", prefix))
    """
)


def _run_child_until_it_loops(server, tmp_path, prefix: str, mode: str) -> tuple[subprocess.Popen, str]:
    script = tmp_path / "child.py"
    script.write_text(INTERRUPTIBLE + CHILD)
    child = subprocess.Popen(
        [sys.executable, str(script), server.grpc_url, prefix, mode],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    ready, _, _ = select.select([child.stdout], [], [], 120)
    if not ready:
        child.kill()
        pytest.fail(f"the child never got a response: {child.communicate()[1][-2000:]}")
    name = child.stdout.readline().strip()
    assert name.startswith(prefix), child.communicate()[1][-2000:]
    return child, name


@pytest.mark.parametrize(
    ("mode", "signum"),
    [("with", signal.SIGINT), ("plain", signal.SIGINT), ("plain", signal.SIGTERM), ("thread", signal.SIGTERM)],
)
def test_a_process_interrupted_in_a_loop_of_requests_leaves_no_region_behind(server, tmp_path, mode, signum):
    """``with`` cleans up on Ctrl-C's KeyboardInterrupt; without it, the atexit hook does; on SIGTERM
    the handler does, also for pools in worker threads once the main thread installed it."""
    client = triton_client(server, "grpc")
    prefix = f"shmtest-{signum.name.lower()}-{mode}"
    child, name = _run_child_until_it_loops(server, tmp_path, prefix, mode)
    try:
        ours = {n for n in registered(client, "grpc") if n.startswith(name + "_")}
        assert len(ours) == 5 and len(files_of(name)) == 5, "the child's regions exist while it runs"
        child.send_signal(signum)
        _, stderr = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert not {n for n in registered(client, "grpc") if n.startswith(name + "_")}, stderr[-2000:]
    assert files_of(name) == [], stderr[-2000:]
    if signum == signal.SIGTERM:
        assert child.returncode == -signal.SIGTERM, "the process still ends by SIGTERM"
    else:
        assert "KeyboardInterrupt" in stderr


def test_a_pool_dropped_without_closing_is_closed_when_the_process_exits(server, tmp_path):
    client = triton_client(server, "grpc")
    child, name = _run_child_until_it_loops(server, tmp_path, "shmtest-dropped", "dropped")
    try:
        assert len({n for n in registered(client, "grpc") if n.startswith(name + "_")}) == 5
        _, stderr = child.communicate("\n", timeout=60)  # let it exit
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0, stderr[-2000:]
    assert not {n for n in registered(client, "grpc") if n.startswith(name + "_")}, stderr[-2000:]
    assert files_of(name) == []
