"""The plugin's PDK calls per exchange, through the real process and the Kong emulator.

Every PDK call is a socket round trip from Kong, counted with HandleEvent in
``PhaseOutcome.round_trips``. Each case also checks what was recorded, so that a call
saved never costs a count or a label.
"""

from __future__ import annotations

import json
from typing import Any

from kong_ai_metrics.kong_emulator import KongRequest, UpstreamResponse

from .conftest import PluginServer
from .test_detect import MULTIPART

PROMPT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Summarise the incident report."}]}
ANSWER = json.dumps(
    {
        "id": "chatcmpl-7",
        "object": "chat.completion",
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Done."}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 31, "completion_tokens": 9, "total_tokens": 40},
    }
).encode()
STREAM = (
    b'data: {"id":"c","object":"chat.completion.chunk","model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"delta":{"content":"Done."}}]}\n\n'
    b'data: {"id":"c","object":"chat.completion.chunk","model":"gpt-4o-mini-2024-07-18","choices":[],"usage":{"prompt_tokens":31,"completion_tokens":2,"total_tokens":33}}\n\n'
    b"data: [DONE]\n\n"
)
JSON = {"content-type": "application/json"}
SSE = {"content-type": "text/event-stream"}

ACCESS_BUFFERED = ["kong.request.get_raw_body", "kong.nginx.set_ctx"]
LOG_BUFFERED = ["kong.log.serialize", "kong.nginx.get_ctx", "kong.service.response.get_raw_body"]


def chat(stream: bool | None) -> KongRequest:
    body: dict[str, Any] = dict(PROMPT)
    if stream is not None:
        body["stream"] = stream
    return KongRequest(method="POST", path="/v1/chat/completions", body=json.dumps(body).encode())


def total_tokens(server: PluginServer, model: str = "gpt-4o-mini") -> float:
    return server.value("kong_ai_llm_tokens_total", ai_model=model, token_type="total_tokens")


def test_whole_answer_stream_false_three_and_four(plugin_server: PluginServer, make_worker: Any) -> None:
    outcome = make_worker({"ai_metrics": True}).exchange(chat(False), UpstreamResponse(200, JSON, ANSWER))
    assert outcome.access.round_trips == 3
    assert outcome.access.methods == ACCESS_BUFFERED
    assert outcome.buffered is True
    assert outcome.log.round_trips == 4
    assert outcome.log.methods == LOG_BUFFERED
    # The label is the request's model, not the dated one in the response.
    assert total_tokens(plugin_server) == 40
    assert plugin_server.value("kong_ai_llm_requests_total", ai_model="gpt-4o-mini-2024-07-18") == 0


def test_whole_answer_without_stream_field_reads_uri(plugin_server: PluginServer, make_worker: Any) -> None:
    # The SDKs leave "stream" out when not streaming; only the URL can then tell an
    # OpenAI request from an Ollama one, which streams by default.
    outcome = make_worker({"ai_metrics": True}).exchange(chat(None), UpstreamResponse(200, JSON, ANSWER))
    assert outcome.access.round_trips == 4
    assert outcome.access.methods == ["kong.request.get_raw_body", "kong.nginx.get_var", "kong.nginx.set_ctx"]
    assert outcome.log.round_trips == 4
    assert total_tokens(plugin_server) == 40


def test_provider_setting_saves_uri_read(plugin_server: PluginServer, make_worker: Any) -> None:
    outcome = make_worker({"ai_metrics": True, "provider": "openai"}).exchange(chat(None), UpstreamResponse(200, JSON, ANSWER))
    assert outcome.access.round_trips == 3
    assert outcome.access.methods == ACCESS_BUFFERED
    assert outcome.log.round_trips == 4
    assert total_tokens(plugin_server) == 40


ROUTE_ID = "5f0c2a8e-2d4b-4c61-9a0e-7b3d1e6f4a21"
SERVICE_ID = "c1d7e3a9-8b2f-4e5d-a6c0-3f9b8e2d1a74"
ACCESS_URI = ["kong.request.get_raw_body", "kong.nginx.get_var", "kong.nginx.set_ctx"]
OLLAMA_CHAT = KongRequest(
    method="POST",
    path="/api/chat",
    body=b'{"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}',
    service_host="ollama.internal",
    service_port=11434,
    service_id=SERVICE_ID,
)
OLLAMA_STREAM = (
    b'{"model":"llama3.2","message":{"role":"assistant","content":"Hi"},"done":false}\n'
    b'{"model":"llama3.2","message":{"role":"assistant","content":""},"done":true,"prompt_eval_count":26,"eval_count":3}\n'
)
NDJSON = {"content-type": "application/x-ndjson"}


