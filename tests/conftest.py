"""Shared fixtures: a real ``kong-ai-metrics`` process and Kong emulator workers talking to it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kong_ai_metrics.kong_emulator import KongWorker, query_plugin_info
from kong_ai_metrics.replay import Samples, _free_port, running_server, scrape

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
FIXTURES = Path(__file__).resolve().parent / "fixtures"

# Figures that tests measured (memory, series, greenlets); the terminal summary prints
# them, so that every CI log shows them.
FIGURES: list[str] = []


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if FIGURES:
        terminalreporter.section("measured figures")
        for line in FIGURES:
            terminalreporter.write_line(line)


@dataclass
class PluginServer:
    """A running plugin server process with its socket and sidecar."""

    socket_path: str
    metrics_url: str
    process: subprocess.Popen[bytes]
    info: dict[str, Any]
    prefix: str

    def scrape(self) -> tuple[str, Samples]:
        return scrape(self.metrics_url)

    def value(self, name: str, **labels: str) -> float:
        """Return one sample's value, matching the given labels; 0 when the series does not exist."""
        _, samples = self.scrape()
        total = 0.0
        for (sample_name, sample_labels), value in samples.items():
            if sample_name == name and all(dict(sample_labels).get(k) == v for k, v in labels.items()):
                total += value
        return total


@pytest.fixture(scope="session")
def plugin_info() -> dict[str, Any]:
    dump = subprocess.run([sys.executable, "-m", "kong_ai_metrics", "-dump"], capture_output=True, check=True, text=True)
    return query_plugin_info(dump.stdout)


def start_server(info: dict[str, Any], metric_prefix: str = "kong_", extra_args: Sequence[str] = ()) -> Iterator[PluginServer]:
    """Run a plugin server, with ``extra_args`` added to its command line, for as long as the generator is open."""
    listen = f"127.0.0.1:{_free_port()}"
    with running_server(listen, ["--quiet", "--metric-prefix", metric_prefix, *extra_args]) as (socket_path, url, process):
        yield PluginServer(socket_path, url, process, info, metric_prefix)


@pytest.fixture
def plugin_server(plugin_info: dict[str, Any]) -> Iterator[PluginServer]:
    """A fresh plugin server process for one test."""
    yield from start_server(plugin_info)


@pytest.fixture
def make_worker(plugin_server: PluginServer) -> Iterator[Callable[..., KongWorker]]:
    """Build Kong workers (one plugin entity each) connected to ``plugin_server``."""
    workers: list[KongWorker] = []

    def build(config: dict[str, Any] | None = None, read_timeout: float = 10.0, connections: int = 1, **scope: str) -> KongWorker:
        worker = KongWorker(plugin_server.socket_path, plugin_server.info, config, read_timeout=read_timeout, connections=connections, **scope)
        workers.append(worker)
        return worker

    yield build
    for worker in workers:
        worker.close()
