"""The plugin server's RPC dispatcher: Kong's MessagePack protocol on a Unix socket.

Kong (``kong/runloop/plugin_servers/``, Kong 3.x) sends ``[0, msgid, method, params]``
requests and reads ``[1, msgid, error, result]`` responses. It calls
``plugin.StartInstance`` and ``plugin.CloseInstance`` to manage instances,
``plugin.HandleEvent`` to start a phase handler, and one of the ``plugin.Step*`` methods
to return the result of each PDK call. The reply to HandleEvent and to every Step contains
either ``"ret"`` (the handler has finished) or the next PDK call for Kong to run.

Each event runs as a greenlet. A PDK call made by the handler switches back to the
dispatcher, which sends the call to Kong as its reply. The Step that carries the result
switches into the event's greenlet again, whichever connection it arrives on. Everything
runs on one thread, so no event needs a thread, a queue or a lock. In exchange, a handler
blocks the whole server from one PDK call to the next, so handlers must not make
blocking calls (nothing enforces this). Greenlets go
back to a pool when their event ends: starting a new greenlet costs about ten times as
much as switching to an idle one.

Where this differs from kong-pdk 0.36, which the plugin-facing API otherwise follows:

- A handler that raises ends its event with ``"ret"``. kong-pdk never answers, and an
  exception before the first PDK call blocks every later event.
- Kong abandons an event when a PDK method raises a Lua error or when its 60 s read
  timeout expires; it then never sends the next Step. Such events are dropped after
  ``event_timeout`` seconds without a Step. kong-pdk keeps them forever.
- After ``kong.response.exit`` or ``kong.response.error`` the handler gets None and runs
  to its end, and the event is dropped. Kong sends no Step after these calls.
- Strings that are not valid UTF-8 (Kong sends Lua strings as msgpack str) are decoded
  with ``surrogateescape`` and encoded back to the same bytes. With kong-pdk such a string
  ends the connection.
- Instance and event ids start at a random number. After a restart, an id that Kong
  still caches is answered with ``no plugin instance`` instead of matching a new instance.
- PDK results are returned as data only (kong-pdk's ``lua_style=False``). A StepError
  raises ``PDKException`` at the call site, as in kong-pdk.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import random
import select
import socket
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import greenlet
import msgpack
from kong_pdk.exception import PDKException

log = logging.getLogger("kong_ai_metrics.dispatcher")

# The phase handlers kong-pdk looks for on a plugin class, in kong-pdk's order.
PHASES = ("certificate", "rewrite", "log", "access", "preread", "response")

RET = "ret"
TERMINAL_METHODS = frozenset({"kong.response.exit", "kong.response.error"})

# Kong sends a whole body in one request, so large reads take it in few system calls.
_RECV_SIZE = 256 * 1024
_TICK_SECONDS = 1.0
# How many times GreenletExit is thrown into an expired event before it is left to the garbage collector.
_EXIT_ATTEMPTS = 3
# Idle greenlets kept for reuse; more are created when more events wait at once.
_MAX_IDLE_WORKERS = 256


class RpcFault(Exception):
    """An error that goes back to Kong as the response's error string."""


class ProtocolError(Exception):
    """Kong sent something that is not a request; the connection is closed."""


@dataclass(frozen=True)
class PluginSpec:
    """The declaration kong-pdk reads from a plugin module: ``Plugin``, ``Schema``, ``version``, ``priority``."""

    name: str
    plugin_class: type
    schema: list[Any] = field(default_factory=list)
    version: str | None = None
    priority: int = 0

    @property
    def phases(self) -> list[str]:
        return [phase for phase in PHASES if hasattr(self.plugin_class, phase)]


@dataclass
class _Instance:
    instance_id: int
    plugin: Any
    config: dict[str, Any]
    handlers: dict[str, Callable[[Any], Any]]
    start_time: float

    def status(self, name: str) -> dict[str, Any]:
        return {"Name": name, "Id": self.instance_id, "Config": self.config, "StartTime": self.start_time}


