"""A plugin whose handlers do nothing: the floor cost of the protocol on each server.

Run ``python -m benchmarks.noop_plugin builtin SOCKET_PATH`` to serve it with the
built-in dispatcher; ``benchmarks.stock_server noop`` serves it with kong-pdk's.
"""

from __future__ import annotations

import logging
import socket
import sys
from typing import Any

NAME = "noop"
Schema: list[Any] = []
version = "0.1.0"
priority = 0


class Plugin:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    def access(self, kong: Any) -> None:
        return None

    def log(self, kong: Any) -> None:
        return None


def main(argv: list[str]) -> int:
    from kong_ai_metrics.dispatcher import Dispatcher, PluginSpec, UnixRpcServer

    if len(argv) != 2 or argv[0] != "builtin":
        print("usage: python -m benchmarks.noop_plugin builtin SOCKET_PATH", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(argv[1])
    listener.listen(4096)
    dispatcher = Dispatcher(PluginSpec(NAME, Plugin, Schema, version, priority), event_timeout=60.0)
    UnixRpcServer(dispatcher, listener, exit_with_parent=True).serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
