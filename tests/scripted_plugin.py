"""A plugin whose access handler misbehaves on purpose, served by the built-in dispatcher.

The dispatcher tests run it as a separate process, ``python -m tests.scripted_plugin
SOCKET_PATH EVENT_TIMEOUT``, and drive it over the socket. Each instance's ``mode``
config field picks what its handler does; results that the tests check travel back as
the arguments of ``kong.ctx.shared.set`` calls.
"""

from __future__ import annotations

import logging
import signal
import socket
import sys
from typing import Any

from kong_pdk.exception import PDKException

from kong_ai_metrics.dispatcher import Dispatcher, PluginSpec, UnixRpcServer

NAME = "scripted"


class Plugin:
    # Handlers that ran to their end after kong.response.exit, over all instances.
    finished_after_exit = 0

    def __init__(self, config: dict[str, Any]) -> None:
        if config.get("mode") == "fail_start":
            raise ValueError("mode fail_start refuses to start")
        self.mode = config.get("mode", "")

    def access(self, kong: Any) -> None:
        getattr(self, f"_{self.mode}")(kong)

    def log(self, kong: Any) -> None:
        kong.ctx.shared.set("finished_after_exit", Plugin.finished_after_exit)

    def _return_at_once(self, kong: Any) -> None:
        return None

    def _raise_before(self, kong: Any) -> None:
        raise RuntimeError("raised before the first PDK call")

    def _raise_after(self, kong: Any) -> None:
        kong.request.get_header("x-first")
        raise RuntimeError("raised after a PDK call")

    def _exit_first(self, kong: Any) -> None:
        result = kong.response.exit(403, "denied")
        if result is None:
            Plugin.finished_after_exit += 1

    def _call_after_exit(self, kong: Any) -> None:
        kong.response.exit(403, "denied")
        # Kong sends no Step after exit, so nothing can return a value to this call.
        kong.request.get_header("x-never")
        Plugin.finished_after_exit += 100

    def _two_calls(self, kong: Any) -> None:
        first = kong.request.get_header("x-a")
        second = kong.request.get_header("x-b")
        kong.ctx.shared.set("both", [first, second])

    def _echo(self, kong: Any) -> None:
        value = kong.request.get_header("x-echo")
        kong.ctx.shared.set(type(value).__name__, value)

    def _step_error(self, kong: Any) -> None:
        try:
            kong.request.get_header("x-fails")
        except PDKException as exc:
            kong.ctx.shared.set("error", str(exc))

    def _unpackable(self, kong: Any) -> None:
        try:
            kong.ctx.shared.set("value", object())
        except TypeError as exc:
            kong.ctx.shared.set("error", str(exc))

    def _wait(self, kong: Any) -> None:
        kong.request.get_header("x-wait")


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m tests.scripted_plugin SOCKET_PATH EVENT_TIMEOUT", file=sys.stderr)
        return 2
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(argv[0])
    listener.listen(64)
    dispatcher = Dispatcher(PluginSpec(NAME, Plugin, [], "1.0.0", 10), event_timeout=float(argv[1]))
    server = UnixRpcServer(dispatcher, listener, exit_with_parent=True)
    signal.signal(signal.SIGTERM, lambda signum, frame: server.stop())
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
