"""The compose stack's mock LLM provider: its usage reads back exactly through the plugin's parsers and the real plugin server.

The mock runs as its own process on loopback. Its responses are parsed with the project's
provider parsers, then the traffic generator's requests go through the mock and, with
the declarative config's plugin settings, through the real plugin server, as Kong
would proxy them in the compose stack.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kong_ai_metrics import detect
from kong_ai_metrics import usage as u
from kong_ai_metrics.kong_emulator import KongRequest, KongWorker, UpstreamResponse
from kong_ai_metrics.providers import parse_response
from kong_ai_metrics.replay import _free_port

from .conftest import PluginServer

ROOT = Path(__file__).resolve().parent.parent
MOCK = ROOT / "deploy" / "mock_llm.py"
LIMIT = 10 * 1024 * 1024

sys.path.insert(0, str(ROOT / "deploy"))
import traffic  # noqa: E402 - deploy/ is not a package; its scripts run in plain containers


@pytest.fixture(scope="module")
def mock_url() -> Iterator[str]:
    listen = f"127.0.0.1:{_free_port()}"
    process = subprocess.Popen([sys.executable, str(MOCK), "--listen", listen, "--quiet"], stderr=subprocess.DEVNULL)
    url = f"http://{listen}"
    try:
        deadline = time.monotonic() + 10
        while True:
            assert process.poll() is None, f"mock_llm.py exited with {process.returncode}"
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=1):
                    break
            except OSError:
                assert time.monotonic() < deadline, "mock_llm.py did not answer /healthz"
                time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def post(url: str, path: str, body: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url + path, data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, {k.lower(): v for k, v in reply.headers.items()}, reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def parsed_usage(provider: str, path: str, status: int, headers: dict[str, str], body: bytes, stream: bool) -> u.Usage:
    route = detect.detect("mock-llm", path, provider)
    assert route is not None
    return parse_response(route, status, headers, body, stream, LIMIT)


def sse_data(body: bytes) -> list[Any]:
    return [json.loads(line[len(b"data: ") :]) for line in body.splitlines() if line.startswith(b"data: {")]


def chat(content: str, **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}], **extra}


def messages(content: str, **extra: Any) -> dict[str, Any]:
    return {"model": "claude-3-5-haiku-20241022", "max_tokens": 64, "messages": [{"role": "user", "content": content}], **extra}


# ---------------------------------------------------------------------------------
# OpenAI shape


def test_openai_whole_usage_parses(mock_url: str) -> None:
    status, headers, body = post(mock_url, "/v1/chat/completions", chat("How do I rotate my API key?"))
    reported = json.loads(body)["usage"]
    usage = parsed_usage("openai", "/v1/chat/completions", status, headers, body, stream=False)
    assert status == 200
    assert usage.known
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (
        reported["prompt_tokens"],
        reported["completion_tokens"],
        reported["total_tokens"],
    )
    assert reported["completion_tokens"] == len(json.loads(body)["choices"][0]["message"]["content"].split())


def test_openai_prompt_tokens_grow_with_prompt(mock_url: str) -> None:
    short = json.loads(post(mock_url, "/v1/chat/completions", chat("abcd"))[2])["usage"]["prompt_tokens"]
    long = json.loads(post(mock_url, "/v1/chat/completions", chat("abcd" * 301))[2])["usage"]["prompt_tokens"]
    assert long - short == 300  # 1,200 more characters at four per token


def test_openai_stream_usage_parses(mock_url: str) -> None:
    status, headers, body = post(mock_url, "/v1/chat/completions", chat("Summarise the incident.", stream=True, stream_options={"include_usage": True}))
    chunks = sse_data(body)
    reported = chunks[-1]["usage"]
    usage = parsed_usage("openai", "/v1/chat/completions", status, headers, body, stream=True)
    assert headers["content-type"].startswith("text/event-stream")
    assert body.endswith(b"data: [DONE]\n\n")
    assert chunks[-1]["choices"] == []
    assert all(chunk["usage"] is None for chunk in chunks[:-1])
    assert (usage.prompt_tokens, usage.completion_tokens) == (reported["prompt_tokens"], reported["completion_tokens"])


def test_openai_stream_without_include_usage_has_no_usage(mock_url: str) -> None:
    status, headers, body = post(mock_url, "/v1/chat/completions", chat("Summarise the incident.", stream=True))
    usage = parsed_usage("openai", "/v1/chat/completions", status, headers, body, stream=True)
    assert all("usage" not in chunk for chunk in sse_data(body))
    assert usage.unknown_reason == u.REASON_NO_USAGE


def test_openai_repeated_long_prefix_is_cached(mock_url: str) -> None:
    system = {"role": "system", "content": "Follow the handbook. " * 250}
    question = {"role": "user", "content": "first question"}
    body = {"model": "gpt-4o", "messages": [system, question]}
    first = json.loads(post(mock_url, "/v1/chat/completions", body)[2])["usage"]
    question["content"] = "second question"
    status, headers, raw = post(mock_url, "/v1/chat/completions", body)
    second = json.loads(raw)["usage"]
    usage = parsed_usage("openai", "/v1/chat/completions", status, headers, raw, stream=False)
    assert first["prompt_tokens_details"]["cached_tokens"] == 0
    assert second["prompt_tokens_details"]["cached_tokens"] >= 1024
    assert second["prompt_tokens_details"]["cached_tokens"] % 128 == 0
    assert usage.cached_tokens == second["prompt_tokens_details"]["cached_tokens"]


def test_openai_reasoning_model_reports_reasoning(mock_url: str) -> None:
    status, headers, body = post(mock_url, "/v1/chat/completions", {**chat("Plan the migration."), "model": "o3-mini"})
    reported = json.loads(body)["usage"]
    usage = parsed_usage("openai", "/v1/chat/completions", status, headers, body, stream=False)
    assert reported["completion_tokens_details"]["reasoning_tokens"] > 0
    assert usage.reasoning_tokens == reported["completion_tokens_details"]["reasoning_tokens"]
    assert usage.completion_tokens == reported["completion_tokens"]


def test_openai_missing_model_is_rejected(mock_url: str) -> None:
    status, headers, body = post(mock_url, "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]})
    assert status == 400
    assert json.loads(body)["error"]["type"] == "invalid_request_error"
    assert parsed_usage("openai", "/v1/chat/completions", status, headers, body, stream=False).unknown_reason == u.REASON_UPSTREAM_ERROR


# ---------------------------------------------------------------------------------
# Anthropic shape


def test_anthropic_whole_usage_parses(mock_url: str) -> None:
    status, headers, body = post(mock_url, "/v1/messages", messages("Write a haiku about rate limits."))
    reported = json.loads(body)["usage"]
    usage = parsed_usage("anthropic", "/v1/messages", status, headers, body, stream=False)
    assert status == 200
    assert usage.prompt_tokens == reported["input_tokens"] + reported["cache_creation_input_tokens"] + reported["cache_read_input_tokens"]
    assert usage.completion_tokens == reported["output_tokens"]


def test_anthropic_stream_usage_parses(mock_url: str) -> None:
    status, headers, body = post(mock_url, "/v1/messages", messages("Write a haiku about rate limits.", stream=True))
    events = sse_data(body)
    start = events[0]["message"]["usage"]
    delta = next(event for event in events if event["type"] == "message_delta")["usage"]
    usage = parsed_usage("anthropic", "/v1/messages", status, headers, body, stream=True)
    assert [event["type"] for event in events][-1] == "message_stop"
    # message_start carries a placeholder output count; the running total in message_delta is the real one.
    assert start["output_tokens"] == 1
    assert delta["output_tokens"] > 1
    assert usage.known
    assert (usage.prompt_tokens, usage.completion_tokens) == (start["input_tokens"], delta["output_tokens"])


def test_anthropic_cache_control_writes_then_reads(mock_url: str) -> None:
    system = [{"type": "text", "text": "Follow the handbook. " * 250, "cache_control": {"type": "ephemeral"}}]
    body = {**messages("first question"), "system": system, "model": "claude-sonnet-4-20250514"}
    first = parsed_usage("anthropic", "/v1/messages", *post(mock_url, "/v1/messages", body), stream=False)
    body["messages"][0]["content"] = "second question"
    second = parsed_usage("anthropic", "/v1/messages", *post(mock_url, "/v1/messages", body), stream=False)
    assert first.cache_write_tokens is not None and first.cache_write_tokens >= 1024
    assert first.cached_tokens == 0
    assert second.cached_tokens == first.cache_write_tokens
    assert second.cache_write_tokens == 0


def test_anthropic_missing_max_tokens_is_rejected(mock_url: str) -> None:
    body = messages("hi")
    del body["max_tokens"]
    status, _, raw = post(mock_url, "/v1/messages", body)
    assert status == 400
    assert json.loads(raw)["type"] == "error"


# ---------------------------------------------------------------------------------
# The compose stack's traffic, through the mock and the real plugin server


def declarative_services() -> dict[str, dict[str, Any]]:
    with open(ROOT / "deploy" / "kong.yml", encoding="utf-8") as handle:
        document = yaml.safe_load(handle)
    return {service["name"]: service for service in document["services"]}


def proxy_through(mock_url: str, worker: KongWorker, scenario: traffic.Scenario, route_prefix: str, body: dict[str, Any]) -> tuple[int, bytes]:
    """Do what Kong does for one request of the compose stack: strip the route prefix, proxy, log."""
    upstream_path = scenario.path[len(route_prefix) :]
    status, headers, answer = post(mock_url, upstream_path, body)
    request = KongRequest(
        method="POST",
        path=scenario.path,
        strip_path=route_prefix,
        headers={"content-type": "application/json"},
        body=json.dumps(body).encode(),
        service_host="mock-llm",
        service_port=8080,
        service_protocol="http",
    )
    outcome = worker.exchange(request, UpstreamResponse(status, headers, answer))
    assert outcome.log.status == "ok", outcome.log.error
    return status, answer


def reported_completion(service: str, body: dict[str, Any], answer: bytes) -> int:
    """Return the completion tokens that the mock's answer reports, read from the raw body."""
    if not body.get("stream"):
        report = json.loads(answer)["usage"]
        return int(report["completion_tokens"] if service == "openai" else report["output_tokens"])
    events = sse_data(answer)
    if service == "openai":
        return int(events[-1]["usage"]["completion_tokens"])
    return int(next(e for e in events if e["type"] == "message_delta")["usage"]["output_tokens"])


