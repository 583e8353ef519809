"""A soak of 50,000 exchanges through the real process: memory and handles stay flat once traffic stops."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from kong_ai_metrics.kong_emulator import KongWorker

from .conftest import FIGURES
from .plugin_process import ServerFigures, Spawned, figures_of, spawned_server, wait_until
from .traffic import CONFIG, MIX, expected_totals

CONNECTIONS = 4
SOAK_EXCHANGES = 50_000
# The first exchanges create the series, the interpreter's caches and the allocator's
# arenas. Resident memory steps up once, by 2 to 3 MiB, during the first two rounds of
# Kong connections, and stays flat from there (measured on a 2-core machine with both
# dispatchers). The baseline is taken after two such rounds; the soak adds its
# exchanges on top.
WARM_UP_ROUNDS = 2
WARM_UP_EXCHANGES = 2_500
# After figures may exceed the baseline by at most this fraction.
TOLERANCE = 0.10


def drive(server: Spawned, plugin_info: dict[str, Any], total: int, offset: int) -> None:
    """Send ``total`` exchanges of the mix from ``CONNECTIONS`` Kong workers at once, then close them."""
    per_worker = total // CONNECTIONS
    failures: list[str] = []

    def run(worker: KongWorker, start: int) -> None:
        for index in range(start, start + per_worker):
            outcome = worker.exchange(*MIX[index % len(MIX)].build())
            if outcome.access.status != "ok" or outcome.log.status != "ok":
                failures.append(f"{outcome.access.error or ''} {outcome.log.error or ''}")

    workers = [KongWorker(server.socket_path, plugin_info, CONFIG, read_timeout=30) for _ in range(CONNECTIONS)]
    threads = [threading.Thread(target=run, args=(worker, offset + n * per_worker)) for n, worker in enumerate(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for worker in workers:
        worker.close()
    assert failures == []


def settled(server: Spawned, baseline: ServerFigures | None) -> ServerFigures:
    """Wait until no event is in progress and Kong's closed connections are gone; return the figures."""
    assert wait_until(lambda: figures_of(server).events_in_progress == 0, timeout=15)
    if baseline is not None:
        assert wait_until(lambda: figures_of(server).fds <= baseline.fds, timeout=15)
    return figures_of(server)


def test_soak_50000_exchanges_flat_memory(tmp_path: Path, plugin_info: dict[str, Any]) -> None:
    with spawned_server(tmp_path, ["--quiet", "--debug-gauges"]) as server:
        cold = figures_of(server)
        for round_index in range(WARM_UP_ROUNDS):
            drive(server, plugin_info, WARM_UP_EXCHANGES, round_index * WARM_UP_EXCHANGES)
        before = settled(server, None)

        started = time.monotonic()
        drive(server, plugin_info, SOAK_EXCHANGES, WARM_UP_ROUNDS * WARM_UP_EXCHANGES)
        elapsed = time.monotonic() - started
        after = settled(server, before)

        FIGURES.append(f"soak: {SOAK_EXCHANGES} exchanges from {CONNECTIONS} Kong workers in {elapsed:.0f} s ({SOAK_EXCHANGES / elapsed:.0f}/s)")
        FIGURES.append(f"soak cold start:           {cold.describe()}")
        FIGURES.append(f"soak before (after warm-up): {before.describe()}")
        FIGURES.append(f"soak after traffic stopped:  {after.describe()}")
        FIGURES.append(f"soak RSS change: {100 * (after.rss_kib - before.rss_kib) / before.rss_kib:+.1f} %")

        assert after.rss_kib <= before.rss_kib * (1 + TOLERANCE)
        assert after.threads <= before.threads * (1 + TOLERANCE)
        assert after.fds <= before.fds * (1 + TOLERANCE)
        assert after.greenlets <= before.greenlets * (1 + TOLERANCE)
        assert after.events_in_progress == before.events_in_progress == 0

        # Every exchange of the soak is counted, exactly.
        expected = expected_totals(WARM_UP_ROUNDS * WARM_UP_EXCHANGES + SOAK_EXCHANGES)
        assert server.value("kong_ai_llm_requests_total") == expected["requests"]
        assert server.value("kong_ai_llm_tokens_total", token_type="total_tokens") == expected["total_tokens"]
        assert server.value("kong_ai_llm_usage_unknown_total", reason="upstream_error") == expected["upstream_error"]
        assert server.value("kong_ai_llm_usage_unknown_total", reason="malformed_body") == expected["malformed_body"]
        assert server.value("kong_ai_metrics_errors_total") == 0
