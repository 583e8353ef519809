"""The built-in dispatcher in its own process, driven over its socket with raw MessagePack.

The plugin is ``tests/scripted_plugin.py``: its handlers raise, exit, and send back what
they received, which the real ai-metrics plugin never does.
"""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

ROOT = Path(__file__).resolve().parent.parent
EVENT_TIMEOUT = 0.5
_MISSING = object()


class Connection:
    """One Kong connection: a request, then its response, as Kong's mp_rpc does."""

    def __init__(self, socket_path: str, raw: bool = False) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(socket_path)
        self.unpacker = msgpack.Unpacker(raw=raw, strict_map_key=False)
        self.packer = msgpack.Packer(use_bin_type=True, unicode_errors="surrogateescape")
        self.msgids = itertools.count(1)

    def call(self, method: str, params: list[Any]) -> tuple[Any, Any]:
        """Return the error and the result of one request."""
        msgid = next(self.msgids)
        self.sock.sendall(self.packer.pack([0, msgid, method, params]))
        message = self.read()
        assert message[:2] == [1, msgid]
        return message[2], message[3]

    def read(self) -> Any:
        while True:
            for message in self.unpacker:
                return message
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("the server closed the connection")
            self.unpacker.feed(data)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    """Start the scripted plugin's server; yield its socket path."""
    socket_path = str(tmp_path / "scripted.socket")
    process = subprocess.Popen([sys.executable, "-m", "tests.scripted_plugin", socket_path, str(EVENT_TIMEOUT)], cwd=ROOT)
    try:
        deadline = time.monotonic() + 15
        while not os.path.exists(socket_path):
            assert process.poll() is None, "the scripted plugin server exited"
            assert time.monotonic() < deadline, "the scripted plugin server did not create its socket"
            time.sleep(0.02)
        yield socket_path
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def connect(server: str) -> Iterator[Callable[..., Connection]]:
    opened: list[Connection] = []

    def open_connection(raw: bool = False) -> Connection:
        connection = Connection(server, raw)
        opened.append(connection)
        return connection

    yield open_connection
    for connection in opened:
        connection.close()


def start(connection: Connection, mode: str) -> int:
    error, result = connection.call("plugin.StartInstance", [{"Name": "scripted", "Config": f'{{"mode": "{mode}"}}'}])
    assert error is None
    return int(result["Id"])


def handle(connection: Connection, instance_id: int, phase: str = "access") -> Any:
    error, result = connection.call("plugin.HandleEvent", [{"InstanceId": instance_id, "EventName": phase}])
    assert error is None
    return result


def step(connection: Connection, event_id: int, data: Any = _MISSING, method: str = "plugin.Step") -> tuple[Any, Any]:
    params: dict[str, Any] = {"EventId": event_id}
    if data is not _MISSING:
        params["Data"] = data
    return connection.call(method, [params])


def events(connection: Connection) -> dict[str, int]:
    error, status = connection.call("plugin.GetStatus", [])
    assert error is None
    return dict(status["Events"])


def wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


# ---------------------------------------------------------------------------------
# Handlers that raise


def test_raise_before_first_call_ends_event(connect: Callable[..., Connection]) -> None:
    kong = connect()
    failing = start(kong, "raise_before")
    assert handle(kong, failing)["Data"] == "ret"

    # kong-pdk would now block every HandleEvent; the next event runs normally.
    working = start(kong, "two_calls")
    reply = handle(kong, working)
    assert reply["Data"] == {"Method": "kong.request.get_header", "Args": ["x-a"]}
    assert events(kong)["HandlerErrors"] == 1


def test_raise_after_call_ends_event(connect: Callable[..., Connection]) -> None:
    kong = connect()
    instance = start(kong, "raise_after")
    reply = handle(kong, instance)
    assert reply["Data"]["Method"] == "kong.request.get_header"
    error, result = step(kong, reply["EventId"], "value")
    assert error is None
    assert result == {"Data": "ret", "EventId": reply["EventId"]}
    assert events(kong)["Pending"] == 0
    assert handle(kong, instance)["Data"]["Method"] == "kong.request.get_header"


# ---------------------------------------------------------------------------------
# kong.response.exit


def test_exit_as_first_call_drops_event(connect: Callable[..., Connection]) -> None:
    kong = connect()
    instance = start(kong, "exit_first")
    reply = handle(kong, instance)
    assert reply["Data"] == {"Method": "kong.response.exit", "Args": [403, "denied"]}
    assert events(kong)["Pending"] == 0

    # The handler ran on to its end with None from exit().
    report = handle(kong, instance, "log")
    assert report["Data"] == {"Method": "kong.ctx.shared.set", "Args": ["finished_after_exit", 1]}
    error, _ = step(kong, reply["EventId"], True)
    assert error == f"event id {reply['EventId']} not found"


