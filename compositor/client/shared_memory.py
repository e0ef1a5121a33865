"""System shared memory for requests to a Triton server on the same host: frames skip the socket.

A ``SharedMemoryPool`` belongs to one client connection and one thread. It keeps one region per
tensor (``input``/``output`` and its name), creates and registers it with the server the first
time it is needed, and reuses it for every later request while it is large enough (a larger frame
replaces it with a larger one). Clean-up is guaranteed: ``close()`` (also on leaving a ``with``
block, normally or by an exception or Ctrl-C) unregisters every region from the server and unlinks
it from ``/dev/shm``; pools still open at interpreter exit are closed by an ``atexit`` hook, and on
SIGTERM by a handler that closes them and then lets the signal do what it did before. Python lets
only the main thread install that handler: a pool made there installs it; a program whose pools are
made in worker threads calls ``install_exit_handlers()`` once from its main thread. Triton refuses
to unregister a region a request still uses, so closing waits for the server to let go of it.

Region names are ``<prefix>_<pid>_<pool>_<n>``: unique per process and pool, so concurrent pools
(threads, processes, clients of the same server) never share a region. Requests in flight at the
same time must use different pools: one request's data would overwrite the other's.

Example:
    >>> with SharedMemoryPool(grpc_client, "grpc", prefix="compositor") as pool:  # doctest: +SKIP
    ...     source = tritonclient.grpc.InferInput("source", list(frame.shape), "UINT8")
    ...     pool.set_input(source, frame)
    ...     output = tritonclient.grpc.InferRequestedOutput("harmonized")
    ...     pool.set_output(output, frame.nbytes)
    ...     result = grpc_client.infer("composite", [source, ...], outputs=[output])
    ...     harmonized = pool.read_output(result, "harmonized", frame.shape, np.uint8)

``tritonclient`` is imported when a pool is made; numpy is the only other dependency.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

PROTOCOLS = ("grpc", "http")
DEFAULT_PREFIX = "compositor"
UNREGISTER_WAIT_S = 30.0
"""How long ``close()`` waits for the server to release a region a request still uses: longer than
one request on a 4K frame on a busy CPU server (a few seconds)."""

_POOL_NUMBERS = itertools.count()
_LIVE_POOLS: set[SharedMemoryPool] = set()
"""Pools not closed yet. Strong references: a pool its owner dropped without closing is still
closed at exit instead of leaving its regions registered."""
_LIVE_LOCK = threading.RLock()  # re-entrant: the SIGTERM handler runs in the main thread, maybe inside a `with`
_EXIT_HOOKS = {"atexit": False}
_PREVIOUS_HANDLERS: dict[int, object] = {}


class SharedMemoryError(RuntimeError):
    """A shared memory region could not be created, registered or read (the message says which)."""


@dataclass
class _Region:
    name: str
    """Region name on the server, also the ``/dev/shm`` file name."""
    byte_size: int
    handle: object | None = None
    """tritonclient's ``SharedMemoryRegion``; None until created, and again once destroyed."""
    registered: bool = False

    @property
    def key(self) -> str:
        return "/" + self.name


