"""Kong's side of the external-plugin protocol, for running the plugin server without Kong.

The replay command and the tests drive the real ``kong-ai-metrics`` process with this
emulator. It behaves as Kong 3.10 does (``kong/runloop/plugin_servers/``), including the
parts that hurt a careless plugin:

- one MessagePack request per connection use, from a pool of idle connections, so the
  Steps of one event may travel on different connections;
- typed Step names, the multimap, raw-body (bin) and serialize (JSON string) fix-ups,
  no ``Data`` key for a nil result, never a StepError;
- a Lua error inside a PDK method abandons the event: no Step is sent, access returns
  500 to the client, and a log event is dropped;
- the log phase runs later from a snapshot, where request-scoped calls fail and the
  upstream body can be read only when buffering really happened;
- ``no plugin instance`` from HandleEvent resets the cached instance and retries;
- a failure to start an instance is a Lua error (``get_instance_id`` rethrows it).

A ``KongWorker`` may be shared by several threads, as one Kong worker serves many
requests at once: each thread's exchange is one request's coroutine.
"""

from __future__ import annotations

import collections
import itertools
import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import parse_qsl

import msgpack

from .kong_schema import validate_config

log = logging.getLogger("kong_ai_metrics.emulator")

# Kong's nginx_http_client_body_buffer_size default: larger bodies are spooled to disk.
DEFAULT_CLIENT_BODY_BUFFER_SIZE = 8 * 1024
# ngx_lua's default cosocket read timeout, which Kong does not override.
DEFAULT_READ_TIMEOUT = 60.0

_MULTIMAP_METHODS = {
    "kong.request.get_query",
    "kong.request.get_headers",
    "kong.response.get_headers",
    "kong.service.response.get_headers",
}
_RAW_BODY_METHODS = {
    "kong.request.get_raw_body",
    "kong.response.get_raw_body",
    "kong.service.response.get_raw_body",
}
_STEP_METHODS = {
    "kong.client.get_credential": "plugin.StepCredential",
    "kong.client.authenticate": "plugin.StepCredential",
    "kong.client.get_consumer": "plugin.StepConsumer",
    "kong.client.load_consumer": "plugin.StepConsumer",
    "kong.node.get_memory_stats": "plugin.StepMemoryStats",
    "kong.router.get_route": "plugin.StepRoute",
    "kong.router.get_service": "plugin.StepService",
    **{name: "plugin.StepMultiMap" for name in _MULTIMAP_METHODS},
}
_TERMINAL_METHODS = {"kong.response.exit", "kong.response.error"}
_LOG_LEVELS = ("alert", "crit", "err", "warn", "notice", "info", "debug")


class LuaError(Exception):
    """A Lua error that Kong would raise inside a PDK method."""


class RpcError(Exception):
    """A failure of the RPC itself (connect, read timeout, protocol)."""


class RpcErrorReply(Exception):
    """Error string that the plugin server returned for a request."""


class InstanceStartError(Exception):
    """StartInstance failed; Kong's ``get_instance_id`` turns that into a Lua error."""


# ---------------------------------------------------------------------------------
# Encoding as Kong's lua-MessagePack does it