# ---------------------------------------------------------------------------------
# The plugin-facing side: the ``kong`` object and the event greenlets


class PdkProxy:
    """The ``kong`` object passed to phase handlers: calling any dotted name makes that PDK call.

    ``kong.request.get_header("host")`` sends ``kong.request.get_header`` with
    ``["host"]`` to Kong and returns the value from the Step, or None for nil. Names
    that start with an underscore raise AttributeError, so that ``copy``, ``pickle`` and
    similar probes never turn into PDK calls, and ``repr`` makes no call either.
    """

    __slots__ = ("_name", "_is_log", "__dict__")

    def __init__(self, name: str) -> None:
        self._name = name
        # kong-pdk turns kong.log arguments other than str, int, list and dict into str.
        self._is_log = name == "kong.log" or name.startswith("kong.log.")

    def __getattr__(self, attribute: str) -> PdkProxy:
        if attribute.startswith("_"):
            raise AttributeError(attribute)
        child = PdkProxy(f"{self._name}.{attribute}")
        # Cached in the instance dict, so later lookups of this name skip __getattr__.
        self.__dict__[attribute] = child
        return child

    def __call__(self, *args: Any) -> Any:
        if self._is_log:
            args = tuple(a if type(a) in (str, int, list, dict) else str(a) for a in args)
        event = greenlet.getcurrent()
        if not isinstance(event, _Worker):
            raise RuntimeError(f"{self._name}: PDK calls can only be made inside a phase handler")
        return event.parent.switch((self._name, args))

    def __repr__(self) -> str:
        return f"<PDK {self._name}>"


# One proxy serves every event: a call finds its event from the greenlet that makes it.
KONG = PdkProxy("kong")


class _Worker(greenlet.greenlet):  # type: ignore[misc]
    """A greenlet that runs one phase handler per event, suspended while Kong runs a PDK call.

    Switching in a handler starts it. The worker switches back with a PDK call as
    ``(method, args)``, or with ``RET`` when the handler has finished, and then waits
    for the next handler. The attributes describe the event it is running.
    """

    def __init__(self, on_error: Callable[[_Worker], None]) -> None:
        super().__init__()
        self.on_error = on_error
        self.event_id = 0
        self.phase = ""
        self.instance_id = 0
        self.pending_method = ""
        self.touched = 0.0

    def run(self, handler: Callable[[Any], Any]) -> None:
        while True:
            try:
                handler(KONG)
            except greenlet.GreenletExit:
                pass
            except Exception:  # noqa: BLE001 - intentional: an event must end with "ret" whatever its handler raises
                self.on_error(self)
            handler = self.parent.switch(RET)


class _LogLimiter:
    """Let one message through per interval and count the ones held back."""

    def __init__(self, interval: float = 60.0) -> None:
        self.interval = interval
        self._next = 0.0
        self.suppressed = 0

    def allow(self) -> bool:
        now = time.monotonic()
        if now >= self._next:
            self._next = now + self.interval
            return True
        self.suppressed += 1
        return False

    def take_suppressed(self) -> int:
        count, self.suppressed = self.suppressed, 0
        return count


# ---------------------------------------------------------------------------------
# The protocol: instances, events, encoding