class SharedMemoryPool:
    """System shared memory regions of one client connection, registered once and reused.

    Args:
        triton_client: a ``tritonclient.grpc`` or ``tritonclient.http`` ``InferenceServerClient`` on
            the same host as the server (system shared memory is not shared across machines).
        protocol: ``grpc`` or ``http``: which client it is.
        prefix: start of every region name (letters, digits, ``_`` and ``-``), e.g. to tell the
            regions of one program from another's in ``/dev/shm``.
        timeout_s: timeout of the register and unregister calls (gRPC only; HTTP uses the
            client's own), None: no limit.
    """

    def __init__(self, triton_client, protocol: str, prefix: str = DEFAULT_PREFIX, timeout_s: float | None = None) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, not {protocol!r}")
        if not prefix or not all(c.isalnum() or c in "_-" for c in prefix):
            raise ValueError(f"prefix must be letters, digits, '_' or '-', not {prefix!r}")
        import tritonclient.utils.shared_memory as system_shm  # loaded with the pool, as tritonclient elsewhere

        self._shm = system_shm
        self._client = triton_client
        self.protocol = protocol
        self.prefix = prefix
        self.timeout_s = timeout_s
        self.name = f"{prefix}_{os.getpid()}_{next(_POOL_NUMBERS)}"
        self._numbers = itertools.count()
        self._regions: dict[tuple[str, str], _Region] = {}
        self._closed = False
        with _LIVE_LOCK:
            _LIVE_POOLS.add(self)
        install_exit_handlers()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._regions)} regions"
        return f"SharedMemoryPool({self.name}, {self.protocol}, {state})"

    def __enter__(self) -> SharedMemoryPool:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def region_names(self) -> list[str]:
        """Names of the regions this pool holds now (each also a file in ``/dev/shm``)."""
        return [region.name for region in self._regions.values()]

    # --- requests ----------------------------------------------------------------------------------

    def set_input(self, infer_input, array: np.ndarray) -> None:
        """Copy ``array`` into the input's region and point ``infer_input`` at it.

        The region (one per input name) is created and registered on first use, reused afterwards,
        and replaced by a larger one when ``array`` does not fit.

        Raises:
            SharedMemoryError: the region could not be created or registered.
        """
        array = np.ascontiguousarray(array)
        region = self._region("input", infer_input.name(), array.nbytes)
        try:
            self._shm.set_shared_memory_region(region.handle, [array])
        except self._shm.SharedMemoryException as error:
            raise SharedMemoryError(f"cannot write input {infer_input.name()!r} to shared memory region {region.name}: {error}") from error
        infer_input.set_shared_memory(region.name, array.nbytes)

    def set_output(self, requested_output, nbytes: int) -> None:
        """Ask the server to write ``requested_output`` (``nbytes`` bytes) into its region.

        Raises:
            SharedMemoryError: the region could not be created or registered.
        """
        region = self._region("output", requested_output.name(), int(nbytes))
        requested_output.set_shared_memory(region.name, int(nbytes))

    def read_output(self, result, name: str, shape, dtype) -> np.ndarray:
        """A copy of output ``name`` of ``result`` (an ``InferResult``) out of its region.

        Args:
            result: the response of a request whose output ``name`` went through ``set_output``.
            name: the output's name.
            shape: the expected shape, or None for the one the response gives.
            dtype: its numpy dtype.

        Raises:
            SharedMemoryError: no region for ``name``, the response's shape differs from ``shape``,
                or the data would not fit the region.
        """
        region = self._regions.get(("output", name))
        if region is None or region.handle is None:
            raise SharedMemoryError(f"output {name!r} has no shared memory region in {self!r}; call set_output first")
        answered = _output_shape(result, name)
        if shape is None:
            if answered is None:
                raise SharedMemoryError(f"the response has no output {name!r}")
            shape = answered
        shape = tuple(int(n) for n in shape)
        if answered is not None and tuple(answered) != shape:
            raise SharedMemoryError(f"output {name!r} has shape {list(answered)}, expected {list(shape)}")
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        if nbytes > region.byte_size:
            raise SharedMemoryError(f"output {name!r} ({nbytes} bytes) is larger than its region {region.name} ({region.byte_size} bytes)")
        view = self._shm.get_contents_as_numpy(region.handle, np.dtype(dtype), shape)
        copy = np.array(view, copy=True)
        del view  # release the buffer export, so the region can be closed
        return copy

    # --- regions -----------------------------------------------------------------------------------

    def _region(self, direction: str, tensor: str, nbytes: int) -> _Region:
        if self._closed:
            raise SharedMemoryError(f"{self!r} is closed")
        key = (direction, tensor)
        region = self._regions.get(key)
        if region is not None and region.byte_size >= nbytes and region.registered:
            return region
        if region is not None:  # too small (a larger frame) or half made: replace it
            self._release(region)
            del self._regions[key]
        # Booked before anything exists, so that an interruption at any point below still leaves
        # a record that close() cleans up.
        region = self._regions[key] = _Region(f"{self.name}_{next(self._numbers)}", max(int(nbytes), 1))
        try:
            region.handle = self._shm.create_shared_memory_region(region.name, region.key, region.byte_size, create_only=True)
        except self._shm.SharedMemoryException as error:
            raise SharedMemoryError(
                f"cannot create shared memory region {region.name} ({region.byte_size} bytes) in /dev/shm: "
                f"{error.__cause__ or error}"
            ) from error
        try:
            self._call(self._client.register_system_shared_memory, region.name, region.key, region.byte_size)
        except Exception as error:  # noqa: BLE001 - any failure to register is reported the same way
            raise SharedMemoryError(
                f"the server did not register shared memory region {region.name} ({region.byte_size} bytes): {error}; "
                "system shared memory needs the client and the server on the same host"
            ) from error
        region.registered = True
        log.debug("%s: registered %s (%s %s, %d bytes)", self.name, region.name, direction, tensor, region.byte_size)
        return region

    def _call(self, method, *args):
        if self.protocol == "grpc" and self.timeout_s is not None:
            return method(*args, client_timeout=self.timeout_s)
        return method(*args)

    def _unregister(self, name: str) -> None:
        """Unregister region ``name``, waiting while the server still uses it.

        Triton refuses to unregister a region a request still holds ("currently in use"), which
        happens for a moment after a response has arrived, and for as long as an interrupted
        request runs; retried with backoff for up to ``UNREGISTER_WAIT_S``.
        """
        deadline = time.monotonic() + UNREGISTER_WAIT_S
        delay_s = 0.01
        while True:
            try:
                self._call(self._client.unregister_system_shared_memory, name)
                return
            except Exception as error:  # noqa: BLE001 - only "in use" is retried
                if "in use" not in str(error) or time.monotonic() + delay_s > deadline:
                    raise
            time.sleep(delay_s)
            delay_s = min(delay_s * 2, 0.5)

    def _release(self, region: _Region) -> None:
        """Unregister ``region`` from the server and unlink it; each part once, failures logged.

        The server is asked even when the registration did not seem to finish (an interruption
        may have come between the server's answer and the bookkeeping); it answers an unknown
        name with success.
        """
        try:
            self._unregister(region.name)
            region.registered = False
        except Exception as error:  # noqa: BLE001 - clean-up goes on; the region stays listed on the server
            if region.registered:
                log.warning("%s: could not unregister shared memory region %s from the server: %s", self.name, region.name, error)
        handle, region.handle = region.handle, None
        if handle is not None:
            try:
                self._shm.destroy_shared_memory_region(handle)
                return
            except Exception as error:  # noqa: BLE001 - e.g. a buffer another thread still reads: unlink by name
                log.debug("%s: destroying %s failed (%s); unlinking it by name", self.name, region.name, error)
        _unlink_if_present(region.name)

    def close(self) -> None:
        """Unregister every region from the server and unlink it. Idempotent; never raises."""
        if self._closed and not self._regions:
            return
        self._closed = True
        for region in list(self._regions.values()):
            self._release(region)
        self._regions.clear()
        with _LIVE_LOCK:
            _LIVE_POOLS.discard(self)


