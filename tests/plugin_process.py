"""Running the real plugin server process in a test, and reading its resource figures.

Figures come from /proc, except two that /proc cannot show: live greenlets come from the
``--debug-gauges`` gauge, and events in progress from the events-in-progress gauge, which
counts phase handler calls that have not returned, whichever dispatcher runs them.
"""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from kong_ai_metrics.replay import Samples, _free_port, scrape

# Environment variables of the server that a test must not inherit from the caller.
SERVER_ENV = (
    "KONG_AI_METRICS_LISTEN",
    "KONG_AI_METRICS_BASIC_AUTH",
    "KONG_AI_METRICS_BEARER_TOKEN",
    "KONG_AI_METRICS_TLS_CERT",
    "KONG_AI_METRICS_TLS_KEY",
    "KONG_AI_METRICS_MAX_MODELS",
    "KONG_AI_METRICS_EVENT_TIMEOUT",
)


def wait_until(condition: Callable[[], bool], timeout: float = 10.0, interval: float = 0.05) -> bool:
    """Poll ``condition`` until it is true or ``timeout`` seconds pass; return its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


@dataclass
class Spawned:
    """A plugin server process started by ``spawned_server``."""

    process: subprocess.Popen[bytes]
    base_url: str
    socket_path: str
    stderr_path: Path
    ssl_context: ssl.SSLContext | None = None
    metric_prefix: str = "kong_"

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        """GET ``path``; return status, headers and body, for error statuses too."""
        request = urllib.request.Request(self.base_url + path, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=10, context=self.ssl_context) as reply:
                return reply.status, dict(reply.headers), reply.read()
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), error.read()

    def samples(self) -> Samples:
        return scrape(self.base_url + "/metrics")[1]

    def value(self, name: str, **labels: str) -> float:
        """Sum the samples called ``name`` whose labels include ``labels``; 0 when there is none."""
        total = 0.0
        for (sample_name, sample_labels), value in self.samples().items():
            if sample_name == name and all(dict(sample_labels).get(k) == v for k, v in labels.items()):
                total += value
        return total

    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")


def server_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SERVER_ENV}
    env.update(extra or {})
    return env


@contextmanager
def spawned_server(
    directory: Path,
    args: list[str],
    env: dict[str, str] | None = None,
    ssl_context: ssl.SSLContext | None = None,
    listen: str | None = None,
) -> Iterator[Spawned]:
    """Run ``kong-ai-metrics`` with ``args`` and its Kong prefix in ``directory/prefix`` until the block ends.

    The server's stderr goes to a file beside the prefix, so that tests can read its log.
    """
    prefix = directory / "prefix"
    prefix.mkdir(exist_ok=True)
    stderr_path = directory / f"server-{time.monotonic_ns()}.stderr"
    listen = listen or f"127.0.0.1:{_free_port()}"
    command = [sys.executable, "-m", "kong_ai_metrics", "-p", str(prefix), "--metrics-listen", listen, *args]
    with open(stderr_path, "wb") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, env=server_env(env))
    scheme = "https" if ssl_context is not None else "http"
    spawned = Spawned(process, f"{scheme}://{listen}", str(prefix / "ai-metrics.socket"), stderr_path, ssl_context)

    def ready() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"kong-ai-metrics exited with {process.returncode}: {spawned.stderr()}")
        if not os.path.exists(spawned.socket_path):
            return False
        try:
            return spawned.get("/healthz")[0] == 200
        except OSError:
            return False

    try:
        if not wait_until(ready, timeout=15):
            raise RuntimeError(f"kong-ai-metrics was not ready after 15 s: {spawned.stderr()}")
        yield spawned
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@dataclass(frozen=True)
class ServerFigures:
    rss_kib: int
    threads: int
    fds: int
    greenlets: int
    events_in_progress: int

    def describe(self) -> str:
        return (
            f"RSS {self.rss_kib} KiB, {self.threads} threads, {self.fds} fds, "
            f"{self.greenlets} greenlets, {self.events_in_progress} events in progress"
        )


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/status has no VmRSS line")


def server_figures(pid: int, samples: Samples, metric_prefix: str = "kong_") -> ServerFigures:
    """Read the figures of the server ``pid`` whose scrape is ``samples``; it must run with ``--debug-gauges``."""
    greenlets = [value for (name, _), value in samples.items() if name == f"{metric_prefix}ai_metrics_debug_greenlets"]
    if not greenlets:
        raise RuntimeError("the plugin server exports no greenlet gauge: start it with --debug-gauges")
    in_progress = sum(value for (name, _), value in samples.items() if name == f"{metric_prefix}ai_metrics_events_in_progress")
    # The sidecar thread that served the scrape, and its socket, may live a moment
    # longer; the lowest of a few readings is the steady count.
    threads, fds = [], []
    for _ in range(3):
        threads.append(len(os.listdir(f"/proc/{pid}/task")))
        fds.append(len(os.listdir(f"/proc/{pid}/fd")))
        time.sleep(0.02)
    return ServerFigures(rss_kib(pid), min(threads), min(fds), int(greenlets[0]), int(in_progress))


def figures_of(spawned: Spawned) -> ServerFigures:
    return server_figures(spawned.process.pid, spawned.samples(), spawned.metric_prefix)
