"""Mock LLM provider for the compose stack and the tests: OpenAI and Anthropic shapes with usage.

Routes:

- ``POST /v1/chat/completions``: OpenAI Chat Completions, whole or streamed (SSE when the
  body sets ``"stream": true``; usage in a final ``choices: []`` chunk only when
  ``stream_options.include_usage`` is true, as OpenAI does).
- ``POST /v1/messages``: Anthropic Messages, whole or streamed (``message_start`` carries
  the input counts, ``message_delta`` the running output total).
- ``GET /healthz``.

Token counts approximate a tokenizer: about four characters per token plus a few tokens
per message, so they grow with the prompt. Each word of the generated reply is one
token, and the number of words depends on the prompt. Whatever the counts are, the body
reports them exactly, which is what a gateway has to read. Prompt caching follows the
providers' documented rules, simplified: OpenAI reuses a repeated prefix of at least
1024 tokens in steps of 128; Anthropic writes, then reads, the prefix up to the last
``cache_control`` block when it has at least 1024 tokens.

Standard library only, so it runs in a plain ``python`` container.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import random
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger("mock_llm")

DEFAULT_LISTEN = "127.0.0.1:8080"
CHARS_PER_TOKEN = 4
OPENAI_TOKENS_PER_MESSAGE = 3
OPENAI_REPLY_PRIMING_TOKENS = 3
ANTHROPIC_TOKENS_PER_MESSAGE = 3
# Both providers cache only prompts (OpenAI) or prefixes (Anthropic) of at least this many tokens.
MIN_CACHED_PREFIX_TOKENS = 1024
OPENAI_CACHE_STEP_TOKENS = 128
MAX_REMEMBERED_PREFIXES = 1000
DEFAULT_MAX_TOKENS = 4096
WORDS = (
    "the gateway forwards each request to the model and reads the usage report "
    "tokens cost latency cache prompt answer stream provider route service plugin "
    "metrics dashboard counter histogram label value budget team project"
).split()


class BadRequest(ValueError):
    """The provider would reject the request body with 400; the message gives the reason."""


def count_text_tokens(text: str) -> int:
    """Estimate the tokens of ``text``: one per four characters, rounded up."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def content_text(content: Any) -> str:
    """Return the text of a message content: a string, or a list of text blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(block.get("text", "") for block in content if isinstance(block, dict) and isinstance(block.get("text"), str))
    return ""


@dataclass
class Reply:
    """A generated answer: its words and why it stopped."""

    words: list[str]
    truncated: bool


def generate_reply(prompt_key: str, max_tokens: int) -> Reply:
    """Pick 8 to 47 words, the same ones for the same prompt, cut at ``max_tokens``."""
    rng = random.Random(hashlib.sha256(prompt_key.encode()).digest())
    length = 8 + rng.randrange(40)
    words = [rng.choice(WORDS) for _ in range(length)]
    if length > max_tokens:
        return Reply(words[:max_tokens], truncated=True)
    return Reply(words, truncated=False)


class PrefixCache:
    """Prompt prefixes seen before, bounded, shared by all request threads."""

    def __init__(self, size: int = MAX_REMEMBERED_PREFIXES) -> None:
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def check_and_add(self, key: str) -> bool:
        """Return True when ``key`` was seen before; remember it either way."""
        with self._lock:
            seen = key in self._seen
            self._seen[key] = None
            self._seen.move_to_end(key)
            while len(self._seen) > self._size:
                self._seen.popitem(last=False)
            return seen


# ---------------------------------------------------------------------------------
# OpenAI Chat Completions


@dataclass
class OpenAIAnswer:
    model: str
    reply: Reply
    prompt_tokens: int
    cached_tokens: int
    reasoning_tokens: int

    @property
    def completion_tokens(self) -> int:
        return len(self.reply.words) + self.reasoning_tokens

    def usage(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": self.reasoning_tokens,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }


def answer_openai(body: dict[str, Any], cache: PrefixCache) -> OpenAIAnswer:
    """Compute the answer and usage of one chat completion request.

    Raises BadRequest for a body OpenAI would reject with 400.
    """
    model = body.get("model")
    messages = body.get("messages")
    if not isinstance(model, str) or not model:
        raise BadRequest("you must provide a model parameter")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty array")

    texts = [content_text(m.get("content")) if isinstance(m, dict) else "" for m in messages]
    prompt_tokens = OPENAI_REPLY_PRIMING_TOKENS + sum(OPENAI_TOKENS_PER_MESSAGE + count_text_tokens(t) for t in texts)

    # OpenAI caches the longest previously seen prefix; the messages before the last
    # one stand for that prefix here.
    prefix = texts[:-1]
    prefix_tokens = OPENAI_REPLY_PRIMING_TOKENS + sum(OPENAI_TOKENS_PER_MESSAGE + count_text_tokens(t) for t in prefix)
    cached_tokens = 0
    if prefix and prefix_tokens >= MIN_CACHED_PREFIX_TOKENS:
        if cache.check_and_add("openai\0" + model + "\0" + "\0".join(prefix)):
            cached_tokens = prefix_tokens // OPENAI_CACHE_STEP_TOKENS * OPENAI_CACHE_STEP_TOKENS

    limit = body.get("max_completion_tokens") or body.get("max_tokens") or DEFAULT_MAX_TOKENS
    reply = generate_reply(model + "\0" + "\0".join(texts), int(limit))
    # o-series models think before answering; the thinking is billed as completion.
    reasoning_tokens = 2 * len(reply.words) if model[:1] == "o" and model[1:2].isdigit() else 0
    return OpenAIAnswer(model, reply, prompt_tokens, cached_tokens, reasoning_tokens)


def openai_whole(answer: OpenAIAnswer) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": answer.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": " ".join(answer.reply.words), "refusal": None},
                "logprobs": None,
                "finish_reason": "length" if answer.reply.truncated else "stop",
            }
        ],
        "usage": answer.usage(),
        "system_fingerprint": "fp_mock",
    }


def openai_stream(answer: OpenAIAnswer, include_usage: bool) -> Iterator[dict[str, Any]]:
    """Yield the chunks of a streamed chat completion, in order."""
    base = {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": answer.model,
        "system_fingerprint": "fp_mock",
    }
    # With include_usage, OpenAI writes "usage": null on every chunk but the last.
    extra: dict[str, Any] = {"usage": None} if include_usage else {}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}], **extra}

    yield chunk({"role": "assistant", "content": "", "refusal": None})
    for index, word in enumerate(answer.reply.words):
        yield chunk({"content": word if index == 0 else " " + word})
    yield chunk({}, "length" if answer.reply.truncated else "stop")
    if include_usage:
        yield {**base, "choices": [], "usage": answer.usage()}


# ---------------------------------------------------------------------------------
# Anthropic Messages


@dataclass
class AnthropicAnswer:
    model: str
    reply: Reply
    input_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int

    @property
    def output_tokens(self) -> int:
        return len(self.reply.words)

    def usage(self, output_tokens: int | None = None) -> dict[str, Any]:
        return {
            "input_tokens": self.input_tokens,
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
            "output_tokens": self.output_tokens if output_tokens is None else output_tokens,
        }


def _anthropic_blocks(body: dict[str, Any]) -> list[tuple[str, bool]]:
    """Return the prompt as (text, has cache_control) blocks, system first, as Anthropic orders the cache."""
    blocks: list[tuple[str, bool]] = []
    system = body.get("system")
    if isinstance(system, str):
        blocks.append((system, False))
    elif isinstance(system, list):
        blocks.extend((content_text([b]), isinstance(b, dict) and "cache_control" in b) for b in system)
    for message in body.get("messages") or []:
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if isinstance(content, list):
            blocks.extend((content_text([b]), isinstance(b, dict) and "cache_control" in b) for b in content)
        else:
            blocks.append((content_text(content), False))
    return blocks


def answer_anthropic(body: dict[str, Any], cache: PrefixCache) -> AnthropicAnswer:
    """Compute the answer and usage of one Messages request.

    Raises BadRequest for a body Anthropic would reject with 400.
    """
    model = body.get("model")
    messages = body.get("messages")
    max_tokens = body.get("max_tokens")
    if not isinstance(model, str) or not model:
        raise BadRequest("model: Field required")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages: Field required")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise BadRequest("max_tokens: Field required")

    blocks = _anthropic_blocks(body)
    tokens = [count_text_tokens(text) for text, _ in blocks]
    prompt_tokens = sum(tokens) + ANTHROPIC_TOKENS_PER_MESSAGE * len(messages)

    # The cached prefix runs up to and including the last block marked cache_control.
    marked = [index for index, (_, has_mark) in enumerate(blocks) if has_mark]
    cache_write = cache_read = 0
    if marked:
        end = marked[-1] + 1
        prefix_tokens = sum(tokens[:end])
        if prefix_tokens >= MIN_CACHED_PREFIX_TOKENS:
            key = "anthropic\0" + model + "\0" + "\0".join(text for text, _ in blocks[:end])
            if cache.check_and_add(key):
                cache_read = prefix_tokens
            else:
                cache_write = prefix_tokens

    reply = generate_reply(model + "\0" + "\0".join(text for text, _ in blocks), max_tokens)
    return AnthropicAnswer(model, reply, prompt_tokens - cache_write - cache_read, cache_write, cache_read)


def anthropic_whole(answer: AnthropicAnswer) -> dict[str, Any]:
    return {
        "id": f"msg_{uuid.uuid4().hex[:24]}",
        "type": "message",
        "role": "assistant",
        "model": answer.model,
        "content": [{"type": "text", "text": " ".join(answer.reply.words)}],
        "stop_reason": "max_tokens" if answer.reply.truncated else "end_turn",
        "stop_sequence": None,
        "usage": answer.usage(),
    }


def anthropic_stream(answer: AnthropicAnswer) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield the (event, data) pairs of a streamed Messages response, in order."""
    message = anthropic_whole(answer)
    message["content"] = []
    message["stop_reason"] = None
    # message_start carries a placeholder output count; message_delta has the real total.
    message["usage"] = answer.usage(output_tokens=1)
    yield "message_start", {"type": "message_start", "message": message}
    yield "content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    yield "ping", {"type": "ping"}
    for index, word in enumerate(answer.reply.words):
        text = word if index == 0 else " " + word
        yield "content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}
    yield "content_block_stop", {"type": "content_block_stop", "index": 0}
    stop_reason = "max_tokens" if answer.reply.truncated else "end_turn"
    yield "message_delta", {
        "type": "message_delta",
        "delta": {"stop_reason": stop_reason, "stop_sequence": None},
        "usage": {"output_tokens": answer.output_tokens},
    }
    yield "message_stop", {"type": "message_stop"}


