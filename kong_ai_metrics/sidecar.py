"""The sidecar HTTP server: ``GET /metrics`` for Prometheus and ``GET /healthz``.

It runs in daemon threads beside the plugin server's gevent loop, so a slow scrape
does not hold up plugin events for longer than the interpreter lock allows.
"""

from __future__ import annotations

import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

log = logging.getLogger("kong_ai_metrics.sidecar")

DEFAULT_LISTEN = "127.0.0.1:9542"


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


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    registry: CollectorRegistry

    def __init__(self, address: tuple[str, int], registry: CollectorRegistry) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.registry = registry
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "kong-ai-metrics"
    sys_version = ""

    def do_GET(self) -> None:  # noqa: N802 - name fixed by http.server
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send_metrics()
        elif path == "/healthz":
            self._send(200, "text/plain; charset=utf-8", b"ok\n")
        else:
            self._send(404, "text/plain; charset=utf-8", b"not found: try /metrics or /healthz\n")

    def _send_metrics(self) -> None:
        encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
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
    """A running sidecar server; ``close`` stops it."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry) -> None:
        self._server = _Server((host, port), registry)
        self.host, self.port = self._server.server_address[:2]
        self._thread = threading.Thread(target=self._server.serve_forever, name="kong-ai-metrics-sidecar", daemon=True)

    def start(self) -> Sidecar:
        self._thread.start()
        log.info("serving /metrics and /healthz on %s:%s", self.host, self.port)
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
