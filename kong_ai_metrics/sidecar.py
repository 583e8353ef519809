"""The sidecar HTTP server: ``GET /metrics`` for Prometheus and ``GET /healthz``.

It runs in daemon threads beside the plugin server's gevent loop, so a slow scrape
does not hold up plugin events for longer than the interpreter lock allows. At most
``MAX_CONNECTIONS`` connections are served at once, each with a socket timeout of
``CONNECTION_TIMEOUT`` seconds, so slow or numerous clients cannot pile up threads.

``/metrics`` can require HTTP basic auth or a bearer token, and the server can speak
TLS; ``/healthz`` stays open so that liveness probes need no credentials.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import logging
import socket
import ssl
import sys
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder, generate_latest

from .exposition import render_text

log = logging.getLogger("kong_ai_metrics.sidecar")

DEFAULT_LISTEN = "127.0.0.1:9542"
# Prometheus scrapes one target with one connection at a time, so this leaves room for
# several scrapers and probes while keeping the thread count bounded.
MAX_CONNECTIONS = 32
CONNECTION_TIMEOUT = 10.0
_REALM = "kong-ai-metrics"
_BUSY_REPLY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: 32\r\nConnection: close\r\n\r\ntoo many concurrent connections\n"
)


@dataclass(frozen=True)
class SidecarSecurity:
    """Optional credentials for ``/metrics`` and an optional TLS certificate and key (PEM paths)."""

    basic_auth: tuple[str, str] | None = None
    bearer_token: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None

    @property
    def requires_auth(self) -> bool:
        return self.basic_auth is not None or self.bearer_token is not None


def parse_basic_auth(value: str) -> tuple[str, str]:
    """Split ``USER:PASSWORD``; raise ValueError (without echoing the secret) when a part is missing."""
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise ValueError("invalid basic auth credentials: expected USER:PASSWORD with both parts non-empty")
    return user, password


def parse_listen(value: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[::1]:PORT`` for IPv6) into host and port.

    Raises ValueError with the offending value when it is not of that form.
    """
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit() or not host:
        raise ValueError(f"invalid listen address {value!r}: expected HOST:PORT, such as 127.0.0.1:9542")
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"invalid listen address {value!r}: port {port} is above 65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, port


def _tls_context(security: SidecarSecurity) -> ssl.SSLContext | None:
    if security.tls_cert is None and security.tls_key is None:
        return None
    if security.tls_cert is None or security.tls_key is None:
        raise ValueError("TLS needs both a certificate and a key file")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(security.tls_cert, security.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"cannot load TLS certificate {security.tls_cert} with key {security.tls_key}: {exc}") from exc
    return context


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default backlog of 5 drops connections in a burst, and each dropped
    # one is retried by the client's kernel only a second later.
    request_queue_size = 2 * MAX_CONNECTIONS
    registry: CollectorRegistry

    def __init__(self, address: tuple[str, int], registry: CollectorRegistry, security: SidecarSecurity) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.registry = registry
        self.security = security
        self.tls = _tls_context(security)
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        # This runs in the accepting thread, so the rejection sends without blocking.
        if not self._slots.acquire(blocking=False):
            log.debug("sidecar: rejected %s, %d connections already open", client_address[0], MAX_CONNECTIONS)
            self._reject_busy(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The TLS handshake happens here, in the connection's own thread, so a client that
        # stalls the handshake occupies one slot and not the accepting thread.
        request.settimeout(CONNECTION_TIMEOUT)
        if self.tls is None:
            _Handler(request, client_address, self)
            return
        with self.tls.wrap_socket(request, server_side=True) as tls_request:
            _Handler(tls_request, client_address, self)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver prints a traceback to stderr by default. A dropped or broken client
        # connection is routine for a metrics endpoint, so one debug line is enough.
        log.debug("sidecar: connection from %s failed: %r", client_address[0], sys.exc_info()[1])

    def _reject_busy(self, request: socket.socket) -> None:
        try:
            if self.tls is None:
                request.setblocking(False)
                request.send(_BUSY_REPLY)
        except OSError:
            pass
        finally:
            self.shutdown_request(request)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "kong-ai-metrics"
    sys_version = ""
    timeout = CONNECTION_TIMEOUT
    # Plain text, so that an error page never echoes markup.
    error_message_format = "%(code)d %(message)s\n"
    error_content_type = "text/plain; charset=utf-8"

    def do_GET(self) -> None:  # noqa: N802 - name fixed by http.server
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            if not self._authorized():
                self._send_unauthorized()
                return
            self._send_metrics()
        elif path == "/healthz":
            self._send(200, "text/plain; charset=utf-8", b"ok\n")
        else:
            self._send(404, "text/plain; charset=utf-8", b"not found: try /metrics or /healthz\n")

    def _authorized(self) -> bool:
        security = self.server.security
        if not security.requires_auth:
            return True
        scheme, _, credentials = self.headers.get("Authorization", "").partition(" ")
        scheme = scheme.lower()
        credentials = credentials.strip()
        if scheme == "bearer" and security.bearer_token is not None:
            return hmac.compare_digest(credentials.encode("utf-8"), security.bearer_token.encode("utf-8"))
        if scheme == "basic" and security.basic_auth is not None:
            try:
                decoded = base64.b64decode(credentials, validate=True)
            except (binascii.Error, ValueError):
                return False
            user, password = security.basic_auth
            return hmac.compare_digest(decoded, f"{user}:{password}".encode("utf-8"))
        return False

    def _send_unauthorized(self) -> None:
        log.debug("sidecar: rejected /metrics request from %s without valid credentials", self.client_address[0])
        body = b"unauthorized: /metrics needs valid credentials\n"
        self.send_response(401)
        security = self.server.security
        if security.basic_auth is not None:
            self.send_header("WWW-Authenticate", f'Basic realm="{_REALM}", charset="UTF-8"')
        if security.bearer_token is not None:
            self.send_header("WWW-Authenticate", f'Bearer realm="{_REALM}"')
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _send_metrics(self) -> None:
        encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
        if encoder is generate_latest:
            # The same bytes, about five times faster on large registries.
            encoder = render_text
        try:
            output = encoder(self.server.registry)
        except Exception:  # noqa: BLE001 - intentional: a scrape must never show a traceback
            log.exception("rendering /metrics failed")
            self._send(500, "text/plain; charset=utf-8", b"rendering metrics failed; see the plugin server log\n")
            return
        self._send(200, content_type, output)

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature fixed by http.server
        log.debug("sidecar %s " + format, self.client_address[0], *args)


class Sidecar:
    """A running sidecar server; ``close`` stops it.

    Raises OSError when the address cannot be bound and ValueError when the TLS files
    cannot be loaded.
    """

    def __init__(self, host: str, port: int, registry: CollectorRegistry, security: SidecarSecurity | None = None) -> None:
        self.security = security if security is not None else SidecarSecurity()
        self._server = _Server((host, port), registry, self.security)
        self.host, self.port = self._server.server_address[:2]
        self._thread = threading.Thread(target=self._server.serve_forever, name="kong-ai-metrics-sidecar", daemon=True)

    def start(self) -> Sidecar:
        self._thread.start()
        scheme = "https" if self._server.tls is not None else "http"
        log.info("serving /metrics and /healthz on %s://%s:%s", scheme, self.host, self.port)
        if not self.security.requires_auth and not _is_loopback(str(self.host)):
            log.warning("/metrics on %s:%s is reachable beyond this host and needs no credentials", self.host, self.port)
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
