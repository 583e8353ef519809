"""Hugging Face: TGI /generate and /generate_stream, OpenAI-shaped chat, serverless tasks."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kong_ai_metrics.detect import Route, detect
from kong_ai_metrics.providers import parse_response, read_request
from kong_ai_metrics.usage import Usage

from .test_openai import numbers

GENERATE = Route("huggingface", "tgi_generate", stream=False)
GENERATE_STREAM = Route("huggingface", "tgi_generate", stream=True)
CHAT = Route("huggingface", "chat")
ENDPOINT_HOST = "llama-3-1-8b-instruct-xkd.us-east-1.aws.endpoints.huggingface.cloud"
SERVERLESS = Route("huggingface", "tgi_generate", model="mistralai/Mistral-7B-Instruct-v0.3")

# Headers TGI sends with every /generate response (router/src/server.rs, generate_internal).
TGI_HEADERS = {
    "content-type": "application/json",
    "x-compute-type": "1-nvidia-a10g",
    "x-compute-time": "0.921553218",
    "x-compute-characters": "49",
    "x-total-time": "921",
    "x-validation-time": "1",
    "x-queue-time": "0",
    "x-inference-time": "920",
    "x-time-per-token": "46",
    "x-prompt-tokens": "11",
    "x-generated-tokens": "20",
}
# /generate_stream sends its headers before generating, so no counts there.
STREAM_HEADERS = {"content-type": "text/event-stream", "x-compute-type": "1-nvidia-a10g", "x-compute-characters": "49", "x-accel-buffering": "no"}
GENERATED_TEXT = " Deep learning is a subset of machine learning that uses neural networks with many layers."


def parse(route: Route, body: bytes, stream: bool, headers: dict[str, str]) -> Usage:
    return parse_response(route, 200, headers, body, stream, 1 << 20)


def tgi_event(value: dict[str, Any]) -> bytes:
    # TGI's axum SSE writer puts no space after "data:".
    return b"data:" + json.dumps(value, separators=(",", ":")).encode() + b"\n\n"


def token_event(index: int, text: str) -> bytes:
    token = {"id": 1000 + index, "text": text, "logprob": -0.42, "special": False}
    return tgi_event({"index": index, "token": token, "generated_text": None, "details": None})


def last_event(details: dict[str, Any] | None) -> bytes:
    token = {"id": 2, "text": "</s>", "logprob": -0.08, "special": True}
    return tgi_event({"index": 20, "token": token, "generated_text": GENERATED_TEXT, "details": details})


TOKENS = token_event(1, " Deep") + token_event(2, " learning") + token_event(3, " is")
STREAM_DETAILS = {"finish_reason": "eos_token", "generated_tokens": 20, "seed": None, "input_length": 11}


def test_usage_in_tgi_header() -> None:
    body = json.dumps({"generated_text": GENERATED_TEXT}).encode()
    assert numbers(parse(GENERATE, body, False, TGI_HEADERS)) == (11, 20, 31, None, None, None, None)


def test_tgi_header_wins_over_details() -> None:
    details = {"finish_reason": "length", "generated_tokens": 20, "seed": None, "prefill": [], "tokens": []}
    body = json.dumps({"generated_text": GENERATED_TEXT, "details": details}).encode()
    assert numbers(parse(GENERATE, body, False, TGI_HEADERS)) == (11, 20, 31, None, None, None, None)


def test_details_without_headers_leave_prompt_unknown() -> None:
    details = {"finish_reason": "length", "generated_tokens": 20, "seed": 1234, "prefill": [], "tokens": []}
    body = json.dumps({"generated_text": GENERATED_TEXT, "details": details}).encode()
    # Only the headers carry the prompt count, so prompt and total stay unreported.
    assert numbers(parse(GENERATE, body, False, {"content-type": "application/json"})) == (None, 20, None, None, None, None, None)


def test_generate_without_headers_or_details() -> None:
    body = json.dumps({"generated_text": GENERATED_TEXT}).encode()
    assert numbers(parse(GENERATE, body, False, {"content-type": "application/json"})) == (None, None, None, None, None, None, "no_usage")


def test_generate_stream_details_in_last_event() -> None:
    usage = parse(GENERATE_STREAM, TOKENS + last_event(STREAM_DETAILS), True, STREAM_HEADERS)
    assert numbers(usage) == (11, 20, 31, None, None, None, None)


def test_generate_stream_older_prompt_tokens_field() -> None:
    details = {"finish_reason": "eos_token", "generated_tokens": 20, "seed": None, "prompt_tokens": 11}
    usage = parse(GENERATE_STREAM, TOKENS + last_event(details), True, STREAM_HEADERS)
    assert numbers(usage) == (11, 20, 31, None, None, None, None)


def test_generate_stream_without_details() -> None:
    usage = parse(GENERATE_STREAM, TOKENS + last_event(None), True, STREAM_HEADERS)
    assert numbers(usage) == (None, None, None, None, None, None, "no_usage")


def test_generate_stream_error_event() -> None:
    error = tgi_event({"error": "Request failed during generation: Server error: CUDA out of memory.", "error_type": "generation"})
    usage = parse(GENERATE_STREAM, TOKENS + error, True, STREAM_HEADERS)
    assert numbers(usage) == (None, None, None, None, None, None, "stream_error")


def test_generate_stream_truncated() -> None:
    usage = parse(GENERATE_STREAM, TOKENS + last_event(STREAM_DETAILS)[:80], True, STREAM_HEADERS)
    assert numbers(usage) == (None, None, None, None, None, None, "truncated_stream")


def test_tgi_chat_stream_openai_shape_without_space() -> None:
    base = {"object": "chat.completion.chunk", "id": "", "created": 1764852200, "model": "meta-llama/Llama-3.1-8B-Instruct", "system_fingerprint": "3.2.3-sha-a1f3ebe"}
    first = {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Deep"}, "logprobs": None, "finish_reason": None}], "usage": None}
    finish = {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": "stop"}], "usage": None}
    usage_chunk = {**base, "choices": [], "usage": {"prompt_tokens": 38, "completion_tokens": 20, "total_tokens": 58}}
    body = tgi_event(first) + tgi_event(finish) + tgi_event(usage_chunk) + b"data:[DONE]\n\n"
    usage = parse(CHAT, body, True, {"content-type": "text/event-stream"})
    assert numbers(usage) == (38, 20, 58, None, None, None, None)
    assert usage.response_model == "meta-llama/Llama-3.1-8B-Instruct"


def test_router_chat_whole() -> None:
    body = {
        "id": "chatcmpl-7b3f0e2a9c1d4e5f",
        "object": "chat.completion",
        "created": 1764852300,
        "model": "meta-llama/Llama-3.1-8B-Instruct",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris."}, "logprobs": None, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 43, "completion_tokens": 3, "total_tokens": 46},
    }
    usage = parse(CHAT, json.dumps(body).encode(), False, {"content-type": "application/json"})
    assert numbers(usage) == (43, 3, 46, None, None, None, None)


def test_serverless_text_generation_list_with_headers() -> None:
    body = json.dumps([{"generated_text": GENERATED_TEXT}]).encode()
    assert numbers(parse(SERVERLESS, body, False, TGI_HEADERS)) == (11, 20, 31, None, None, None, None)


def test_serverless_task_without_usage() -> None:
    body = json.dumps([[{"label": "POSITIVE", "score": 0.9998}, {"label": "NEGATIVE", "score": 0.0002}]]).encode()
    usage = parse(SERVERLESS, body, False, {"content-type": "application/json", "x-compute-type": "cpu"})
    assert numbers(usage) == (None, None, None, None, None, None, "no_usage")


def test_serverless_image_answer_without_usage() -> None:
    body = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    usage = parse(SERVERLESS, body, False, {"content-type": "image/jpeg", "x-compute-type": "1-nvidia-a10g"})
    assert numbers(usage) == (None, None, None, None, None, None, "no_usage")


def test_model_loading_error() -> None:
    body = json.dumps({"error": "Model mistralai/Mistral-7B-Instruct-v0.3 is currently loading", "estimated_time": 87.6}).encode()
    usage = parse_response(SERVERLESS, 503, {"content-type": "application/json"}, body, False, 1 << 20)
    assert numbers(usage) == (None, None, None, None, None, None, "upstream_error")


def test_generation_error_body_with_status_200() -> None:
    body = json.dumps({"error": "Input validation error: `inputs` must have less than 4096 tokens.", "error_type": "validation"}).encode()
    assert numbers(parse(GENERATE, body, False, {"content-type": "application/json"})) == (None, None, None, None, None, None, "upstream_error")


@pytest.mark.parametrize(
    ("host", "path", "expected"),
    [
        (ENDPOINT_HOST, "/generate", GENERATE),
        (ENDPOINT_HOST, "/generate_stream", GENERATE_STREAM),
        (ENDPOINT_HOST, "/v1/chat/completions", CHAT),
        ("router.huggingface.co", "/v1/chat/completions", CHAT),
        ("api-inference.huggingface.co", "/models/mistralai/Mistral-7B-Instruct-v0.3", SERVERLESS),
    ],
)
def test_detect_huggingface_routes(host: str, path: str, expected: Route) -> None:
    assert detect(host, path) == expected


def test_generate_stream_flag_from_path() -> None:
    assert read_request("/generate_stream", b'{"inputs": "What is deep learning?", "parameters": {"details": true}}', 1 << 20).stream is True
    assert read_request("/generate", b'{"inputs": "What is deep learning?"}', 1 << 20).stream is False


def test_invalid_tgi_header_is_ignored() -> None:
    headers = {**TGI_HEADERS, "x-prompt-tokens": "²", "x-generated-tokens": "9" * 5000}
    body = json.dumps({"generated_text": GENERATED_TEXT}).encode()
    assert numbers(parse(GENERATE, body, False, headers)) == (None, None, None, None, None, None, "no_usage")
