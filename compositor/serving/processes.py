"""The operating-system side of a running Triton: its process group, its Python-backend stub
processes, their ``/dev/shm`` regions, and signals.

``TritonServer`` (``compositor.serving.server``) launches and stops the server with these; the
replica supervisor watches model processes through it. Linux-only parts (the parent-death signal,
``/proc``) degrade to doing nothing elsewhere.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import psutil

LOGGER = logging.getLogger(__name__)

SHM_DIR = Path("/dev/shm")
STUB_REGION_PREFIX = "triton_python_backend_shm_region_"
"""Triton's Python backend names each stub's shared-memory region so (``shm-region-prefix-name``'s default)."""
STALE_REGION_MIN_AGE_S = 60.0
"""A region nobody maps is swept only when older than this: a stub that is just starting has created
its region a moment before mapping it."""
_MIN_SHM_BYTES = 256 * 2**20
_PR_SET_PDEATHSIG = 1


def warn_if_small_shm() -> None:
    """Warn when ``/dev/shm`` has less than 256 MiB free.

    The Python backend moves every tensor through a /dev/shm region per model instance; Docker's
    default 64 MiB runs out with a few instances and large frames.
    """
    try:
        free = shutil.disk_usage(SHM_DIR).free
    except OSError:
        return
    if free < _MIN_SHM_BYTES:
        LOGGER.warning(
            "/dev/shm has only %d MiB free; the Python backend may fail to allocate shared memory "
            "(in Docker use --shm-size=1g or --ipc=host)",
            free // 2**20,
        )


def mapped_shm_files() -> set[str]:
    """Names of the ``/dev/shm`` files some live process maps (every process whose maps this user may read)."""
    mapped = set()
    marker = f" {SHM_DIR}/"
    for maps in Path("/proc").glob("[0-9]*/maps"):
        try:
            text = maps.read_text(errors="replace")
        except OSError:  # gone meanwhile, or another user's
            continue
        for line in text.splitlines():
            index = line.find(marker)
            if index >= 0:
                mapped.add(line[index + len(marker):].split(" ")[0])
    return mapped


def sweep_stale_stub_regions(shm_dir: Path = SHM_DIR, min_age_s: float = STALE_REGION_MIN_AGE_S) -> list[str]:
    """Unlink the Python-backend stub regions that dead servers left behind; returns their names.

    A server killed with SIGKILL (or an OOM kill) cannot unlink its stubs' regions, and each holds
    the memory of its model's tensors until the machine restarts: runs of crashed servers fill
    ``/dev/shm``. A region counts as stale only when no live process maps it (a running server and
    its stubs map theirs all along) and it is older than ``min_age_s``. Regions of another user's
    servers cannot be seen in ``/proc`` and are left alone (unlinking them is not ours to do).
    """
    if not sys.platform.startswith("linux") or not shm_dir.is_dir():
        return []
    candidates = [p for p in shm_dir.glob(f"{STUB_REGION_PREFIX}*") if p.is_file()]
    if not candidates:
        return []
    mapped = mapped_shm_files()
    now, swept = time.time(), []
    for region in candidates:
        try:
            stat = region.stat()
        except OSError:
            continue
        if region.name in mapped or now - stat.st_mtime < min_age_s or stat.st_uid != os.getuid():
            continue
        try:
            region.unlink()
        except OSError as error:
            LOGGER.debug("could not unlink stale region %s: %s", region, error)
            continue
        swept.append(region.name)
    if swept:
        LOGGER.info("removed %d shared-memory regions of Python-backend stubs whose servers are gone", len(swept))
    return swept


def stub_processes(pgid: int) -> list[tuple[int, list[str]]]:
    """``(pid, argv)`` of the Python-backend stubs in process group ``pgid``.

    A stub's command line is ``triton_python_backend_stub MODEL.py SHM_REGION_NAME ...``. The
    process group, not the process tree, finds stubs whose server has already died.
    """
    stubs = []
    for process in psutil.process_iter(["cmdline"]):
        try:
            if os.getpgid(process.pid) != pgid:
                continue
        except OSError:
            continue
        argv = process.info["cmdline"] or []
        if len(argv) > 2 and argv[0].endswith("triton_python_backend_stub"):
            stubs.append((process.pid, argv))
    return stubs


def stub_shm_regions(pgid: int) -> list[Path]:
    """The ``/dev/shm`` regions of the Python-backend stubs in process group ``pgid``."""
    return [SHM_DIR / argv[2] for _, argv in stub_processes(pgid)]


def model_of(argv: list[str]) -> str:
    """The model a stub serves: ``.../<model>/<version>/model.py`` -> ``<model>``."""
    return Path(argv[1]).parent.parent.name


def process_alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie (a dead child its parent has not reaped)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False



def die_with_parent_function():
    """A ``preexec_fn`` that makes the child get SIGTERM when this thread dies, or ``None``.

    ``None`` off Linux and off the main thread (PR_SET_PDEATHSIG fires when the *thread* that
    forked exits). Everything the child calls is prepared here, before the fork.
    """
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()
    sigterm = int(signal.SIGTERM)

    def die_with_parent() -> None:
        prctl(_PR_SET_PDEATHSIG, sigterm, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl: no signal will come
            os._exit(1)

    return die_with_parent


def send_signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
