"""A small client for the Triton ensembles ``composite`` and ``composite_with_alpha``, gRPC or HTTP.

Example:
    >>> with CompositorClient("localhost:8001") as client:  # doctest: +SKIP
    ...     outputs = client.composite(source, background)      # HxWx3 or BxHxWx3 uint8
    ...     outputs["harmonized"].shape                         # same layout as ``source``

Failures raise ``ClientError`` subclasses whose message names the server, the model and the
problem: the server is unreachable, the model is not loaded or not ready, the request timed out,
or the server rejected the request (its message, e.g. from ``preprocess`` validation, is kept).
"""

from __future__ import annotations

import logging

import numpy as np
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from compositor.errors import CompositorError
from compositor import imaging
from compositor.spec import ENSEMBLES

log = logging.getLogger(__name__)

PROTOCOLS = ("grpc", "http")
DEFAULT_TIMEOUT_S = 60.0
"""Per request. Generous: a first request on CPU at 512x512 includes ONNX Runtime's warm-up."""


class ClientError(CompositorError, RuntimeError):
    """A request could not be served; the message says where and why."""


class ServerUnreachableError(ClientError):
    """Nothing answers at the URL (wrong address, server not started, network)."""


class ModelNotReadyError(ClientError):
    """The server answers but the ensemble is not loaded or not ready."""


class RequestTimeoutError(ClientError):
    """No response within ``timeout_s``."""


class CompositorClient:
    """Sends frames to a compositing ensemble on a Triton server.

    Args:
        url: ``host:port`` of the server's gRPC (default 8001) or HTTP (default 8000) endpoint.
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
        self.url = url
        self.protocol = protocol
        self.model = model
        self.model_with_alpha = model_with_alpha
        self.timeout_s = float(timeout_s)
        self.validate = validate
        self._ready: set[str] = set()
        if protocol == "grpc":
            import tritonclient.grpc as triton

            self._client = triton.InferenceServerClient(url)
        else:
            import tritonclient.http as triton

            self._client = triton.InferenceServerClient(url, connection_timeout=self.timeout_s, network_timeout=self.timeout_s)
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
            ServerUnreachableError, ModelNotReadyError.
        """
        model = model or self.model
        where = f"{self.protocol}://{self.url}"
        try:
            live = self._client.is_server_live()
        except Exception as error:  # noqa: BLE001 - connection errors differ per protocol and library
            raise ServerUnreachableError(f"Triton server at {where} is unreachable: {_reason(error)}") from None
        if not live:
            raise ServerUnreachableError(f"Triton server at {where} answers but is not live")
        try:
            ready = self._client.is_model_ready(model)
        except InferenceServerException as error:
            raise ModelNotReadyError(f"model {model!r} on {where}: {_reason(error)}") from None
        if not ready:
            raise ModelNotReadyError(
                f"model {model!r} is not ready on {where} (models there: {self._model_states()}); "
                "is the server running the compositor repository?"
            )
        self._ready.add(model)

    def _model_states(self) -> str:
        try:
            index = self._client.get_model_repository_index()
        except Exception:  # noqa: BLE001 - only used to enrich another error
            return "unknown"
        entries = index.models if hasattr(index, "models") else index
        states = [f"{_field(e, 'name')} {_field(e, 'state') or 'UNAVAILABLE'}" for e in entries]
        return ", ".join(states) or "none"

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
            if self.protocol == "grpc":
                result = self._client.infer(model, request_inputs, outputs=requested, client_timeout=self.timeout_s)
            else:
                result = self._client.infer(model, request_inputs, outputs=requested)
        except InferenceServerException as error:
            # gRPC reports transport failures as statuses; HTTP raises them as other exceptions.
            status = str(error.status() or "")
            if status == "StatusCode.DEADLINE_EXCEEDED":
                raise RequestTimeoutError(f"{where}: no response within {self.timeout_s:g} s") from None
            if status == "StatusCode.UNAVAILABLE":
                self._ready.discard(model)
                raise ServerUnreachableError(f"{where}: server unreachable: {_reason(error)}") from None
            raise ClientError(f"{where} rejected the request: {_reason(error)}") from None
        except Exception as error:  # noqa: BLE001 - HTTP transport errors (gevent timeouts, sockets)
            self._ready.discard(model)
            if "timeout" in type(error).__name__.lower() or "timed out" in str(error).lower():
                raise RequestTimeoutError(f"{where}: no response within {self.timeout_s:g} s") from None
            raise ServerUnreachableError(f"{where}: {type(error).__name__}: {error}") from None
        outputs = {name: result.as_numpy(name) for name in output_names}
        missing = [name for name, value in outputs.items() if value is None]
        if missing:
            raise ClientError(f"{where} returned no {', '.join(missing)}")
        return outputs


def _batched(frames, name: str) -> np.ndarray:
    if not isinstance(frames, np.ndarray):
        raise imaging.ImageError(f"{name}: expected a numpy array, got {type(frames).__name__}")
    return frames[None] if frames.ndim == 3 else frames


def _reason(error: Exception) -> str:
    if isinstance(error, InferenceServerException):
        text = error.message() or str(error)
        status = error.status()
        return f"{text} [{status}]" if status and status not in text else text
    return f"{type(error).__name__}: {error}"


def _field(entry, name: str) -> str:
    return entry.get(name, "") if isinstance(entry, dict) else getattr(entry, name, "")