def _output_shape(result, name: str) -> list[int] | None:
    """The shape of output ``name`` in a gRPC or HTTP ``InferResult``, or None when it is absent."""
    output = result.get_output(name)
    if output is None:
        return None
    shape = output["shape"] if isinstance(output, dict) else output.shape
    return [int(n) for n in shape]


def _unlink_if_present(name: str) -> None:
    """Unlink ``/dev/shm/<name>`` if it exists (a region whose creation was interrupted)."""
    from multiprocessing import shared_memory

    try:
        leftover = shared_memory.SharedMemory(name)
    except FileNotFoundError:
        return
    except OSError as error:
        log.warning("could not open shared memory %s to unlink it: %s", name, error)
        return
    try:
        leftover.close()
        leftover.unlink()
    except OSError as error:
        log.warning("could not unlink shared memory %s: %s", name, error)


def server_regions(triton_client) -> set[str]:
    """Names of the system shared memory regions registered on the server (gRPC or HTTP client)."""
    status = triton_client.get_system_shared_memory_status(as_json=True) if _is_grpc(triton_client) else (
        triton_client.get_system_shared_memory_status()
    )
    if isinstance(status, dict):  # gRPC: {"regions": {name: {...}}}
        return set((status.get("regions") or {}).keys())
    return {entry["name"] for entry in status}  # HTTP: [{"name": ..., "key": ..., ...}]


def _is_grpc(triton_client) -> bool:
    return type(triton_client).__module__.startswith("tritonclient.grpc")


# --- clean-up at exit and on SIGTERM ---------------------------------------------------------------


def close_all_pools() -> None:
    """Close every pool of this process that is still open (at exit, on SIGTERM)."""
    with _LIVE_LOCK:
        pools = list(_LIVE_POOLS)
    for pool in pools:
        pool.close()


def install_exit_handlers() -> None:
    """Make sure open pools are closed at interpreter exit and on SIGTERM.

    Called by every new pool. The ``atexit`` hook is registered once. The SIGTERM handler can only
    be installed from the main thread (a Python rule): a program whose pools are all made in worker
    threads calls this once from the main thread. A SIGTERM handler the program set itself is
    chained (called after the pools are closed); SIGTERM set to be ignored is left alone. Ctrl-C
    needs no handler: its ``KeyboardInterrupt`` unwinds ``with`` blocks, then the ``atexit`` hook
    runs.
    """
    with _LIVE_LOCK:
        if not _EXIT_HOOKS["atexit"]:
            atexit.register(close_all_pools)
            _EXIT_HOOKS["atexit"] = True
        if signal.SIGTERM in _PREVIOUS_HANDLERS or threading.current_thread() is not threading.main_thread():
            return
        previous = signal.getsignal(signal.SIGTERM)
        if previous is signal.SIG_IGN:
            return
        signal.signal(signal.SIGTERM, _on_terminate)
        _PREVIOUS_HANDLERS[signal.SIGTERM] = previous


def _on_terminate(signum, frame) -> None:
    log.warning("signal %d: unregistering and unlinking shared memory before exiting", signum)
    close_all_pools()
    previous = _PREVIOUS_HANDLERS.get(signum)
    if callable(previous):
        previous(signum, frame)
        return
    # The default action (terminate) as if no handler had been here: same exit status for the parent.
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