def test_global_plugin_reads_uri_every_time(plugin_server: PluginServer, make_worker: Any) -> None:
    # A global plugin runs for every Service, so no log event gives it the next request's host.
    worker = make_worker({"ai_metrics": True})
    for _ in range(2):
        outcome = worker.exchange(chat(None), UpstreamResponse(200, JSON, ANSWER))
        assert outcome.access.methods == ACCESS_URI
    assert total_tokens(plugin_server) == 80


def test_route_plugin_learns_service_host(plugin_server: PluginServer, make_worker: Any) -> None:
    worker = make_worker({"ai_metrics": True}, route_id=ROUTE_ID)
    first = worker.exchange(chat(None), UpstreamResponse(200, JSON, ANSWER))
    assert first.access.round_trips == 4
    assert first.access.methods == ACCESS_URI
    second = worker.exchange(chat(None), UpstreamResponse(200, JSON, ANSWER))
    assert second.access.round_trips == 3
    assert second.access.methods == ACCESS_BUFFERED
    assert second.buffered is True
    assert second.log.round_trips == 4
    assert total_tokens(plugin_server) == 80


def test_learned_host_skips_non_json_bodies(plugin_server: PluginServer, make_worker: Any) -> None:
    # On api.openai.com a body without "stream" usually requests a whole response, but a
    # multipart form or a bodyless GET states its stream flag elsewhere.
    worker = make_worker({"ai_metrics": True}, route_id=ROUTE_ID)
    worker.exchange(chat(None), UpstreamResponse(200, JSON, ANSWER))
    transcription = KongRequest(method="POST", path="/v1/audio/transcriptions", body=MULTIPART % b"true")
    outcome = worker.exchange(transcription, UpstreamResponse(200, SSE, b'data: {"type": "transcript.text.done"}\n\n'))
    assert outcome.access.methods == ["kong.request.get_raw_body", "kong.log.set_serialize_value"]
    assert outcome.buffered is False
    resumed = KongRequest(method="GET", path="/v1/responses/resp_68af", query="stream=true")
    outcome = worker.exchange(resumed, UpstreamResponse(200, SSE, b'data: {"type": "response.completed"}\n\n'))
    assert outcome.access.methods == ["kong.request.get_raw_body", "kong.nginx.get_var", "kong.log.set_serialize_value"]
    assert outcome.buffered is False


def test_service_plugin_follows_changed_host(plugin_server: PluginServer, make_worker: Any) -> None:
    worker = make_worker({"ai_metrics": True}, service_id=SERVICE_ID)
    openai = KongRequest(method="POST", path="/v1/chat/completions", body=json.dumps(PROMPT).encode(), service_id=SERVICE_ID)
    worker.exchange(openai, UpstreamResponse(200, JSON, ANSWER))
    assert worker.exchange(openai, UpstreamResponse(200, JSON, ANSWER)).access.methods == ACCESS_BUFFERED
    # The Service is repointed at Ollama, whose /api/chat streams by default. The first
    # request after the change is still decided by the old host and buffered, as the
    # README documents. Its log event reports the new host, so the next one is not.
    stale = worker.exchange(OLLAMA_CHAT, UpstreamResponse(200, NDJSON, OLLAMA_STREAM))
    assert stale.buffered is True
    fresh = worker.exchange(OLLAMA_CHAT, UpstreamResponse(200, NDJSON, OLLAMA_STREAM))
    assert fresh.buffered is False
    assert fresh.access.methods == ["kong.request.get_raw_body", "kong.nginx.get_var", "kong.log.set_serialize_value"]
    assert total_tokens(plugin_server, "llama3.2") == 29
    assert plugin_server.value("kong_ai_llm_usage_unknown_total", ai_model="llama3.2", reason="body_not_buffered") == 1


