"""Every dashboard query against a real Prometheus that scrapes two real plugin servers.

Two ``kong-ai-metrics`` processes stand for two Kong nodes. The example captures (and a
semantic-cache hit and miss, as Kong's ai-proxy logs them) are replayed through both,
twice, with a Prometheus scrape in between, so every counter has grown between two
scrapes and rates are above zero. Then every PromQL expression of the dashboard runs
against Prometheus's HTTP API with its variables substituted: once with every filter
at "All" and once with each filter listing the values its own variable query returned.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kong_ai_metrics.kong_emulator import KongRequest, KongWorker, UpstreamResponse
from kong_ai_metrics.replay import _free_port, load_config, load_har

from .conftest import EXAMPLES, FIGURES, PluginServer, start_server
from .grafana_dashboard import FILTER_VARIABLES, grafana_regex_escape, load_dashboard, panel_queries, substitute, variable_queries

SCRAPE_INTERVAL_SECONDS = 1
JOB = "kong-ai-metrics"
NODES = 2
# Windows wide enough to hold every scrape of this test; Grafana would compute them
# from the time range and the data source's scrape interval.
INTERVALS = {"__rate_interval": "5m", "__interval": "15s", "__range": "1h"}
# promtool's lint rejects "_ms" in a name, but Kong's own exporter names this histogram
# so, and dashboards written for Kong query it by that name.
KONG_NAMES_PROMTOOL_REJECTS = {"kong_ai_llm_provider_latency_ms metric names should not contain abbreviated units"}


@dataclass
class QueryResult:
    label: str
    query: str
    series: list[dict[str, Any]]


@dataclass
class PrometheusRun:
    url: str
    nodes: list[PluginServer]
    results: list[QueryResult]
    instances: list[str]


# ---------------------------------------------------------------------------------
# Traffic


def semantic_cache_exchanges() -> list[tuple[KongRequest, UpstreamResponse]]:
    """A cache miss and a cache hit, with the statistics Kong's ai-proxy logs when a semantic cache plugin runs.

    Kong logs them under ``ai.<plugin name>`` of the serialized log: ``meta``,
    ``usage`` and ``cache`` (cache_status "miss" or "hit", vector_db, embeddings
    provider and model, fetch and embeddings latencies in milliseconds).
    """
    body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "What is Kong?"}]}).encode()
    answer = json.dumps(
        {
            "object": "chat.completion",
            "model": "gpt-4o-mini-2024-07-18",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "An API gateway."}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17},
        }
    ).encode()
    cache = {"vector_db": "redis", "embeddings_provider": "openai", "embeddings_model": "text-embedding-3-small"}
    miss = {
        "meta": {"provider_name": "openai", "request_model": "gpt-4o-mini", "response_model": "gpt-4o-mini-2024-07-18", "llm_latency": 640},
        "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17},
        "cache": {**cache, "cache_status": "miss", "fetch_latency": 7, "embeddings_latency": 120},
    }
    hit = {
        "meta": {"provider_name": "openai", "request_model": "gpt-4o-mini", "response_model": "gpt-4o-mini-2024-07-18"},
        "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17},
        "cache": {**cache, "cache_status": "hit", "fetch_latency": 4, "embeddings_latency": 95},
    }
    exchanges = []
    for statistics in (miss, hit):
        request = KongRequest(method="POST", path="/v1/chat/completions", body=body, ai_statistics={"ai-proxy": statistics})
        exchanges.append((request, UpstreamResponse(200, {"content-type": "application/json"}, answer, latency_ms=640)))
    return exchanges


def replay_examples(node: PluginServer) -> None:
    """Send every example capture and the cache exchanges through ``node``, as one Kong worker would."""
    config = load_config(str(EXAMPLES / "config.yaml"))
    exchanges = [(c.request, c.response) for path in sorted(EXAMPLES.glob("*.har")) for c in load_har(str(path))]
    exchanges += semantic_cache_exchanges()
    worker = KongWorker(node.socket_path, node.info, config)
    try:
        for request, response in exchanges:
            outcome = worker.exchange(request, response)
            assert outcome.log.status == "ok", f"log phase {outcome.log.status}: {outcome.log.error}"
    finally:
        worker.close()


def requests_total(node: PluginServer) -> float:
    _, samples = node.scrape()
    return sum(value for (name, _), value in samples.items() if name == "kong_ai_llm_requests_total")


# ---------------------------------------------------------------------------------
# Prometheus


def prometheus_binary() -> str:
    path = shutil.which("prometheus")
    assert path, "prometheus is not installed; scripts/test.sh installs Debian's prometheus package, or run: apt-get install prometheus"
    return path


def api_get(base_url: str, path: str, params: list[tuple[str, str]]) -> Any:
    url = f"{base_url}{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=10) as reply:
        document = json.load(reply)
    assert document["status"] == "success", f"{url}: {document}"
    return document["data"]


def instant_query(base_url: str, query: str) -> list[dict[str, Any]]:
    data = api_get(base_url, "/api/v1/query", [("query", query)])
    if data["resultType"] == "scalar":
        return [{"metric": {}, "value": data["result"]}]
    result: list[dict[str, Any]] = data["result"]
    return result


def wait_until(condition: Any, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@contextmanager
def running_prometheus(workdir: Path, targets: list[str]) -> Iterator[str]:
    """Run Prometheus on loopback, scraping ``targets`` every second; yield its URL."""
    config = {
        "global": {"scrape_interval": f"{SCRAPE_INTERVAL_SECONDS}s", "evaluation_interval": f"{SCRAPE_INTERVAL_SECONDS}s"},
        "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": targets}]}],
    }
    config_path = workdir / "prometheus.yml"
    config_path.write_text(json.dumps(config), encoding="utf-8")  # JSON is valid YAML
    listen = f"127.0.0.1:{_free_port()}"
    log_path = workdir / "prometheus.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [
                prometheus_binary(),
                f"--config.file={config_path}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address={listen}",
                "--log.level=warn",
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    url = f"http://{listen}"
    try:

        def ready() -> bool:
            assert process.poll() is None, f"prometheus exited with {process.returncode}: {log_path.read_text(errors='replace')}"
            with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as reply:
                return bool(reply.status == 200)

        wait_until(ready, "Prometheus to start")
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def wait_for_scrape(url: str, nodes: list[PluginServer]) -> None:
    """Wait until Prometheus has scraped every node's current request count."""
    expected = sum(requests_total(node) for node in nodes)

    def scraped() -> bool:
        result = instant_query(url, f'sum(kong_ai_llm_requests_total{{job="{JOB}"}})')
        return bool(result) and float(result[0]["value"][1]) == expected

    wait_until(scraped, f"Prometheus to scrape {expected:.0f} requests")


