"""ONNX Runtime sessions configured one way for every in-process user (pipeline, Triton models, bench)."""

from __future__ import annotations

import logging
from pathlib import Path

import onnxruntime as ort

from compositor.errors import CompositorError

log = logging.getLogger(__name__)



class ModelFileNotFoundError(CompositorError, FileNotFoundError):
    """An ONNX model file is missing: ``compositor export`` has not written it (yet)."""


def create_session(
    path: str | Path, intra_op_threads: int = 0, allow_spinning: bool = True, quiet: bool = False
) -> ort.InferenceSession:
    """A CPU ``InferenceSession`` with full graph optimisation.

    Args:
        path: the ONNX file.
        intra_op_threads: threads for one operator (0: ONNX Runtime's default, one per core). When
            several sessions run concurrently (Triton instances, benchmark concurrency), fewer
            threads each avoid oversubscribing the cores.
        allow_spinning: let idle pool threads spin for the next call. Off for sessions that share
            the cores with other processes (Triton's model instances), where spinning steals them.
        quiet: log errors only (FP16 graphs make ONNX Runtime list every CPU fallback).

    Raises:
        ModelFileNotFoundError: the file is missing (with a hint to run ``compositor export``).
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileNotFoundError(f"{path}: no such ONNX model (run `compositor export --out {path.parent}` first)")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = intra_op_threads
    # One request's operators run in order; parallelism comes from threads inside each operator.
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
    if quiet:
        options.log_severity_level = 3
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    log.debug("loaded %s (%d intra-op threads)", path, intra_op_threads)
    return session
