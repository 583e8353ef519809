"""The plugin server process: kong-pdk's RPC dispatcher on a Unix socket, plus the sidecar.

kong-pdk runs in gevent mode: each Kong connection and each event is a greenlet, which
served about 2.4 times the events of its threading mode in our measurements (see the
README's performance notes). kong-pdk does not monkey-patch, so nothing here may block
the gevent loop; the sidecar runs in its own OS threads instead.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from dataclasses import dataclass
from typing import Any

import gevent
from gevent import socket as gsocket
from gevent.server import StreamServer
from kong_pdk.listener import Server as PdkConnectionHandler
from kong_pdk.logger import Logger as PdkLogger
from kong_pdk.module import Module
from kong_pdk.server import PluginServer
from prometheus_client import disable_created_metrics

from . import plugin
from .metrics import Metrics
from .sidecar import Sidecar

log = logging.getLogger("kong_ai_metrics")


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


def serve(options: ServerOptions) -> int:
    """Serve RPC on the socket and metrics on the sidecar until SIGTERM or SIGINT; return the exit code."""
    disable_created_metrics()
    metrics = Metrics(prefix=options.metric_prefix)
    plugin.use_metrics(metrics)

    try:
        sidecar = Sidecar(options.metrics_host, options.metrics_port, metrics.registry).start()
    except OSError as exc:
        log.error("cannot listen for /metrics on %s:%s: %s", options.metrics_host, options.metrics_port, exc)
        return 1

    try:
        listener = _bind_unix(options.socket_path, options.listen_queue_size)
    except OSError as exc:
        log.error("cannot listen on socket %s: %s", options.socket_path, exc)
        sidecar.close()
        return 1

    pdk_server = _pdk_plugin_server()
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
    try:
        stream_server.serve_forever()
    finally:
        sidecar.close()
        _remove_socket(options.socket_path)
    log.info("stopped")
    return 0


def _pdk_plugin_server() -> PluginServer:
    class PluginModule:
        Plugin = plugin.Plugin
        Schema = plugin.Schema
        version = plugin.version
        priority = plugin.priority

    server = PluginServer(
        loglevel=PdkLogger.WARNING,
        use_gevent=True,
        name=f"{plugin.NAME} version {plugin.version}",
        lua_style=False,
    )
    server.plugins[plugin.NAME] = Module(plugin.NAME, module=PluginModule)
    return server


def _bind_unix(path: str, backlog: int) -> gsocket.socket:
    # Kong's own start-up does the same: a leftover socket file from an earlier run
    # would make bind fail.
    _remove_socket(path)
    listener = gsocket.socket(gsocket.AF_UNIX, gsocket.SOCK_STREAM)
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
    # Kong logs each line the plugin server prints, so logs go to stderr and stdout
    # stays free for the query command's JSON.
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(stream=sys.stderr, level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
