"""Find the Triton server shipped in the ``nvidia-pytriton`` wheel and what it needs to run here.

pytriton's Python API (which binds Python callables as models) is not used: we run the wheel's
``tritonserver`` binary (Triton 2.51, CPU build with the Python backend and ensembles) against our
own model repository (``compositor.serving.server`` runs it). Three things make that binary work
outside pytriton, all found here:

* a backend directory with ``python/libtriton_python.so``, ``python/triton_python_backend_utils.py``
  and the ``triton_python_backend_stub`` built for *this* interpreter's version (the wheel ships
  one stub per Python version in ``python_backend_stubs/3.X/``);
* ``LD_LIBRARY_PATH`` with the wheel's bundled libraries and this interpreter's ``libpython``;
* ``PATH`` with this interpreter's ``bin`` first: the embedded interpreter in the stub locates its
  ``sys.prefix`` by looking up ``python3`` on ``PATH``, and so imports that environment's packages.

Example:
    >>> installation = find_triton()  # doctest: +SKIP
    >>> installation.build_backend_directory(Path("/tmp/backends"))  # doctest: +SKIP
"""

from __future__ import annotations

import ctypes.util
import importlib.util
import logging
import os
import sys
import sysconfig
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from compositor.errors import CompositorError

LOGGER = logging.getLogger(__name__)


class TritonNotFoundError(CompositorError, RuntimeError):
    """The ``nvidia-pytriton`` wheel, its server binary or the stub for this Python is missing."""


