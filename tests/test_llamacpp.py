"""llama.cpp's llama-server: native /completion and /embedding, and its OpenAI-compatible routes."""

from __future__ import annotations

import json
from typing import Any

from kong_ai_metrics.detect import Route, detect
from kong_ai_metrics.providers import parse_response
from kong_ai_metrics.usage import Usage

from .test_openai import numbers

COMPLETION = Route("llama_cpp", "completion")
JSON = {"content-type": "application/json; charset=utf-8"}
SSE = {"content-type": "text/event-stream"}
MODEL = "qwen2.5-7b-instruct-q4_k_m.gguf"
# timings.prompt_n (4) is only what was evaluated after reusing 10 cached tokens.
TIMINGS = {
    "cache_n": 10,
    "prompt_n": 4,
    "prompt_ms": 18.31,
    "prompt_per_token_ms": 4.58,
    "prompt_per_second": 218.46,
    "predicted_n": 8,
    "predicted_ms": 121.9,
    "predicted_per_token_ms": 15.24,
    "predicted_per_second": 65.63,
}
FINAL: dict[str, Any] = {
    "index": 0,
    "content": " Paris is the capital of France.",
    "tokens": [],
    "id_slot": 0,
    "stop": True,
    "model": MODEL,
    "tokens_predicted": 8,
    "tokens_evaluated": 14,
    "generation_settings": {"n_predict": 64, "temperature": 0.8, "top_k": 40, "top_p": 0.95, "stream": False},
    "prompt": "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "has_new_line": False,
    "truncated": False,
    "stop_type": "eos",
    "stopping_word": "",
    # KV-cache cells in use after generation (prompt + output), not cached prompt tokens.
    "tokens_cached": 21,
    "timings": TIMINGS,
}


def parse(route: Route, body: bytes, stream: bool, headers: dict[str, str] | None = None) -> Usage:
    return parse_response(route, 200, headers or (SSE if stream else JSON), body, stream, 1 << 20)


def data(value: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(value, separators=(",", ":")).encode() + b"\n\n"


def partial(index: int, text: str) -> bytes:
    return data({"index": 0, "content": text, "tokens": [12366 + index], "stop": False, "id_slot": -1, "tokens_predicted": index, "tokens_evaluated": 14})


PARTIALS = partial(1, " Paris") + partial(2, " is") + partial(3, " the")
STREAM_FINAL = data({**FINAL, "content": "", "generation_settings": {**FINAL["generation_settings"], "stream": True}})


def test_completion_counts_not_timings() -> None:
    usage = parse(COMPLETION, json.dumps(FINAL).encode(), False)
    assert numbers(usage) == (14, 8, 22, 10, None, None, None)
    assert usage.response_model == MODEL


def test_completion_stream_usage_repeated_in_every_chunk() -> None:
    usage = parse(COMPLETION, PARTIALS + STREAM_FINAL, True)
    # Summing would give 1 + 2 + 3 + 8 completion tokens.
    assert numbers(usage) == (14, 8, 22, 10, None, None, None)


def test_completion_stream_truncated_keeps_running_counts() -> None:
    usage = parse(COMPLETION, PARTIALS, True)
    assert numbers(usage) == (14, 3, 17, None, None, None, "truncated_stream")


def test_completion_stream_error_event() -> None:
    error = data({"error": {"code": 500, "message": "Failed to decode the batch", "type": "server_error"}})
    usage = parse(COMPLETION, PARTIALS + error, True)
    assert numbers(usage) == (14, 3, 17, None, None, None, "stream_error")


def test_context_size_error_numbers_are_not_usage() -> None:
    body = {
        "error": {
            "code": 400,
            "message": "the request exceeds the available context size, try increasing it",
            "type": "exceed_context_size_error",
            "n_prompt_tokens": 5103,
            "n_ctx": 4096,
        }
    }
    assert numbers(parse(COMPLETION, json.dumps(body).encode(), False)) == (None, None, None, None, None, None, "upstream_error")
    usage = parse_response(COMPLETION, 400, JSON, json.dumps(body).encode(), False, 1 << 20)
    assert numbers(usage) == (None, None, None, None, None, None, "upstream_error")


def test_prompt_list_results_are_added() -> None:
    second = {**FINAL, "index": 1, "content": " Berlin.", "tokens_predicted": 3, "tokens_evaluated": 15, "timings": {**TIMINGS, "cache_n": 0, "prompt_n": 15}}
    usage = parse(COMPLETION, json.dumps([FINAL, second]).encode(), False)
    assert numbers(usage) == (29, 11, 40, 10, None, None, None)


def test_native_answer_on_completions_alias() -> None:
    # llama-server serves the native response on /completions too, a path detect names like OpenAI's.
    route = detect("gpu-box.example", "/completions", "llama_cpp")
    assert route == Route("llama_cpp", "completions")
    assert numbers(parse(route, json.dumps(FINAL).encode(), False)) == (14, 8, 22, 10, None, None, None)


def test_native_embedding_has_no_counts() -> None:
    body = [{"index": 0, "embedding": [[0.0123, -0.0456, 0.0789]]}]
    usage = parse(Route("llama_cpp", "embedding"), json.dumps(body).encode(), False)
    assert numbers(usage) == (None, None, None, None, None, None, "no_usage")


def test_openai_chat_whole_with_timings() -> None:
    body = {
        "choices": [{"finish_reason": "stop", "index": 0, "message": {"role": "assistant", "content": "Paris."}}],
        "created": 1764852500,
        "model": MODEL,
        "system_fingerprint": "b6432-4c3a0e1f",
        "object": "chat.completion",
        "usage": {"completion_tokens": 3, "prompt_tokens": 25, "total_tokens": 28},
        "id": "chatcmpl-rD0mPz8yXc4W1vQe",
        "timings": {**TIMINGS, "cache_n": 21, "prompt_n": 4, "predicted_n": 3},
    }
    usage = parse(Route("llama_cpp", "chat"), json.dumps(body).encode(), False)
    assert numbers(usage) == (25, 3, 28, None, None, None, None)


def test_detect_native_paths() -> None:
    assert detect("gpu-box.example", "/completion") == COMPLETION
    assert detect("gpu-box.example", "/embedding") == Route("llama_cpp", "embedding")
