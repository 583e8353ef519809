"""A lean load generator that drives a plugin server over its socket the way Kong does.

Each simulated Kong connection runs exchanges back to back: HandleEvent for ``access``,
a Step for every PDK call the handler makes, then the same for ``log``. PDK results are
the values Kong 3.10 returns. ``kong_ai_metrics.kong_emulator`` is the full emulator;
this one keeps only the calls of the ai-metrics plugin, with precomputed results, so
that the client costs far less CPU than the server it measures. All connections share
one thread and one epoll loop.

A call this module does not know fails the run: a benchmark must never hide a change
in what the plugin asks Kong for.
"""

from __future__ import annotations

import heapq
import itertools
import os
import select
import socket
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

import msgpack
import orjson

from kong_ai_metrics.kong_emulator import serialize_json

# Kong's typed Step names (kong/runloop/plugin_servers/plugin.lua, get_step_method).
_STEP_METHODS = {
    "kong.client.get_credential": "plugin.StepCredential",
    "kong.client.get_consumer": "plugin.StepConsumer",
    "kong.router.get_route": "plugin.StepRoute",
    "kong.router.get_service": "plugin.StepService",
    "kong.request.get_headers": "plugin.StepMultiMap",
    "kong.response.get_headers": "plugin.StepMultiMap",
    "kong.service.response.get_headers": "plugin.StepMultiMap",
}
_TERMINAL = {"kong.response.exit", "kong.response.error"}
# Yielded instead of a request while a paced connection waits for its next start.
_WAIT = "wait"
_LOG_LEVELS = {f"kong.log.{level}" for level in ("alert", "crit", "err", "warn", "notice", "info", "debug")}


class LoadError(Exception):
    """The server replied with something Kong would treat as a failure."""


# The id of the one route every exchange of the load goes through.
ROUTE_ID = "3f2c1a9e-0b7d-4c5e-8f6a-2d1b9c8e7f60"


@dataclass(frozen=True)
class Scenario:
    """One kind of exchange: the request Kong proxies and the upstream's response."""

    name: str
    upstream_uri: str
    request_body: bytes
    response_status: int
    response_headers: dict[str, str]
    response_body: bytes
    service_host: str = "api.openai.com"
    # When set, exchange number i sends request_bodies[i % len] instead of request_body.
    request_bodies: tuple[bytes, ...] = ()

    def serialized_log(self, buffered: bool) -> dict[str, Any]:
        """Return the table ``kong.log.serialize()`` gives for this exchange (Kong 3.10 field set)."""
        started = int(time.time() * 1000)
        return {
            "request": {
                "id": "8e2b5e0c4a6f1b3d9c7e5a1f",
                "uri": self.upstream_uri,
                "url": f"https://gateway.example.test:443{self.upstream_uri}",
                "querystring": {},
                "method": "POST",
                "headers": {
                    "host": "gateway.example.test",
                    "content-type": "application/json",
                    "content-length": str(len(self.request_body)),
                    "authorization": "REDACTED",
                    "user-agent": "OpenAI/Python 1.54.4",
                    "accept": "application/json",
                    "x-stainless-lang": "python",
                    "x-stainless-package-version": "1.54.4",
                    "x-stainless-runtime": "CPython",
                },
                "size": len(self.request_body) + 420,
            },
            "upstream_uri": self.upstream_uri,
            "upstream_status": self.response_status if buffered else str(self.response_status),
            "response": {
                "status": self.response_status,
                "headers": {**self.response_headers, "x-kong-upstream-latency": "812", "x-kong-proxy-latency": "1", "via": "1.1 kong/3.10.0"},
                "size": len(self.response_body) + 380,
            },
            "latencies": {"kong": 1, "proxy": 812, "request": 815, "receive": 2},
            "tries": [{"ip": "192.0.2.10", "port": 443, "balancer_start": started, "balancer_latency": 0, "balancer_start_ns": started * 1_000_000, "balancer_latency_ns": 12_000}],
            "route": {"id": ROUTE_ID, "name": "llm-chat", "paths": ["/v1"], "protocols": ["https"], "strip_path": False, "preserve_host": False},
            "service": {"id": "6b1e8d2c-4f3a-4e9b-a7c5-1d2e3f4a5b6c", "name": "openai", "host": self.service_host, "port": 443, "protocol": "https", "path": None},
            "client_ip": "10.0.4.17",
            "started_at": started,
            "source": "upstream",
            "workspace": "0dc6f45b-8f8d-40d2-a504-473544ee190b",
            "workspace_name": "default",
        }


