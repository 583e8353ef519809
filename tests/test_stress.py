"""The Kong protocol under stress, against the real process: concurrency, abandoned events, restarts, SIGTERM.

Each test runs on every RPC dispatcher the server offers, and asserts only what Kong and
a scrape can see, so it holds for any of them.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from kong_ai_metrics.kong_emulator import ExchangeOutcome, KongRequest, KongWorker, UpstreamResponse

from .conftest import FIGURES
from .plugin_process import Spawned, figures_of, spawned_server, wait_until
from .traffic import CONFIG, DISPATCHER_ARGS, MIX, WHOLE, expected_totals

DISPATCHERS = pytest.mark.parametrize("dispatcher", list(DISPATCHER_ARGS))


def run_threads(target: Any, arguments: list[tuple[Any, ...]]) -> None:
    threads = [threading.Thread(target=target, args=args) for args in arguments]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def warm_up(server: Spawned, plugin_info: dict[str, Any]) -> None:
    """Run one exchange, so that lazily created objects (the main greenlet, series) exist before a baseline."""
    worker = KongWorker(server.socket_path, plugin_info, CONFIG, read_timeout=10)
    assert worker.exchange(*WHOLE.build()).log.status == "ok"
    worker.close()
    assert wait_until(lambda: figures_of(server).events_in_progress == 0)


# ---------------------------------------------------------------------------------
# Many Kong workers, many requests each, interleaved


@DISPATCHERS
def test_stress_concurrent_workers_interleaved(tmp_path: Path, plugin_info: dict[str, Any], dispatcher: str) -> None:
    workers_count, threads_per_worker, per_thread = 4, 4, 120
    args = ["--quiet", "--debug-gauges", *DISPATCHER_ARGS[dispatcher]]
    with spawned_server(tmp_path, args) as server:
        warm_up(server, plugin_info)
        before = figures_of(server)
        # Each worker is one Kong worker whose requests run concurrently, as coroutines
        # do in Kong, over a pool of four connections: their Steps interleave on them.
        workers = [KongWorker(server.socket_path, plugin_info, CONFIG, read_timeout=30, connections=4) for _ in range(workers_count)]
        outcomes: list[ExchangeOutcome] = []

        def drive(worker: KongWorker, offset: int) -> None:
            for index in range(per_thread):
                kind = MIX[(offset + index) % len(MIX)]
                outcomes.append(worker.exchange(*kind.build()))

        run_threads(drive, [(worker, t * per_thread) for worker in workers for t in range(threads_per_worker)])
        during = figures_of(server)
        for worker in workers:
            worker.close()

        total = workers_count * threads_per_worker * per_thread
        expected = {key: 0.0 for key in ("requests", "total_tokens", "upstream_error", "malformed_body")}
        for t in range(threads_per_worker):
            for key, value in expected_totals(per_thread, t * per_thread).items():
                expected[key] += value * workers_count
        assert len(outcomes) == total
        assert {outcome.access.status for outcome in outcomes} == {"ok"}
        assert {outcome.log.status for outcome in outcomes} == {"ok"}
        assert server.value("kong_ai_llm_requests_total") == expected["requests"] + 1 == total + 1
        assert server.value("kong_ai_llm_tokens_total", token_type="total_tokens") == expected["total_tokens"] + WHOLE.total_tokens
        assert server.value("kong_ai_llm_usage_unknown_total", reason="upstream_error") == expected["upstream_error"]
        assert server.value("kong_ai_llm_usage_unknown_total", reason="malformed_body") == expected["malformed_body"]
        assert server.value("kong_ai_metrics_errors_total") == 0

        assert wait_until(lambda: figures_of(server).fds <= before.fds, timeout=10)
        after = figures_of(server)
        FIGURES.append(
            f"stress ({dispatcher}): {total} exchanges from {workers_count * threads_per_worker} concurrent requests; "
            f"before: {before.describe()}; after load: {during.describe()}; after closing: {after.describe()}"
        )
        assert after.events_in_progress == 0
        assert after.greenlets <= before.greenlets
        assert after.threads == before.threads


# ---------------------------------------------------------------------------------
# Events that Kong abandons


def spooled_request_on_kong_3_7() -> KongRequest:
    # Kong before 3.8 returns nil for a body spooled to disk even with get_raw_body(0),
    # and packing that nil raises a Lua error: the access event is abandoned.
    prompt = "x" * 20_000
    body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}]}).encode()
    return KongRequest(method="POST", path="/v1/chat/completions", body=body, kong_version=(3, 7))


@DISPATCHERS
def test_stress_abandoned_events_do_not_pile_up(tmp_path: Path, plugin_info: dict[str, Any], dispatcher: str) -> None:
    abandoned_each = 150
    args = ["--quiet", "--debug-gauges", "--event-timeout", "1", *DISPATCHER_ARGS[dispatcher]]
    with spawned_server(tmp_path, args) as server:
        warm_up(server, plugin_info)
        before = figures_of(server)

        worker = KongWorker(server.socket_path, plugin_info, CONFIG, read_timeout=10)
        upstream = UpstreamResponse(200, {"content-type": "application/json"}, WHOLE.build()[1].body)
        for _ in range(abandoned_each):
            outcome = worker.exchange(spooled_request_on_kong_3_7(), upstream)
            assert outcome.access.status == "lua_error"
            assert outcome.client_status == 500
        # A log event abandoned in its middle: Kong cannot encode a ctx value it is asked for.
        failing_log = WHOLE.build()[0]
        failing_log.lua_error_methods = frozenset({"kong.nginx.get_ctx"})
        for _ in range(abandoned_each):
            outcome = worker.exchange(failing_log, upstream)
            assert outcome.access.status == "ok"
            assert outcome.log.status == "lua_error"
        piled_up = figures_of(server)
        worker.close()

        assert wait_until(lambda: figures_of(server).events_in_progress == 0, timeout=30)
        assert wait_until(lambda: figures_of(server).fds <= before.fds, timeout=10)
        after = figures_of(server)
        FIGURES.append(
            f"abandoned events ({dispatcher}): {2 * abandoned_each} events abandoned by Kong; before: {before.describe()}; "
            f"right after: {piled_up.describe()}; after the 1 s event timeout: {after.describe()}"
        )
        assert after.events_in_progress == 0
        assert after.greenlets <= before.greenlets
        assert after.threads == before.threads
        assert server.value("kong_ai_metrics_abandoned_events_total", phase="access") == abandoned_each
        assert server.value("kong_ai_metrics_abandoned_events_total", phase="log") == abandoned_each

        # The server still serves, and counts, normal traffic.
        worker = KongWorker(server.socket_path, plugin_info, CONFIG, read_timeout=10)
        for _ in range(20):
            outcome = worker.exchange(*WHOLE.build())
            assert outcome.log.status == "ok"
        worker.close()
        assert server.value("kong_ai_llm_requests_total") == 1 + 20


# ---------------------------------------------------------------------------------
# kong.response.exit from a plugin that runs earlier


@DISPATCHERS
def test_stress_exit_from_earlier_plugin(tmp_path: Path, plugin_info: dict[str, Any], dispatcher: str) -> None:
    with spawned_server(tmp_path, ["--quiet", *DISPATCHER_ARGS[dispatcher]]) as server:
        worker = KongWorker(server.socket_path, plugin_info, CONFIG, read_timeout=10)
        for _ in range(30):
            request, upstream = WHOLE.build()
            request.exit_before = 429
            outcome = worker.exchange(request, upstream)
            assert outcome.access.status == "not_run"
            assert outcome.access.round_trips == 0
            assert outcome.client_status == 429
            assert outcome.buffered is False
            assert outcome.log.status == "ok"
            # The log handler finds no request facts and reads no body.
            assert outcome.log.methods == ["kong.log.serialize"]
        outcome = worker.exchange(*WHOLE.build())
        worker.close()
        assert outcome.log.status == "ok"
        assert server.value("kong_ai_llm_requests_total") == 1
        assert server.value("kong_ai_metrics_errors_total") == 0
        assert server.value("kong_ai_metrics_events_in_progress") == 0


# ---------------------------------------------------------------------------------
# A restart in the middle of traffic


@DISPATCHERS
def test_restart_mid_traffic_recovers_no_plugin_instance(tmp_path: Path, plugin_info: dict[str, Any], dispatcher: str) -> None:
    args = ["--quiet", *DISPATCHER_ARGS[dispatcher]]
    records: list[tuple[float, float, ExchangeOutcome]] = []
    stop = threading.Event()

    def drive(worker: KongWorker) -> None:
        index = 0
        while not stop.is_set():
            started = time.monotonic()
            outcome = worker.exchange(*MIX[index % len(MIX)].build())
            records.append((started, time.monotonic(), outcome))
            index += 1

    with spawned_server(tmp_path, args) as first:
        socket_path = first.socket_path
        workers = [KongWorker(socket_path, plugin_info, CONFIG, read_timeout=10, connections=2) for _ in range(4)]
        threads = [threading.Thread(target=drive, args=(worker,)) for worker in workers for _ in range(2)]
        for thread in threads:
            thread.start()
        assert wait_until(lambda: len(records) >= 300, timeout=30)
        sigterm_sent = time.monotonic()
        first.process.send_signal(signal.SIGTERM)
        assert first.process.wait(timeout=15) == 0
        first_exited = time.monotonic()

    try:
        with spawned_server(tmp_path, args) as second:
            second_ready = len(records)
            assert wait_until(lambda: len(records) >= second_ready + 300, timeout=30)
            stop.set()
            for thread in threads:
                thread.join()
            for worker in workers:
                worker.close()
            counted = second.value("kong_ai_llm_requests_total")
    finally:
        stop.set()

    statuses = {(outcome.access.status, outcome.log.status) for _, _, outcome in records}
    skipped = sum(1 for _, _, outcome in records if "skipped" in (outcome.access.status, outcome.log.status))
    FIGURES.append(
        f"restart ({dispatcher}): {len(records)} exchanges, {skipped} with an event skipped while the server was down, "
        f"{sum(w.instance_resets for w in workers)} 'no plugin instance' recoveries"
    )
    # Kong fails open: a request never fails because the plugin server is down.
    assert {outcome.client_status for _, _, outcome in records} <= {200, 429}
    assert statuses <= {("ok", "ok"), ("ok", "skipped"), ("skipped", "ok"), ("skipped", "skipped")}
    # Every worker cached an instance id of the first server and recovered through
    # `no plugin instance`, never by hitting an instance of the new server by chance.
    assert all(worker.instance_resets >= 1 for worker in workers)

    # Log events that ran entirely after the first server exited were counted by the
    # second. Those that overlapped the restart may have been counted by either server.
    def logged(record: tuple[float, float, ExchangeOutcome]) -> bool:
        return record[2].log.status == "ok"

    surely_second = sum(1 for record in records if record[0] > first_exited and logged(record))
    maybe_second = sum(1 for record in records if record[1] > sigterm_sent and logged(record))
    assert surely_second >= 300
    assert surely_second <= counted <= maybe_second


# ---------------------------------------------------------------------------------
# SIGTERM


@DISPATCHERS
def test_stress_sigterm_exits_cleanly(tmp_path: Path, plugin_info: dict[str, Any], dispatcher: str) -> None:
    with spawned_server(tmp_path, DISPATCHER_ARGS[dispatcher]) as server:
        # Pooled idle connections from Kong, and events that Kong abandoned, are both open.
        worker = KongWorker(server.socket_path, plugin_info, CONFIG, read_timeout=10, connections=4)
        for index in range(40):
            worker.exchange(*MIX[index % len(MIX)].build())
        upstream = WHOLE.build()[1]
        for _ in range(10):
            assert worker.exchange(spooled_request_on_kong_3_7(), upstream).access.status == "lua_error"

        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=15) == 0
        worker.close()
        assert_stopped(server)


def assert_stopped(server: Spawned) -> None:
    assert not os.path.exists(server.socket_path)
    host, port = server.base_url.removeprefix("http://").rsplit(":", 1)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((host, int(port)), timeout=5)
    log = server.stderr()
    assert "Traceback" not in log
    assert log.rstrip().endswith("stopped")
