"""The client's errors: every failure of a request is a ``ClientError`` naming the server, the model and why.

Kept apart from the client itself so that the modules reading a deployment (``deployment``) and
running pools (``pool``) share them without importing each other. ``compositor.client.remote``
re-exports them, where the README's examples import them from.
"""

from __future__ import annotations

from compositor.errors import CompositorError


class ClientError(CompositorError, RuntimeError):
    """A request could not be served; the message says where and why."""


class InvalidURLError(ClientError, ValueError):
    """The server address is not ``host:port`` (``grpc://`` or ``http://`` in front only when it names the protocol)."""


class ServerUnreachableError(ClientError):
    """Nothing answers at the URL (wrong address, server not started, network), or it speaks another protocol."""


class ServerUnavailableError(ClientError):
    """The server answered UNAVAILABLE (gRPC) or 503 (HTTP): shutting down or not ready; worth a retry."""


class ModelNotReadyError(ClientError):
    """The server answers but the ensemble is not loaded or not ready."""


class RequestTimeoutError(ClientError):
    """No response within ``timeout_s``."""
