"""A small client for the Triton ensembles ``composite`` and ``composite_with_alpha``, gRPC or HTTP.

Example:
    >>> with CompositorClient("localhost:8001") as client:  # doctest: +SKIP
    ...     outputs = client.composite(source, background)      # HxWx3 or BxHxWx3 uint8
    ...     outputs["harmonized"].shape                         # same layout as ``source``

The ensembles' names, the batch and image-size limits and the network resolution come from the
server (``client.deployment``, read once by ``compositor.client.deployment``), not from constants
here; reading them also warns, once per server, when a network runs untrained weights.

Failures raise ``ClientError`` subclasses (``compositor.client.errors``; imported here too) whose message names the server, the model and the
problem: nothing answers at the address (``ServerUnreachableError``, only for connection failures,
with a hint: start the server, or the port belongs to the other protocol), the server answered
UNAVAILABLE (``ServerUnavailableError``: shutting down, overloaded), the model is not loaded or not
ready, the request timed out, or the server rejected the request (its message, e.g. from
``preprocess`` validation, is kept). The underlying exception stays attached as ``__cause__``.
Only the first two are retried (``retries``, with exponential backoff): a rejected request would
be rejected again, a server-side bug fails again, and a timeout has already cost ``timeout_s``.

With ``shared_memory=True`` frames travel through system shared memory regions
(``compositor.client.shared_memory``) instead of the socket: for a server on the same host, large
frames then cost a copy instead of serialisation. Regions are registered once per client and
reused; ``close`` unregisters and unlinks them. One client sends one shared-memory request at a
time (a lock): give each thread its own client, as ``compositor.client.pool`` does.

Importing this module costs no PyTorch, ONNX Runtime or Triton client: ``tritonclient`` loads when
a client is made.
"""

from __future__ import annotations

import http.client
import logging
import socket
import threading
import time

import numpy as np

from compositor import imaging
from compositor.client.errors import (  # re-exported: the README's examples import them from here
    ClientError,
    InvalidURLError,
    ModelNotReadyError,
    RequestTimeoutError,
    ServerUnavailableError,
    ServerUnreachableError,
)
from compositor.client.urls import DEFAULT_PORTS, PROTOCOLS, normalize_url
from compositor.contract.spec import COMPOSITE, COMPOSITE_WITH_ALPHA

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 60.0
"""Per request. Generous: a first request on CPU at 512x512 includes ONNX Runtime's warm-up."""
DEFAULT_RETRIES = 3
"""Retries of a request whose server is unreachable or answers UNAVAILABLE (never of other failures)."""
DEFAULT_BACKOFF_S = 0.2
"""Wait before the first retry; doubled before each next one."""
HEALTH_TIMEOUT_S = 2.0
"""Upper bound of a health probe: a live server answers in milliseconds."""
START_HINT = "is the server running? start it with `compositor serve --repository model_repository`"


def check_retry_settings(timeout_s: float, retries: int, backoff_s: float) -> None:
    """Raise ``ValueError`` unless ``timeout_s > 0`` and ``retries``, ``backoff_s >= 0`` (client and pool alike)."""
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
    if retries < 0 or backoff_s < 0:
        raise ValueError(f"retries and backoff_s must be >= 0, got {retries} and {backoff_s}")