@dataclass
class LoadResult:
    connections: int
    exchanges: int
    seconds: float
    access_latencies_ns: list[int]
    access_round_trips: int
    log_round_trips: int
    first_access_round_trips: int
    access_methods: list[str]
    log_methods: list[str]
    client_cpu_seconds: float
    server_cpu_seconds: float

    @property
    def exchanges_per_second(self) -> float:
        return self.exchanges / self.seconds

    def access_percentile_ms(self, fraction: float) -> float:
        ordered = sorted(self.access_latencies_ns)
        index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
        return ordered[index] / 1e6


@dataclass
class _ExchangeTrace:
    access_round_trips: int = 0
    log_round_trips: int = 0
    access_methods: list[str] = field(default_factory=list)
    log_methods: list[str] = field(default_factory=list)


class _KongConnection:
    """One Kong worker with one pooled connection, running exchanges in a loop.

    With ``interval`` set, exchanges start at most once per ``interval`` seconds, so the
    server gets a fixed offered load instead of as much as it can take.
    """

    def __init__(
        self,
        socket_path: str,
        scenario: Scenario,
        instance_id: int,
        msgids: itertools.count[int],
        body_index: itertools.count[int],
        interval: float = 0.0,
    ) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(socket_path)
        self.unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
        self.scenario = scenario
        self.instance_id = instance_id
        self.msgids = msgids
        self.msgid = 0
        self.stopping = False
        self.latencies: list[int] = []
        self.exchanges = 0
        # The first and the latest exchange: the plugin may learn from its first log event.
        self.first_trace: _ExchangeTrace | None = None
        self.trace: _ExchangeTrace | None = None
        self.interval = interval
        self.next_start = 0.0
        # Shared by every connection, so that request_bodies go out once each in turn.
        self.body_index = body_index
        self._serialize_buffered = serialize_json(scenario.serialized_log(buffered=True)).encode()
        self._serialize_streamed = serialize_json(scenario.serialized_log(buffered=False)).encode()
        self._steps = self._run()

    def start(self) -> bool:
        return self._send(next(self._steps))

    def resume(self) -> bool:
        """Start the exchange that waited for its turn; return False once this connection is done."""
        return self._send(self._steps.send(None))

    def on_readable(self) -> bool:
        """Read and answer; return False once this connection has finished or waits for its next turn."""
        data = self.sock.recv(65536)
        if not data:
            raise LoadError("the plugin server closed the connection")
        self.unpacker.feed(data)
        for message in self.unpacker:
            if message[0] != 1 or message[1] != self.msgid:
                raise LoadError(f"unexpected reply {message[:2]!r} to request #{self.msgid}")
            if message[2] is not None:
                raise LoadError(f"the plugin server returned an error: {message[2]}")
            return self._send(self._steps.send(message[3]))
        return True

    @property
    def waiting(self) -> bool:
        return self.msgid == -1

    def _send(self, request: tuple[str, list[Any]] | None) -> bool:
        if request is None:
            return False
        if request[0] == _WAIT:
            self.msgid = -1
            return False
        self.msgid = next(self.msgids)
        self.sock.sendall(msgpack.packb([0, self.msgid, request[0], request[1]], use_bin_type=True))
        return True

    def _run(self) -> Generator[tuple[str, list[Any]] | None, Any, None]:
        scenario = self.scenario
        handle_access = ("plugin.HandleEvent", [{"InstanceId": self.instance_id, "EventName": "access"}])
        handle_log = ("plugin.HandleEvent", [{"InstanceId": self.instance_id, "EventName": "log"}])
        trace = _ExchangeTrace()
        while not self.stopping:
            ctx: dict[str, Any] = {}
            serialize_values: dict[str, Any] = {}
            if self.interval:
                now = time.perf_counter()
                self.next_start = max(self.next_start + self.interval, now)
                if self.next_start > now:
                    yield (_WAIT, [])
                    if self.stopping:
                        break

            started = time.perf_counter_ns()
            reply = yield handle_access
            trace.access_round_trips = 1
            while reply["Data"] != "ret":
                call = reply["Data"]
                method = call["Method"]
                trace.access_methods.append(method)
                if method in _TERMINAL:
                    break
                value = self._access_pdk(method, call["Args"], ctx, serialize_values)
                trace.access_round_trips += 1
                reply = yield _step(method, reply["EventId"], value)
            self.latencies.append(time.perf_counter_ns() - started)

            reply = yield handle_log
            trace.log_round_trips = 1
            while reply["Data"] != "ret":
                call = reply["Data"]
                method = call["Method"]
                trace.log_methods.append(method)
                value = self._log_pdk(method, call["Args"], ctx, serialize_values)
                trace.log_round_trips += 1
                reply = yield _step(method, reply["EventId"], value)

            self.exchanges += 1
            if self.first_trace is None:
                self.first_trace = trace
            self.trace = trace
            trace = _ExchangeTrace()
        yield None

    def _access_pdk(self, method: str, args: list[Any], ctx: dict[str, Any], serialize_values: dict[str, Any]) -> Any:
        if method == "kong.request.get_raw_body":
            bodies = self.scenario.request_bodies
            return bodies[next(self.body_index) % len(bodies)] if bodies else self.scenario.request_body
        if method == "kong.nginx.get_var":
            return {"upstream_uri": self.scenario.upstream_uri, "request_method": "POST"}.get(args[0])
        if method == "kong.log.set_serialize_value":
            serialize_values[args[0]] = args[1] if len(args) > 1 else None
            return True
        if method == "kong.service.request.enable_buffering":
            ctx["buffered_proxying"] = True
            return None
        if method == "kong.nginx.set_ctx":
            ctx[args[0]] = args[1] if len(args) > 1 else None
            return None
        if method == "kong.nginx.get_ctx":
            return ctx.get(args[0])
        if method in _LOG_LEVELS:
            return True
        raise LoadError(f"access handler called {method}, which this load generator has no result for")

    def _log_pdk(self, method: str, args: list[Any], ctx: dict[str, Any], serialize_values: dict[str, Any]) -> Any:
        if method == "kong.log.serialize":
            encoded = self._serialize_buffered if ctx.get("buffered_proxying") else self._serialize_streamed
            if serialize_values:
                # Splice the values set in access into the top-level object, as Kong's
                # serialize does, without re-encoding the whole log.
                extra = b",".join(orjson.dumps(key) + b":" + orjson.dumps(value) for key, value in serialize_values.items())
                encoded = encoded[:-1] + b"," + extra + b"}"
            return encoded.decode()
        if method == "kong.nginx.get_ctx":
            return ctx.get(args[0])
        if method == "kong.service.response.get_raw_body":
            if not ctx.get("buffered_proxying"):
                raise LoadError("get_raw_body without buffering: a Lua error in Kong, and the event would be abandoned")
            return self.scenario.response_body
        if method in _LOG_LEVELS:
            return True
        raise LoadError(f"log handler called {method}, which this load generator has no result for")