class Dispatcher:
    """Handle Kong's plugin RPC requests for one plugin, following the rules in the module docstring."""

    def __init__(self, plugin: PluginSpec, event_timeout: float, on_abandoned: Callable[[str], None] | None = None) -> None:
        """``event_timeout`` is how long, in seconds, an event may wait for its next Step.

        Kong runs each PDK call locally and sends the Step right away, so a live event
        waits milliseconds. The limit only bounds the memory kept by events that Kong
        has given up on. ``on_abandoned`` is called with the phase of each event dropped.
        """
        if event_timeout <= 0:
            raise ValueError(f"event_timeout must be positive, got {event_timeout}")
        self.plugin = plugin
        self.event_timeout = event_timeout
        self._on_abandoned = on_abandoned
        self.load_time = time.time()
        self.last_start_instance = 0.0
        self.last_close_instance = 0.0
        self._instances: dict[int, _Instance] = {}
        # Waiting events, oldest Step first: a Step moves its event to the end.
        self._events: OrderedDict[int, _Worker] = OrderedDict()
        self._idle: list[_Worker] = []
        self._pool_limit = _MAX_IDLE_WORKERS
        seed = random.SystemRandom()
        self._next_instance_id = seed.randrange(1, 1 << 30)
        self._next_event_id = seed.randrange(1, 1 << 30)
        self._packer = msgpack.Packer(use_bin_type=True, unicode_errors="surrogateescape")
        self.events_started = 0
        self.events_expired = 0
        self.handler_errors = 0
        self._error_log = _LogLimiter()

        step = self._step
        self._methods: dict[str, Callable[[Any], bytes]] = {
            "plugin.StartInstance": self._start_instance,
            "plugin.CloseInstance": self._close_instance,
            "plugin.HandleEvent": self._handle_event,
            "plugin.Step": step,
            "plugin.StepCredential": step,
            "plugin.StepConsumer": step,
            "plugin.StepMemoryStats": step,
            "plugin.StepRoute": step,
            "plugin.StepService": step,
            "plugin.StepMultiMap": step,
            "plugin.StepError": self._step_error,
            "plugin.GetStatus": self._get_status,
            "plugin.GetPluginInfo": self._get_plugin_info,
        }

    def _pack(self, value: Any) -> bytes:
        packed: bytes = self._packer.pack(value)
        return packed

    def new_unpacker(self) -> msgpack.Unpacker:
        """Return a stream decoder for one connection: str stays str, bin stays bytes."""
        return msgpack.Unpacker(raw=False, unicode_errors="surrogateescape", strict_map_key=False)

    def handle_message(self, message: Any) -> bytes | None:
        """Run one decoded message from Kong and return the encoded response, or None for a notification.

        Raises ProtocolError when the message is not a request at all.
        """
        if type(message) is not list or len(message) != 4 or message[0] != 0:
            if isinstance(message, list) and message and message[0] == 2:
                return None
            raise ProtocolError(f"expected a request [0, msgid, method, params], got {message!r:.200}")
        msgid = message[1]
        method = message[2]
        function = self._methods.get(method)
        try:
            if function is None:
                namespace = method.split(".", 1)[0] if isinstance(method, str) else method
                if namespace != "plugin":
                    raise RpcFault(f"RPC for {namespace} is not supported")
                raise RpcFault(f"unknown method {method}")
            result = function(message[3])
        except RpcFault as fault:
            log.warning("%s failed: %s", method, fault)
            return self._pack([1, msgid, str(fault), None])
        # A response array of four: type 1, msgid, nil error, and the packed result.
        return b"\x94\x01" + self._pack(msgid) + b"\xc0" + result

    # -- instances ----------------------------------------------------------------

    def _start_instance(self, params: Any) -> bytes:
        request = _first_map(params, "plugin.StartInstance")
        name = request.get("Name")
        if name != self.plugin.name:
            raise RpcFault(f"no plugin named {name!r}; this server runs {self.plugin.name!r}")
        config = request.get("Config")
        if isinstance(config, str):
            try:
                config = json.loads(config)
            except ValueError as exc:
                raise RpcFault(f"invalid Config JSON for {name}: {exc}") from exc
        if not isinstance(config, dict):
            raise RpcFault(f"invalid Config for {name}: expected a JSON object")

        try:
            plugin = self.plugin.plugin_class(config)
        except Exception as exc:  # noqa: BLE001 - intentional: the error goes back to Kong
            log.exception("starting an instance of %s failed", name)
            raise RpcFault(f"starting an instance of {name} failed: {exc}") from exc

        instance_id = self._next_instance_id
        self._next_instance_id += 1
        now = time.time()
        handlers = {phase: getattr(plugin, phase) for phase in self.plugin.phases}
        self._instances[instance_id] = _Instance(instance_id, plugin, config, handlers, now)
        self.last_start_instance = now
        log.info("instance #%d of %s started", instance_id, name)
        return self._pack({"Name": name, "Id": instance_id, "Config": config, "StartTime": now})

    def _close_instance(self, params: Any) -> bytes:
        instance_id = params[0] if isinstance(params, list) and params else None
        instance = self._instances.pop(instance_id, None)  # type: ignore[arg-type]
        if instance is None:
            # Kong matches "no plugin instance" in this text to start a new instance.
            raise RpcFault(f"no plugin instance #{instance_id}")
        self.last_close_instance = time.time()
        log.info("instance #%d of %s closed", instance_id, self.plugin.name)
        return self._pack({"Name": self.plugin.name, "Id": instance.instance_id, "Config": instance.config})

    def _get_status(self, params: Any) -> bytes:
        name = self.plugin.name
        status = {
            "Pid": os.getpid(),
            "Plugins": {
                name: {
                    "Name": name,
                    "Modtime": _module_mtime(self.plugin.plugin_class),
                    "LoadTime": self.load_time,
                    "Instances": [instance.status(name) for instance in self._instances.values()],
                    "LastStartInstance": self.last_start_instance,
                    "LastCloseInstance": self.last_close_instance,
                }
            },
            # Not in kong-pdk: the event counters, for operators and tests.
            "Events": {
                "Pending": len(self._events),
                "Started": self.events_started,
                "Expired": self.events_expired,
                "HandlerErrors": self.handler_errors,
            },
        }
        return self._pack(status)

    def _get_plugin_info(self, params: Any) -> bytes:
        name = params[0] if isinstance(params, list) and params else None
        if name != self.plugin.name:
            raise RpcFault(f"no plugin named {name!r}; this server runs {self.plugin.name!r}")
        info = {
            "Name": name,
            "Phases": self.plugin.phases,
            "Priority": self.plugin.priority,
            "Version": self.plugin.version,
            "Schema": {"name": name, "fields": [{"config": {"type": "record", "fields": self.plugin.schema}}]},
        }
        return self._pack(info)

    # -- events -------------------------------------------------------------------

    def _handle_event(self, params: Any) -> bytes:
        request = _first_map(params, "plugin.HandleEvent")
        instance_id = request.get("InstanceId")
        instance = self._instances.get(instance_id)  # type: ignore[arg-type]
        if instance is None:
            # Kong matches "no plugin instance" in this text to start a new instance.
            raise RpcFault(f"no plugin instance #{instance_id}")
        phase = request.get("EventName")
        handler = instance.handlers.get(phase) if isinstance(phase, str) else None
        if handler is None or not isinstance(phase, str):
            raise RpcFault(f"plugin {self.plugin.name} has no {phase} handler")

        event_id = self._next_event_id
        self._next_event_id += 1
        self.events_started += 1
        event = self._idle.pop() if self._idle else _Worker(self._handler_failed)
        event.event_id = event_id
        event.phase = phase
        event.instance_id = instance.instance_id
        return self._advance(event, self._resume(event, handler))

    def _step(self, params: Any) -> bytes:
        step = _first_map(params, "plugin.Step")
        event = self._take_event(step)
        return self._advance(event, self._resume(event, step.get("Data")))

    def _step_error(self, params: Any) -> bytes:
        step = _first_map(params, "plugin.StepError")
        event = self._take_event(step)
        error = PDKException(f"exception from {event.pending_method}: {step.get('Data')}")
        return self._advance(event, self._resume_with_error(event, error))

    def _take_event(self, step: dict[Any, Any]) -> _Worker:
        event_id = step.get("EventId")
        event = self._events.pop(event_id, None)  # type: ignore[arg-type]
        if event is None:
            raise RpcFault(f"event id {event_id} not found")
        return event

    def _resume(self, event: _Worker, value: Any) -> Any:
        current = greenlet.getcurrent()
        if event.parent is not current:
            event.parent = current
        return event.switch(value)

    def _resume_with_error(self, event: _Worker, error: BaseException) -> Any:
        current = greenlet.getcurrent()
        if event.parent is not current:
            event.parent = current
        return event.throw(error)

    def _advance(self, event: _Worker, outcome: Any) -> bytes:
        """Turn what the handler did next into the reply: ``ret`` or its next PDK call."""
        while outcome is not RET:
            method, args = outcome
            try:
                reply = self._pack({"Data": {"Method": method, "Args": args}, "EventId": event.event_id})
            except (TypeError, ValueError, OverflowError) as exc:
                # The handler gets the error at its call site, as for any failed PDK call.
                outcome = self._resume_with_error(event, TypeError(f"{method}: arguments cannot be sent to Kong: {exc}"))
                continue

            if method in TERMINAL_METHODS:
                # Kong ends the event on these calls and sends no Step.
                self._finish_detached(event, method)
            else:
                event.pending_method = method
                event.touched = time.monotonic()
                self._events[event.event_id] = event
            return reply
        self._release(event)
        return self._pack({"Data": RET, "EventId": event.event_id})

    def _release(self, event: _Worker) -> None:
        """Put the greenlet of a finished event back in the pool, or end it when the pool is full."""
        if len(self._idle) < self._pool_limit:
            self._idle.append(event)
        else:
            self._end_worker(event)

    def keep_idle_greenlets(self, keep: bool) -> None:
        """Keep greenlets of finished events for reuse, or end the idle ones and keep none.

        The transport keeps none while no Kong connection is open: Kong closes pooled
        connections that stay idle for 60 s, so a quiet server keeps no idle greenlets.
        """
        self._pool_limit = _MAX_IDLE_WORKERS if keep else 0
        while len(self._idle) > self._pool_limit:
            self._end_worker(self._idle.pop())

    def _end_worker(self, worker: _Worker) -> None:
        # The worker waits for its next handler outside any try block, so GreenletExit ends it.
        current = greenlet.getcurrent()
        if worker.parent is not current:
            worker.parent = current
        worker.throw(greenlet.GreenletExit())

    def _finish_detached(self, event: _Worker, method: str) -> None:
        outcome = self._resume(event, None)
        attempts = 0
        while outcome is not RET and attempts < _EXIT_ATTEMPTS:
            log.debug("event #%d: %s after %s has no Step to wait for; ending the handler", event.event_id, outcome[0], method)
            outcome = self._resume_with_error(event, greenlet.GreenletExit())
            attempts += 1
        if outcome is RET:
            self._release(event)

    def _handler_failed(self, event: _Worker) -> None:
        self.handler_errors += 1
        if self._error_log.allow():
            log.exception(
                "%s handler of %s (instance #%d, event #%d) raised; the event ends with 'ret' "
                "(further handler errors are logged at most once a minute)",
                event.phase,
                self.plugin.name,
                event.instance_id,
                event.event_id,
            )

    def expire_events(self, now: float | None = None) -> int:
        """Drop events that have waited ``event_timeout`` seconds for a Step; return how many."""
        deadline = (time.monotonic() if now is None else now) - self.event_timeout
        expired: list[_Worker] = []
        while self._events:
            oldest = next(iter(self._events.values()))
            if oldest.touched > deadline:
                break
            self._events.popitem(last=False)
            expired.append(oldest)

        for event in expired:
            outcome = self._resume_with_error(event, greenlet.GreenletExit())
            attempts = 1
            while outcome is not RET and attempts < _EXIT_ATTEMPTS:
                outcome = self._resume_with_error(event, greenlet.GreenletExit())
                attempts += 1
            # A handler that ignores GreenletExit is left to the garbage collector.
            if outcome is RET:
                self._release(event)
        if expired:
            self.events_expired += len(expired)
            if self._on_abandoned is not None:
                for event in expired:
                    self._on_abandoned(event.phase)
            first = expired[0]
            log.warning(
                "dropped %d event(s) that received no Step for %.0f s; Kong abandons an event when a PDK "
                "method raises a Lua error (first: event #%d, %s phase, waiting for %s)",
                len(expired),
                self.event_timeout,
                first.event_id,
                first.phase,
                first.pending_method,
            )
        if self._error_log.suppressed and self._error_log.allow():
            log.error("%s: %d more handler error(s) since the last one logged", self.plugin.name, self._error_log.take_suppressed())
        return len(expired)


