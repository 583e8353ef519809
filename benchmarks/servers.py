"""Start the plugin servers that the benchmarks compare, each in its own process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# The built-in dispatcher, and kong-pdk's stock server in each of its modes.
BUILTIN = "builtin"
STOCK_GEVENT = "kong-pdk gevent"
STOCK_THREADING = "kong-pdk threading"
STOCK_MULTIPROCESSING = "kong-pdk multiprocessing"

_STOCK_MODE_FLAGS = {STOCK_GEVENT: ["-g"], STOCK_THREADING: [], STOCK_MULTIPROCESSING: ["-m"]}


@dataclass
class RunningServer:
    kind: str
    plugin: str
    socket_path: str
    pid: int
    metrics_url: str | None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def plugin_server(kind: str, plugin: str, extra_args: tuple[str, ...] = ()) -> Iterator[RunningServer]:
    """Run ``plugin`` ("ai-metrics" or "noop") on server ``kind`` until the block ends."""
    with tempfile.TemporaryDirectory(prefix="kong-ai-metrics-bench-") as prefix:
        socket_path = os.path.join(prefix, f"{plugin}.socket")
        metrics_url = None
        if kind == BUILTIN and plugin == "ai-metrics":
            port = free_port()
            metrics_url = f"http://127.0.0.1:{port}/metrics"
            command = [sys.executable, "-m", "kong_ai_metrics", "-p", prefix, "--quiet", "--metrics-listen", f"127.0.0.1:{port}", "--dispatcher", "builtin", *extra_args]
        elif kind == BUILTIN:
            command = [sys.executable, "-m", "benchmarks.noop_plugin", "builtin", socket_path]
        elif kind in _STOCK_MODE_FLAGS:
            command = [
                sys.executable,
                "-m",
                "benchmarks.stock_server",
                plugin,
                "-p",
                prefix,
                "--socket-name",
                os.path.basename(socket_path),
                "--no-lua-style",
                *_STOCK_MODE_FLAGS[kind],
            ]
        else:
            raise ValueError(f"unknown server kind {kind!r}")

        process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            _wait_ready(process, socket_path, metrics_url)
            yield RunningServer(kind, plugin, socket_path, process.pid, metrics_url)
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_ready(process: subprocess.Popen[bytes], socket_path: str, metrics_url: str | None, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            error = process.stderr.read().decode(errors="replace") if process.stderr else ""
            raise RuntimeError(f"server exited with status {process.returncode} before it was ready: {error[-2000:]}")
        if os.path.exists(socket_path):
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                    probe.connect(socket_path)
                if metrics_url is None:
                    return
                with urllib.request.urlopen(metrics_url.replace("/metrics", "/healthz"), timeout=1):
                    return
            except OSError:
                pass
        time.sleep(0.05)
    raise RuntimeError(f"server was not ready after {timeout:.0f} s")


def rss_bytes(pid: int) -> int:
    """Return the resident set size of process ``pid`` (Linux /proc)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")