def test_call_after_exit_ends_handler(connect: Callable[..., Connection]) -> None:
    kong = connect()
    instance = start(kong, "call_after_exit")
    assert handle(kong, instance)["Data"]["Method"] == "kong.response.exit"
    assert events(kong)["Pending"] == 0
    # The call after exit never returned, so the line after it never ran.
    report = handle(kong, instance, "log")
    assert report["Data"]["Args"] == ["finished_after_exit", 0]


# ---------------------------------------------------------------------------------
# Connections, concurrency, abandoned events


def test_steps_on_other_connections(connect: Callable[..., Connection]) -> None:
    first, second, third = connect(), connect(), connect()
    instance = start(first, "two_calls")
    reply = handle(first, instance)
    _, reply = step(second, reply["EventId"], "a-value")
    assert reply["Data"] == {"Method": "kong.request.get_header", "Args": ["x-b"]}
    _, reply = step(third, reply["EventId"], "b-value")
    assert reply["Data"] == {"Method": "kong.ctx.shared.set", "Args": ["both", ["a-value", "b-value"]]}
    _, reply = step(first, reply["EventId"])
    assert reply["Data"] == "ret"


def test_many_waiting_events_interleaved(connect: Callable[..., Connection]) -> None:
    connections = [connect() for _ in range(4)]
    instance = start(connections[0], "two_calls")
    waiting = [handle(connections[index % 4], instance)["EventId"] for index in range(200)]
    assert events(connections[0])["Pending"] == 200

    # Step the events in reverse order, each on another connection than before.
    for index, event_id in enumerate(reversed(waiting)):
        kong = connections[(index + 1) % 4]
        _, reply = step(kong, event_id, f"a{event_id}")
        _, reply = step(kong, event_id, f"b{event_id}")
        assert reply["Data"]["Args"] == ["both", [f"a{event_id}", f"b{event_id}"]]
        _, reply = step(kong, event_id)
        assert reply["Data"] == "ret"
    assert events(connections[0]) == {"Pending": 0, "Started": 200, "Expired": 0, "HandlerErrors": 0}


def test_abandoned_event_expires(connect: Callable[..., Connection]) -> None:
    kong = connect()
    instance = start(kong, "wait")
    abandoned = handle(kong, instance)["EventId"]
    assert events(kong)["Pending"] == 1

    # The tick runs every second and drops events older than the event timeout.
    assert wait_until(lambda: events(kong)["Pending"] == 0, timeout=5)
    assert events(kong)["Expired"] == 1
    error, _ = step(kong, abandoned, "late")
    assert error == f"event id {abandoned} not found"
    assert handle(kong, instance)["Data"]["Method"] == "kong.request.get_header"


def test_closing_every_connection_keeps_serving(connect: Callable[..., Connection]) -> None:
    kong = connect()
    instance = start(kong, "return_at_once")
    assert handle(kong, instance)["Data"] == "ret"
    kong.close()
    again = connect()
    assert handle(again, instance)["Data"] == "ret"


# ---------------------------------------------------------------------------------
# Errors Kong relies on


def test_unknown_ids_give_kong_error_texts(connect: Callable[..., Connection]) -> None:
    kong = connect()
    instance = start(kong, "return_at_once")
    missing = instance + 1000
    assert kong.call("plugin.HandleEvent", [{"InstanceId": missing, "EventName": "access"}])[0] == f"no plugin instance #{missing}"
    assert kong.call("plugin.CloseInstance", [missing])[0] == f"no plugin instance #{missing}"
    assert step(kong, 987654)[0] == "event id 987654 not found"
    assert step(kong, 987654, "boom", method="plugin.StepError")[0] == "event id 987654 not found"


def test_closed_instance_is_gone(connect: Callable[..., Connection]) -> None:
    kong = connect()
    instance = start(kong, "return_at_once")
    error, result = kong.call("plugin.CloseInstance", [instance])
    assert error is None
    assert result["Id"] == instance
    assert result["Config"] == {"mode": "return_at_once"}
    assert kong.call("plugin.HandleEvent", [{"InstanceId": instance, "EventName": "access"}])[0] == f"no plugin instance #{instance}"