def test_ai_proxy_route_learns_no_host(plugin_server: PluginServer, make_worker: Any) -> None:
    # ai-proxy picks the upstream itself (here Gemini behind an api.openai.com Service),
    # so the plugin learns no host from a log event that carries Kong's AI statistics.
    statistics = {"proxy": {"meta": {"provider_name": "gemini", "request_model": "gemini-2.5-flash"}, "usage": {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}}}
    worker = make_worker({"ai_metrics": True}, route_id=ROUTE_ID)
    gemini = KongRequest(
        method="POST",
        path="/v1beta/models/gemini-2.5-flash:streamGenerateContent",
        body=b'{"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}',
        ai_statistics=statistics,
    )
    rate_limited = KongRequest(method="POST", path=gemini.path, body=gemini.body, exit_before=429)
    # An ai-proxy failure that logs no statistics, after the request was proxied.
    failed = KongRequest(method="POST", path=gemini.path, body=gemini.body)
    # Neither a request that an earlier plugin rejected nor one without statistics may
    # make the plugin trust the host, before or after ai-proxy's statistics were seen.
    for request in (rate_limited, gemini, failed, rate_limited, gemini):
        outcome = worker.exchange(request, UpstreamResponse(200, SSE, b"data: {}\n\n"))
        if request is gemini:
            assert outcome.access.methods == ["kong.request.get_raw_body", "kong.nginx.get_var", "kong.log.set_serialize_value"]
            assert outcome.buffered is False
    assert total_tokens(plugin_server, "gemini-2.5-flash") == 12


def test_provider_setting_overrides_learned_host(plugin_server: PluginServer, make_worker: Any) -> None:
    # With provider ollama, a body without "stream" streams whatever the Service host is.
    worker = make_worker({"ai_metrics": True, "provider": "ollama"}, route_id=ROUTE_ID)
    for _ in range(2):
        outcome = worker.exchange(OLLAMA_CHAT, UpstreamResponse(200, NDJSON, OLLAMA_STREAM))
        assert outcome.buffered is False
    assert plugin_server.value("kong_ai_llm_requests_total", ai_provider="ollama", ai_model="llama3.2") == 2


def test_provider_matching_host_skips_uri(plugin_server: PluginServer, make_worker: Any) -> None:
    # Anthropic streams by the URL on Vertex, so provider anthropic alone needs the URI;
    # on api.anthropic.com the stream flag is in the body.
    messages = b'{"model": "claude-sonnet-4-5", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}'
    answer = json.dumps(
        {"type": "message", "model": "claude-sonnet-4-5", "content": [], "stop_reason": "end_turn", "usage": {"input_tokens": 12, "output_tokens": 5}}
    ).encode()
    anthropic = KongRequest(method="POST", path="/v1/messages", body=messages, service_host="api.anthropic.com")
    vertex = KongRequest(
        method="POST",
        path="/v1/projects/p/locations/us-east5/publishers/anthropic/models/claude-sonnet-4-5:streamRawPredict",
        body=b'{"anthropic_version": "vertex-2023-10-16", "max_tokens": 64, "messages": []}',
        service_host="us-east5-aiplatform.googleapis.com",
    )
    direct = make_worker({"ai_metrics": True, "provider": "anthropic"}, route_id=ROUTE_ID)
    assert direct.exchange(anthropic, UpstreamResponse(200, JSON, answer)).access.methods == ACCESS_URI
    second = direct.exchange(anthropic, UpstreamResponse(200, JSON, answer))
    assert second.access.methods == ACCESS_BUFFERED
    assert plugin_server.value("kong_ai_llm_tokens_total", ai_model="claude-sonnet-4-5", token_type="total_tokens") == 34
    on_vertex = make_worker({"ai_metrics": True, "provider": "anthropic"}, route_id=SERVICE_ID)
    for _ in range(2):
        outcome = on_vertex.exchange(vertex, UpstreamResponse(200, SSE, b"event: ping\ndata: {}\n\n"))
        assert outcome.access.methods == ["kong.request.get_raw_body", "kong.nginx.get_var", "kong.log.set_serialize_value"]
        assert outcome.buffered is False


def test_buffered_streams_save_uri_read(plugin_server: PluginServer, make_worker: Any) -> None:
    worker = make_worker({"ai_metrics": True, "buffer_streaming_responses": True})
    whole = worker.exchange(chat(None), UpstreamResponse(200, JSON, ANSWER))
    streamed = worker.exchange(chat(True), UpstreamResponse(200, SSE, STREAM))
    for outcome in (whole, streamed):
        assert outcome.access.round_trips == 3
        assert outcome.access.methods == ACCESS_BUFFERED
        assert outcome.buffered is True
        assert outcome.log.round_trips == 4
    assert total_tokens(plugin_server) == 40 + 33