def test_compose_traffic_is_measured(mock_url: str, plugin_server: PluginServer, make_worker: Callable[..., KongWorker]) -> None:
    services = declarative_services()
    workers = {name: make_worker(service["plugins"][0]["config"]) for name, service in services.items()}
    prefixes = {name: service["routes"][0]["paths"][0] for name, service in services.items()}
    rng = random.Random(7)

    for scenario in traffic.SCENARIOS:
        service = next(name for name, prefix in prefixes.items() if scenario.path.startswith(prefix + "/"))
        body = scenario.build(rng)
        model = body.get("model", "")

        def measured() -> tuple[float, float, float]:
            return (
                plugin_server.value("kong_ai_llm_tokens_total", ai_provider=service, ai_model=model, token_type="completion_tokens"),
                plugin_server.value("kong_ai_llm_cost_total", ai_provider=service, ai_model=model),
                plugin_server.value("kong_ai_llm_usage_unknown_total", ai_provider=service),
            )

        before = measured()
        status, answer = proxy_through(mock_url, workers[service], scenario, prefixes[service], body)
        completion, cost, unknown = (after - earlier for after, earlier in zip(measured(), before))

        # OpenAI sends no usage in a stream unless stream_options.include_usage asks for it.
        usage_missing = service == "openai" and body.get("stream") is True and "stream_options" not in body
        if status != 200 or usage_missing:
            assert (completion, cost, unknown) == (0, 0, 1), scenario.name
        else:
            assert (completion, unknown) == (reported_completion(service, body, answer), 0), scenario.name
            assert cost > 0, f"{scenario.name}: {model} was not priced"
