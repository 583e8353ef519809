"""OpenAI Responses API and OpenAI-compatible servers: vLLM, OpenRouter, DeepSeek, llama.cpp."""

from __future__ import annotations

import gzip
import json
from typing import Any

from kong_ai_metrics.detect import Route
from kong_ai_metrics.providers import parse_response
from kong_ai_metrics.usage import Usage

from .test_openai import numbers

RESPONSES = Route("openai", "responses")
COMPATIBLE = Route("openai_compatible", "chat")
JSON = {"content-type": "application/json"}
SSE = {"content-type": "text/event-stream"}


def parse(route: Route, body: bytes, stream: bool = False, headers: dict[str, str] | None = None) -> Usage:
    return parse_response(route, 200, headers or (SSE if stream else JSON), body, stream, 1 << 20)


def data_lines(*chunks: dict[str, Any]) -> bytes:
    return b"".join(b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n" for chunk in chunks)


def named_events(*events: dict[str, Any]) -> bytes:
    return b"".join(f"event: {e['type']}\ndata: {json.dumps(e, separators=(',', ':'))}\n\n".encode() for e in events)


# --- OpenAI Responses API ---------------------------------------------------------

RESPONSE_ID = "resp_68b1e3f0a2c481909d5f4c1b7e2a6d3c0f9e8b7a6d5c4b3a"
RESPONSE_USAGE = {
    "input_tokens": 2180,
    "input_tokens_details": {"cached_tokens": 1920},
    "output_tokens": 310,
    "output_tokens_details": {"reasoning_tokens": 192},
    "total_tokens": 2490,
}


def response_object(status: str, usage: dict[str, Any] | None, **extra: Any) -> dict[str, Any]:
    return {
        "id": RESPONSE_ID,
        "object": "response",
        "created_at": 1764851400,
        "status": status,
        "error": None,
        "incomplete_details": None,
        "model": "o4-mini-2025-04-16",
        "output": [],
        "parallel_tool_calls": True,
        "reasoning": {"effort": "medium", "summary": None},
        "store": True,
        "usage": usage,
        **extra,
    }


STREAM_OPENING = (
    {"type": "response.created", "sequence_number": 0, "response": response_object("in_progress", None)},
    {"type": "response.in_progress", "sequence_number": 1, "response": response_object("in_progress", None)},
    {
        "type": "response.output_item.added",
        "sequence_number": 2,
        "output_index": 1,
        "item": {"id": "msg_68b1e3f4c2", "type": "message", "status": "in_progress", "content": [], "role": "assistant"},
    },
    {
        "type": "response.output_text.delta",
        "sequence_number": 3,
        "item_id": "msg_68b1e3f4c2",
        "output_index": 1,
        "content_index": 0,
        "delta": "The invoice total is",
        "logprobs": [],
    },
)


def test_responses_whole_reports_cached_and_reasoning() -> None:
    body = json.dumps(response_object("completed", RESPONSE_USAGE)).encode()
    assert numbers(parse(RESPONSES, body)) == (2180, 310, 2490, 1920, None, 192, None)


def test_responses_whole_incomplete_still_billed() -> None:
    usage = {**RESPONSE_USAGE, "output_tokens": 1024, "output_tokens_details": {"reasoning_tokens": 1024}, "total_tokens": 3204}
    body = json.dumps(response_object("incomplete", usage, incomplete_details={"reason": "max_output_tokens"})).encode()
    assert numbers(parse(RESPONSES, body)) == (2180, 1024, 3204, 1920, None, 1024, None)


def test_responses_stream_usage_only_in_completed() -> None:
    completed = {"type": "response.completed", "sequence_number": 7, "response": response_object("completed", RESPONSE_USAGE)}
    usage = parse(RESPONSES, named_events(*STREAM_OPENING, completed), stream=True)
    assert numbers(usage) == (2180, 310, 2490, 1920, None, 192, None)
    assert usage.response_model == "o4-mini-2025-04-16"


def test_responses_stream_incomplete_event_has_usage() -> None:
    usage = {**RESPONSE_USAGE, "output_tokens": 1024, "output_tokens_details": {"reasoning_tokens": 1024}, "total_tokens": 3204}
    incomplete = {
        "type": "response.incomplete",
        "sequence_number": 5,
        "response": response_object("incomplete", usage, incomplete_details={"reason": "max_output_tokens"}),
    }
    parsed = parse(RESPONSES, named_events(*STREAM_OPENING, incomplete), stream=True)
    assert numbers(parsed) == (2180, 1024, 3204, 1920, None, 1024, None)


def test_responses_stream_error_then_failed() -> None:
    error = {
        "type": "error",
        "sequence_number": 4,
        "code": "server_error",
        "message": "The server had an error while processing your request. Sorry about that!",
        "param": None,
    }
    failed_response = response_object("failed", None, error={"code": "server_error", "message": "The server had an error."})
    failed = {"type": "response.failed", "sequence_number": 5, "response": failed_response}
    usage = parse(RESPONSES, named_events(*STREAM_OPENING, error, failed), stream=True)
    assert numbers(usage) == (None, None, None, None, None, None, "stream_error")


def test_responses_stream_failed_keeps_reported_counts() -> None:
    usage = {"input_tokens": 2180, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 17, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 2197}
    failed_response = response_object("failed", usage, error={"code": "server_error", "message": "The server had an error."})
    failed = {"type": "response.failed", "sequence_number": 5, "response": failed_response}
    parsed = parse(RESPONSES, named_events(*STREAM_OPENING, failed), stream=True)
    assert numbers(parsed) == (2180, 17, 2197, 0, None, 0, "stream_error")


def test_responses_stream_cut_before_completed() -> None:
    usage = parse(RESPONSES, named_events(*STREAM_OPENING), stream=True)
    assert numbers(usage) == (None, None, None, None, None, None, "truncated_stream")


# --- vLLM -------------------------------------------------------------------------

VLLM_ID = "chatcmpl-b6e0f2c1a4d44c5c9a0f8e0d7c3b2a19"
VLLM_MODEL = "meta-llama/Llama-3.1-8B-Instruct"


def vllm_chunk(content: str | None, finish: str | None, completion: int, choices: bool = True) -> dict[str, Any]:
    chunk: dict[str, Any] = {"id": VLLM_ID, "object": "chat.completion.chunk", "created": 1764851000, "model": VLLM_MODEL}
    delta = {} if content is None else {"content": content}
    chunk["choices"] = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}] if choices else []
    # continuous_usage_stats: the running usage rides on every chunk.
    chunk["usage"] = {"prompt_tokens": 42, "total_tokens": 42 + completion, "completion_tokens": completion, "prompt_tokens_details": None}
    return chunk