class CompositorClient:
    """Sends frames to a compositing ensemble on a Triton server.

    Args:
        url: ``host:port`` of the server's gRPC (default 8001) or HTTP (default 8000) endpoint;
            ``grpc://`` or ``http://`` in front is accepted when it names ``protocol``.
        protocol: ``grpc`` or ``http``.
        model: ensemble for requests without a matte; default: the one the server's deployment
            has (``deployment.composite``, found by its signature).
        model_with_alpha: ensemble for requests that bring their own matte; default:
            ``deployment.composite_with_alpha``.
        timeout_s: per-request timeout, seconds (also the HTTP connection timeout).
        validate: check inputs locally with the same rules as the server (``imaging.check_inputs``
            and the deployment's limits) before sending, so a bad frame fails without an upload.
        shared_memory: send and receive frames through system shared memory (server on this host).
        retries: how often a request is sent again when its server is unreachable or answers
            UNAVAILABLE, after ``backoff_s``, then twice as long each time.
        backoff_s: wait before the first retry, seconds.
    """

    def __init__(
        self,
        url: str,
        protocol: str = "grpc",
        model: str | None = None,
        model_with_alpha: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        validate: bool = True,
        shared_memory: bool = False,
        retries: int = DEFAULT_RETRIES,
        backoff_s: float = DEFAULT_BACKOFF_S,
    ) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, not {protocol!r}")
        check_retry_settings(timeout_s, retries, backoff_s)
        self.url = normalize_url(url, protocol)
        self.protocol = protocol
        self._model = model
        self._model_with_alpha = model_with_alpha
        self.timeout_s = float(timeout_s)
        self.validate = validate
        self.shared_memory = shared_memory
        self.retries = int(retries)
        self.backoff_s = float(backoff_s)
        self.attempts = 0
        """Attempts the last ``infer`` made (1 + its retries)."""
        self._ready: set[str] = set()
        self._deployment = None
        self._deployment_lock = threading.Lock()
        self._shm_pool = None
        self._shm_lock = threading.Lock()
        if protocol == "grpc":
            import tritonclient.grpc as triton

            self._client = triton.InferenceServerClient(self.url, channel_args=_own_connection_channel_args(triton))
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
        """Unregister and unlink the shared memory regions (if any), then close the connection. Idempotent."""
        try:
            if self._shm_pool is not None:
                self._shm_pool.close()
        finally:
            self._client.close()

    # --- deployment ------------------------------------------------------------------------------

    @property
    def where(self) -> str:
        return f"{self.protocol}://{self.url}"

    @property
    def deployment(self):
        """The server's ``compositor.client.deployment.Deployment``, read on first use (and then kept).

        Raises:
            ServerUnreachableError, RequestTimeoutError, ClientError: the server could not be asked.
            DeploymentError: it serves no compositing ensemble.
        """
        with self._deployment_lock:
            if self._deployment is None:
                from compositor.client.deployment import read_deployment

                self._check_live()
                try:
                    self._deployment = read_deployment(self._client, self.protocol, self.url, timeout_s=self.timeout_s)
                except Exception as error:  # noqa: BLE001 - mapped by _failure; anything unknown is re-raised
                    raise self._failure(error, f"Triton server at {self.where}") or error
            return self._deployment

    @property
    def model(self) -> str:
        """Ensemble for requests without a matte: the one given, or the deployment's."""
        return self._model or self.deployment.composite

    @property
    def model_with_alpha(self) -> str:
        """Ensemble for requests with a matte: the one given, or the deployment's."""
        if self._model_with_alpha:
            return self._model_with_alpha
        name = self.deployment.composite_with_alpha
        if name is None:
            raise ModelNotReadyError(
                f"{self.where} serves no ensemble that takes a matte (inputs "
                f"{', '.join(COMPOSITE_WITH_ALPHA.input_names())}); composite without --alpha, or deploy the "
                "compositor repository with both ensembles"
            )
        return name

    # --- health ----------------------------------------------------------------------------------

    def is_server_ready(self) -> bool:
        """Whether the server answers ready (``/v2/health/ready``), within ``HEALTH_TIMEOUT_S``; never raises."""
        try:
            if self.protocol == "grpc":
                return bool(self._client.is_server_ready(client_timeout=min(self.timeout_s, HEALTH_TIMEOUT_S)))
            return bool(self._client.is_server_ready())
        except Exception:  # noqa: BLE001 - any failure means "not ready"
            return False

    def _check_live(self) -> None:
        try:
            live = self._call(self._client.is_server_live)
        except Exception as error:  # noqa: BLE001 - mapped by _failure; anything unknown is re-raised
            raise self._failure(error, f"Triton server at {self.where}") or error
        if not live:
            raise ClientError(f"Triton server at {self.where} answers but is not live (still starting, shutting down, or not Triton)")

    def check_ready(self, model: str | None = None) -> None:
        """Raise unless the server is live and ``model`` (default: ``self.model``) is ready.

        Raises:
            ServerUnreachableError, ModelNotReadyError, RequestTimeoutError, ClientError.
        """
        self._check_live()
        model = model or self.model
        where = self.where
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
        if self.validate:  # before the server is asked anything: a bad frame costs no round trip
            imaging.check_inputs(frames["source"], frames["background"], frames.get("alpha"))
        model = self.model_with_alpha if alpha is not None else self.model
        if self.validate:
            self._check_limits(frames)
        spec = COMPOSITE_WITH_ALPHA if alpha is not None else COMPOSITE
        batch, height, width = frames["source"].shape[:3]
        shapes = {t.name: (batch, height, width, t.shape[-1]) for t in spec.outputs}
        outputs = self.infer(model, frames, spec.output_names(), output_shapes=shapes)
        if alpha is not None and "alpha" not in outputs:
            outputs["alpha"] = frames["alpha"]
        return {name: value[0] for name, value in outputs.items()} if single else outputs

    def _check_limits(self, frames: dict[str, np.ndarray]) -> None:
        """The deployment's own batch limit (the image-side limit is the spec's: ``imaging.check_inputs``)."""
        deployment = self.deployment
        batch = frames["source"].shape[0]
        if deployment.max_batch_size and batch > deployment.max_batch_size:
            raise imaging.ImageError(
                f"source: batch {batch} is more than the {deployment.max_batch_size} frames per request that "
                f"{self.where} accepts; send smaller batches"
            )

    def infer(
        self,
        model: str,
        inputs: dict[str, np.ndarray],
        output_names: list[str],
        output_shapes: dict[str, tuple[int, ...]] | None = None,
    ) -> dict[str, np.ndarray]:
        """One request to ``model`` with the given named inputs; returns the named outputs.

        Sent again (``retries``, with backoff) only when the server is unreachable or answers
        UNAVAILABLE; ``self.attempts`` says how many sends it took.

        Args:
            output_shapes: uint8 output shapes by name; needed to size the output regions when
                ``shared_memory`` is on (without them the request goes over the socket).

        Raises:
            ClientError: see the module docstring.
        """
        self.attempts = 0
        while True:
            self.attempts += 1
            try:
                return self._infer_once(model, inputs, output_names, output_shapes)
            except (ServerUnreachableError, ServerUnavailableError) as error:
                if self.attempts > self.retries:
                    raise
                delay_s = self.backoff_s * 2 ** (self.attempts - 1)
                log.warning("%s; retry %d of %d in %.1f s", error, self.attempts, self.retries, delay_s)
                time.sleep(delay_s)

    def _infer_once(self, model, inputs, output_names, output_shapes) -> dict[str, np.ndarray]:
        if model not in self._ready:
            self.check_ready(model)
        if self.shared_memory and output_shapes is not None:
            with self._shm_lock:  # regions are per client: one shared-memory request at a time
                return self._send(model, inputs, output_names, output_shapes, self._shared_memory_pool())
        return self._send(model, inputs, output_names, output_shapes, None)

    def _shared_memory_pool(self):
        if self._shm_pool is None:
            from compositor.client.shared_memory import SharedMemoryPool

            # Region names add the process id and a pool number: unique per client.
            self._shm_pool = SharedMemoryPool(self._client, self.protocol, timeout_s=self.timeout_s)
        return self._shm_pool

    def _send(self, model, inputs, output_names, output_shapes, shm) -> dict[str, np.ndarray]:
        from tritonclient.utils import np_to_triton_dtype

        request_inputs = []
        for name, value in inputs.items():
            value = np.ascontiguousarray(value)
            tensor = self._triton.InferInput(name, list(value.shape), np_to_triton_dtype(value.dtype))
            if shm is not None:
                shm.set_input(tensor, value)
            else:
                tensor.set_data_from_numpy(value)
            request_inputs.append(tensor)
        requested = []
        for name in output_names:
            output = self._triton.InferRequestedOutput(name)
            if shm is not None:
                shm.set_output(output, int(np.prod(output_shapes[name])) * np.dtype(np.uint8).itemsize)
            requested.append(output)
        where = f"{model!r} on {self.where}"
        try:
            result = self._call(self._client.infer, model, request_inputs, outputs=requested)
        except Exception as error:  # noqa: BLE001 - mapped by _failure; anything unknown is re-raised
            failure = self._failure(error, where, request=True)
            if isinstance(failure, (ServerUnreachableError, ServerUnavailableError, RequestTimeoutError)):
                self._ready.discard(model)  # check again before the next request
            raise failure or error
        if shm is not None:
            outputs = {name: shm.read_output(result, name, output_shapes[name], np.uint8) for name in output_names}
        else:
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
            elif status in ("StatusCode.UNAVAILABLE", "503"):  # the server said so itself: stopping, not ready
                failure = ServerUnavailableError(f"{where} is unavailable: {_reason(error)}")
            elif status == "403" and request and "restricted" in str(error):
                failure = ClientError(
                    f"{where} refuses inference over HTTP ({_reason(error)}): `compositor serve` does by default, since "
                    "one HTTP/JSON request can end Triton; use gRPC (--protocol grpc, the server's gRPC port), or start "
                    "the server with --allow-http-inference if every caller is trusted"
                )
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
        """Whether a gRPC health call gets an answer now (live or not, e.g. while the server is
        stopping): an UNAVAILABLE status then came from the server, not from the transport."""
        if self.protocol != "grpc":
            return False
        try:
            self._client.is_server_live(client_timeout=min(self.timeout_s, HEALTH_TIMEOUT_S))
        except Exception:  # noqa: BLE001 - any failure means the transport is down
            return False
        return True


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


def _own_connection_channel_args(triton) -> list[tuple[str, object]]:
    """tritonclient's default gRPC channel options, plus a TCP connection of this client's own.

    gRPC lets channels with the same target and options share one connection (its global
    subchannel pool): the worker clients of a ``CompositorPool`` would all ride one connection, and
    a Kubernetes ClusterIP Service, which balances connections, would send all of them to one pod.
    A local subchannel pool gives each client its own connection.
    """
    keepalive = triton.KeepAliveOptions()
    return [
        ("grpc.max_send_message_length", triton.MAX_GRPC_MESSAGE_SIZE),
        ("grpc.max_receive_message_length", triton.MAX_GRPC_MESSAGE_SIZE),
        ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
        ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
        ("grpc.use_local_subchannel_pool", 1),
    ]