# ---------------------------------------------------------------------------------
# HTTP


@dataclass(frozen=True)
class Latency:
    """Simulated provider latency: a base delay plus a delay per generated token, in milliseconds."""

    base_ms: float = 0.0
    per_token_ms: float = 0.0

    def first_byte(self) -> None:
        if self.base_ms > 0:
            time.sleep(self.base_ms * random.uniform(0.5, 1.5) / 1000)

    def token(self) -> None:
        if self.per_token_ms > 0:
            time.sleep(self.per_token_ms / 1000)


class MockServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], latency: Latency, log_requests: bool = True) -> None:
        self.latency = latency
        self.log_requests = log_requests
        self.prefixes = PrefixCache()
        super().__init__(address, Handler)


class Handler(BaseHTTPRequestHandler):
    server: MockServer
    protocol_version = "HTTP/1.1"
    server_version = "mock-llm"
    sys_version = ""

    def do_GET(self) -> None:  # noqa: N802 - name fixed by http.server
        if self.path.split("?", 1)[0] == "/healthz":
            self._send_json(200, {"status": "ok"})
        else:
            self._send_json(404, {"error": {"message": f"no route for GET {self.path}", "type": "not_found"}})

    def do_POST(self) -> None:  # noqa: N802 - name fixed by http.server
        path = self.path.split("?", 1)[0].rstrip("/")
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length > 0 else b""
        try:
            body = json.loads(raw)
        except ValueError:
            body = None

        if path == "/v1/chat/completions":
            self._openai(body)
        elif path == "/v1/messages":
            self._anthropic(body)
        else:
            self._send_json(404, {"error": {"message": f"no route for POST {path}; try /v1/chat/completions or /v1/messages", "type": "not_found"}})

    def _openai(self, body: Any) -> None:
        try:
            if not isinstance(body, dict):
                raise BadRequest("the request body is not valid JSON")
            answer = answer_openai(body, self.server.prefixes)
        except BadRequest as exc:
            error = {"message": str(exc), "type": "invalid_request_error", "param": None, "code": None}
            self._send_json(400, {"error": error})
            return

        self.server.latency.first_byte()
        if body.get("stream") is True:
            include_usage = (body.get("stream_options") or {}).get("include_usage") is True
            events = ((None, chunk) for chunk in openai_stream(answer, include_usage))
            self._send_sse(events, done_marker=True)
        else:
            for _ in answer.reply.words:
                self.server.latency.token()
            self._send_json(200, openai_whole(answer))

    def _anthropic(self, body: Any) -> None:
        try:
            if not isinstance(body, dict):
                raise BadRequest("the request body is not valid JSON")
            answer = answer_anthropic(body, self.server.prefixes)
        except BadRequest as exc:
            self._send_json(400, {"type": "error", "error": {"type": "invalid_request_error", "message": str(exc)}})
            return

        self.server.latency.first_byte()
        if body.get("stream") is True:
            self._send_sse(anthropic_stream(answer), done_marker=False)
        else:
            for _ in answer.reply.words:
                self.server.latency.token()
            self._send_json(200, anthropic_whole(answer))

    def _send_json(self, status: int, document: dict[str, Any]) -> None:
        payload = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _send_sse(self, events: Iterator[tuple[str | None, dict[str, Any]]], done_marker: bool) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        # Without a length, HTTP/1.1 needs the connection closed to mark the end.
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        for name, data in events:
            frame = (f"event: {name}\n" if name else "") + f"data: {json.dumps(data)}\n\n"
            self.wfile.write(frame.encode())
            self.wfile.flush()
            self.server.latency.token()
        if done_marker:
            self.wfile.write(b"data: [DONE]\n\n")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature fixed by http.server
        if self.server.log_requests:
            log.info("%s " + format, self.client_address[0], *args)


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"invalid listen address {value!r}: expected HOST:PORT, such as 127.0.0.1:8080")
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Mock LLM provider answering OpenAI and Anthropic requests with usage.")
    parser.add_argument("--listen", type=parse_listen, default=DEFAULT_LISTEN, metavar="HOST:PORT", help="address to serve on (default %(default)s)")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="average delay before the first byte, in milliseconds (default %(default)s)")
    parser.add_argument("--ms-per-token", type=float, default=0.0, help="delay per generated token, in milliseconds (default %(default)s)")
    parser.add_argument("-q", "--quiet", action="store_true", help="do not log each request")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    server = MockServer(args.listen, Latency(args.latency_ms, args.ms_per_token), log_requests=not args.quiet)
    host, port = server.server_address[:2]
    log.info("serving OpenAI and Anthropic mock APIs on %s:%s", host, port)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