# ---------------------------------------------------------------------------------
# The dashboard's queries


def run_dashboard_queries(url: str) -> tuple[list[QueryResult], list[str]]:
    """Run every panel and variable query twice: filters at "All", then listing every value found."""
    dashboard = load_dashboard()
    variables = variable_queries(dashboard)
    queries = panel_queries(dashboard)
    results: list[QueryResult] = []

    all_values = {name: ".*" for name in FILTER_VARIABLES}
    listed_values: dict[str, str] = {}
    instances: list[str] = []
    for variable in variables:
        for mode, values in (("All", all_values), ("listed", listed_values)):
            selector = substitute(variable.selector, values, INTERVALS)
            found = api_get(url, f"/api/v1/label/{variable.label}/values", [("match[]", selector)])
            series = [{"metric": {variable.label: value}} for value in found]
            results.append(QueryResult(f"variable {variable.name} ({mode})", selector, series))
        # Grafana chains variables: each one's query uses the values chosen above it,
        # so the values of the "listed" run become this variable's value.
        listed = [series["metric"][variable.label] for series in results[-1].series]
        listed_values[variable.name] = "(" + "|".join(grafana_regex_escape(value) for value in listed) + ")" if listed else "^$"
        if variable.name == "instance":
            instances = list(listed)

    for mode, values in (("All", all_values), ("listed", listed_values)):
        for query in queries:
            expr = substitute(query.expr, values, INTERVALS)
            results.append(QueryResult(f"{query.panel} {query.ref_id} ({mode})", expr, instant_query(url, expr)))
    return results, instances


@pytest.fixture(scope="module")
def prometheus_run(plugin_info: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusRun]:
    workdir = tmp_path_factory.mktemp("prometheus")
    with ExitStack() as stack:
        nodes = [stack.enter_context(contextmanager(start_server)(plugin_info)) for _ in range(NODES)]
        targets = [urllib.parse.urlsplit(node.metrics_url).netloc for node in nodes]
        url = stack.enter_context(running_prometheus(workdir, targets))

        def all_targets_up() -> bool:
            result = instant_query(url, f'sum(up{{job="{JOB}"}})')
            return bool(result) and float(result[0]["value"][1]) == NODES

        wait_until(all_targets_up, "every plugin server to be scraped")
        for _ in range(2):
            for node in nodes:
                replay_examples(node)
            wait_for_scrape(url, nodes)

        results, instances = run_dashboard_queries(url)
        yield PrometheusRun(url, nodes, results, instances)


# ---------------------------------------------------------------------------------
# Tests


def test_every_dashboard_query_returns_data(prometheus_run: PrometheusRun, record_property: Any) -> None:
    empty = [f"{r.label}: {r.query}" for r in prometheus_run.results if not r.series]
    assert empty == []

    count = len(prometheus_run.results)
    record_property("dashboard_queries", count)
    FIGURES.append(f"dashboard: executed {count} dashboard queries, all non-empty, against Prometheus scraping {NODES} plugin servers")


def test_dashboard_values_are_numbers(prometheus_run: PrometheusRun) -> None:
    not_numbers = []
    for result in prometheus_run.results:
        for series in result.series:
            if "value" in series and not math.isfinite(float(series["value"][1])):
                not_numbers.append(f"{result.label}: {series}")
    assert not_numbers == []


def test_dashboard_rates_are_positive(prometheus_run: PrometheusRun) -> None:
    # Traffic grew every counter between scrapes, so a rate that comes out as zero
    # everywhere means the query does not see the traffic.
    flat = []
    for result in prometheus_run.results:
        if "rate(" not in result.query or "kong_ai_metrics_errors_total" in result.query:
            continue
        if not any(float(series["value"][1]) > 0 for series in result.series):
            flat.append(result.label)
    assert flat == []


def test_dashboard_sums_across_nodes(prometheus_run: PrometheusRun) -> None:
    assert len(prometheus_run.instances) == NODES
    per_node = [r.label for r in prometheus_run.results if not r.label.startswith("variable") and any("instance" in s["metric"] for s in r.series)]
    assert per_node == []


def test_promtool_accepts_exposition(prometheus_run: PrometheusRun) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is not installed; scripts/test.sh installs Debian's prometheus package"
    text, _ = prometheus_run.nodes[0].scrape()
    assert "kong_ai_llm_tokens_total{" in text

    checked = subprocess.run([promtool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=60, env={**os.environ, "LANG": "C"})
    findings = {line.strip() for line in (checked.stdout + checked.stderr).decode().splitlines() if line.strip()}
    assert findings <= KONG_NAMES_PROMTOOL_REJECTS, findings
    # promtool exits 3 for lint findings only, 1 for an exposition it cannot parse.
    assert checked.returncode == (3 if findings else 0)
