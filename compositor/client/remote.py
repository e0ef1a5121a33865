"""A small client for the Triton ensembles ``composite`` and ``composite_with_alpha``, gRPC or HTTP.

Example:
    >>> with CompositorClient("localhost:8001") as client:  # doctest: +SKIP
    ...     outputs = client.composite(source, background)      # HxWx3 or BxHxWx3 uint8
    ...     outputs["harmonized"].shape                         # same layout as ``source``

Failures raise ``ClientError`` subclasses whose message names the server, the model and the
problem: nothing answers at the address (``ServerUnreachableError``, only for connection failures,
with a hint: start the server, or the port belongs to the other protocol), the model is not loaded
or not ready, the request timed out, or the server rejected the request (its message, e.g. from
``preprocess`` validation, is kept). The underlying exception stays attached as ``__cause__``.

Importing this module costs no PyTorch, ONNX Runtime or Triton client: ``tritonclient`` loads when
a client is made.
"""

from __future__ import annotations

import http.client
import logging
import socket

import numpy as np

from compositor import imaging
from compositor.errors import CompositorError
from compositor.spec import ENSEMBLES

log = logging.getLogger(__name__)

PROTOCOLS = ("grpc", "http")
DEFAULT_PORTS = {"grpc": 8001, "http": 8000}
"""Triton's default ports; a URL without a port gets its protocol's."""
NAMES = {"grpc": "gRPC", "http": "HTTP"}
DEFAULT_TIMEOUT_S = 60.0
"""Per request. Generous: a first request on CPU at 512x512 includes ONNX Runtime's warm-up."""
START_HINT = "is the server running? start it with `compositor serve --repository model_repository`"


class ClientError(CompositorError, RuntimeError):
    """A request could not be served; the message says where and why."""


class InvalidURLError(ClientError, ValueError):
    """The server address is not ``host:port`` (``grpc://`` or ``http://`` in front only when it names the protocol)."""


class ServerUnreachableError(ClientError):
    """Nothing answers at the URL (wrong address, server not started, network), or it speaks another protocol."""


class ModelNotReadyError(ClientError):
    """The server answers but the ensemble is not loaded or not ready."""


class RequestTimeoutError(ClientError):
    """No response within ``timeout_s``."""


def normalize_url(url: str, protocol: str) -> str:
    """``host:port`` for ``protocol``: strips a scheme that names the protocol, adds the default port.

    Raises:
        InvalidURLError: a scheme of the other protocol (or https), a path, or an empty host.
    """
    text = url.strip()
    scheme, separator, rest = text.partition("://")
    if separator:
        scheme = scheme.lower()
        if scheme in ("https", "grpcs"):
            raise InvalidURLError(f"{url}: TLS ({scheme}://) is not supported; give host:port of a plain gRPC or HTTP endpoint")
        if scheme not in PROTOCOLS:
            raise InvalidURLError(f"{url}: unknown scheme {scheme}://; give host:port (e.g. 127.0.0.1:{DEFAULT_PORTS[protocol]})")
        if scheme != protocol:
            raise InvalidURLError(
                f"{url}: {scheme}:// is for --protocol {scheme} (Triton's {NAMES[scheme]} port, default "
                f"{DEFAULT_PORTS[scheme]}); for {NAMES[protocol]} give host:port without a scheme, e.g. "
                f"127.0.0.1:{DEFAULT_PORTS[protocol]}"
            )
        text = rest
    if text.endswith("/"):
        text = text[:-1]
    if "/" in text:
        raise InvalidURLError(f"{url}: give host:port only, without a path (e.g. 127.0.0.1:{DEFAULT_PORTS[protocol]})")
    host, port = _split_host_port(text)
    if not host:
        raise InvalidURLError(f"{url}: no host; give host:port (e.g. 127.0.0.1:{DEFAULT_PORTS[protocol]})")
    if port is None:
        port = DEFAULT_PORTS[protocol]
    elif not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidURLError(f"{url}: port {port!r} is not a number from 1 to 65535")
    return f"{host}:{port}"


def _split_host_port(text: str) -> tuple[str, str | None]:
    if text.startswith("["):  # [IPv6]:port
        host, _, rest = text.partition("]")
        return host + "]", rest[1:] if rest.startswith(":") else None
    host, separator, port = text.rpartition(":")
    return (host, port) if separator else (text, None)


