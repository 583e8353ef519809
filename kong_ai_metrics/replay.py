"""``kong-ai-metrics replay``: captured LLM exchanges through a real plugin server.

Each HAR entry becomes a request that the Kong emulator sends through a freshly started
``kong-ai-metrics`` process, over its Unix socket, as Kong would: StartInstance,
HandleEvent for access, the proxied response, then the log timer. After each exchange the
sidecar is scraped, and the change in the series is what the table shows, so the table
reports what the process really counted.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import gzip
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import brotli
import yaml
from prometheus_client.parser import text_string_to_metric_families

from .config import PluginConfig
from .cost import CostSplit, compute_cost
from .kong_emulator import KongRequest, KongWorker, UpstreamResponse, query_plugin_info
from .kong_schema import validate_config
from .providers import read_request
from .server import configure_logging
from .usage import Usage

log = logging.getLogger("kong_ai_metrics.replay")

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

# A capture tool usually stores the decoded body but keeps the Content-Encoding header;
# Kong hands the plugin the bytes as they came off the wire, so those are rebuilt.
_ENCODERS = {
    "gzip": gzip.compress,
    "x-gzip": gzip.compress,
    "deflate": zlib.compress,
    "br": brotli.compress,
}


@dataclass(frozen=True)
class Capture:
    """One HAR entry as the emulator needs it."""

    source: str
    request: KongRequest
    response: UpstreamResponse


def load_har(path: str) -> list[Capture]:
    """Read a HAR file and return its entries; raise ValueError naming the file, entry and field."""
    with open(path, "rb") as handle:
        try:
            document = json.load(handle)
        except ValueError as exc:
            raise ValueError(f"{path}: not a HAR file: {exc}") from exc
    log_section = document.get("log") if isinstance(document, dict) else None
    entries = log_section.get("entries") if isinstance(log_section, dict) else None
    if not isinstance(entries, list):
        raise ValueError(f"{path}: not a HAR file: missing log.entries")
    captures = []
    for index, entry in enumerate(entries):
        source = f"{os.path.basename(path)}#{index + 1}"
        try:
            captures.append(_capture(entry, source))
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            detail = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
            raise ValueError(f"{path}: entry {index + 1} is invalid: {detail}") from exc
    return captures


def _capture(entry: dict[str, Any], source: str) -> Capture:
    request = entry["request"]
    response = entry["response"]
    url = urlsplit(request["url"])
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ValueError(f"request.url must be an absolute http or https URL, got {request['url']!r}")
    status = response.get("status")
    if not isinstance(status, int) or isinstance(status, bool):
        raise ValueError(f"response.status must be an integer, got {status!r}")
    request_headers = _headers(request.get("headers"))
    body = (request.get("postData") or {}).get("text") or ""
    response_headers = _headers(response.get("headers"))
    response_headers.pop("content-length", None)
    extra = entry.get("_kong") or {}
    kong_request = KongRequest(
        method=request.get("method", "POST"),
        path=url.path or "/",
        query=url.query,
        headers=request_headers,
        body=body.encode("utf-8"),
        service_host=url.hostname,
        service_port=url.port or (443 if url.scheme == "https" else 80),
        service_protocol=url.scheme,
        workspace_name=extra.get("workspace", "default"),
        ai_statistics=extra.get("ai"),
    )
    # HAR's timings.wait is the time to the first response byte, which is what Kong's
    # proxy latency measures for an unbuffered response.
    upstream = UpstreamResponse(
        status=status,
        headers=response_headers,
        body=_wire_body(response.get("content") or {}, response_headers.get("content-encoding")),
        latency_ms=int(entry.get("timings", {}).get("wait", 0) or entry.get("time", 0) or 0),
    )
    return Capture(source, kong_request, upstream)


def _headers(items: Any) -> dict[str, str]:
    headers: dict[str, str] = {}
    for item in items or []:
        name = str(item.get("name", "")).lower()
        if name and not name.startswith(":"):
            headers[name] = str(item.get("value", ""))
    return headers


def _wire_body(content: dict[str, Any], encoding: str | None) -> bytes:
    text = content.get("text") or ""
    if content.get("encoding") == "base64":
        try:
            data = base64.b64decode(text, validate=True)
        except binascii.Error as exc:
            raise ValueError(f"response.content.text is not valid base64: {exc}") from exc
    else:
        data = text.encode("utf-8")
    coding = (encoding or "").strip().lower()
    if coding in _ENCODERS and not _is_encoded(data, coding):
        data = _ENCODERS[coding](data)
    return data


def _is_encoded(data: bytes, coding: str) -> bool:
    try:
        if coding in ("gzip", "x-gzip"):
            return data[:2] == b"\x1f\x8b"
        if coding == "deflate":
            zlib.decompressobj().decompress(data[:64])
            return True
        brotli.decompress(data)
        return True
    except (zlib.error, brotli.error):
        return False


def load_config(path: str | None) -> dict[str, Any]:
    """Read the plugin config for replay; without a file, payload reading is on.

    The file contains the plugin's ``config`` object as JSON or YAML. A whole plugin entity
    (``name`` and ``config``, as in declarative configuration) is accepted too.
    """
    if path is None:
        return {"ai_metrics": True}
    with open(path, encoding="utf-8") as handle:
        try:
            loaded = yaml.safe_load(handle)
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: invalid YAML or JSON: {exc}") from exc
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: expected a mapping of plugin config fields, got {type(loaded).__name__}")
    if isinstance(loaded.get("config"), dict) and set(loaded) <= {"name", "config", "route", "service", "consumer", "enabled", "tags"}:
        return dict(loaded["config"])
    return loaded


# ---------------------------------------------------------------------------------
# Running the server


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _server_command() -> list[str]:
    return [sys.executable, "-m", "kong_ai_metrics"]


@contextmanager
def running_server(listen: str, prefix_args: list[str]) -> Iterator[tuple[str, str, subprocess.Popen[bytes]]]:
    """Start ``kong-ai-metrics`` in a temporary Kong prefix; yield its socket path, metrics URL and process."""
    with tempfile.TemporaryDirectory(prefix="kong-ai-metrics-") as prefix:
        socket_path = os.path.join(prefix, "ai-metrics.socket")
        process = subprocess.Popen(
            [*_server_command(), "-p", prefix, "--metrics-listen", listen, *prefix_args],
            stdout=subprocess.DEVNULL,
            stderr=None,
        )
        host, _, port = listen.rpartition(":")
        url = f"http://{host}:{port}/metrics"
        try:
            _wait_ready(process, socket_path, url)
            yield socket_path, url, process
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()


def _wait_ready(process: subprocess.Popen[bytes], socket_path: str, url: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"kong-ai-metrics exited with status {process.returncode} before it was ready")
        if os.path.exists(socket_path):
            try:
                with urllib.request.urlopen(url.replace("/metrics", "/healthz"), timeout=1) as reply:
                    if reply.status == 200:
                        return
            except OSError:
                pass
        time.sleep(0.05)
    raise RuntimeError(f"kong-ai-metrics was not ready after {timeout:.0f} s")


def scrape(url: str) -> tuple[str, Samples]:
    """Return the exposition text at ``url`` and its samples keyed by name and labels."""
    with urllib.request.urlopen(url, timeout=10) as reply:
        text = reply.read().decode("utf-8")
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return text, samples


# ---------------------------------------------------------------------------------
# The table


@dataclass
class Row:
    source: str
    provider: str = "-"
    model: str = "-"
    stream: str = "-"
    tokens: dict[str, int] = field(default_factory=dict)
    cost: float | None = None
    split: CostSplit | None = None
    note: str = ""


_TOKEN_COLUMNS = ("prompt_tokens", "completion_tokens", "total_tokens", "cached_tokens", "cache_write_tokens", "reasoning_tokens")


def _row_from_delta(capture: Capture, prefix: str, config: PluginConfig, before: Samples, after: Samples) -> Row:
    row = Row(capture.source)
    facts = read_request(capture.request.upstream_uri, capture.request.body, len(capture.request.body) + 1)
    row.stream = "yes" if facts.stream else "no"
    delta = {key: value - before.get(key, 0.0) for key, value in after.items() if value != before.get(key, 0.0)}
    for (name, labels), value in sorted(delta.items()):
        label = dict(labels)
        if name == f"{prefix}ai_llm_requests_total":
            row.provider = label.get("ai_provider") or "-"
            row.model = label.get("ai_model") or "-"
        elif name == f"{prefix}ai_llm_tokens_total" and label.get("token_type") in _TOKEN_COLUMNS:
            row.tokens[label["token_type"]] = round(value)
        elif name == f"{prefix}ai_llm_cost_total":
            row.cost = value
        elif name == f"{prefix}ai_llm_usage_unknown_total":
            row.note = f"usage unknown: {label.get('reason')}"
    if row.provider == "-" and not row.note:
        row.note = "not counted as an LLM exchange"
    elif row.tokens and row.cost is None and config.price_for(row.model) is None:
        row.note = "no price for this model"

    # The split is recomputed from the counted tokens with the plugin's own price
    # lookup; the total column is the cost the process counted.
    price = config.price_for(row.model)
    if row.cost is not None and price is not None:
        usage = Usage(
            prompt_tokens=row.tokens.get("prompt_tokens", 0),
            completion_tokens=row.tokens.get("completion_tokens", 0),
            cached_tokens=row.tokens.get("cached_tokens"),
            cache_write_tokens=row.tokens.get("cache_write_tokens"),
        )
        row.split = compute_cost(usage, price)
    return row


def _print_columns(headers: list[str], cells: list[list[str]]) -> None:
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip())
    print("  ".join("-" * w for w in widths))
    for line in cells:
        print("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip())


def _shorten(text: str, width: int = 48) -> str:
    """Cut a long model name, such as a Bedrock inference profile ARN, for the table."""
    return text if len(text) <= width else text[: width - 3] + "..."


def _money(value: float | None) -> str:
    # Fixed-point with up to 10 decimals: a prompt of a few tokens costs about 1e-7.
    return "-" if value is None else f"{value:.10f}".rstrip("0").rstrip(".") or "0"


def _print_tables(rows: list[Row]) -> None:
    token_headers = ["prompt", "completion", "total", "cached", "cache_write", "reasoning"]
    cells = [
        [r.source, r.provider, _shorten(r.model), r.stream]
        + [str(r.tokens[t]) if t in r.tokens else "-" for t in _TOKEN_COLUMNS]
        + [_money(r.cost), r.note]
        for r in rows
    ]
    _print_columns(["exchange", "provider", "model", "stream", *token_headers, "cost", "note"], cells)

    priced = [r for r in rows if r.split is not None]
    if priced:
        print()
        print("Cost split (per exchange, in the currency of the prices):")
        split_cells = [
            [r.source, _shorten(r.model)]
            + [_money(v) for v in (r.split.uncached_input, r.split.cached_input, r.split.cache_write, r.split.output)]  # type: ignore[union-attr]
            + [_money(r.cost)]
            for r in priced
        ]
        _print_columns(["exchange", "model", "uncached input", "cached input", "cache write", "output", "total"], split_cells)


def run_replay(args: argparse.Namespace) -> int:
    configure_logging(args.verbose)
    dump = subprocess.run([*_server_command(), "-dump"], capture_output=True, check=True, text=True).stdout
    info = query_plugin_info(dump)
    try:
        config = load_config(args.config)
        validated = validate_config(info["Schema"]["fields"][0]["config"]["fields"], config)
        captures = [capture for path in args.files for capture in load_har(path)]
    except (OSError, ValueError) as exc:
        print(f"kong-ai-metrics replay: {exc}", file=sys.stderr)
        return 2
    if not captures:
        print("kong-ai-metrics replay: the HAR files contain no entries; nothing to replay", file=sys.stderr)
        return 2

    if args.serve:
        listen = args.metrics_listen
        if listen.endswith(":0"):
            print("kong-ai-metrics replay: --serve needs a fixed port in --metrics-listen, not port 0", file=sys.stderr)
            return 2
    else:
        listen = f"127.0.0.1:{_free_port()}"
    prefix = args.metric_prefix
    plugin_config = PluginConfig.from_kong(validated)
    # SIGTERM ends a --serve run the way Ctrl-C does, so the server and its temporary
    # prefix are cleaned up.
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)

    try:
        server_args = ["--metric-prefix", prefix] + (["-v"] * args.verbose if args.verbose else ["--quiet"])
        with running_server(listen, server_args) as (socket_path, url, process):
            worker = KongWorker(socket_path, info, config)
            rows = []
            text, before = scrape(url)
            for capture in captures:
                outcome = worker.exchange(capture.request, capture.response)
                text, after = scrape(url)
                row = _row_from_delta(capture, prefix, plugin_config, before, after)
                if outcome.access.status not in ("ok", "exit") or outcome.log.status != "ok":
                    row.note = (row.note + "; " if row.note else "") + f"Kong: access {outcome.access.status}, log {outcome.log.status}"
                rows.append(row)
                before = after
            worker.close()

            _print_tables(rows)
            print()
            if args.print_metrics:
                print(text, end="")
            else:
                series = sum(1 for line in text.splitlines() if line and not line.startswith("#"))
                print(f"{series} series were exposed on {url}. Add --print-metrics to print them, or --serve to keep them up.")
            if args.serve:
                print(f"\nServing {url} until interrupted (Ctrl-C).", file=sys.stderr)
                try:
                    process.wait()
                except KeyboardInterrupt:
                    pass
    except KeyboardInterrupt:
        return 130
    except RuntimeError as exc:
        print(f"kong-ai-metrics replay: {exc}", file=sys.stderr)
        return 1
    return 0


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