def _first_map(params: Any, method: str) -> dict[Any, Any]:
    if isinstance(params, list) and params and isinstance(params[0], dict):
        return params[0]
    raise RpcFault(f"invalid params for {method}: expected an array holding one map, got {params!r:.200}")


def _module_mtime(plugin_class: type) -> float:
    module = sys.modules.get(plugin_class.__module__)
    path = getattr(module, "__file__", None)
    try:
        return os.stat(path).st_mtime if path else 0.0
    except OSError:
        return 0.0


# ---------------------------------------------------------------------------------
# The transport: one thread, non-blocking sockets, one poll loop


class _Connection:
    __slots__ = ("sock", "unpacker", "pending")

    def __init__(self, sock: socket.socket, unpacker: msgpack.Unpacker) -> None:
        self.sock = sock
        self.unpacker = unpacker
        self.pending = b""


class UnixRpcServer:
    """Serve a Dispatcher on a listening Unix socket until ``stop`` is called.

    Every second the loop drops abandoned events and, when ``exit_with_parent`` is set,
    stops once the process that started it (Kong's nginx worker) has exited.
    """

    def __init__(self, dispatcher: Dispatcher, listener: socket.socket, exit_with_parent: bool = False) -> None:
        self.dispatcher = dispatcher
        self.listener = listener
        self.listener.setblocking(False)
        self.exit_with_parent = exit_with_parent
        self._parent_pid = os.getppid()
        self._connections: dict[int, _Connection] = {}
        self._stopping = False
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._wake_reader.setblocking(False)
        self._wake_writer.setblocking(False)
        self._poller = _Poller()
        self._accepting = True

    @property
    def connections(self) -> int:
        return len(self._connections)

    def stop(self) -> None:
        """Stop the loop once the messages already read have replies. Safe to call from a signal handler."""
        self._stopping = True
        try:
            self._wake_writer.send(b"\0")
        except OSError:
            pass  # the loop is already awake or closed

    def serve_forever(self) -> None:
        poller = self._poller
        listen_fd = self.listener.fileno()
        wake_fd = self._wake_reader.fileno()
        poller.register(listen_fd, _READ)
        poller.register(wake_fd, _READ)
        next_tick = time.monotonic() + _TICK_SECONDS
        try:
            while not self._stopping:
                for fd, mask in poller.poll(_TICK_SECONDS):
                    if fd == listen_fd:
                        self._accept()
                    elif fd == wake_fd:
                        self._drain_wake()
                    else:
                        connection = self._connections.get(fd)
                        if connection is not None:
                            self._serve_connection(fd, connection, mask)
                now = time.monotonic()
                if now >= next_tick:
                    next_tick = now + _TICK_SECONDS
                    self._tick(now)
        finally:
            for fd in list(self._connections):
                self._close(fd)
            poller.close()
            self._wake_reader.close()
            self._wake_writer.close()

    def _tick(self, now: float) -> None:
        self.dispatcher.expire_events(now)
        if not self._accepting:
            self._poller.register(self.listener.fileno(), _READ)
            self._accepting = True
        if self.exit_with_parent and os.getppid() != self._parent_pid:
            log.warning("parent process %d exited, stopping", self._parent_pid)
            self._stopping = True

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # The waiting connection keeps the listener readable, so stop polling it
                    # until the next tick instead of spinning.
                    log.error("cannot accept a Kong connection: %s; retrying in %.0f s", exc, _TICK_SECONDS)
                    self._poller.unregister(self.listener.fileno())
                    self._accepting = False
                    return
                log.warning("accepting a Kong connection failed: %s", exc)
                return
            sock.setblocking(False)
            if not self._connections:
                self.dispatcher.keep_idle_greenlets(True)
            self._connections[sock.fileno()] = _Connection(sock, self.dispatcher.new_unpacker())
            self._poller.register(sock.fileno(), _READ)

    def _drain_wake(self) -> None:
        try:
            while self._wake_reader.recv(64):
                pass
        except BlockingIOError:
            pass

    def _serve_connection(self, fd: int, connection: _Connection, mask: int) -> None:
        if mask & _WRITE and connection.pending and not self._flush(fd, connection):
            return
        if not mask & _READ_OR_HANGUP:
            return
        try:
            data = connection.sock.recv(_RECV_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            log.debug("Kong connection %d failed: %s", fd, exc)
            self._close(fd)
            return
        if not data:
            self._close(fd)
            return

        unpacker = connection.unpacker
        dispatcher = self.dispatcher
        try:
            unpacker.feed(data)
            for message in unpacker:
                reply = dispatcher.handle_message(message)
                if reply is not None and not self._send(fd, connection, reply):
                    return
        except ProtocolError as exc:
            log.warning("closing a Kong connection: %s", exc)
            self._close(fd)
        except (msgpack.UnpackException, ValueError) as exc:
            # BufferFull (a message above msgpack's 100 MiB default) and malformed data
            # both land here; the connection cannot be resynchronised.
            log.error("closing a Kong connection: undecodable MessagePack data: %s", exc)
            self._close(fd)

    def _send(self, fd: int, connection: _Connection, data: bytes) -> bool:
        if connection.pending:
            connection.pending += data
            return True
        try:
            sent = connection.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            log.debug("Kong connection %d failed: %s", fd, exc)
            self._close(fd)
            return False
        if sent < len(data):
            connection.pending = data[sent:]
            self._poller.modify(fd, _READ | _WRITE)
        return True

    def _flush(self, fd: int, connection: _Connection) -> bool:
        try:
            sent = connection.sock.send(connection.pending)
        except BlockingIOError:
            return True
        except OSError as exc:
            log.debug("Kong connection %d failed: %s", fd, exc)
            self._close(fd)
            return False
        connection.pending = connection.pending[sent:]
        if not connection.pending:
            self._poller.modify(fd, _READ)
        return True

    def _close(self, fd: int) -> None:
        connection = self._connections.pop(fd, None)
        if connection is None:
            return
        try:
            self._poller.unregister(fd)
        except (OSError, KeyError):
            pass
        if not self._connections:
            self.dispatcher.keep_idle_greenlets(False)
        connection.sock.close()


if hasattr(select, "epoll"):
    _READ, _WRITE = select.EPOLLIN, select.EPOLLOUT
    _READ_OR_HANGUP = select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR

    class _Poller:
        def __init__(self) -> None:
            self._epoll = select.epoll()
            self.register = self._epoll.register
            self.modify = self._epoll.modify
            self.unregister = self._epoll.unregister
            self.close = self._epoll.close

        def poll(self, timeout: float) -> list[tuple[int, int]]:
            return self._epoll.poll(timeout)

else:  # pragma: no cover - macOS and other systems without epoll
    _READ, _WRITE = select.POLLIN, select.POLLOUT
    _READ_OR_HANGUP = select.POLLIN | select.POLLHUP | select.POLLERR

    class _Poller:  # type: ignore[no-redef]
        def __init__(self) -> None:
            self._poll = select.poll()
            self.register = self._poll.register
            self.modify = self._poll.modify
            self.unregister = self._poll.unregister

        def close(self) -> None:
            pass

        def poll(self, timeout: float) -> list[tuple[int, int]]:
            return self._poll.poll(timeout * 1000)
