"""Server addresses: ``host:port`` per protocol, with Triton's default ports and clear refusals."""

from __future__ import annotations

from compositor.client.errors import InvalidURLError

PROTOCOLS = ("grpc", "http")
DEFAULT_PORTS = {"grpc": 8001, "http": 8000}
"""Triton's default ports; a URL without a port gets its protocol's."""
NAMES = {"grpc": "gRPC", "http": "HTTP"}


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
