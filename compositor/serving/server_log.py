"""The Triton server's log: where it is kept, and reading it (start-up diagnosis, a readable tail).

The server's output (Triton's log and the Python models' own prints and tracebacks) goes to one
file, kept after the server stops so that why a model failed can be read after the fact. Unless
the caller names a file (``compositor serve --log-file``), it is a new file in ``DEFAULT_LOG_DIR``
(``<temp>/compositor-triton-logs/tritonserver-<date>-<time>-<random>.log``), where only the newest
``KEPT_LOGS`` are kept.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import tempfile
from pathlib import Path

DEFAULT_LOG_DIR = Path(tempfile.gettempdir()) / "compositor-triton-logs"
"""Where a server's log goes unless the caller names a file."""

KEPT_LOGS = 20
"""Logs kept in ``DEFAULT_LOG_DIR``; older ones are removed when a new server starts."""

LOG_TAIL_LINES = 25


def new_log_path(folder: Path = DEFAULT_LOG_DIR, keep: int = KEPT_LOGS) -> Path:
    """A new, empty log file in ``folder`` named after the time, the ``keep - 1`` newest others kept.

    Several servers may start in the same second (tests, benchmarks): the name gets a random part.
    """
    folder.mkdir(parents=True, exist_ok=True)
    older = sorted(folder.glob("tritonserver-*.log"), key=_modified, reverse=True)
    for stale in older[max(keep - 1, 0):]:
        stale.unlink(missing_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    handle, name = tempfile.mkstemp(prefix=f"tritonserver-{stamp}-", suffix=".log", dir=folder)
    os.close(handle)
    return Path(name)


def _modified(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:  # removed meanwhile by another server starting
        return 0.0


class LogReader:
    """Reads a growing log: only complete new lines each time, so a verbose log stays cheap."""

    def __init__(self, path: Path, keep_text: bool = True) -> None:
        """``keep_text=False``: only follow the log (``text`` stays empty), for a server that runs for days."""
        self._path = path
        self._keep_text = keep_text
        self._offset = 0
        self._partial = b""
        self._chunks: list[str] = []

    def read_new_lines(self) -> str:
        try:
            with open(self._path, "rb") as log:
                log.seek(self._offset)
                data = log.read()
        except OSError:
            return ""
        self._offset += len(data)
        data = self._partial + data
        complete, _, self._partial = data.rpartition(b"\n")
        if not complete:
            self._partial = data
            return ""
        # The log can hold stray NUL bytes; never let decoding break the diagnosis.
        text = complete.decode("utf-8", errors="replace") + "\n"
        if self._keep_text:
            self._chunks.append(text)
        return text

    @property
    def text(self) -> str:
        """Everything read so far, the unfinished last line included."""
        return "".join(self._chunks) + self._partial.decode("utf-8", errors="replace")


_PORT_IN_USE = re.compile(r"Socket '(?P<address>[^']*?):(?P<port>\d+)' already in use")
_MODEL_FAILED = re.compile(
    r"failed to load '(?P<model>[^']+)'(?: version \d+: (?P<reason>.*?))?\"?$", re.MULTILINE
)
_CONFIG_FAILED = re.compile(
    r"Poll failed for model directory '(?P<model>[^']+)': (?P<reason>.*?)\"?$", re.MULTILINE
)
_CREATE_FAILED = re.compile(r"error: creating server: (?P<reason>.*)$", re.MULTILINE)


def diagnose_log(log_text: str, ports: dict[int, str] | None = None) -> str | None:
    """The fatal start-up error in a Triton log, as one readable message, or ``None``.

    Recognises a busy port, models that failed to load (with Triton's reason, e.g. the Python
    traceback from ``initialize``) and a server that could not be created (e.g. a bad repository).
    """
    ports = ports or {}
    busy = _PORT_IN_USE.search(log_text)
    if busy:
        port = int(busy["port"])
        name = ports.get(port, "a")
        return f"{name} port {port} on {busy['address']} is already in use"
    failed: dict[str, str] = {}
    matches = [*_CONFIG_FAILED.finditer(log_text), *_MODEL_FAILED.finditer(log_text)]
    for match in matches:
        reason = match["reason"]
        if reason or match["model"] not in failed:
            failed[match["model"]] = _unescape(reason or "")
    if failed:
        lines = [f"model '{model}' failed to load: {reason}".rstrip(": ") for model, reason in failed.items()]
        return "Triton could not load the model repository:\n" + "\n".join(lines)
    created = _CREATE_FAILED.search(log_text)
    if created:
        return f"Triton could not start: {created['reason']}"
    return None


# Harmless on a machine without an NVIDIA driver; they would only bury the real error.
_CPU_ONLY_NOISE = (
    "CUDA driver version is insufficient",
    "CUDA memory pool disabled",
    "CudaDriverHelper has not been initialized",
    "Failed to initialize NVML",
    "DCGM unable to start",
)


def log_tail(log_text: str, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a Triton log, indented, without its tables and CPU-only noise."""
    kept = [
        line
        for line in log_text.splitlines()
        if line.strip()
        and not line.lstrip().startswith(("+", "|"))
        and not line.rstrip().endswith("]")  # a table's header line, the table itself dropped
        and not any(noise in line for noise in _CPU_ONLY_NOISE)
    ]
    return "\n".join("  " + line for line in kept[-lines:])


def _unescape(text: str) -> str:
    # Triton quotes log messages and escapes their newlines; tracebacks read better unescaped.
    return text.replace("\\n", "\n").replace('\\"', '"').strip()