VLLM_CHUNKS = (
    vllm_chunk("", None, 0),
    vllm_chunk("Paris", None, 1),
    vllm_chunk(" is", None, 2),
    vllm_chunk(" the", None, 3),
    vllm_chunk(" capital.", None, 4),
    vllm_chunk(None, "stop", 5),
    vllm_chunk(None, None, 5, choices=False),
)


def test_vllm_usage_repeated_in_every_chunk_takes_last() -> None:
    usage = parse(COMPATIBLE, data_lines(*VLLM_CHUNKS) + b"data: [DONE]\n\n", stream=True)
    # Summing the running totals would give 42 * 7 prompt tokens.
    assert numbers(usage) == (42, 5, 47, None, None, None, None)
    assert usage.response_model == VLLM_MODEL


def test_vllm_usage_repeated_in_every_chunk_truncated() -> None:
    # Cut after the third token: the running usage seen so far is not a final report.
    usage = parse(COMPATIBLE, data_lines(*VLLM_CHUNKS[:4]), stream=True)
    assert numbers(usage) == (42, 3, 45, None, None, None, "truncated_stream")


def test_vllm_error_body() -> None:
    body = json.dumps(
        {
            "object": "error",
            "message": "This model's maximum context length is 8192 tokens. However, you requested 9216 tokens.",
            "type": "BadRequestError",
            "param": None,
            "code": 400,
        }
    ).encode()
    usage = parse_response(COMPATIBLE, 400, JSON, body, False, 1 << 20)
    assert numbers(usage) == (None, None, None, None, None, None, "upstream_error")


