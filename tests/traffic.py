"""Small LLM exchanges of known usage, for load, restart and soak tests, and the dispatchers to run them on."""

from __future__ import annotations

import json
from dataclasses import dataclass

from kong_ai_metrics import server
from kong_ai_metrics.kong_emulator import KongRequest, UpstreamResponse

# Config of the plugin entity under load: parse bodies, buffer streams so their usage is read.
CONFIG = {"ai_metrics": True, "buffer_streaming_responses": True}

# Every RPC dispatcher the server offers, as command-line arguments, so that load tests
# hold for each of them.
DISPATCHER_ARGS = {name: ["--dispatcher", name] for name in server.DISPATCHERS}

_REQUEST = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}).encode()
_STREAM_REQUEST = json.dumps({"model": "gpt-4o", "stream": True, "stream_options": {"include_usage": True}, "messages": []}).encode()
_WHOLE = json.dumps(
    {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello."}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 25, "completion_tokens": 12, "total_tokens": 37},
    }
).encode()
_STREAM = (
    b'data: {"id":"c","object":"chat.completion.chunk","model":"gpt-4o-2024-08-06","choices":[{"index":0,"delta":{"content":"Hi"}}],"usage":null}\n\n'
    b'data: {"id":"c","object":"chat.completion.chunk","model":"gpt-4o-2024-08-06","choices":[],'
    b'"usage":{"prompt_tokens":10,"completion_tokens":2,"total_tokens":12}}\n\n'
    b"data: [DONE]\n\n"
)


@dataclass(frozen=True)
class Kind:
    """One kind of exchange: how to build it and what it adds to the counters."""

    name: str
    model: str
    total_tokens: int
    unknown_reason: str | None

    def build(self) -> tuple[KongRequest, UpstreamResponse]:
        if self.name == "stream":
            request = KongRequest(method="POST", path="/v1/chat/completions", body=_STREAM_REQUEST)
            return request, UpstreamResponse(200, {"content-type": "text/event-stream"}, _STREAM)
        request = KongRequest(method="POST", path="/v1/chat/completions", body=_REQUEST)
        if self.name == "upstream_error":
            body = b'{"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}}'
            return request, UpstreamResponse(429, {"content-type": "application/json"}, body)
        if self.name == "malformed":
            return request, UpstreamResponse(200, {"content-type": "application/json"}, _WHOLE[:40])
        return request, UpstreamResponse(200, {"content-type": "application/json"}, _WHOLE)


WHOLE = Kind("whole", "gpt-4o-mini", 37, None)
STREAM = Kind("stream", "gpt-4o", 12, None)
UPSTREAM_ERROR = Kind("upstream_error", "gpt-4o-mini", 0, "upstream_error")
MALFORMED = Kind("malformed", "gpt-4o-mini", 0, "malformed_body")

# The order exchanges cycle through: mostly successful, some streamed, some bad.
MIX = (WHOLE, STREAM, WHOLE, UPSTREAM_ERROR, WHOLE, STREAM, MALFORMED, WHOLE)


def expected_totals(count: int, offset: int = 0) -> dict[str, float]:
    """Return the requests, total tokens and unknown counts of ``count`` exchanges of ``MIX`` from ``offset``."""
    totals = {"requests": 0.0, "total_tokens": 0.0, "upstream_error": 0.0, "malformed_body": 0.0}
    for index in range(offset, offset + count):
        kind = MIX[index % len(MIX)]
        totals["requests"] += 1
        totals["total_tokens"] += kind.total_tokens
        if kind.unknown_reason:
            totals[kind.unknown_reason] += 1
    return totals
