"""Provider, API, model and stream flag from the upstream URL."""

from __future__ import annotations

import pytest

from kong_ai_metrics.detect import Route, body_flag_provider, detect, url_stream
from kong_ai_metrics.providers import read_request


@pytest.mark.parametrize(
    ("host", "path", "expected"),
    [
        ("api.openai.com", "/v1/chat/completions", Route("openai", "chat")),
        ("api.openai.com", "/v1/embeddings", Route("openai", "embeddings")),
        ("api.openai.com", "/v1/responses", Route("openai", "responses")),
        ("api.openai.com", "/v1/completions", Route("openai", "completions")),
        (
            "contoso.openai.azure.com",
            "/openai/deployments/team-chat-01/chat/completions?api-version=2024-10-21",
            Route("azure", "chat", model="team-chat-01"),
        ),
        ("api.anthropic.com", "/v1/messages", Route("anthropic", "messages")),
        (
            "generativelanguage.googleapis.com",
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
            Route("gemini", "generate", model="gemini-2.5-flash", stream=True),
        ),
        (
            "bedrock-runtime.us-east-1.amazonaws.com",
            "/model/us.anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse-stream",
            Route("bedrock", "converse", model="us.anthropic.claude-3-5-sonnet-20240620-v1:0", stream=True),
        ),
        ("vllm.internal.example", "/v1/chat/completions", Route("openai_compatible", "chat")),
        ("gpu-box.example", "/api/chat", Route("ollama", "chat")),
        ("intranet.example", "/metrics", None),
    ],
)
def test_detect_routes(host: str, path: str, expected: Route | None) -> None:
    assert detect(host, path) == expected


def test_provider_override_wins_over_host() -> None:
    assert detect("llm.corp.example", "/v1/chat/completions", "mistral") == Route("mistral", "chat")


def test_gateway_prefix_before_api_path() -> None:
    assert detect("api.openai.com", "/team-a/v1/chat/completions") == Route("openai", "chat")


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/v1beta/models/gemini-2.5-flash:streamGenerateContent", True),
        ("/v1beta/models/gemini-2.5-flash:generateContent", False),
        ("/model/amazon.nova-pro-v1%3A0/converse", False),
        ("/model/amazon.nova-pro-v1%3A0/invoke-with-response-stream", True),
        ("/generate_stream", True),
        ("/v1/chat/completions", None),
    ],
)
def test_url_stream(path: str, expected: bool | None) -> None:
    assert url_stream(path) is expected


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("api.openai.com", "openai"),
        ("API.OpenAI.com", "openai"),
        ("contoso.openai.azure.com", "azure"),
        ("api.anthropic.com", "anthropic"),
        ("api.cohere.com", "cohere"),
        ("api.mistral.ai", "mistral"),
        # Stream flag in the URL, or streaming by default, or unknown.
        ("us-east5-aiplatform.googleapis.com", None),
        ("generativelanguage.googleapis.com", None),
        ("bedrock-runtime.us-east-1.amazonaws.com", None),
        ("router.huggingface.co", None),
        ("ollama.internal", None),
        ("", None),
    ],
)
def test_body_flag_provider(host: str, expected: str | None) -> None:
    assert body_flag_provider(host) == expected


def test_request_model_and_stream_from_body() -> None:
    facts = read_request("/v1/chat/completions", b'{"model": "gpt-4o", "stream": true}', 1 << 20)
    assert (facts.model, facts.stream) == ("gpt-4o", True)


def test_request_stream_from_path_over_body() -> None:
    facts = read_request("/v1beta/models/gemini-2.5-pro:streamGenerateContent", b'{"contents": []}', 1 << 20)
    assert (facts.model, facts.stream) == (None, True)


def test_ollama_streams_without_stream_field() -> None:
    assert read_request("/api/chat", b'{"model": "llama3.2", "messages": []}', 1 << 20).stream is True
    assert read_request("/api/chat", b'{"model": "llama3.2", "stream": false}', 1 << 20).stream is False


MULTIPART = (
    b"--bnd\r\n"
    b'Content-Disposition: form-data; name="file"; filename="a.wav"\r\nContent-Type: audio/wav\r\n\r\nRIFF\x00\r\n'
    b"--bnd\r\n"
    b'Content-Disposition: form-data; name="model"\r\n\r\ngpt-4o-transcribe\r\n'
    b"--bnd\r\n"
    b'Content-Disposition: form-data; name="stream"\r\n\r\n%s\r\n'
    b"--bnd--\r\n"
)


@pytest.mark.parametrize(
    ("path", "body", "stream"),
    [
        # OpenAI's transcription API takes a multipart form with a stream field.
        ("/v1/audio/transcriptions", MULTIPART % b"true", True),
        ("/v1/audio/transcriptions", MULTIPART % b"false", False),
        ("/v1/audio/transcriptions", MULTIPART.replace(b'name="stream"', b'name="streamed"') % b"true", False),
        # The speech API requests SSE with stream_format.
        ("/v1/audio/speech", b'{"model": "gpt-4o-mini-tts", "input": "hi", "stream_format": "sse"}', True),
        ("/v1/audio/speech", b'{"model": "gpt-4o-mini-tts", "input": "hi", "stream_format": "audio"}', False),
        # Retrieving a background response streams with a query parameter.
        ("/v1/responses/resp_68af?stream=true", b"", True),
        ("/v1/responses/resp_68af?stream=false", b"", False),
    ],
)
def test_stream_flag_outside_json_field(path: str, body: bytes, stream: bool) -> None:
    assert read_request(path, body, 1 << 20).stream is stream


def test_request_body_over_limit_gives_no_model() -> None:
    assert read_request("/v1/chat/completions", b'{"model": "gpt-4o"}', 5).model is None
