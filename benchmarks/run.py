"""Run every benchmark and print each result as a ratio against a baseline measured in the same run.

    python -m benchmarks.run            # the full run, about 4 minutes on 2 cores
    python -m benchmarks.run --quick    # shorter rounds, for a smoke test

The sections: kong-pdk's server modes, then protocol throughput and access-phase latency
at 1, 4 and 32 Kong connections. Those run the no-op plugin and the ai-metrics plugin,
each on kong-pdk's server and on the built-in dispatcher. Then PDK round trips per
exchange, parse throughput per provider format, the event-loop hold time of 1 MB
bodies, and scrape time and memory per series. Nothing here asserts a time: the
figures are for reading and comparing.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kong_ai_metrics import plugin, providers
from kong_ai_metrics.kong_emulator import KongRequest, KongWorker, UpstreamResponse, query_plugin_info, serialize_json
from kong_ai_metrics.metrics import Metrics
from kong_ai_metrics.wire import decode_content

from . import payloads
from .kong_load import ROUTE_ID, LoadResult, Scenario, run_load
from .servers import BUILTIN, STOCK_GEVENT, STOCK_MULTIPROCESSING, STOCK_THREADING, plugin_server, rss_bytes

CONNECTIONS = (1, 4, 32)
# The plugin configured on the route to the OpenAI Service, as most deployments do:
# Kong then sends route_id in the config, and the plugin learns the Service host.
ON_ROUTE = {"route_id": ROUTE_ID}
MB = 1024 * 1024


@dataclass
class Settings:
    rounds: int
    seconds: float
    series_levels: tuple[int, ...]
    parse_seconds: float


@dataclass
class Measured:
    """The rounds of one server at one connection count."""

    results: list[LoadResult] = field(default_factory=list)

    @property
    def throughput(self) -> float:
        return statistics.median(result.exchanges_per_second for result in self.results)

    def latency_ms(self, fraction: float) -> float:
        samples = sorted(value for result in self.results for value in result.access_latencies_ns)
        return samples[min(len(samples) - 1, round(fraction * (len(samples) - 1)))] / 1e6

    @property
    def server_cpu_us(self) -> float:
        return 1e6 * sum(r.server_cpu_seconds for r in self.results) / sum(r.exchanges for r in self.results)


def heading(title: str) -> None:
    print(f"\n== {title} ==", flush=True)


def table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(headers[i]), *(len(row[i]) for row in rows)) for i in range(len(headers))]
    print("  ".join(header.ljust(width) for header, width in zip(headers, widths)).rstrip())
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip(), flush=True)


def ratio(value: float, baseline: float) -> str:
    return f"{value / baseline:.2f}x" if baseline else "-"


# ---------------------------------------------------------------------------------
# Protocol throughput and latency


def stock_modes(settings: Settings) -> None:
    heading("kong-pdk's server modes: no-op plugin, 4 connections (which mode is its fastest)")
    rows = []
    measured: dict[str, float] = {}
    for kind in (STOCK_GEVENT, STOCK_THREADING, STOCK_MULTIPROCESSING):
        with plugin_server(kind, "noop") as server:
            result = run_load(server.socket_path, "noop", {}, payloads.whole_scenario(), 4, settings.seconds, server_pid=server.pid)
        measured[kind] = result.exchanges_per_second
    for kind, throughput in measured.items():
        rows.append([kind, f"{throughput:,.0f}", ratio(throughput, measured[STOCK_GEVENT])])
    table(["server", "exchanges/s", "vs gevent"], rows)


def compare_servers(settings: Settings, plugin_name: str, config: dict[str, Any], scenario: Scenario, title: str) -> dict[int, dict[str, Measured]]:
    """Run the stock and the built-in server in alternating rounds at each connection count."""
    heading(title)
    measured: dict[int, dict[str, Measured]] = {n: {STOCK_GEVENT: Measured(), BUILTIN: Measured()} for n in CONNECTIONS}
    with plugin_server(STOCK_GEVENT, plugin_name) as stock, plugin_server(BUILTIN, plugin_name) as builtin:
        for connections in CONNECTIONS:
            for _ in range(settings.rounds):
                for server in (stock, builtin):
                    result = run_load(server.socket_path, plugin_name, config, scenario, connections, settings.seconds, server_pid=server.pid)
                    measured[connections][server.kind].results.append(result)

    rows = []
    for connections in CONNECTIONS:
        base = measured[connections][STOCK_GEVENT]
        for kind in (STOCK_GEVENT, BUILTIN):
            m = measured[connections][kind]
            rows.append(
                [
                    str(connections),
                    "built-in" if kind == BUILTIN else kind,
                    f"{m.throughput:,.0f}",
                    ratio(m.throughput, base.throughput),
                    f"{m.latency_ms(0.5):.3f}",
                    f"{m.latency_ms(0.99):.3f}",
                    ratio(base.latency_ms(0.5), m.latency_ms(0.5)),
                    f"{m.server_cpu_us:.0f}",
                    ratio(base.server_cpu_us, m.server_cpu_us),
                ]
            )
    table(
        ["conns", "server", "exchanges/s", "vs kong-pdk", "access p50 ms", "p99 ms", "p50 vs kong-pdk", "server CPU us/exchange", "CPU vs kong-pdk"],
        rows,
    )
    first = measured[CONNECTIONS[0]][BUILTIN].results[0]
    later = f"access {first.access_round_trips}, log {first.log_round_trips}"
    if first.first_access_round_trips != first.access_round_trips:
        later = f"first exchange access {first.first_access_round_trips}, then {later}"
    print(f"round trips per exchange, HandleEvent included: {later}")
    return measured


def paced_latency(settings: Settings, plugin_name: str, config: dict[str, Any], scenario: Scenario, rate: float) -> None:
    heading(f"Access-phase latency at a fixed offered load: {rate:,.0f} exchanges/s over 4 connections ({scenario.name})")
    rows = []
    base: Measured | None = None
    for kind in (STOCK_GEVENT, BUILTIN):
        m = Measured()
        with plugin_server(kind, plugin_name) as server:
            for _ in range(settings.rounds):
                m.results.append(run_load(server.socket_path, plugin_name, config, scenario, 4, settings.seconds, server_pid=server.pid, rate=rate))
        base = base or m
        rows.append(
            [
                "built-in" if kind == BUILTIN else kind,
                f"{m.throughput:,.0f}",
                f"{m.latency_ms(0.5):.3f}",
                f"{m.latency_ms(0.99):.3f}",
                ratio(base.latency_ms(0.5), m.latency_ms(0.5)),
                ratio(base.latency_ms(0.99), m.latency_ms(0.99)),
            ]
        )
    table(["server", "exchanges/s", "access p50 ms", "p99 ms", "p50 vs kong-pdk", "p99 vs kong-pdk"], rows)


# ---------------------------------------------------------------------------------
# Round trips per exchange, counted by the full Kong emulator


def round_trips() -> None:
    heading("PDK round trips per exchange (HandleEvent included), counted by the Kong emulator")
    info = query_plugin_info(subprocess.run([sys.executable, "-m", "kong_ai_metrics", "-dump"], capture_output=True, check=True, text=True).stdout)
    prompt_no_flag = payloads.chat_request(None)
    cases: list[tuple[str, dict[str, Any], bytes, str, bytes]] = [
        ("whole answer, body without stream field, global plugin", {"ai_metrics": True}, prompt_no_flag, "application/json", payloads.chat_answer()),
        ("whole answer, body with stream: false", {"ai_metrics": True}, payloads.chat_request(False), "application/json", payloads.chat_answer()),
        ("whole answer, provider: openai", {"ai_metrics": True, "provider": "openai"}, prompt_no_flag, "application/json", payloads.chat_answer()),
        ("whole answer, body without stream field, plugin on the route", {"ai_metrics": True, **ON_ROUTE}, prompt_no_flag, "application/json", payloads.chat_answer()),
        ("streamed answer, not buffered (default)", {"ai_metrics": True}, payloads.chat_request(True), "text/event-stream", payloads.chat_stream()),
        ("streamed answer, buffer_streaming_responses", {"ai_metrics": True, "buffer_streaming_responses": True}, payloads.chat_request(True), "text/event-stream", payloads.chat_stream()),
        ("ai_metrics: false", {"ai_metrics": False}, prompt_no_flag, "application/json", payloads.chat_answer()),
    ]
    rows = []
    with plugin_server(BUILTIN, "ai-metrics") as server:
        for label, config, body, content_type, answer in cases:
            scope = {"route_id": config.pop("route_id")} if "route_id" in config else {}
            worker = KongWorker(server.socket_path, info, config, read_timeout=30, **scope)
            # Two exchanges: a plugin on a route learns its Service's host from the first log event.
            for name in (label, "  same, second request"):
                outcome = worker.exchange(KongRequest("POST", "/v1/chat/completions", body=body), UpstreamResponse(200, {"content-type": content_type}, answer))
                methods = outcome.access.methods + ["|"] + outcome.log.methods
                calls = ", ".join(method.rsplit(".", 1)[-1] for method in methods)
                row = [name, str(outcome.access.round_trips), str(outcome.log.round_trips), calls]
                # The second request is listed only when its calls differ from the first's.
                if name == label or row[1:] != rows[-1][1:]:
                    rows.append(row)
            worker.close()
    table(["exchange", "access", "log", "PDK calls (access | log)"], rows)
    print("earlier versions of the plugin: access 5 (upstream URI, body, set_serialize_value, enable_buffering), log 4")


# ---------------------------------------------------------------------------------
# Parsing


def _per_call_seconds(function: Callable[[], Any], budget: float) -> float:
    function()
    count = 0
    started = time.perf_counter()
    while True:
        function()
        count += 1
        elapsed = time.perf_counter() - started
        if elapsed >= budget:
            return elapsed / count


def _json_baseline(settings: Settings) -> float:
    answer = payloads.chat_answer()
    return len(answer) / _per_call_seconds(lambda: json.loads(answer), settings.parse_seconds) / MB


def parse_throughput(settings: Settings) -> None:
    heading("Parse throughput per provider format (providers.parse_response, content decoding included)")
    baseline = _json_baseline(settings)
    print(f"baseline: the standard library's json.loads on the 3 KB OpenAI answer, {baseline:,.1f} MB/s")
    bodies = payloads.provider_bodies()
    rows = []
    for body in bodies:
        parse = functools.partial(providers.parse_response, body.route, 200, body.headers, body.body, body.stream, 64 * MB)
        seconds = _per_call_seconds(parse, settings.parse_seconds)
        usage = providers.parse_response(body.route, 200, body.headers, body.body, body.stream, 64 * MB)
        # Throughput counts the decoded bytes, so a compressed body is not flattered.
        encoding = body.headers.get("content-encoding")
        size = len(decode_content(body.body, encoding, 64 * MB))
        throughput = size / seconds / MB
        notes = [note for note in (encoding and f"{encoding} on the wire", not body.grown and "as captured") if note]
        rows.append(
            [
                body.label,
                "stream" if body.stream else "whole",
                f"{size / 1024:,.0f} KB" + (f" ({', '.join(notes)})" if notes else ""),
                f"{throughput:,.1f}",
                ratio(throughput, baseline),
                "yes" if usage.known else f"no: {usage.unknown_reason}",
            ]
        )
    table(["format", "kind", "body", "MB/s", "vs json.loads", "usage read"], rows)
    measured = {body.provider for body in bodies}
    missing = sorted(set(providers.PARSERS) - measured)
    if missing:
        print(f"parsers without an example in examples/*.har, not measured: {', '.join(missing)}")


class _ScriptedKong:
    """A stand-in for the ``kong`` object that returns the log handler's PDK results at once, in-process."""

    def __init__(self, answers: dict[str, Any], name: str = "kong") -> None:
        self._answers = answers
        self._name = name

    def __getattr__(self, attribute: str) -> _ScriptedKong:
        return _ScriptedKong(self._answers, f"{self._name}.{attribute}")

    def __call__(self, *args: Any) -> Any:
        return self._answers.get(self._name)