def _step(method: str, event_id: int, value: Any) -> tuple[str, list[Any]]:
    step: dict[str, Any] = {"EventId": event_id}
    if value is not None:
        step["Data"] = value
    return _STEP_METHODS.get(method, "plugin.Step"), [step]


def start_instance(socket_path: str, name: str, config: dict[str, Any]) -> int:
    """Start one plugin instance the way Kong does and return its id."""
    conf = dict(config)
    ws_id = "0dc6f45b-8f8d-40d2-a504-473544ee190b"
    scope = ":".join(conf.get(key) or "" for key in ("route_id", "service_id", "consumer_id"))
    conf.update({"__plugin_id": "9d3c1b5e-7a2f-4e8d-b6c4-0f1e2d3c4b5a", "__seq__": 1, "__key__": f"plugins:{name}:{scope}::{ws_id}", "__ws_id": ws_id})
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(socket_path)
        sock.sendall(msgpack.packb([0, 1, "plugin.StartInstance", [{"Name": name, "Config": orjson.dumps(conf).decode()}]]))
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
        while True:
            data = sock.recv(65536)
            if not data:
                raise LoadError("the plugin server closed the connection during StartInstance")
            unpacker.feed(data)
            for message in unpacker:
                if message[2] is not None:
                    raise LoadError(f"StartInstance failed: {message[2]}")
                return int(message[3]["Id"])


