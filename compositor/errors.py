"""The project's own error type: what the command line reports as ``error: ...`` without a traceback.

Every failure the user can cause or fix (bad input, a missing file, a check that did not pass, a
server that cannot be reached) raises a subclass of ``CompositorError``, usually together with the
built-in type callers already expect (``class ParityError(CompositorError, RuntimeError)``).
Anything else reaching the command line is a bug and keeps its traceback.
"""

from __future__ import annotations


class CompositorError(Exception):
    """A failure with a message written for the user: what is wrong and what to do."""