class CompositorClient:
    """Sends frames to a compositing ensemble on a Triton server.

    Args:
        url: ``host:port`` of the server's gRPC (default 8001) or HTTP (default 8000) endpoint;
            ``grpc://`` or ``http://`` in front is accepted when it names ``protocol``.
        protocol: ``grpc`` or ``http``.
        model: ensemble for requests without a matte (``composite``).
        model_with_alpha: ensemble for requests that bring their own matte.
        timeout_s: per-request timeout, seconds (also the HTTP connection timeout).
        validate: check inputs locally with the same rules as the server (``imaging.check_inputs``)
            before sending, so a bad frame fails without an upload.
    """

    def __init__(
        self,
        url: str,
        protocol: str = "grpc",
        model: str = "composite",
        model_with_alpha: str = "composite_with_alpha",
        timeout_s: float = DEFAULT_TIMEOUT_S,
        validate: bool = True,
    ) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, not {protocol!r}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.url = normalize_url(url, protocol)
        self.protocol = protocol
        self.model = model
        self.model_with_alpha = model_with_alpha
        self.timeout_s = float(timeout_s)
        self.validate = validate
        self._ready: set[str] = set()
        if protocol == "grpc":
            import tritonclient.grpc as triton

            self._client = triton.InferenceServerClient(self.url)
        else:
            import tritonclient.http as triton

            self._client = triton.InferenceServerClient(self.url, connection_timeout=self.timeout_s, network_timeout=self.timeout_s)
        self._triton = triton

    def __repr__(self) -> str:
        return f"CompositorClient({self.protocol}://{self.url})"

    def __enter__(self) -> CompositorClient:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    # --- health ----------------------------------------------------------------------------------

    def check_ready(self, model: str | None = None) -> None:
        """Raise unless the server is live and ``model`` (default: ``self.model``) is ready.

        Raises:
            ServerUnreachableError, ModelNotReadyError, RequestTimeoutError, ClientError.
        """
        model = model or self.model
        where = f"{self.protocol}://{self.url}"
        try:
            live = self._call(self._client.is_server_live)
        except Exception as error:  # noqa: BLE001 - mapped by _failure; anything unknown is re-raised
            raise self._failure(error, f"Triton server at {where}") or error
        if not live:
            raise ClientError(f"Triton server at {where} answers but is not live (still starting, shutting down, or not Triton)")
        try:
            ready = self._call(self._client.is_model_ready, model)
        except Exception as error:  # noqa: BLE001 - as above
            raise self._failure(error, f"model {model!r} on {where}") or error
        if not ready:
            states = self._model_states()
            listing = ", ".join(f"{name} {state}" for name, state in states.items()) if states is not None else "unknown"
            problem = "is not on" if states is not None and model not in states else "is not ready on"
            raise ModelNotReadyError(
                f"model {model!r} {problem} {where} (models there: {listing or 'none'}); "
                "is the server running the compositor repository?"
            )
        self._ready.add(model)

    def _model_states(self) -> dict[str, str] | None:
        """The server's models and their states, or None when it does not say."""
        try:
            index = self._client.get_model_repository_index()
        except Exception:  # noqa: BLE001 - only used to enrich another error
            return None
        entries = index.models if hasattr(index, "models") else index
        return {_field(e, "name"): _field(e, "state") or "UNAVAILABLE" for e in entries}

    # --- inference -------------------------------------------------------------------------------

    def composite(self, source: np.ndarray, background: np.ndarray, alpha: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Composite ``source`` onto ``background`` on the server.

        Args:
            source: uint8 ``[H, W, 3]`` or ``[B, H, W, 3]``; the output canvas.
            background: uint8 ``[Hb, Wb, 3]`` or ``[B, Hb, Wb, 3]``, any size.
            alpha: optional uint8 matte ``[H, W, 1]`` / ``[B, H, W, 1]``; selects ``model_with_alpha``.

        Returns:
            uint8 outputs by name, with the batch layout of ``source``: ``blended`` and
            ``harmonized`` ``[.., H, W, 3]``, and ``alpha`` ``[.., H, W, 1]`` (the predicted matte,
            or the one given).

        Raises:
            imaging.ImageError: invalid input (when ``validate``).
            ClientError: see the module docstring.
        """
        single = np.ndim(source) == 3
        frames = {"source": source, "background": background, "alpha": alpha}
        frames = {name: _batched(value, name) for name, value in frames.items() if value is not None}
        if self.validate:
            imaging.check_inputs(frames["source"], frames["background"], frames.get("alpha"))
        model = self.model_with_alpha if alpha is not None else self.model
        spec = ENSEMBLES["composite_with_alpha" if alpha is not None else "composite"]
        outputs = self.infer(model, frames, spec.output_names())
        if alpha is not None and "alpha" not in outputs:
            outputs["alpha"] = frames["alpha"]
        return {name: value[0] for name, value in outputs.items()} if single else outputs

    def infer(self, model: str, inputs: dict[str, np.ndarray], output_names: list[str]) -> dict[str, np.ndarray]:
        """One request to ``model`` with the given named inputs; returns the named outputs.

        Raises:
            ClientError: see the module docstring.
        """
        from tritonclient.utils import np_to_triton_dtype

        if model not in self._ready:
            self.check_ready(model)
        request_inputs = []
        for name, value in inputs.items():
            value = np.ascontiguousarray(value)
            tensor = self._triton.InferInput(name, list(value.shape), np_to_triton_dtype(value.dtype))
            tensor.set_data_from_numpy(value)
            request_inputs.append(tensor)
        requested = [self._triton.InferRequestedOutput(name) for name in output_names]
        where = f"{model!r} on {self.protocol}://{self.url}"
        try:
            result = self._call(self._client.infer, model, request_inputs, outputs=requested)
        except Exception as error:  # noqa: BLE001 - mapped by _failure; anything unknown is re-raised
            failure = self._failure(error, where, request=True)
            if isinstance(failure, (ServerUnreachableError, RequestTimeoutError)):
                self._ready.discard(model)  # check again before the next request
            raise failure or error
        outputs = {name: result.as_numpy(name) for name in output_names}
        missing = [name for name, value in outputs.items() if value is None]
        if missing:
            raise ClientError(f"{where} returned no {', '.join(missing)}")
        return outputs

    # --- errors ----------------------------------------------------------------------------------

    def _call(self, method, *args, **kwargs):
        """Call a tritonclient method with the request timeout (gRPC takes it per call)."""
        if self.protocol == "grpc":
            kwargs["client_timeout"] = self.timeout_s
        return method(*args, **kwargs)

    def _failure(self, error: BaseException, where: str, request: bool = False) -> ClientError | None:
        """The ``ClientError`` for a tritonclient failure (its cause set), or None when it is not one we know.

        Only a failure to connect is "unreachable"; a server's error response is "rejected", an
        expired deadline a timeout. Which is which differs per protocol: gRPC reports everything
        as a status, HTTP raises socket errors for the transport and a status for responses.
        """
        from tritonclient.utils import InferenceServerException

        if isinstance(error, InferenceServerException):
            status = str(error.status() or "")
            if status == "StatusCode.DEADLINE_EXCEEDED":
                failure = RequestTimeoutError(f"{where}: no response within {self.timeout_s:g} s")
            # UNAVAILABLE is a transport failure, unless the server itself answered with it.
            elif status == "StatusCode.UNAVAILABLE" and not self._port_speaks_grpc():
                failure = self._transport_failure(where, error)
            elif status in ("StatusCode.INTERNAL", "500"):  # a bug on the server's side, not this request's fault
                failure = ClientError(f"{where} failed on the server's side (its log has the traceback): {_reason(error)}")
            else:
                action = "rejected the request" if request else "answered with an error"
                failure = ClientError(f"{where} {action}: {_reason(error)}")
        elif isinstance(error, TimeoutError):  # HTTP: the socket's timeout
            failure = RequestTimeoutError(f"{where}: no response within {self.timeout_s:g} s")
        elif isinstance(error, (OSError, http.client.HTTPException)):  # refused, reset, DNS; not HTTP/1.1 at all
            failure = self._transport_failure(where, error)
        else:
            return None
        failure.__cause__ = error
        return failure

    def _transport_failure(self, where: str, error: BaseException) -> ServerUnreachableError:
        """The error for a failed connection, with what to do, after a look at the port: closed, or
        open but speaking the other protocol (Triton's HTTP port answers HTTP/1.1, its gRPC port does not)."""
        reason = _reason(error)
        host, port = self.url.rsplit(":", 1)
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=min(self.timeout_s, 2.0)) as sock:
                sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: " + host.encode() + b"\r\n\r\n")
                speaks_http1 = sock.recv(16).startswith(b"HTTP/1.")
        except ConnectionRefusedError:
            return ServerUnreachableError(f"{where} is unreachable: connection refused at {self.url}: {START_HINT}")
        except OSError as probe_error:  # a silent or closing peer: no answer to go by
            speaks_http1 = None
            reason = f"{reason}; {_reason(probe_error)}"
        if self.protocol == "grpc" and speaks_http1:
            return ServerUnreachableError(
                f"{where} does not speak gRPC: {self.url} answers HTTP/1.1, so it may be Triton's HTTP port; use the "
                f"gRPC port (default {DEFAULT_PORTS['grpc']}), or --protocol http for this one"
            )
        if self.protocol == "http" and speaks_http1 is False:
            return ServerUnreachableError(
                f"{where} does not answer HTTP/1.1 ({reason}): it may be Triton's gRPC port; use the HTTP port "
                f"(default {DEFAULT_PORTS['http']}), or --protocol grpc for this one"
            )
        return ServerUnreachableError(f"{where} is unreachable: {reason} (check the host and port)")

    def _port_speaks_grpc(self) -> bool:
        """Whether a gRPC health call succeeds now: an UNAVAILABLE status then came from the server."""
        if self.protocol != "grpc":
            return False
        try:
            return bool(self._client.is_server_live(client_timeout=min(self.timeout_s, 2.0)))
        except Exception:  # noqa: BLE001 - any failure means the transport is down
            return False


def _batched(frames, name: str) -> np.ndarray:
    if not isinstance(frames, np.ndarray):
        raise imaging.ImageError(f"{name}: expected a numpy array, got {type(frames).__name__}")
    return frames[None] if frames.ndim == 3 else frames


def _reason(error: BaseException) -> str:
    from tritonclient.utils import InferenceServerException

    if isinstance(error, InferenceServerException):
        text = error.message() or str(error)
        status = error.status()
        return f"{text} [{status}]" if status and status not in text else text
    return f"{type(error).__name__}: {error}"


def _field(entry, name: str) -> str:
    return entry.get(name, "") if isinstance(entry, dict) else getattr(entry, name, "")
