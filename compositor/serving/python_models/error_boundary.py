"""The Python-backend models' error boundary: the client's fault is INVALID_ARG, a bug is INTERNAL.

A request the user got wrong (an RGBA source, a matte of the wrong size, a side over the limit)
raises a ``CompositorError`` (``compositor.imaging.ImageError`` and the like): the response carries
its message with ``INVALID_ARG`` (gRPC ``INVALID_ARGUMENT``, HTTP 400), so the client knows to fix
its request. Anything else is a bug in the server (a numpy ``ValueError`` from a wrong shape
included): the response says so with ``INTERNAL`` (gRPC ``INTERNAL``, HTTP 500), and the traceback
goes to the server log, where the model's author can read it. Either way the other requests and the
server go on.

Imported by the models inside Triton's Python-backend stub, where ``triton_python_backend_utils``
exists.
"""

import traceback

import triton_python_backend_utils as pb_utils

from compositor.errors import CompositorError


def error_response(model: str, error: Exception):
    """The ``InferenceResponse`` for a request that failed with ``error`` in ``model``."""
    if isinstance(error, CompositorError):
        return pb_utils.InferenceResponse(error=pb_utils.TritonError(str(error), pb_utils.TritonError.INVALID_ARG))
    trace = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    pb_utils.Logger.log_error(f"{model}: internal error answering a request:\n{trace}")
    message = f"{model}: internal error: {type(error).__name__}: {error} (a bug in the server; the traceback is in the server log)"
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, pb_utils.TritonError.INTERNAL))
