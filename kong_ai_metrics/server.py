"""The plugin server process: an RPC dispatcher on a Unix socket, plus the sidecar.

The built-in dispatcher (``dispatcher.py``) is the default. kong-pdk's own server stays
selectable with ``--dispatcher kong-pdk``. It runs in gevent mode, which served three to
four times the events of its threading mode in ``benchmarks/run.py``. Both run every
event on the main thread and neither monkey-patches, so nothing here may block; the
sidecar runs in its own OS threads instead.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
from dataclasses import dataclass
from typing import Any

import gevent
from gevent import socket as gsocket
from gevent.server import StreamServer
from kong_pdk.listener import Server as PdkConnectionHandler
from kong_pdk.logger import Logger as PdkLogger
from kong_pdk.module import Module
from prometheus_client import disable_created_metrics

from . import plugin
from .labels import DEFAULT_MAX_MODELS
from .dispatcher import Dispatcher, PluginSpec, UnixRpcServer
from .metrics import Metrics
from .pdk_events import DEFAULT_EVENT_TIMEOUT, ExpiringPluginServer
from .sidecar import Sidecar, SidecarSecurity

log = logging.getLogger("kong_ai_metrics")

BUILTIN_DISPATCHER = "builtin"
KONG_PDK_DISPATCHER = "kong-pdk"
DISPATCHERS = (BUILTIN_DISPATCHER, KONG_PDK_DISPATCHER)


def plugin_info() -> dict[str, Any]:
    """Return the plugin info that Kong's query command (``-dump``) must print, as kong-pdk builds it."""
    return {
        "Name": plugin.NAME,
        "Phases": _phases(),
        "Priority": plugin.priority,
        "Version": plugin.version,
        "Schema": {
            "name": plugin.NAME,
            "fields": [{"config": {"type": "record", "fields": plugin.Schema}}],
        },
    }


def dump_json() -> str:
    """Return the query command's output: a JSON array holding the one plugin info."""
    return json.dumps([plugin_info()])


def _phases() -> list[str]:
    # The order kong-pdk lists phases in; Kong builds one handler for each.
    return [phase for phase in ("certificate", "rewrite", "log", "access", "preread", "response") if hasattr(plugin.Plugin, phase)]


@dataclass(frozen=True)
class ServerOptions:
    socket_path: str
    metrics_host: str
    metrics_port: int
    metric_prefix: str
    listen_queue_size: int = 4096
    exit_with_parent: bool = True
    max_models: int = DEFAULT_MAX_MODELS
    # Seconds an event may wait for Kong's next Step before it counts as abandoned.
    event_timeout: float = DEFAULT_EVENT_TIMEOUT
    debug_gauges: bool = False
    sidecar_security: SidecarSecurity = SidecarSecurity()
    dispatcher: str = BUILTIN_DISPATCHER


def serve(options: ServerOptions) -> int:
    """Serve RPC on the socket and metrics on the sidecar until SIGTERM or SIGINT; return the exit code."""
    disable_created_metrics()  # type: ignore[no-untyped-call]
    metrics = Metrics(prefix=options.metric_prefix, max_models=options.max_models)
    if options.debug_gauges:
        metrics.enable_debug_gauges()
    plugin.use_metrics(metrics)

    try:
        sidecar = Sidecar(options.metrics_host, options.metrics_port, metrics.registry, options.sidecar_security).start()
    except (OSError, ValueError) as exc:
        log.error(
            "cannot listen for /metrics on %s:%s: %s; choose another address with --metrics-listen or KONG_AI_METRICS_LISTEN",
            options.metrics_host,
            options.metrics_port,
            exc,
        )
        return 1

    try:
        listener = _bind_unix(options.socket_path, options.listen_queue_size, gevent_socket=options.dispatcher == KONG_PDK_DISPATCHER)
    except OSError as exc:
        log.error("cannot listen on socket %s: %s", options.socket_path, exc)
        sidecar.close()
        return 1

    try:
        if options.dispatcher == KONG_PDK_DISPATCHER:
            _serve_kong_pdk(listener, options, metrics)
        else:
            _serve_builtin(listener, options, metrics)
    finally:
        sidecar.close()
        _remove_socket(options.socket_path)
    log.info("stopped")
    return 0


def _serve_builtin(listener: socket.socket, options: ServerOptions, metrics: Metrics) -> None:
    spec = PluginSpec(plugin.NAME, plugin.Plugin, plugin.Schema, plugin.version, plugin.priority)
    dispatcher = Dispatcher(spec, options.event_timeout, on_abandoned=lambda phase: metrics.abandoned_events.labels(phase).inc())
    server = UnixRpcServer(dispatcher, listener, exit_with_parent=options.exit_with_parent)

    def stop(signum: int, frame: Any) -> None:
        log.info("received signal %d, stopping", signum)
        server.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("ai-metrics %s serving RPC on %s (built-in dispatcher)", plugin.version, options.socket_path)
    server.serve_forever()


def _serve_kong_pdk(listener: gsocket.socket, options: ServerOptions, metrics: Metrics) -> None:
    pdk_server = _pdk_plugin_server(options.event_timeout, metrics)
    gevent.spawn(pdk_server.run_expiry)
    stream_server = StreamServer(listener, PdkConnectionHandler(pdk_server).handle)

    def stop(signum: int) -> None:
        log.info("received signal %d, stopping", signum)
        stream_server.stop(timeout=2)

    gevent.signal_handler(signal.SIGTERM, stop, signal.SIGTERM)
    gevent.signal_handler(signal.SIGINT, stop, signal.SIGINT)
    if options.exit_with_parent:
        gevent.spawn(_exit_with_parent, stream_server, os.getppid())

    log.info(
        "ai-metrics %s serving RPC on %s (kong-pdk, gevent mode)",
        plugin.version,
        options.socket_path,
    )
    stream_server.serve_forever()


def _pdk_plugin_server(event_timeout: float, metrics: Metrics) -> ExpiringPluginServer:
    class PluginModule:
        Plugin = plugin.Plugin
        Schema = plugin.Schema
        version = plugin.version
        priority = plugin.priority

    server = ExpiringPluginServer(
        event_timeout=event_timeout,
        on_abandoned=lambda phase: metrics.abandoned_events.labels(phase).inc(),
        loglevel=PdkLogger.WARNING,
        use_gevent=True,
        name=f"{plugin.NAME} version {plugin.version}",
        lua_style=False,
    )
    server.plugins[plugin.NAME] = Module(plugin.NAME, module=PluginModule)
    return server


def _bind_unix(path: str, backlog: int, gevent_socket: bool) -> socket.socket:
    # Kong's own start-up does the same: a leftover socket file from an earlier run
    # would make bind fail.
    _remove_socket(path)
    factory = gsocket.socket if gevent_socket else socket.socket
    listener = factory(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(backlog)
    return listener


def _remove_socket(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _exit_with_parent(server: StreamServer, parent_pid: int) -> None:
    """Stop serving when the process that started us (Kong's worker) is gone."""
    while True:
        gevent.sleep(1)
        if os.getppid() != parent_pid:
            log.warning("parent process %d exited, stopping", parent_pid)
            server.stop(timeout=2)
            return


def configure_logging(verbosity: int) -> None:
    """Send logs to stderr at warning (0), info (1) or debug (2 and more) level."""
    # Kong logs each line the plugin server prints, so logs go to stderr and stdout
    # stays free for the query command's JSON.
    if verbosity <= 0:
        level = logging.WARNING
    elif verbosity == 1:
        level = logging.INFO
    else:
        level = logging.DEBUG
    logging.basicConfig(stream=sys.stderr, level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