def test_gzip_over_sse_vllm_stream() -> None:
    body = gzip.compress(data_lines(*VLLM_CHUNKS) + b"data: [DONE]\n\n")
    headers = {"content-type": "text/event-stream", "content-encoding": "gzip"}
    usage = parse_response(COMPATIBLE, 200, headers, body, True, 1 << 20)
    assert numbers(usage) == (42, 5, 47, None, None, None, None)


# --- OpenRouter -------------------------------------------------------------------

OPENROUTER_ID = "gen-1764851200-Qx8kd0sWbZ3vLr7TnH2a"


def openrouter_chunk(content: str, finish: str | None, usage: dict[str, Any] | None = None) -> dict[str, Any]:
    chunk: dict[str, Any] = {
        "id": OPENROUTER_ID,
        "provider": "OpenAI",
        "model": "openai/gpt-4o-mini",
        "object": "chat.completion.chunk",
        "created": 1764851200,
        "choices": [
            {
                "index": 0,
                "delta": {"role": "assistant", "content": content},
                "finish_reason": finish,
                "native_finish_reason": finish,
                "logprobs": None,
            }
        ],
    }
    if usage is not None:
        chunk["usage"] = usage
    return chunk


OPENROUTER_USAGE = {
    "prompt_tokens": 14,
    "completion_tokens": 9,
    "total_tokens": 23,
    "cost": 0.0000075,
    "is_byok": False,
    "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
    "cost_details": {"upstream_inference_cost": None, "upstream_inference_prompt_cost": 0.0000021, "upstream_inference_completions_cost": 0.0000054},
    "completion_tokens_details": {"reasoning_tokens": 0, "image_tokens": 0},
}


def test_openrouter_processing_comments_and_cost() -> None:
    body = (
        b": OPENROUTER PROCESSING\n\n: OPENROUTER PROCESSING\n\n"
        + data_lines(openrouter_chunk("Hello", None), openrouter_chunk(" there!", None), openrouter_chunk("", "stop"))
        + b": OPENROUTER PROCESSING\n\n"
        + data_lines(openrouter_chunk("", None, OPENROUTER_USAGE))
        + b"data: [DONE]\n\n"
    )
    usage = parse(COMPATIBLE, body, stream=True)
    # usage.cost is dollars (0.0000075), never a token count.
    assert numbers(usage) == (14, 9, 23, 0, None, 0, None)
    assert usage.response_model == "openai/gpt-4o-mini"


def test_openrouter_cut_while_processing() -> None:
    body = b": OPENROUTER PROCESSING\n\n" + data_lines(openrouter_chunk("Hello", None))
    usage = parse(COMPATIBLE, body, stream=True)
    assert numbers(usage) == (None, None, None, None, None, None, "truncated_stream")


# --- DeepSeek ---------------------------------------------------------------------


def deepseek_body(usage: dict[str, Any]) -> bytes:
    return json.dumps(
        {
            "id": "9f3b2c1e-7a4d-4e8b-9c2f-1a5d6e7f8a9b",
            "object": "chat.completion",
            "created": 1764851300,
            "model": "deepseek-chat",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Done."}, "logprobs": None, "finish_reason": "stop"}],
            "usage": usage,
            "system_fingerprint": "fp_8802369eaa_prod0425fp8",
        }
    ).encode()


def test_deepseek_cache_hit_with_details() -> None:
    usage = {
        "prompt_tokens": 1536,
        "completion_tokens": 212,
        "total_tokens": 1748,
        "prompt_tokens_details": {"cached_tokens": 1408},
        "prompt_cache_hit_tokens": 1408,
        "prompt_cache_miss_tokens": 128,
    }
    assert numbers(parse(COMPATIBLE, deepseek_body(usage))) == (1536, 212, 1748, 1408, None, None, None)


