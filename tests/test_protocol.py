"""The real plugin server process, driven over its socket by the Kong emulator."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from typing import Any

import pytest

from kong_ai_metrics import __version__
from kong_ai_metrics.kong_emulator import KongRequest, UpstreamResponse, query_plugin_info
from kong_ai_metrics.replay import load_har

from .conftest import EXAMPLES, PluginServer, start_server

PRICED = {
    "ai_metrics": True,
    "buffer_streaming_responses": True,
    "pricing": [
        {"model": "gpt-4o-mini", "input_cost": 0.15, "cached_input_cost": 0.075, "output_cost": 0.6},
        {"model": "gpt-4o", "input_cost": 2.5, "cached_input_cost": 1.25, "output_cost": 10.0},
        {"model": "claude-sonnet-4-*", "input_cost": 3.0, "cached_input_cost": 0.3, "cache_write_cost": 3.75, "output_cost": 15.0},
    ],
}

CHAT_REQUEST = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}).encode()
CHAT_RESPONSE = json.dumps(
    {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello."}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 25, "completion_tokens": 12, "total_tokens": 37},
    }
).encode()


def chat_exchange(body: bytes = CHAT_RESPONSE, status: int = 200, headers: dict[str, str] | None = None, **request: Any) -> tuple[KongRequest, UpstreamResponse]:
    kong_request = KongRequest(method="POST", path="/v1/chat/completions", body=request.pop("request_body", CHAT_REQUEST), **request)
    upstream = UpstreamResponse(status, headers or {"content-type": "application/json"}, body)
    return kong_request, upstream


def tokens(server: PluginServer, model: str, token_type: str, provider: str = "openai") -> float:
    return server.value("kong_ai_llm_tokens_total", ai_provider=provider, ai_model=model, token_type=token_type)


# ---------------------------------------------------------------------------------
# The query command and the socket


def test_dump_parses_as_kong_query_result() -> None:
    output = subprocess.run([sys.executable, "-m", "kong_ai_metrics", "-dump"], capture_output=True, check=True, text=True)
    assert output.stderr == ""
    info = query_plugin_info(output.stdout)
    assert info["Name"] == "ai-metrics"
    assert info["Version"] == __version__
    assert info["Priority"] == 760
    assert sorted(info["Phases"]) == ["access", "log"]
    config_fields = info["Schema"]["fields"][0]["config"]["fields"]
    names = [next(iter(field)) for field in config_fields]
    assert names == ["ai_metrics", "pricing", "provider", "model", "buffer_streaming_responses", "max_body_size", "allowed_models"]


def test_dump_descriptions_fit_kong_limits() -> None:
    output = subprocess.run([sys.executable, "-m", "kong_ai_metrics", "-dump"], capture_output=True, check=True, text=True)
    info = query_plugin_info(output.stdout)

    def walk(fields: list[dict[str, Any]]) -> list[tuple[str, str]]:
        found = []
        for field in fields:
            ((name, definition),) = field.items()
            found.append((name, definition.get("description", "")))
            if definition.get("type") == "array" and definition["elements"].get("type") == "record":
                found += walk(definition["elements"]["fields"])
        return found

    for name, description in walk(info["Schema"]["fields"][0]["config"]["fields"]):
        assert 10 <= len(description) <= 500, name


def test_socket_uses_kong_default_name(plugin_server: PluginServer) -> None:
    assert os.path.basename(plugin_server.socket_path) == "ai-metrics.socket"
    assert os.path.exists(plugin_server.socket_path)


def test_missing_prefix_is_clear_error(tmp_path: Any) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kong_ai_metrics", "-p", str(tmp_path / "absent")], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert "is not a directory" in result.stderr


# ---------------------------------------------------------------------------------
# Whole and streamed exchanges, value by value


def test_example_exchanges_scrape_values(plugin_server: PluginServer, make_worker: Any) -> None:
    # Three pooled connections: each Step of an event goes out on another one.
    worker = make_worker(PRICED, connections=3)
    captures = load_har(str(EXAMPLES / "openai.har")) + load_har(str(EXAMPLES / "azure.har")) + load_har(str(EXAMPLES / "anthropic.har"))
    for capture in captures:
        outcome = worker.exchange(capture.request, capture.response)
        assert outcome.access.status == "ok", outcome.access.error
        assert outcome.log.status == "ok", outcome.log.error

    s = plugin_server
    # OpenAI chat, whole: 25 / 12 / 37 as reported.
    assert tokens(s, "gpt-4o-mini", "prompt_tokens") == 25
    assert tokens(s, "gpt-4o-mini", "completion_tokens") == 12
    assert tokens(s, "gpt-4o-mini", "total_tokens") == 37
    # OpenAI chat, streamed with its usage chunk (the 429 for gpt-4o adds nothing).
    assert tokens(s, "gpt-4o", "prompt_tokens") == 1212
    assert tokens(s, "gpt-4o", "completion_tokens") == 4
    assert tokens(s, "gpt-4o", "total_tokens") == 1216
    assert tokens(s, "gpt-4o", "cached_tokens") == 1024
    # gzip-encoded reasoning model response.
    assert tokens(s, "o3-mini", "completion_tokens") == 214
    assert tokens(s, "o3-mini", "reasoning_tokens") == 192
    # Embeddings and legacy completions.
    assert tokens(s, "text-embedding-3-small", "prompt_tokens") == 13
    assert tokens(s, "text-embedding-3-small", "completion_tokens") == 0
    assert tokens(s, "gpt-3.5-turbo-instruct", "total_tokens") == 26
    # Azure: labelled with the deployment, whole + streamed.
    assert tokens(s, "team-chat-01", "prompt_tokens", "azure") == 22 + 11
    assert tokens(s, "team-chat-01", "completion_tokens", "azure") == 10 + 8
    assert tokens(s, "embed-small", "total_tokens", "azure") == 6
    # Anthropic: cache reads and writes inside the prompt; stream running totals not summed.
    assert tokens(s, "claude-sonnet-4-20250514", "prompt_tokens", "anthropic") == 21 + 188 + 1800
    assert tokens(s, "claude-sonnet-4-20250514", "cached_tokens", "anthropic") == 1800
    assert tokens(s, "claude-sonnet-4-20250514", "cache_write_tokens", "anthropic") == 188
    assert tokens(s, "claude-3-5-haiku-20241022", "completion_tokens", "anthropic") == 5
    assert tokens(s, "claude-3-5-haiku-20241022", "total_tokens", "anthropic") == 20

    # Every token series, and no other: the exact numbers the payloads report.
    expected_tokens = {
        ("openai", "gpt-4o-mini"): {"prompt_tokens": 25, "completion_tokens": 12, "total_tokens": 37},
        ("openai", "gpt-4o"): {"prompt_tokens": 1212, "completion_tokens": 4, "total_tokens": 1216, "cached_tokens": 1024},
        ("openai", "o3-mini"): {"prompt_tokens": 13, "completion_tokens": 214, "total_tokens": 227, "reasoning_tokens": 192},
        ("openai", "text-embedding-3-small"): {"prompt_tokens": 13, "total_tokens": 13},
        ("openai", "gpt-3.5-turbo-instruct"): {"prompt_tokens": 7, "completion_tokens": 19, "total_tokens": 26},
        ("azure", "team-chat-01"): {"prompt_tokens": 33, "completion_tokens": 18, "total_tokens": 51},
        ("azure", "embed-small"): {"prompt_tokens": 6, "total_tokens": 6},
        ("anthropic", "claude-sonnet-4-20250514"): {
            "prompt_tokens": 2009,
            "completion_tokens": 14,
            "total_tokens": 2023,
            "cached_tokens": 1800,
            "cache_write_tokens": 188,
        },
        ("anthropic", "claude-3-5-haiku-20241022"): {"prompt_tokens": 15, "completion_tokens": 5, "total_tokens": 20},
    }
    _, samples = s.scrape()
    scraped: dict[tuple[str, str], dict[str, float]] = {}
    for (name, labels), value in samples.items():
        if name == "kong_ai_llm_tokens_total":
            label = dict(labels)
            scraped.setdefault((label["ai_provider"], label["ai_model"]), {})[label["token_type"]] = value
    assert scraped == expected_tokens

    requests = "kong_ai_llm_requests_total"
    assert s.value(requests, ai_provider="openai") == 6
    assert s.value(requests, ai_provider="azure") == 4
    assert s.value(requests, ai_provider="anthropic") == 4
    unknown = "kong_ai_llm_usage_unknown_total"
    assert s.value(unknown, reason="upstream_error") == 3
    assert s.value(unknown, reason="stream_error", ai_provider="anthropic") == 1

    cost = "kong_ai_llm_cost_total"
    # 25 x 0.15 + 12 x 0.60, per 1M tokens.
    assert s.value(cost, ai_model="gpt-4o-mini") == pytest.approx((25 * 0.15 + 12 * 0.6) / 1e6)
    # 188 uncached + 1024 cached at the cached price, never both.
    assert s.value(cost, ai_model="gpt-4o") == pytest.approx((188 * 2.5 + 1024 * 1.25 + 4 * 10.0) / 1e6)
    assert s.value(cost, ai_model="claude-sonnet-4-20250514") == pytest.approx((21 * 3.0 + 1800 * 0.3 + 188 * 3.75 + 14 * 15.0) / 1e6)

    latency_count = s.value("kong_ai_llm_provider_latency_ms_count", ai_model="gpt-4o-mini")
    assert latency_count == 1
    assert s.value("kong_ai_llm_provider_latency_ms_bucket", ai_model="gpt-4o-mini", le="250.0") == 0
    assert s.value("kong_ai_llm_provider_latency_ms_bucket", ai_model="gpt-4o-mini", le="500.0") == 1


def test_labels_that_do_not_apply_are_empty(plugin_server: PluginServer, make_worker: Any) -> None:
    make_worker(PRICED).exchange(*chat_exchange())
    text, _ = plugin_server.scrape()
    line = next(line for line in text.splitlines() if line.startswith("kong_ai_llm_requests_total{"))
    assert 'cache_status=""' in line
    assert 'vector_db=""' in line
    assert "None" not in text


def test_token_labels_follow_kong_order(plugin_server: PluginServer, make_worker: Any) -> None:
    make_worker(PRICED).exchange(*chat_exchange())
    text, _ = plugin_server.scrape()
    assert "# TYPE kong_ai_llm_tokens_total counter" in text
    assert "# TYPE kong_ai_llm_provider_latency_ms histogram" in text
    assert "# TYPE kong_ai_cache_fetch_latency histogram" in text
    assert "# TYPE kong_ai_cache_embeddings_latency histogram" in text


def test_stream_without_buffering_is_unknown(plugin_server: PluginServer, make_worker: Any) -> None:
    worker = make_worker({"ai_metrics": True})
    capture = load_har(str(EXAMPLES / "openai.har"))[1]
    outcome = worker.exchange(capture.request, capture.response)
    assert outcome.buffered is False
    assert "kong.service.request.enable_buffering" not in outcome.access.methods
    assert "kong.service.response.get_raw_body" not in outcome.log.methods
    assert plugin_server.value("kong_ai_llm_requests_total", ai_model="gpt-4o") == 1
    assert plugin_server.value("kong_ai_llm_usage_unknown_total", reason="body_not_buffered") == 1
    assert tokens(plugin_server, "gpt-4o", "prompt_tokens") == 0


def test_ai_metrics_false_reads_no_payload(plugin_server: PluginServer, make_worker: Any) -> None:
    worker = make_worker({"ai_metrics": False})
    outcome = worker.exchange(*chat_exchange())
    assert outcome.access.methods == []
    assert outcome.access.round_trips == 1
    assert outcome.buffered is False
    assert outcome.log.methods == ["kong.log.serialize"]
    assert plugin_server.value("kong_ai_llm_requests_total") == 0


def test_kong_statistics_win_over_body(plugin_server: PluginServer, make_worker: Any) -> None:
    statistics = {
        "proxy": {
            "meta": {"plugin_id": "6e7c40f6", "provider_name": "openai", "request_model": "gpt-4o-mini", "response_model": "gpt-4o-mini-2024-07-18", "llm_latency": 812},
            "usage": {"prompt_tokens": 25, "completion_tokens": 12, "total_tokens": 37, "time_per_token": 67.6, "cost": 0.5},
        }
    }
    request, upstream = chat_exchange(ai_statistics=statistics)
    outcome = make_worker(PRICED).exchange(request, upstream)
    assert "kong.service.response.get_raw_body" not in outcome.log.methods
    s = plugin_server
    assert s.value("kong_ai_llm_requests_total", ai_model="gpt-4o-mini") == 1
    assert tokens(s, "gpt-4o-mini", "prompt_tokens") == 25
    # Our price list wins over ai-proxy's cost when it has the model.
    assert s.value("kong_ai_llm_cost_total", ai_model="gpt-4o-mini") == pytest.approx((25 * 0.15 + 12 * 0.6) / 1e6)
    assert s.value("kong_ai_llm_provider_latency_ms_sum", ai_model="gpt-4o-mini") == 812


def test_kong_statistics_cost_used_without_price(plugin_server: PluginServer, make_worker: Any) -> None:
    statistics = {
        "proxy": {
            "meta": {"provider_name": "mistral", "request_model": "mistral-large-latest", "llm_latency": 300},
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15, "cost": 0.25},
            "cache": {"cache_status": "Hit", "vector_db": "redis", "embeddings_provider": "openai", "embeddings_model": "text-embedding-3-small", "fetch_latency": 12, "embeddings_latency": 40},
        }
    }
    request, upstream = chat_exchange(ai_statistics=statistics)
    make_worker({"ai_metrics": False}).exchange(request, upstream)
    s = plugin_server
    labels = {"ai_model": "mistral-large-latest", "cache_status": "Hit", "vector_db": "redis"}
    assert s.value("kong_ai_llm_cost_total", **labels) == 0.25
    assert s.value("kong_ai_cache_fetch_latency_sum", **labels) == 12
    assert s.value("kong_ai_cache_embeddings_latency_sum", **labels) == 40


# ---------------------------------------------------------------------------------
# Bad input: the server keeps serving and each case is counted


@pytest.mark.parametrize(
    ("body", "status", "headers", "reason"),
    [
        (b'{"id": "chatcmpl-1", "usage": {"prompt_tokens": 5,', 200, {"content-type": "application/json"}, "malformed_body"),
        (b'data: {"id":"c","model":"gpt-4o-mini","choices":[{"delta":{"content":"Hi"}}]}\n\ndata: {"id":"c","mod', 200, {"content-type": "text/event-stream"}, "truncated_stream"),
        (b"<html><body><h1>502 Bad Gateway</h1></body></html>", 502, {"content-type": "text/html"}, "upstream_error"),
        (b"", 200, {"content-type": "application/json"}, "empty_body"),
        (b"\x1f\x8b\x08\x00garbage", 200, {"content-type": "application/json", "content-encoding": "gzip"}, "decode_failed"),
    ],
    ids=["malformed-json", "truncated-stream", "html-502", "empty-body", "broken-gzip"],
)
def test_bad_body_counted_server_keeps_answering(
    plugin_server: PluginServer, make_worker: Any, body: bytes, status: int, headers: dict[str, str], reason: str
) -> None:
    worker = make_worker(PRICED)
    outcome = worker.exchange(*chat_exchange(body, status, headers))
    assert outcome.access.status == "ok"
    assert outcome.log.status == "ok"
    assert plugin_server.value("kong_ai_llm_usage_unknown_total", reason=reason) == 1
    assert plugin_server.value("kong_ai_metrics_errors_total") == 0

    # A good exchange afterwards is still measured.
    worker.exchange(*chat_exchange())
    assert tokens(plugin_server, "gpt-4o-mini", "total_tokens") == 37
    assert plugin_server.value("kong_ai_llm_requests_total", ai_model="gpt-4o-mini") == 2


def test_gzip_bomb_stops_at_max_body_size(plugin_server: PluginServer, make_worker: Any) -> None:
    bomb = gzip.compress(b'{"usage": {"prompt_tokens": 1}, "pad": "' + b"A" * 5_000_000 + b'"}')
    worker = make_worker(dict(PRICED, max_body_size=1024 * 1024))
    outcome = worker.exchange(*chat_exchange(bomb, headers={"content-type": "application/json", "content-encoding": "gzip"}))
    assert outcome.log.status == "ok"
    assert plugin_server.value("kong_ai_llm_usage_unknown_total", reason="body_too_large") == 1


def test_spooled_request_body_causes_no_lua_error(plugin_server: PluginServer, make_worker: Any) -> None:
    prompt = "x" * 50_000
    body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}]}).encode()
    request, upstream = chat_exchange(request_body=body)
    assert len(request.body) > request.client_body_buffer_size
    outcome = make_worker(PRICED).exchange(request, upstream)
    assert outcome.access.status == "ok"
    assert outcome.client_status == 200
    assert tokens(plugin_server, "gpt-4o-mini", "prompt_tokens") == 25


def test_buffering_switched_off_skips_body_read(plugin_server: PluginServer, make_worker: Any) -> None:
    request, upstream = chat_exchange(upgrade=True)
    outcome = make_worker(PRICED).exchange(request, upstream)
    assert outcome.buffered is False
    assert outcome.log.status == "ok"
    assert "kong.service.response.get_raw_body" not in outcome.log.methods
    assert plugin_server.value("kong_ai_llm_usage_unknown_total", reason="body_not_buffered") == 1


def test_request_without_json_body_still_counted(plugin_server: PluginServer, make_worker: Any) -> None:
    request, upstream = chat_exchange(request_body=b"\xff\xfe not json")
    outcome = make_worker(dict(PRICED, model="fallback-model")).exchange(request, upstream)
    assert outcome.access.status == "ok"
    # The response names the model when the request does not.
    assert plugin_server.value("kong_ai_llm_requests_total", ai_model="gpt-4o-mini-2024-07-18") == 1


# ---------------------------------------------------------------------------------
# Instances and restarts


def test_config_change_restarts_instance(plugin_server: PluginServer, make_worker: Any) -> None:
    worker = make_worker({"ai_metrics": True})
    worker.exchange(*chat_exchange())
    first = worker.instance_id
    worker.reconfigure(PRICED)
    worker.exchange(*chat_exchange())
    assert worker.instance_id != first
    # The new config's prices apply to the second exchange only.
    assert plugin_server.value("kong_ai_llm_cost_total", ai_model="gpt-4o-mini") == pytest.approx((25 * 0.15 + 12 * 0.6) / 1e6)
    assert plugin_server.value("kong_ai_llm_requests_total", ai_model="gpt-4o-mini") == 2


def test_restarted_server_recovers_no_plugin_instance(plugin_info: dict[str, Any], tmp_path: Any) -> None:
    from kong_ai_metrics.kong_emulator import KongWorker

    servers = start_server(plugin_info)
    first = next(servers)
    worker = KongWorker(first.socket_path, plugin_info, PRICED, read_timeout=10)
    worker.exchange(*chat_exchange())
    worker.instance_id = 7  # an id the restarted server does not know
    servers.close()

    restarted = start_server(plugin_info)
    second = next(restarted)
    worker.rpc.socket_path = second.socket_path
    worker.rpc.close()
    outcome = worker.exchange(*chat_exchange())
    assert outcome.access.status == "ok"
    assert outcome.log.status == "ok"
    assert second.value("kong_ai_llm_requests_total", ai_model="gpt-4o-mini") == 1
    worker.close()
    restarted.close()


# ---------------------------------------------------------------------------------
# The sidecar


def test_metric_prefix_empty_gives_docs_names(plugin_info: dict[str, Any]) -> None:
    from kong_ai_metrics.kong_emulator import KongWorker

    servers = start_server(plugin_info, metric_prefix="")
    server = next(servers)
    worker = KongWorker(server.socket_path, plugin_info, PRICED, read_timeout=10)
    worker.exchange(*chat_exchange())
    worker.close()
    assert server.value("ai_llm_requests_total", ai_model="gpt-4o-mini") == 1
    assert server.value("kong_ai_llm_requests_total") == 0
    servers.close()


def test_healthz_and_unknown_path(plugin_server: PluginServer) -> None:
    base = plugin_server.metrics_url.rsplit("/", 1)[0]
    with urllib.request.urlopen(f"{base}/healthz", timeout=5) as reply:
        assert reply.status == 200
        assert reply.read() == b"ok\n"
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(f"{base}/nope", timeout=5)
    assert error.value.code == 404


def test_openmetrics_when_scraper_asks(plugin_server: PluginServer, make_worker: Any) -> None:
    make_worker(PRICED).exchange(*chat_exchange())
    request = urllib.request.Request(plugin_server.metrics_url, headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    with urllib.request.urlopen(request, timeout=5) as reply:
        content_type = reply.headers["Content-Type"]
        text = reply.read().decode()
    assert content_type.startswith("application/openmetrics-text")
    assert text.rstrip().endswith("# EOF")
    assert "kong_ai_llm_requests_total{" in text


def test_unbuffered_stream_error_is_upstream_error(plugin_server: PluginServer, make_worker: Any) -> None:
    worker = make_worker({"ai_metrics": True})
    capture = load_har(str(EXAMPLES / "openai.har"))[5]
    assert capture.response.status == 429
    outcome = worker.exchange(capture.request, capture.response)
    assert outcome.buffered is False
    assert plugin_server.value("kong_ai_llm_usage_unknown_total", reason="upstream_error") == 1
    assert plugin_server.value("kong_ai_llm_usage_unknown_total", reason="body_not_buffered") == 0


@pytest.mark.parametrize(("flags", "survives"), [([], False), (["--no-exit-with-parent"], True)], ids=["default", "no-exit-with-parent"])
def test_server_exit_with_parent(tmp_path: Any, flags: list[str], survives: bool) -> None:
    import signal
    import time

    from kong_ai_metrics.replay import _free_port

    command = [sys.executable, "-m", "kong_ai_metrics", "-q", "-p", str(tmp_path), "--metrics-listen", f"127.0.0.1:{_free_port()}", *flags]
    # The shell starts the server in the background, prints its pid and exits after a second.
    launcher = subprocess.run(["bash", "-c", " ".join(command) + " >/dev/null 2>&1 & echo $!; sleep 1"], capture_output=True, text=True, timeout=30)
    pid = int(launcher.stdout.split()[0])
    time.sleep(3)
    try:
        os.kill(pid, 0)
        alive = True
    except ProcessLookupError:
        alive = False
    if alive:
        os.kill(pid, signal.SIGTERM)
    assert alive is survives


def test_invalid_utf8_header_in_serialized_log(plugin_server: PluginServer, make_worker: Any) -> None:
    # cjson copies header bytes as they came, so the serialized log Kong sends can
    # contain a Latin-1 byte that is not valid UTF-8. Here it is 0xE9 in an upstream
    # response header, written as a surrogate escape and sent as that raw byte.
    request, upstream = chat_exchange(headers={"content-type": "application/json", "x-served-by": "caf\udce9"})
    outcome = make_worker(PRICED).exchange(request, upstream)
    assert outcome.log.status == "ok"
    assert plugin_server.value("kong_ai_metrics_errors_total") == 0
    assert tokens(plugin_server, "gpt-4o-mini", "total_tokens") == 37


def test_start_instance_config_carries_scope(make_worker: Any) -> None:
    # kong/runloop/plugins_iterator.lua get_plugin_config: set scope ids only, and the
    # DAO cache key name:route:service:consumer::workspace as __key__.
    route = "5f0c2a8e-2d4b-4c61-9a0e-7b3d1e6f4a21"
    scoped = json.loads(make_worker({"ai_metrics": True}, route_id=route)._config_json())
    assert scoped["route_id"] == route
    assert "service_id" not in scoped
    assert "consumer_id" not in scoped
    assert scoped["__key__"] == f"plugins:ai-metrics:{route}::::{scoped['__ws_id']}"
    request, upstream = chat_exchange()
    assert make_worker({"ai_metrics": True}, route_id=route).exchange(request, upstream).serialized["route"]["id"] == route
    unscoped = json.loads(make_worker({"ai_metrics": True})._config_json())
    assert "route_id" not in unscoped
    assert unscoped["__key__"] == f"plugins:ai-metrics:::::{unscoped['__ws_id']}"