def event_loop_hold(settings: Settings) -> None:
    heading("Event-loop hold time of the log handler with a 1 MB upstream body (every PDK call answered at once)")
    plugin.use_metrics(Metrics())
    instance = plugin.Plugin({"ai_metrics": True, "buffer_streaming_responses": True})
    megabyte_json = json.dumps({"data": [payloads.chat_request(None).decode()] * (MB // 2048)}).encode()
    baseline = _per_call_seconds(lambda: json.loads(megabyte_json), settings.parse_seconds)
    print(f"baseline: the standard library's json.loads on a {len(megabyte_json) / MB:.1f} MB JSON document, {baseline * 1e3:.2f} ms")

    cases: list[tuple[str, Scenario | payloads.ProviderBody]] = []
    whole = payloads.whole_scenario()
    content = json.loads(whole.response_body)
    content["choices"][0]["message"]["content"] = "x" * MB
    cases.append(("openai chat, whole", Scenario("whole", "/v1/chat/completions", b"", 200, {"content-type": "application/json"}, json.dumps(content).encode())))
    cases.append(("openai chat, stream", Scenario("stream", "/v1/chat/completions", b"", 200, {"content-type": "text/event-stream"}, payloads.chat_stream(MB))))
    for body in payloads.provider_bodies(target_whole=MB, target_stream=MB):
        if body.stream and body.grown and body.provider != "openai":
            cases.append((f"{body.label}, stream", body))
    # The worst case of the Gemini array scan: tiny elements and no closing bracket, as
    # only a misbehaving upstream sends. Complete arrays parse in one call.
    tiny = b"[" + b"{}," * (MB // 3)
    cases.append(("gemini array cut off, 1 MB of {} elements, stream", Scenario("hostile", "/v1beta/models/gemini-2.5-flash:streamGenerateContent", b"", 200, {"content-type": "application/json"}, tiny, service_host="generativelanguage.googleapis.com")))

    rows = []
    for label, case in cases:
        if isinstance(case, Scenario):
            serialized = case.serialized_log(buffered=True)
            response_body = case.response_body
        else:
            scenario = Scenario(case.label, case.path, b"", 200, case.headers, case.body, service_host=case.host)
            serialized = scenario.serialized_log(buffered=True)
            response_body = case.body
        kong = _ScriptedKong(
            {
                "kong.log.serialize": serialize_json(serialized),
                "kong.nginx.get_ctx": {"model": "bench-model", "stream": label.endswith("stream")},
                "kong.service.response.get_raw_body": response_body,
            }
        )
        seconds = _per_call_seconds(functools.partial(instance.log, kong), settings.parse_seconds)
        encoding = case.headers.get("content-encoding") if isinstance(case, payloads.ProviderBody) else None
        size = f"{len(decode_content(response_body, encoding, 64 * MB)) / MB:.2f} MB" + (f" ({encoding} on the wire)" if encoding else "")
        rows.append([label, size, f"{seconds * 1e3:.2f}", ratio(seconds, baseline)])
    table(["body", "size", "hold ms", "vs json.loads 1 MB"], rows)


# ---------------------------------------------------------------------------------
# Scraping


def _scrape(url: str) -> tuple[float, int, int]:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as reply:
        text = reply.read()
    elapsed = time.perf_counter() - started
    series = sum(1 for line in text.split(b"\n") if line and not line.startswith(b"#"))
    return elapsed, series, len(text)


def scrape_and_memory(settings: Settings) -> None:
    heading("Scrape time and resident memory by number of series (real process, HTTP scrape of /metrics)")
    top = max(settings.series_levels)
    base_scenario = payloads.whole_scenario(False)
    prompt = json.loads(base_scenario.request_body)
    config = {"ai_metrics": True}
    with plugin_server(BUILTIN, "ai-metrics", ("--max-models", str(top))) as server:
        assert server.metrics_url is not None
        run_load(server.socket_path, "ai-metrics", config, base_scenario, 1, 3600.0, warmup=0.0, stop_after=1)
        _, base_series, _ = _scrape(server.metrics_url)
        base_rss = rss_bytes(server.pid)

        # One more model adds the same number of series each time: measure it once.
        run_load(server.socket_path, "ai-metrics", config, _with_models(base_scenario, prompt, 0, 1), 1, 3600.0, warmup=0.0, stop_after=1)
        _, one_more, _ = _scrape(server.metrics_url)
        per_model = one_more - base_series
        models = 1

        rows = []
        first_time = 0.0
        for level in settings.series_levels:
            wanted = max(0, -(-(level - one_more) // per_model))
            if wanted:
                scenario = _with_models(base_scenario, prompt, models, wanted)
                run_load(server.socket_path, "ai-metrics", config, scenario, 4, 3600.0, warmup=0.0, stop_after=wanted)
                models += wanted
            times = []
            for _ in range(5):
                elapsed, series, size = _scrape(server.metrics_url)
                times.append(elapsed)
            scrape_ms = statistics.median(times) * 1e3
            first_time = first_time or scrape_ms
            rss = rss_bytes(server.pid)
            per_series = (rss - base_rss) / max(1, series - base_series)
            rows.append([f"{series:,}", f"{size / MB:.1f} MB", f"{scrape_ms:.1f}", ratio(scrape_ms, first_time), f"{rss / MB:.0f} MB", f"{per_series:,.0f}"])
    table(["series", "exposition", "scrape ms (median of 5)", "vs smallest", "server RSS", "bytes per series"], rows)
    print(f"each model adds {per_model} series (requests 1, tokens 3, latency histogram 17); RSS before: {base_rss / MB:.0f} MB with {base_series} series")


def _with_models(scenario: Scenario, prompt: dict[str, Any], first: int, count: int) -> Scenario:
    bodies = []
    for index in range(first, first + count):
        prompt["model"] = f"bench-model-{index:06d}"
        bodies.append(json.dumps(prompt).encode())
    return Scenario(scenario.name, scenario.upstream_uri, scenario.request_body, scenario.response_status, scenario.response_headers, scenario.response_body, request_bodies=tuple(bodies))


# ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one short round per figure and at most 10,000 series")
    parser.add_argument("--only", choices=("modes", "protocol", "paced", "round-trips", "parse", "hold", "scrape"), action="append", help="run only these sections (repeatable)")
    args = parser.parse_args(argv)
    settings = (
        Settings(rounds=1, seconds=1.0, series_levels=(1_000, 10_000), parse_seconds=0.1)
        if args.quick
        else Settings(rounds=3, seconds=2.0, series_levels=(1_000, 10_000, 100_000), parse_seconds=0.5)
    )
    sections = set(args.only or ("modes", "protocol", "paced", "round-trips", "parse", "hold", "scrape"))
    print(f"python {platform.python_version()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start; gc thresholds {gc.get_threshold()}")

    whole = payloads.whole_scenario()
    stream = payloads.stream_scenario()
    if "modes" in sections:
        stock_modes(settings)
    stock_whole = None
    if "protocol" in sections:
        compare_servers(settings, "noop", {}, whole, "Protocol: no-op plugin (access and log return at once)")
        stock_whole = compare_servers(
            settings,
            "ai-metrics",
            {"ai_metrics": True, **ON_ROUTE},
            whole,
            "Protocol: ai-metrics plugin on the route, whole answer (2 KB prompt without a stream field, 3 KB answer)",
        )
        compare_servers(
            settings, "ai-metrics", {"ai_metrics": True}, whole, "Protocol: ai-metrics plugin, global, whole answer (2 KB prompt without a stream field, 3 KB answer)"
        )
        compare_servers(
            settings,
            "ai-metrics",
            {"ai_metrics": True, "buffer_streaming_responses": True},
            stream,
            "Protocol: ai-metrics plugin, streamed answer (2 KB prompt, 200 KB SSE answer, buffered and parsed)",
        )
    if "paced" in sections:
        capacity = stock_whole[4][STOCK_GEVENT].throughput if stock_whole else 1500.0
        paced_latency(settings, "ai-metrics", {"ai_metrics": True, **ON_ROUTE}, whole, round(capacity / 2, -1))
    if "round-trips" in sections:
        round_trips()
    if "parse" in sections:
        parse_throughput(settings)
    if "hold" in sections:
        event_loop_hold(settings)
    if "scrape" in sections:
        scrape_and_memory(settings)
    print(f"\nload average {os.getloadavg()[0]:.2f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