def test_deepseek_prompt_cache_hit_tokens_only() -> None:
    # Older DeepSeek answers split the prompt into hit + miss and carry no details.
    usage = {"prompt_tokens": 1536, "completion_tokens": 212, "total_tokens": 1748, "prompt_cache_hit_tokens": 1408, "prompt_cache_miss_tokens": 128}
    assert numbers(parse(COMPATIBLE, deepseek_body(usage))) == (1536, 212, 1748, 1408, None, None, None)


def test_deepseek_reasoner_stream() -> None:
    base = {"id": "b41d6f0e-2c8a-4f3b-a1e9-5d7c3b2a1f0e", "object": "chat.completion.chunk", "created": 1764851310, "model": "deepseek-reasoner", "system_fingerprint": "fp_7e73fd9a08_prod0425fp8"}
    think = {**base, "choices": [{"index": 0, "delta": {"reasoning_content": "Two plus two"}, "logprobs": None, "finish_reason": None}]}
    answer = {**base, "choices": [{"index": 0, "delta": {"content": "4"}, "logprobs": None, "finish_reason": None}]}
    final = {
        **base,
        "choices": [{"index": 0, "delta": {"content": ""}, "logprobs": None, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": 18,
            "completion_tokens": 141,
            "total_tokens": 159,
            "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 128},
            "prompt_cache_hit_tokens": 0,
            "prompt_cache_miss_tokens": 18,
        },
    }
    usage = parse(COMPATIBLE, data_lines(think, answer, final) + b"data: [DONE]\n\n", stream=True)
    assert numbers(usage) == (18, 141, 159, 0, None, 128, None)


# --- llama.cpp's OpenAI-compatible routes -----------------------------------------

LLAMA_ROUTE = Route("llama_cpp", "chat")
TIMINGS = {
    "cache_n": 236,
    "prompt_n": 12,
    "prompt_ms": 35.2,
    "prompt_per_token_ms": 2.93,
    "prompt_per_second": 340.9,
    "predicted_n": 9,
    "predicted_ms": 140.1,
    "predicted_per_token_ms": 15.57,
    "predicted_per_second": 64.24,
}


def llama_chunk(delta: dict[str, Any], finish: str | None, **extra: Any) -> dict[str, Any]:
    return {
        "choices": [{"finish_reason": finish, "index": 0, "delta": delta}],
        "created": 1764851500,
        "id": "chatcmpl-rD0mPz8yXc4W1vQe",
        "model": "qwen2.5-7b-instruct-q4_k_m.gguf",
        "system_fingerprint": "b6432-4c3a0e1f",
        "object": "chat.completion.chunk",
        **extra,
    }


def test_llamacpp_usage_chunk_with_timings() -> None:
    usage_chunk = llama_chunk({}, None, usage={"completion_tokens": 9, "prompt_tokens": 248, "total_tokens": 257}, timings=TIMINGS)
    usage_chunk["choices"] = []
    body = data_lines(llama_chunk({"role": "assistant", "content": None}, None), llama_chunk({"content": "Sure."}, None), llama_chunk({}, "stop"), usage_chunk) + b"data: [DONE]\n\n"
    usage = parse(LLAMA_ROUTE, body, stream=True)
    # timings.prompt_n (12) counts only what was evaluated after the KV-cache reuse.
    assert numbers(usage) == (248, 9, 257, None, None, None, None)


def test_llamacpp_older_build_usage_on_finish_chunk() -> None:
    finish = llama_chunk({}, "stop", usage={"completion_tokens": 9, "prompt_tokens": 248, "total_tokens": 257}, timings=TIMINGS)
    body = data_lines(llama_chunk({"content": "Sure."}, None), finish) + b"data: [DONE]\n\n"
    assert numbers(parse(LLAMA_ROUTE, body, stream=True)) == (248, 9, 257, None, None, None, None)