def process_cpu_seconds(pid: int) -> float:
    """Return the user plus system CPU time of process ``pid`` (Linux /proc)."""
    with open(f"/proc/{pid}/stat", "rb") as handle:
        fields = handle.read().rsplit(b")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def run_load(
    socket_path: str,
    plugin_name: str,
    config: dict[str, Any],
    scenario: Scenario,
    connections: int,
    seconds: float,
    warmup: float = 0.5,
    server_pid: int | None = None,
    rate: float = 0.0,
    stop_after: int | None = None,
) -> LoadResult:
    """Drive ``connections`` Kong connections for ``warmup`` then ``seconds`` seconds; return what was measured.

    ``rate`` > 0 offers that many exchanges per second in total, spread evenly over the
    connections; 0 runs every connection as fast as the server answers. ``stop_after``
    ends the run after about that many exchanges, warm-up included.
    """
    instance_id = start_instance(socket_path, plugin_name, config)
    msgids = itertools.count(2)
    interval = connections / rate if rate > 0 else 0.0
    body_index = itertools.count()
    kongs = [_KongConnection(socket_path, scenario, instance_id, msgids, body_index, interval) for _ in range(connections)]
    by_fd = {kong.sock.fileno(): kong for kong in kongs}
    poller = select.epoll()
    for fd in by_fd:
        poller.register(fd, select.EPOLLIN)
    now = time.perf_counter()
    sleeping: list[tuple[float, int]] = []
    for index, kong in enumerate(kongs):
        # Paced connections start spread over one interval instead of all at once.
        kong.next_start = now + index * interval / connections - interval
        if not kong.start():
            heapq.heappush(sleeping, (kong.next_start, kong.sock.fileno()))

    measuring = False
    base_exchanges = 0
    started = time.perf_counter()
    end_warmup = started + warmup
    deadline = end_warmup + seconds
    client_cpu = server_cpu = elapsed = 0.0
    exchanges = 0
    running = len(kongs)
    try:
        while running:
            timeout = max(0.0, sleeping[0][0] - time.perf_counter()) if sleeping else 5.0
            for fd, _ in poller.poll(timeout):
                kong = by_fd[fd]
                if kong.on_readable():
                    continue
                if kong.waiting:
                    heapq.heappush(sleeping, (kong.next_start, fd))
                else:
                    running -= 1
                    poller.unregister(fd)
            now = time.perf_counter()
            while sleeping and sleeping[0][0] <= now:
                _, fd = heapq.heappop(sleeping)
                if not by_fd[fd].resume():
                    running -= 1
                    poller.unregister(fd)
            if not measuring and now >= end_warmup:
                measuring = True
                for kong in kongs:
                    kong.latencies.clear()
                base_exchanges = sum(kong.exchanges for kong in kongs)
                started = now
                client_cpu = time.process_time()
                server_cpu = process_cpu_seconds(server_pid) if server_pid else 0.0
            enough = stop_after is not None and sum(kong.exchanges for kong in kongs) >= stop_after
            if measuring and (now >= deadline or enough) and not kongs[0].stopping:
                elapsed = now - started
                exchanges = sum(kong.exchanges for kong in kongs) - base_exchanges
                client_cpu = time.process_time() - client_cpu
                server_cpu = (process_cpu_seconds(server_pid) - server_cpu) if server_pid else 0.0
                for kong in kongs:
                    kong.stopping = True
    finally:
        poller.close()
        for kong in kongs:
            kong.sock.close()

    trace = kongs[0].trace or _ExchangeTrace()
    first = kongs[0].first_trace or trace
    latencies = [value for kong in kongs for value in kong.latencies]
    return LoadResult(
        connections=connections,
        exchanges=exchanges,
        seconds=elapsed,
        access_latencies_ns=latencies,
        access_round_trips=trace.access_round_trips,
        log_round_trips=trace.log_round_trips,
        first_access_round_trips=first.access_round_trips,
        access_methods=trace.access_methods,
        log_methods=trace.log_methods,
        client_cpu_seconds=client_cpu,
        server_cpu_seconds=server_cpu,
    )