def lua_value(value: Any) -> Any:
    """Convert a Python value to what Kong's encoder would send for the equivalent Lua value.

    Lua has one table type: an empty table goes out as an empty array, and integral
    floats within 2^53 go out as integers.
    """
    if isinstance(value, dict):
        if not value:
            return []
        return {k: lua_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [lua_value(v) for v in value]
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


class _EmptyMap(dict):  # type: ignore[type-arg]
    """A table that Kong explicitly encodes as a map even when empty (the multimap fix-up)."""


def _pack(value: Any) -> bytes:
    # A Lua string is bytes: one that is not valid UTF-8 (a raw header byte) is held here
    # as a str with surrogate escapes and goes out as msgpack str with those raw bytes.
    packed: bytes = msgpack.packb(_prepare(value), use_bin_type=True, unicode_errors="surrogateescape")
    return packed


def _prepare(value: Any) -> Any:
    if isinstance(value, _EmptyMap):
        return {k: _prepare(v) for k, v in value.items()}
    if isinstance(value, dict):
        return {k: _prepare(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_prepare(v) for v in value]
    return value


# ---------------------------------------------------------------------------------
# The RPC client: Kong's mp_rpc.lua


class RpcClient:
    """Kong's MessagePack RPC client for one plugin in one worker."""

    def __init__(self, socket_path: str, read_timeout: float = DEFAULT_READ_TIMEOUT, connections: int = 1) -> None:
        self.socket_path = socket_path
        self.read_timeout = read_timeout
        # With several connections, consecutive calls take the longest-idle one, so the
        # Steps of one event travel on different connections, as they can in Kong.
        self.connections = connections
        self._msgid = itertools.count(1)
        self._idle: collections.deque[socket.socket] = collections.deque()
        self._open = 0
        self._lock = threading.Lock()
        self.calls = 0

    def call(self, method: str, params: list[Any]) -> Any:
        """Send one request and return its result; raise RpcErrorReply or RpcError."""
        with self._lock:
            self.calls += 1
            msgid = next(self._msgid)
        try:
            conn = self._connect()
        except OSError as exc:
            # A missing socket or a refused connection fails the call like any RPC error.
            raise RpcError(f"{method}: cannot connect to {self.socket_path}: {exc}") from exc
        try:
            conn.sendall(_pack([0, msgid, method, params]))
            error, result = self._read_response(conn, msgid)
        except (OSError, RpcError) as exc:
            conn.close()
            with self._lock:
                self._open -= 1
            raise RpcError(f"{method}: {exc}") from exc
        with self._lock:
            self._idle.append(conn)
        if error is not None:
            raise RpcErrorReply(str(error))
        return result

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, collections.deque()
            self._open -= len(idle)
        for conn in idle:
            conn.close()

    def _connect(self) -> socket.socket:
        with self._lock:
            if self._idle and self._open >= self.connections:
                return self._idle.popleft()
            self._open += 1
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.settimeout(self.read_timeout)
        try:
            conn.connect(self.socket_path)
        except OSError:
            conn.close()
            with self._lock:
                self._open -= 1
            raise
        return conn

    def _read_response(self, conn: socket.socket, msgid: int) -> tuple[Any, Any]:
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
        while True:
            try:
                chunk = conn.recv(4096)
            except socket.timeout as exc:
                raise RpcError("no data (read timed out)") from exc
            if not chunk:
                raise RpcError("no data (connection closed)")
            unpacker.feed(chunk)
            for message in unpacker:
                if not isinstance(message, list) or not message:
                    raise RpcError(f"malformed message {message!r}")
                if message[0] == 2:
                    continue  # notification; Kong handles these first and reads on
                if message[0] != 1 or message[1] != msgid:
                    raise RpcError(f"unexpected reply {message[:2]!r} to request #{msgid}")
                return message[2], message[3]


# ---------------------------------------------------------------------------------
# Request state and the PDK


@dataclass
class UpstreamResponse:
    status: int
    headers: dict[str, str]
    body: bytes
    # Milliseconds from the balancer to the first byte (or the whole body when buffered).
    latency_ms: int = 120


@dataclass
class KongRequest:
    """One client request as Kong receives it, with the Service it is routed to."""

    method: str
    path: str
    query: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    client_host: str = "kong.example.test"
    service_host: str = "api.openai.com"
    service_port: int = 443
    service_protocol: str = "https"
    service_path: str | None = None
    strip_path: str | None = None
    # Entity ids; by default derived from the Service host and the route path.
    service_id: str | None = None
    route_id: str | None = None
    workspace_name: str = "default"
    client_body_buffer_size: int = DEFAULT_CLIENT_BODY_BUFFER_SIZE
    # Kong >= 3.8 reads a spooled body when get_raw_body is called with 0.
    kong_version: tuple[int, int] = (3, 10)
    # Kong's own AI statistics (ai-proxy with logging.log_statistics), if any.
    ai_statistics: dict[str, Any] | None = None
    upgrade: bool = False
    # Status of a kong.response.exit made in access by a plugin that runs before this one
    # (higher priority, e.g. rate limiting): this plugin's access never runs, its log does.
    exit_before: int | None = None
    # PDK methods that raise a Lua error in this request, for failures the emulator does not
    # model itself (a ctx value Kong cannot encode, a bad argument, a broken Kong plugin).
    lua_error_methods: frozenset[str] = frozenset()

    @property
    def upstream_uri(self) -> str:
        path = self.path
        if self.strip_path and path.startswith(self.strip_path):
            path = path[len(self.strip_path) :] or "/"
        if self.service_path:
            path = self.service_path.rstrip("/") + ("" if path == "/" else path)
        return path + (f"?{self.query}" if self.query else "")


@dataclass
class PhaseOutcome:
    """Outcome of one event: finished, abandoned on a Lua error, exited, or skipped."""

    phase: str
    status: str
    round_trips: int = 0
    methods: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass
class ExchangeOutcome:
    access: PhaseOutcome
    log: PhaseOutcome
    client_status: int
    buffered: bool
    # What kong.log.serialize() returned in the log timer, before the plugin's changes.
    serialized: dict[str, Any] = field(default_factory=dict)


class _RequestContext:
    """Per-request state: ngx.ctx, serialize overrides, shared ctx."""

    def __init__(self, request: KongRequest) -> None:
        self.request = request
        self.ngx_ctx: dict[str, Any] = {"KONG_PHASE": "access"}
        self.shared: dict[str, Any] = {}
        self.serialize_values: dict[str, Any] = {}
        self.exit: tuple[int, Any] | None = None
        self.started_at = time.time()


class _AccessPdk:
    """The PDK calls an access handler may make, with Kong's phase rules."""

    def __init__(self, ctx: _RequestContext, plugin_id: str) -> None:
        self.ctx = ctx
        self.plugin_id = plugin_id
        r = ctx.request
        self.methods: dict[str, Callable[..., Any]] = {
            "kong.request.get_raw_body": self.get_raw_body,
            "kong.request.get_method": lambda: r.method,
            "kong.request.get_path": lambda: r.path,
            "kong.request.get_raw_query": lambda: r.query,
            "kong.request.get_host": lambda: r.client_host,
            "kong.request.get_header": lambda name: _header(r.headers, name),
            "kong.request.get_headers": lambda *_: _multimap(r.headers),
            "kong.request.get_query": lambda *_: _multimap(dict(parse_qsl(r.query))),
            "kong.request.get_start_time": lambda: int(ctx.started_at * 1000),
            "kong.nginx.get_var": self.get_var,
            "kong.nginx.get_ctx": lambda key: ctx.ngx_ctx.get(key),
            "kong.nginx.set_ctx": lambda key, value=None: ctx.ngx_ctx.__setitem__(key, value),
            "kong.ctx.shared.get": lambda key: ctx.shared.get(key),
            "kong.ctx.shared.set": lambda key, value=None: ctx.shared.__setitem__(key, value),
            "kong.log.set_serialize_value": self.set_serialize_value,
            "kong.service.request.enable_buffering": self.enable_buffering,
            "kong.router.get_service": lambda: _service_entity(r),
            "kong.router.get_route": lambda: _route_entity(r),
            "kong.plugin.get_id": lambda: plugin_id,
            "kong.response.exit": self.exit,
            "kong.response.error": lambda status, message=None, headers=None: self.exit(status, message),
        }
        for level in _LOG_LEVELS:
            self.methods[f"kong.log.{level}"] = _log_call(level)
        for name in ("get_status", "get_header", "get_headers", "get_source"):
            self.methods[f"kong.response.{name}"] = _lua_error(f"function cannot be called in access phase (kong.response.{name})")
        self.methods["kong.log.serialize"] = _lua_error("function cannot be called in access phase (kong.log.serialize)")

    def get_raw_body(self, max_allowed_file_size: int | None = None) -> bytes | None:
        request = self.ctx.request
        spooled = len(request.body) > request.client_body_buffer_size
        if not spooled:
            return request.body
        if max_allowed_file_size == 0 and request.kong_version >= (3, 8):
            return request.body
        if max_allowed_file_size and request.kong_version >= (3, 8) and len(request.body) <= max_allowed_file_size:
            return request.body
        # get_raw_body returns nil, err; the bin fix-up then takes the length of nil.
        raise LuaError("attempt to get length of local 'body' (a nil value)")

    def get_var(self, name: str) -> Any:
        request = self.ctx.request
        values = {
            "upstream_uri": request.upstream_uri,
            "request_uri": request.path + (f"?{request.query}" if request.query else ""),
            "uri": request.path,
            "host": request.client_host,
            "request_method": request.method,
            "upstream_host": request.service_host,
        }
        return values.get(name)

    def set_serialize_value(self, key: str, value: Any = None) -> bool:
        self.ctx.serialize_values[key] = value
        return True

    def enable_buffering(self) -> None:
        self.ctx.ngx_ctx["buffered_proxying"] = True

    def exit(self, status: int, body: Any = None, headers: Any = None) -> None:
        self.ctx.exit = (int(status), body)


class _LogTimerPdk:
    """The PDK calls a log handler may make from Kong's zero-delay timer.

    Everything comes from the snapshot taken in the log phase; calls that need the
    live request (``ngx.var``, ``ngx.req``) raise a Lua error, as in Kong.
    """

    def __init__(self, snapshot: dict[str, Any], plugin_id: str) -> None:
        ctx = snapshot["ngx_ctx"]
        self.snapshot = snapshot
        self.methods: dict[str, Callable[..., Any]] = {
            "kong.log.serialize": lambda: snapshot["serialize_json"],
            "kong.request.get_header": lambda name: _header(snapshot["request_headers"], name),
            "kong.request.get_headers": lambda *_: _multimap(snapshot["request_headers"]),
            "kong.response.get_status": lambda: snapshot["response_status"],
            "kong.response.get_header": lambda name: _header(snapshot["response_headers"], name),
            "kong.response.get_headers": lambda *_: _multimap(snapshot["response_headers"]),
            "kong.response.get_source": lambda: snapshot["source"],
            "kong.nginx.get_ctx": lambda key: ctx.get(key),
            "kong.nginx.set_ctx": lambda key, value=None: ctx.__setitem__(key, value),
            "kong.ctx.shared.get": lambda key: snapshot["shared"].get(key),
            "kong.ctx.shared.set": lambda key, value=None: snapshot["shared"].__setitem__(key, value),
            "kong.nginx.req_start_time": lambda: snapshot["req_start_time"],
            "kong.router.get_service": lambda: snapshot["service"],
            "kong.router.get_route": lambda: snapshot["route"],
            "kong.plugin.get_id": lambda: plugin_id,
            "kong.service.response.get_raw_body": self.buffered("buffered_body", lambda v: v or b""),
            "kong.service.response.get_status": self.buffered("buffered_status", lambda v: v),
            "kong.service.response.get_header": lambda name: self.buffered(
                "buffered_headers", lambda headers: _header(headers or {}, name)
            )(),
            # Kong returns a proxy table that the multimap fix-up finds empty.
            "kong.service.response.get_headers": self.buffered("buffered_headers", lambda _: _EmptyMap()),
            "kong.request.get_raw_body": _lua_error("function cannot be called in log phase (kong.request.get_raw_body)"),
            "kong.request.get_body": _lua_error("function cannot be called in log phase (kong.request.get_body)"),
            "kong.response.get_raw_body": _lua_error("function cannot be called in log phase (kong.response.get_raw_body)"),
        }
        for level in _LOG_LEVELS:
            self.methods[f"kong.log.{level}"] = _log_call(level)
        for name in ("get_method", "get_path", "get_query", "get_raw_query", "get_host", "get_scheme", "get_port"):
            self.methods[f"kong.request.{name}"] = _lua_error("API disabled in the current context")
        for name in ("kong.nginx.get_var", "kong.client.get_ip", "kong.client.get_port"):
            self.methods[name] = _lua_error("API disabled in the current context")
        for name in ("kong.response.exit", "kong.response.error", "kong.response.set_header", "kong.response.set_status"):
            self.methods[name] = _lua_error(f"function cannot be called in log phase ({name})")
        self.methods["kong.service.request.enable_buffering"] = _lua_error("function cannot be called in log phase")
        self.methods["kong.log.set_serialize_value"] = lambda *_: True

    def buffered(self, key: str, convert: Callable[[Any], Any]) -> Callable[..., Any]:
        def call(*_: Any) -> Any:
            if not self.snapshot["ngx_ctx"].get("buffered_proxying"):
                raise LuaError("service response is not buffered: the call reaches ngx.var/ngx.resp in a timer")
            return convert(self.snapshot["ngx_ctx"].get(key))

        return call


def _lua_error(message: str) -> Callable[..., Any]:
    def call(*_: Any) -> Any:
        raise LuaError(message)

    return call


def _log_call(level: str) -> Callable[..., Any]:
    def call(*args: Any) -> bool:
        log.debug("[kong.log.%s] %s", level, " ".join(str(a) for a in args))
        return True

    return call


def _header(headers: dict[str, str], name: str) -> str | None:
    wanted = name.lower().replace("_", "-")
    for key, value in headers.items():
        if key.lower() == wanted:
            return value
    return None


def _multimap(headers: dict[str, str]) -> dict[str, list[str]]:
    result = _EmptyMap()
    for key, value in headers.items():
        result.setdefault(key.lower(), []).append(value)
    return result


def _service_entity(request: KongRequest) -> dict[str, Any]:
    return {
        "id": request.service_id or str(uuid.uuid5(uuid.NAMESPACE_DNS, request.service_host)),
        "name": request.service_host.replace(".", "-"),
        "host": request.service_host,
        "port": request.service_port,
        "protocol": request.service_protocol,
        "path": request.service_path,
    }


def _route_entity(request: KongRequest) -> dict[str, Any]:
    return {
        "id": request.route_id or str(uuid.uuid5(uuid.NAMESPACE_URL, request.strip_path or request.path)),
        "paths": [request.strip_path or request.path],
        "strip_path": bool(request.strip_path),
    }


def serialize_json(value: dict[str, Any]) -> str:
    """Encode the serialized log as Kong's cjson does: compact, with ``/`` escaped."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).replace("/", "\\/")


def _serialize(ctx: _RequestContext, status: int, response_headers: dict[str, str], source: str, upstream: UpstreamResponse | None) -> dict[str, Any]:
    r = ctx.request
    headers = {k.lower(): ("REDACTED" if k.lower() in ("authorization", "proxy-authorization") else v) for k, v in r.headers.items()}
    buffered = bool(ctx.ngx_ctx.get("buffered_proxying"))
    if upstream is None:
        upstream_status: Any = ""
    elif buffered:
        upstream_status = upstream.status
    else:
        upstream_status = str(upstream.status)
    data: dict[str, Any] = {
        "request": {
            "id": ctx.ngx_ctx.get("request_id", ""),
            "uri": r.path + (f"?{r.query}" if r.query else ""),
            "url": f"https://{r.client_host}:443{r.path}" + (f"?{r.query}" if r.query else ""),
            "querystring": dict(parse_qsl(r.query)),
            "method": r.method,
            "headers": headers,
            "size": len(r.body) + 200,
        },
        "upstream_uri": r.upstream_uri,
        "upstream_status": upstream_status,
        "response": {"status": status, "headers": {k.lower(): v for k, v in response_headers.items()}, "size": 0},
        "latencies": {
            "kong": 2,
            "proxy": upstream.latency_ms if upstream is not None else -1,
            "request": (upstream.latency_ms if upstream is not None else 0) + 3,
            "receive": 0,
        },
        "tries": [{"ip": "192.0.2.10", "port": r.service_port, "balancer_start": int(ctx.started_at * 1000), "balancer_latency": 0}]
        if upstream is not None
        else [],
        "route": _route_entity(r),
        "service": _service_entity(r),
        "client_ip": "127.0.0.1",
        "started_at": int(ctx.started_at * 1000),
        "source": source,
        "workspace": "0dc6f45b-8f8d-40d2-a504-473544ee190b",
        "workspace_name": r.workspace_name,
    }
    if r.ai_statistics is not None:
        data["ai"] = r.ai_statistics
    for key, value in ctx.serialize_values.items():
        _set_path(data, key, value)
    return data


def _set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    target = data
    for part in parts[:-1]:
        target = target.setdefault(part, {})
    target[parts[-1]] = value


# ---------------------------------------------------------------------------------
# The worker: instances, the event loop, the exchange


class KongWorker:
    """One Kong worker with one ``ai-metrics`` plugin entity configured.

    The entity is global unless ``route_id``, ``service_id`` or ``consumer_id`` scopes
    it. Kong then runs it only for requests that match, so the caller sends only those.
    """

    def __init__(
        self,
        socket_path: str,
        plugin_info: dict[str, Any],
        config: dict[str, Any] | None,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
        connections: int = 1,
        route_id: str | None = None,
        service_id: str | None = None,
        consumer_id: str | None = None,
    ) -> None:
        self.rpc = RpcClient(socket_path, read_timeout, connections)
        self.info = plugin_info
        self.plugin_id = str(uuid.uuid4())
        self.config = validate_config(plugin_info["Schema"]["fields"][0]["config"]["fields"], config)
        self.scope = {"route_id": route_id, "service_id": service_id, "consumer_id": consumer_id}
        self.seq = 1
        self.instance_id: int | None = None
        # The __seq__ that instance_id was started with; a newer seq restarts the instance.
        self._instance_seq = 0
        self.errors: list[str] = []
        # How often HandleEvent returned the `no plugin instance` error and the instance was reset.
        self.instance_resets = 0
        # Concurrent first requests of a Kong worker wait for one StartInstance.
        self._instance_lock = threading.Lock()

    def close(self) -> None:
        self.rpc.close()

    def reconfigure(self, config: dict[str, Any] | None) -> None:
        """Apply a new config: a new ``__seq__``, so the next event restarts the instance."""
        self.config = validate_config(self.info["Schema"]["fields"][0]["config"]["fields"], config)
        self.seq += 1

    def _config_json(self) -> str:
        # As get_plugin_config in kong/runloop/plugins_iterator.lua: unset scope ids are
        # Lua nil, so cjson leaves them out. __key__ is the DAO cache key
        # name:route:service:consumer:(unused):workspace.
        conf = dict(self.config)
        conf.update({name: value for name, value in self.scope.items() if value})
        ws_id = "0dc6f45b-8f8d-40d2-a504-473544ee190b"
        key_parts = (self.info["Name"], self.scope["route_id"], self.scope["service_id"], self.scope["consumer_id"], None, ws_id)
        conf.update(
            {
                "__plugin_id": self.plugin_id,
                "__ws_id": ws_id,
                "__key__": "plugins:" + ":".join(part or "" for part in key_parts),
                "__seq__": self.seq,
            }
        )
        return json.dumps(conf)

    def _instance(self) -> int:
        with self._instance_lock:
            if self.instance_id is not None and self._instance_seq == self.seq:
                return self.instance_id
            try:
                return self._start_instance()
            except (RpcError, RpcErrorReply) as exc:
                raise InstanceStartError(f"StartInstance: {exc}") from exc

    def _start_instance(self) -> int:
        old = self.instance_id
        result = self.rpc.call("plugin.StartInstance", [{"Name": self.info["Name"], "Config": self._config_json()}])
        self.instance_id = int(result["Id"])
        self._instance_seq = self.seq
        if old is not None:
            try:
                self.rpc.call("plugin.CloseInstance", [old])
            except (RpcError, RpcErrorReply):
                pass  # Kong ignores errors here too
        return self.instance_id

    def run_event(self, phase: str, methods: dict[str, Callable[..., Any]]) -> PhaseOutcome:
        """Run one event as Kong's bridge loop does and report how it ended."""
        outcome = PhaseOutcome(phase, "ok")
        try:
            reply = self._handle_event(phase, outcome)
        except InstanceStartError as exc:
            return self._failed(outcome, "lua_error", str(exc))
        except RpcErrorReply as exc:
            return self._failed(outcome, "skipped", f"HandleEvent: {exc}")
        except RpcError as exc:
            return self._failed(outcome, "skipped", str(exc))

        while True:
            data = reply.get("Data") if isinstance(reply, dict) else None
            if data == "ret":
                return outcome
            if not isinstance(data, dict) or "Method" not in data:
                return self._failed(outcome, "skipped", f"unexpected event data {data!r}")
            method = data["Method"]
            args = data.get("Args") or []
            if not isinstance(args, list):
                args = [args]
            outcome.methods.append(method)
            if method in _TERMINAL_METHODS and method in methods:
                methods[method](*args)
                outcome.status = "exit"
                return outcome
            try:
                value = self._call_pdk(methods, method, args)
            except LuaError as exc:
                return self._failed(outcome, "lua_error", f"{method}: {exc}")
            step = {"EventId": reply["EventId"]}
            if value is not None:
                step["Data"] = value
            try:
                outcome.round_trips += 1
                reply = self.rpc.call(_STEP_METHODS.get(method, "plugin.Step"), [step])
            except (RpcError, RpcErrorReply) as exc:
                return self._failed(outcome, "skipped", f"Step after {method}: {exc}")

    def _handle_event(self, phase: str, outcome: PhaseOutcome) -> Any:
        while True:
            instance_id = self._instance()
            try:
                outcome.round_trips += 1
                return self.rpc.call("plugin.HandleEvent", [{"InstanceId": instance_id, "EventName": phase}])
            except RpcErrorReply as exc:
                if "no plugin instance" not in str(exc).lower():
                    raise
                log.warning("plugin server lost instance %s; starting a new one", instance_id)
                with self._instance_lock:
                    self.instance_resets += 1
                    if self.instance_id == instance_id:
                        self.instance_id = None

    def _call_pdk(self, methods: dict[str, Callable[..., Any]], method: str, args: list[Any]) -> Any:
        handler = methods.get(method)
        if handler is None:
            log.warning("could not find pdk method: %s", method)
            return None
        try:
            value = handler(*args)
        except TypeError as exc:
            raise LuaError(f"bad argument to {method}: {exc}") from exc
        return _fix_up(method, value)

    def _failed(self, outcome: PhaseOutcome, status: str, error: str) -> PhaseOutcome:
        outcome.status = status
        outcome.error = error
        self.errors.append(f"{outcome.phase}: {error}")
        log.warning("%s event %s: %s", outcome.phase, status, error)
        return outcome

    def exchange(self, request: KongRequest, upstream: UpstreamResponse) -> ExchangeOutcome:
        """Run one request through access, the proxy and the log timer."""
        # Kong runs a scoped plugin only on its own route or Service, so the logged
        # entities carry the scope's ids unless the request names its own.
        request = replace(
            request,
            route_id=request.route_id or self.scope["route_id"],
            service_id=request.service_id or self.scope["service_id"],
        )
        ctx = _RequestContext(request)
        if request.exit_before is not None:
            # The earlier plugin's exit ends the access phase before this plugin's turn.
            ctx.exit = (request.exit_before, None)
            access = PhaseOutcome("access", "not_run")
        else:
            access = self.run_event("access", _fail_methods(_AccessPdk(ctx, self.plugin_id).methods, request))

        proxied = access.status in ("ok", "skipped") and ctx.exit is None
        if access.status == "lua_error":
            status, headers, source, upstream_seen = 500, {"content-type": "application/json"}, "kong", None
        elif ctx.exit is not None:
            status, headers, source, upstream_seen = ctx.exit[0], {}, "kong", None
        else:
            status, headers, source, upstream_seen = upstream.status, dict(upstream.headers), "upstream", upstream

        if not proxied or request.upgrade:
            # Early exits, error handlers and upgrades switch buffering off again.
            ctx.ngx_ctx.pop("buffered_proxying", None)
        buffered = bool(ctx.ngx_ctx.get("buffered_proxying"))
        if buffered:
            ctx.ngx_ctx["buffered_status"] = upstream.status
            ctx.ngx_ctx["buffered_headers"] = dict(upstream.headers)
            ctx.ngx_ctx["buffered_body"] = upstream.body

        ctx.ngx_ctx["KONG_PHASE"] = "log"
        serialized = _serialize(ctx, status, headers, source, upstream_seen)
        snapshot = {
            "serialize_json": serialize_json(serialized),
            "ngx_ctx": dict(ctx.ngx_ctx),
            "shared": ctx.shared,
            "request_headers": {k.lower(): v for k, v in request.headers.items()},
            "response_headers": {k.lower(): v for k, v in headers.items()},
            "response_status": status,
            "source": "exit" if source == "kong" else "service",
            "req_start_time": ctx.started_at,
            "service": _service_entity(request),
            "route": _route_entity(request),
        }
        log_outcome = self.run_event("log", _fail_methods(_LogTimerPdk(snapshot, self.plugin_id).methods, request))
        return ExchangeOutcome(access=access, log=log_outcome, client_status=status, buffered=buffered, serialized=serialized)


def _fail_methods(methods: dict[str, Callable[..., Any]], request: KongRequest) -> dict[str, Callable[..., Any]]:
    for name in request.lua_error_methods:
        methods[name] = _lua_error(f"{name} raised a Lua error in this request")
    return methods


def _fix_up(method: str, value: Any) -> Any:
    if method in _RAW_BODY_METHODS:
        if value is None:
            raise LuaError("attempt to get length of a nil value (raw body)")
        return bytes(value)
    if method in _MULTIMAP_METHODS:
        result = _EmptyMap()
        for key, item in (value or {}).items():
            if item is True:
                result[key] = []
            elif isinstance(item, str):
                result[key] = [item]
            else:
                result[key] = list(item)
        return result
    if method == "kong.log.serialize":
        return value  # already the JSON string
    if isinstance(value, (bytes, bytearray)):
        # Kong sends Lua strings as msgpack str; bytes here would be a bug in the emulator.
        return bytes(value).decode("utf-8", errors="replace")
    return lua_value(value)


def query_plugin_info(dump_output: str) -> dict[str, Any]:
    """Parse the query command's stdout as Kong does and return the plugin info it uses.

    Raises ValueError with Kong's reason when Kong would refuse it.
    """
    decoded = json.loads(dump_output)
    if isinstance(decoded, dict):
        plugins = decoded.get("Plugins")
    else:
        plugins = decoded
    if not isinstance(plugins, list) or not plugins:
        raise ValueError("query output contains no plugin info: expected a JSON array of plugin infos")
    info = plugins[0]
    if not isinstance(info, dict):
        raise ValueError("query output contains no plugin info: expected a JSON object for the plugin")
    priority = info.get("Priority")
    if not isinstance(priority, int) or isinstance(priority, bool):
        raise ValueError(f"Priority must be an integer, got {priority!r}")
    version = info.get("Version")
    parts = version.split(".") if isinstance(version, str) else []
    if not 2 <= len(parts) <= 3 or not all(p.isdigit() for p in parts):
        raise ValueError(f"Version must be a string like x.y.z, got {version!r}")
    return info