def test_unbuffered_stream_three_and_two(plugin_server: PluginServer, make_worker: Any) -> None:
    outcome = make_worker({"ai_metrics": True}).exchange(chat(True), UpstreamResponse(200, SSE, STREAM))
    assert outcome.access.round_trips == 3
    assert outcome.access.methods == ["kong.request.get_raw_body", "kong.log.set_serialize_value"]
    assert outcome.buffered is False
    assert outcome.log.round_trips == 2
    assert outcome.log.methods == ["kong.log.serialize"]
    assert plugin_server.value("kong_ai_llm_requests_total", ai_model="gpt-4o-mini") == 1
    assert plugin_server.value("kong_ai_llm_usage_unknown_total", ai_model="gpt-4o-mini", reason="body_not_buffered") == 1


def test_url_stream_never_buffered(plugin_server: PluginServer, make_worker: Any) -> None:
    worker = make_worker({"ai_metrics": True})
    gemini = KongRequest(
        method="POST",
        path="/v1beta/models/gemini-2.5-flash:streamGenerateContent",
        query="alt=sse",
        body=b'{"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}',
        service_host="generativelanguage.googleapis.com",
    )
    ollama = KongRequest(method="POST", path="/api/chat", body=b'{"model": "llama3.2", "messages": []}', service_host="ollama.internal", service_port=11434)
    for request in (gemini, ollama):
        outcome = worker.exchange(request, UpstreamResponse(200, SSE, b"data: {}\n\n"))
        assert outcome.buffered is False, request.path
        assert outcome.access.methods == ["kong.request.get_raw_body", "kong.nginx.get_var", "kong.log.set_serialize_value"]
        assert outcome.log.round_trips == 2
    assert plugin_server.value("kong_ai_llm_requests_total", ai_provider="gemini", ai_model="gemini-2.5-flash") == 1
    assert plugin_server.value("kong_ai_llm_requests_total", ai_provider="ollama", ai_model="llama3.2") == 1


def test_url_stream_buffered_parsed(plugin_server: PluginServer, make_worker: Any) -> None:
    # With every answer buffered the URI is not read in access; the log phase takes the
    # stream flag from the serialized upstream_uri instead.
    worker = make_worker({"ai_metrics": True, "buffer_streaming_responses": True})
    ndjson = (
        b'{"model":"llama3.2","message":{"role":"assistant","content":"Hi"},"done":false}\n'
        b'{"model":"llama3.2","message":{"role":"assistant","content":""},"done":true,"prompt_eval_count":26,"eval_count":3}\n'
    )
    request = KongRequest(method="POST", path="/api/chat", body=b'{"model": "llama3.2", "messages": []}', service_host="ollama.internal", service_port=11434)
    outcome = worker.exchange(request, UpstreamResponse(200, {"content-type": "application/x-ndjson"}, ndjson))
    assert outcome.access.round_trips == 3
    assert outcome.log.round_trips == 4
    assert total_tokens(plugin_server, "llama3.2") == 29


def test_ai_metrics_false_one_and_two(plugin_server: PluginServer, make_worker: Any) -> None:
    outcome = make_worker({"ai_metrics": False}).exchange(chat(False), UpstreamResponse(200, JSON, ANSWER))
    assert outcome.access.round_trips == 1
    assert outcome.log.round_trips == 2


def test_buffering_switched_off_still_counted(plugin_server: PluginServer, make_worker: Any) -> None:
    # Kong drops the buffering field, facts and all, on an upgrade; the request reached
    # the balancer, so it still counts, labelled without the body's model.
    request = chat(False)
    request.upgrade = True
    outcome = make_worker({"ai_metrics": True, "model": "configured-model"}).exchange(request, UpstreamResponse(200, JSON, ANSWER))
    assert outcome.buffered is False
    assert outcome.log.methods == ["kong.log.serialize", "kong.nginx.get_ctx"]
    assert plugin_server.value("kong_ai_llm_usage_unknown_total", ai_model="configured-model", reason="body_not_buffered") == 1
    assert plugin_server.value("kong_ai_metrics_errors_total") == 0


def test_stream_flag_kept_for_buffered_parse(plugin_server: PluginServer, make_worker: Any) -> None:
    # An SSE body served with a JSON content type is still read as a stream, because the
    # request said "stream": true and the facts carried that to the log phase.
    worker = make_worker({"ai_metrics": True, "buffer_streaming_responses": True})
    outcome = worker.exchange(chat(True), UpstreamResponse(200, JSON, STREAM))
    assert outcome.log.status == "ok"
    assert total_tokens(plugin_server) == 33