def test_start_instance_errors(connect: Callable[..., Connection]) -> None:
    kong = connect()
    error, _ = kong.call("plugin.StartInstance", [{"Name": "other", "Config": "{}"}])
    assert error == "no plugin named 'other'; this server runs 'scripted'"
    error, _ = kong.call("plugin.StartInstance", [{"Name": "scripted", "Config": "{not json"}])
    assert error.startswith("invalid Config JSON for scripted")
    error, _ = kong.call("plugin.StartInstance", [{"Name": "scripted", "Config": '{"mode": "fail_start"}'}])
    assert error == "starting an instance of scripted failed: mode fail_start refuses to start"


def test_unknown_method_and_phase(connect: Callable[..., Connection]) -> None:
    kong = connect()
    instance = start(kong, "return_at_once")
    assert kong.call("plugin.SetPluginDir", ["/tmp"])[0] == "unknown method plugin.SetPluginDir"
    assert kong.call("other.Method", [])[0] == "RPC for other is not supported"
    assert kong.call("plugin.HandleEvent", [{"InstanceId": instance, "EventName": "rewrite"}])[0] == "plugin scripted has no rewrite handler"


def test_ids_start_at_random_offsets(connect: Callable[..., Connection]) -> None:
    # kong-pdk starts both at 0 in every process; an id Kong cached before a restart
    # would then name a new instance. Zero has odds of one in 2**30 here.
    kong = connect()
    instance = start(kong, "return_at_once")
    assert instance != 0
    assert handle(kong, instance)["EventId"] != 0


def test_malformed_message_closes_only_its_connection(connect: Callable[..., Connection]) -> None:
    broken, healthy = connect(), connect()
    broken.sock.sendall(msgpack.packb([1, 2, 3]))
    assert broken.sock.recv(100) == b""
    assert start(healthy, "return_at_once") != 0


# ---------------------------------------------------------------------------------
# Values as Kong sends them


def test_invalid_utf8_string_round_trips(connect: Callable[..., Connection]) -> None:
    kong = connect(raw=True)
    instance_error, instance = kong.call("plugin.StartInstance", [{"Name": "scripted", "Config": '{"mode": "echo"}'}])
    assert instance_error is None
    error, reply = kong.call("plugin.HandleEvent", [{"InstanceId": instance[b"Id"], "EventName": "access"}])
    event_id = reply[b"EventId"]

    # A Lua string that is not UTF-8 arrives as msgpack str, here the bytes ff fe.
    error, reply = step(kong, event_id, b"\xff\xfe ok".decode("utf-8", "surrogateescape"))
    assert error is None
    assert reply[b"Data"][b"Method"] == b"kong.ctx.shared.set"
    assert reply[b"Data"][b"Args"] == [b"str", b"\xff\xfe ok"]


def test_bin_stays_bytes(connect: Callable[..., Connection]) -> None:
    kong = connect()
    instance = start(kong, "echo")
    reply = handle(kong, instance)
    _, reply = step(kong, reply["EventId"], b"\x1f\x8b\x08\x00raw body")
    assert reply["Data"]["Args"] == ["bytes", b"\x1f\x8b\x08\x00raw body"]


def test_step_error_raises_pdk_exception(connect: Callable[..., Connection]) -> None:
    kong = connect()
    instance = start(kong, "step_error")
    reply = handle(kong, instance)
    _, reply = step(kong, reply["EventId"], "something failed", method="plugin.StepError")
    assert reply["Data"]["Args"] == ["error", "exception from kong.request.get_header: something failed"]


def test_unpackable_argument_raises_at_call_site(connect: Callable[..., Connection]) -> None:
    kong = connect()
    instance = start(kong, "unpackable")
    reply = handle(kong, instance)
    assert reply["Data"]["Method"] == "kong.ctx.shared.set"
    name, message = reply["Data"]["Args"]
    assert name == "error"
    assert message.startswith("kong.ctx.shared.set: arguments cannot be sent to Kong:")


def test_typed_step_methods_all_resume(connect: Callable[..., Connection]) -> None:
    kong = connect()
    instance = start(kong, "two_calls")
    for method in ("plugin.StepCredential", "plugin.StepConsumer", "plugin.StepMemoryStats", "plugin.StepRoute", "plugin.StepService", "plugin.StepMultiMap"):
        reply = handle(kong, instance)
        _, reply = step(kong, reply["EventId"], {"id": method}, method=method)
        assert reply["Data"] == {"Method": "kong.request.get_header", "Args": ["x-b"]}, method
        _, reply = step(kong, reply["EventId"], [])
        assert reply["Data"]["Args"] == ["both", [{"id": method}, []]]
        step(kong, reply["EventId"])
    assert events(kong)["Pending"] == 0
