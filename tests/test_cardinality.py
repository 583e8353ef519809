"""Label cardinality: bounded label values, a per-process model limit and the allowed_models list."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_prometheus

from kong_ai_metrics.kong_emulator import KongRequest, KongWorker, UpstreamResponse
from kong_ai_metrics.labels import MAX_LABEL_BYTES, ModelLimit, bound_label

from .conftest import FIGURES, PluginServer, start_server

CONFIG = {"ai_metrics": True}
USAGE = {"prompt_tokens": 25, "completion_tokens": 12, "total_tokens": 37}


def exchange_for(model: str, response_model: str = "") -> tuple[KongRequest, UpstreamResponse]:
    request_body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]}).encode() if model else b"{}"
    response = {"id": "chatcmpl-1", "object": "chat.completion", "choices": [], "usage": USAGE}
    if response_model:
        response["model"] = response_model
    request = KongRequest(method="POST", path="/v1/chat/completions", body=request_body)
    return request, UpstreamResponse(200, {"content-type": "application/json"}, json.dumps(response).encode())


def model_values(server: PluginServer, metric: str = "kong_ai_llm_requests_total") -> dict[str, float]:
    _, samples = server.scrape()
    values: dict[str, float] = {}
    for (name, labels), value in samples.items():
        if name == metric:
            model = dict(labels)["ai_model"]
            values[model] = values.get(model, 0.0) + value
    return values


def series_count(server: PluginServer) -> int:
    _, samples = server.scrape()
    return len(samples)


@pytest.fixture
def limited_server(plugin_info: dict[str, Any]) -> Iterator[PluginServer]:
    yield from start_server(plugin_info, extra_args=["--max-models", "20"])


# ---------------------------------------------------------------------------------
# The cut to 128 bytes


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("gpt-4o", "gpt-4o"),
        ("a" * 128, "a" * 128),
        ("a" * 129, "a" * 128),
        ("é" * 100, "é" * 64),
        # 1 + 42 x 3 = 127 bytes fit; the 43rd euro sign would straddle byte 128.
        ("a" + "€" * 50, "a" + "€" * 42),
        # A four-byte character that would end at byte 130 is dropped whole.
        ("a" * 126 + "😀", "a" * 126),
        ("lone \ud800 surrogate", "lone ? surrogate"),
        ("", ""),
    ],
    ids=["short", "ascii-128", "ascii-129", "two-byte", "three-byte", "four-byte", "surrogate", "empty"],
)
def test_cardinality_label_cut_utf8_safe(value: str, expected: str) -> None:
    bounded = bound_label(value)
    assert bounded == expected
    assert len(bounded.encode("utf-8")) <= MAX_LABEL_BYTES


def test_cardinality_model_limit_admits_first_models() -> None:
    limit = ModelLimit(2)
    assert limit.admit("a")
    assert limit.admit("b")
    assert not limit.admit("c")
    # Already admitted names, the empty name and "other" never count against the limit.
    assert limit.admit("a")
    assert limit.admit("")
    assert limit.admit("other")
    assert len(limit) == 2


def test_cardinality_model_limit_rejects_zero() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        ModelLimit(0)


# ---------------------------------------------------------------------------------
# The real process


def test_cardinality_500_long_models_bounded_series(limited_server: PluginServer) -> None:
    worker = KongWorker(limited_server.socket_path, limited_server.info, CONFIG, read_timeout=10)
    before = series_count(limited_server)
    worker.exchange(*exchange_for("model-0000-" + "m" * 289))
    per_model = series_count(limited_server) - before

    for index in range(1, 500):
        name = f"model-{index:04d}-" + "m" * 289
        assert len(name.encode()) == 300
        outcome = worker.exchange(*exchange_for(name))
        assert outcome.log.status == "ok", outcome.log.error
    worker.close()

    after = series_count(limited_server)
    models = model_values(limited_server)
    FIGURES.append(
        f"cardinality: 500 distinct 300-byte model names with --max-models 20 gave {len(models)} ai_model values "
        f"and added {after - before} series ({per_model} per model, {before} before, {after} after)"
    )
    assert len(models) == 21
    assert models["other"] == 480
    assert all(len(model.encode()) == MAX_LABEL_BYTES for model in models if model != "other")
    assert after - before <= 21 * per_model + 1
    # Nothing is lost: every request and every token is still counted.
    assert sum(models.values()) == 500
    assert limited_server.value("kong_ai_llm_tokens_total", token_type="total_tokens") == 500 * 37
    assert limited_server.value("kong_ai_metrics_model_label_collapsed_total", reason="max_models") == 480


def test_cardinality_shared_prefix_one_series(plugin_server: PluginServer, make_worker: Any) -> None:
    worker = make_worker(CONFIG)
    for suffix in ("a", "b", "c"):
        worker.exchange(*exchange_for("x" * 200 + suffix))
    models = model_values(plugin_server)
    assert models == {"x" * 128: 3}


def test_cardinality_allow_list_collapses_others(plugin_server: PluginServer, make_worker: Any) -> None:
    worker = make_worker(dict(CONFIG, allowed_models=["gpt-4o*", "claude-sonnet-4-20250514"]))
    for model in ("gpt-4o-mini", "gpt-4o", "claude-sonnet-4-20250514", "llama-3-70b", "mixtral-8x7b"):
        outcome = worker.exchange(*exchange_for(model))
        assert outcome.log.status == "ok"
    models = model_values(plugin_server)
    assert models == {"gpt-4o-mini": 1, "gpt-4o": 1, "claude-sonnet-4-20250514": 1, "other": 2}
    assert plugin_server.value("kong_ai_metrics_model_label_collapsed_total", reason="not_allowed") == 2
    assert plugin_server.value("kong_ai_llm_tokens_total", ai_model="other", token_type="prompt_tokens") == 50


def test_cardinality_allow_list_applies_to_kong_statistics(plugin_server: PluginServer, make_worker: Any) -> None:
    statistics = {"proxy": {"meta": {"provider_name": "openai", "request_model": "secret-finetune"}, "usage": USAGE}}
    request, upstream = exchange_for("secret-finetune")
    request.ai_statistics = statistics
    make_worker({"ai_metrics": False, "allowed_models": ["gpt-*"]}).exchange(request, upstream)
    assert model_values(plugin_server) == {"other": 1}


def test_cardinality_long_provider_and_response_model_cut(plugin_server: PluginServer, make_worker: Any) -> None:
    # The request names no model, so the label comes from the upstream's response.
    make_worker(CONFIG).exchange(*exchange_for("", response_model="r" * 5000))
    statistics = {"proxy": {"meta": {"provider_name": "p" * 300, "request_model": "gpt-4o"}, "usage": USAGE}}
    request, upstream = exchange_for("gpt-4o")
    request.ai_statistics = statistics
    make_worker({"ai_metrics": False}).exchange(request, upstream)

    _, samples = plugin_server.scrape()
    requests = {dict(labels)["ai_model"]: dict(labels)["ai_provider"] for (name, labels), _ in samples.items() if name == "kong_ai_llm_requests_total"}
    assert requests == {"r" * 128: "openai", "gpt-4o": "p" * 128}


HOSTILE_NAMES = [
    'quote " inside',
    "back\\slash and \\n literal",
    "new\nline",
    "tab\tand\rreturn",
    "Modèle français 模型 😀",
    "brace} comma, equals= end",
]


@pytest.mark.parametrize("accept", ["text/plain", "application/openmetrics-text; version=1.0.0"])
def test_cardinality_special_characters_round_trip(plugin_server: PluginServer, make_worker: Any, accept: str) -> None:
    worker = make_worker(CONFIG)
    for name in HOSTILE_NAMES:
        outcome = worker.exchange(*exchange_for(name))
        assert outcome.log.status == "ok"

    request = urllib.request.Request(plugin_server.metrics_url, headers={"Accept": accept})
    with urllib.request.urlopen(request, timeout=10) as reply:
        text = reply.read().decode("utf-8")
    parse = parse_openmetrics if accept.startswith("application/openmetrics") else parse_prometheus
    scraped = {}
    for family in parse(text):
        for sample in family.samples:
            if sample.name == "kong_ai_llm_requests_total":
                scraped[sample.labels["ai_model"]] = sample.value
    assert scraped == {name: 1 for name in HOSTILE_NAMES}


def test_cardinality_unencodable_model_keeps_scrape_working(plugin_server: PluginServer, make_worker: Any) -> None:
    # A JSON escape of a lone surrogate is valid JSON text but cannot be encoded as UTF-8.
    request, upstream = exchange_for("placeholder")
    request.body = b'{"model": "bad \\ud800 name", "messages": []}'
    outcome = make_worker(CONFIG).exchange(request, upstream)
    assert outcome.access.status == "ok"
    assert outcome.log.status == "ok"
    assert model_values(plugin_server) == {"bad ? name": 1}
    assert plugin_server.value("kong_ai_metrics_errors_total") == 0


def test_cardinality_max_models_from_environment(plugin_info: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KONG_AI_METRICS_MAX_MODELS", "2")
    servers = start_server(plugin_info)
    server = next(servers)
    worker = KongWorker(server.socket_path, plugin_info, CONFIG, read_timeout=10)
    for model in ("one", "two", "three", "one"):
        worker.exchange(*exchange_for(model))
    worker.close()
    assert model_values(server) == {"one": 2, "two": 1, "other": 1}
    servers.close()


@pytest.mark.parametrize("value", ["0", "-3", "many"])
def test_cardinality_invalid_max_models_rejected(value: str, tmp_path: Any) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kong_ai_metrics", "-p", str(tmp_path), "--max-models", value],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "--max-models" in result.stderr
    assert "positive integer" in result.stderr


def test_invalid_max_models_env_named(tmp_path: Any) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kong_ai_metrics", "-p", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "KONG_AI_METRICS_MAX_MODELS": "abc"},
    )
    assert result.returncode == 2
    assert "expected a positive integer, got 'abc' (from KONG_AI_METRICS_MAX_MODELS)" in result.stderr