@dataclass(frozen=True)
class TritonInstallation:
    """Paths of the Triton server shipped in the ``nvidia-pytriton`` wheel.

    Attributes:
        binary: the ``tritonserver`` executable.
        python_backend_dir: holds ``libtriton_python.so`` and ``triton_python_backend_utils.py``.
        stub: ``triton_python_backend_stub`` built for this interpreter's ``major.minor``.
        library_dirs: what ``LD_LIBRARY_PATH`` needs: the wheel's bundled libraries and the
            directory of this interpreter's ``libpython3.X.so`` (the stub embeds Python).
        cache_dir: the wheel's response-cache implementations (``--cache-directory``).
        python_bin_dir: this interpreter's ``bin``; goes first on the server's ``PATH``.
        backends_dir: an installed Triton's own ``backends`` folder (``find_installed_triton``),
            used as it is; None for the wheel, whose Python backend gets a private folder.
    """

    binary: Path
    python_backend_dir: Path
    stub: Path
    library_dirs: tuple[Path, ...]
    cache_dir: Path
    python_bin_dir: Path
    backends_dir: Path | None = None

    def build_backend_directory(self, root: Path) -> Path:
        """Create ``root/python/`` with symlinks to the Python backend and the matching stub.

        An installed Triton's own backends folder (every backend it ships: python, tensorrt,
        onnxruntime, ...) is returned as it is instead.

        Returns:
            the value for ``--backend-directory``.
        """
        if self.backends_dir is not None:
            return self.backends_dir
        backend = root / "python"
        backend.mkdir(parents=True, exist_ok=True)
        sources = (
            self.python_backend_dir / "libtriton_python.so",
            self.python_backend_dir / "triton_python_backend_utils.py",
            self.stub,
        )
        for source in sources:
            link = backend / source.name
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(source)
        return root

    def environment(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """The environment for the server process: ``base`` (default ``os.environ``) plus our paths."""
        env = dict(os.environ if base is None else base)
        # Both the server and the stub link against the wheel's renamed bundled libraries
        # (libtritonserver, libcudart, ...) and the stub against libpython3.X.so.
        env["LD_LIBRARY_PATH"] = _prepend_paths(self.library_dirs, env.get("LD_LIBRARY_PATH", ""))
        # The stub's embedded interpreter finds its environment through ``python3`` on PATH; with
        # another Python first (e.g. the system one with numpy 2) the models silently import the
        # wrong packages and return empty or malformed outputs.
        env["PATH"] = _prepend_paths((self.python_bin_dir,), env.get("PATH", ""))
        # Keep freed memory in the stubs' heaps. Every request allocates the same multi-megabyte
        # numpy temporaries; with glibc's defaults the Python-backend stubs handed them back to the
        # kernel between requests and page-faulted them in again, which doubled postprocess's CPU
        # time (measured at 512x512: 34-46 ms -> 21-22 ms per request with these settings, the same
        # as in-process). 32 MiB is glibc's largest mmap threshold; a caller's own values win.
        env.setdefault("MALLOC_MMAP_THRESHOLD_", str(32 * 2**20))
        env.setdefault("MALLOC_TRIM_THRESHOLD_", str(512 * 2**20))
        return env


def find_triton() -> TritonInstallation:
    """Locate the Triton server in the installed ``nvidia-pytriton`` wheel, for this interpreter.

    Raises:
        TritonNotFoundError: the wheel, the server binary, the Python backend, the stub for this
            Python version or this interpreter's shared ``libpython`` is missing.
    """
    # find_spec, not import: importing pytriton pulls in its whole runtime for nothing.
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonNotFoundError(
            "the nvidia-pytriton package is not installed in this environment "
            f"({sys.executable}); run scripts/setup.sh or 'pip install nvidia-pytriton'"
        )
    package_dir = Path(next(iter(spec.submodule_search_locations)))
    root = package_dir / "tritonserver"
    binary = root / "bin" / "tritonserver"
    python_backend_dir = root / "backends" / "python"
    for required in (binary, python_backend_dir / "libtriton_python.so"):
        if not required.exists():
            raise TritonNotFoundError(f"nvidia-pytriton is installed but {required} is missing")

    stub = find_stub(root / "python_backend_stubs", f"{sys.version_info.major}.{sys.version_info.minor}")
    # Not resolved: a venv's bin/python3 is a symlink to the base interpreter, and only the venv's
    # own bin (next to pyvenv.cfg) makes the stub use the venv's site-packages.
    python_bin_dir = Path(sys.executable).parent
    if not (python_bin_dir / "python3").exists():
        LOGGER.warning(
            "%s has no python3: the Python-backend stub may pick up another environment's packages",
            python_bin_dir,
        )
    library_dirs = [package_dir.parent / "nvidia_pytriton.libs", _libpython_dir()]
    return TritonInstallation(
        binary=binary,
        python_backend_dir=python_backend_dir,
        stub=stub,
        library_dirs=tuple(d for d in library_dirs if d is not None and d.is_dir()),
        cache_dir=root / "caches",
        python_bin_dir=python_bin_dir,
    )


def find_installed_triton(root: Path) -> TritonInstallation:
    """A Triton installed as in NVIDIA's Triton Inference Server container (``/opt/tritonserver``).

    ``root/bin/tritonserver``, and ``root/backends`` with the Python backend and its stub (built
    for the Python that runs this package there). Its libraries are found through the environment
    it was installed with (the container's), so none are added.

    Raises:
        TritonNotFoundError: a part is missing; the message names it.
    """
    root = Path(root)
    python_backend_dir = root / "backends" / "python"
    stub = python_backend_dir / "triton_python_backend_stub"
    for required in (root / "bin" / "tritonserver", python_backend_dir / "libtriton_python.so", stub):
        if not required.is_file():
            raise TritonNotFoundError(
                f"{root} is not a Triton installation: {required} is missing (expected the layout of "
                "/opt/tritonserver in NVIDIA's Triton container: bin/tritonserver, backends/python/ with "
                "libtriton_python.so and triton_python_backend_stub)"
            )
    return TritonInstallation(
        binary=root / "bin" / "tritonserver",
        python_backend_dir=python_backend_dir,
        stub=stub,
        library_dirs=(),
        cache_dir=root / "caches",
        python_bin_dir=Path(sys.executable).parent,
        backends_dir=root / "backends",
    )


def find_stub(stubs_dir: Path, python_version: str) -> Path:
    """The ``triton_python_backend_stub`` for ``python_version`` ("3.11") in the wheel's ``stubs_dir``.

    Raises:
        TritonNotFoundError: there is none; the message lists the versions there are.
    """
    stub = stubs_dir / python_version / "triton_python_backend_stub"
    if not stub.is_file():
        available = sorted(p.name for p in stubs_dir.iterdir() if p.is_dir()) if stubs_dir.is_dir() else []
        raise TritonNotFoundError(
            f"no Triton Python-backend stub for Python {python_version} in {stubs_dir} "
            f"(available: {', '.join(available) or 'none'}); use one of those Python versions"
        )
    return stub


def _libpython_dir() -> Path | None:
    """The directory holding this interpreter's ``libpython3.X.so`` (the stub links against it)."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    libdir = sysconfig.get_config_var("LIBDIR")
    soname = sysconfig.get_config_var("INSTSONAME") or f"libpython{version}.so"
    if libdir and (Path(libdir) / soname).exists():
        return Path(libdir)
    # Debian-style Pythons keep it in a multiarch directory the dynamic linker already searches.
    if ctypes.util.find_library(f"python{version}"):
        return None
    raise TritonNotFoundError(
        f"no shared libpython for Python {version} (looked for {soname} in {libdir}); the Triton "
        f"Python-backend stub needs it (Debian/Ubuntu: apt install libpython{version})"
    )


def _prepend_paths(first: Sequence[Path], rest: str) -> str:
    return os.pathsep.join([*(str(p) for p in first), *([rest] if rest else [])])
