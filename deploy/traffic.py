"""Send a steady mix of LLM requests through Kong so the dashboard has something to show.

Each request goes to one of the two routes of ``deploy/kong.yml`` (``/openai`` and
``/anthropic``), whole or streamed, with a shared long system prompt now and then so the
provider caches show up. A few requests are made to fail on purpose: a stream without
``stream_options.include_usage`` (OpenAI then sends no usage) and a request without a
model (a 400 from the provider), so the unknown-usage panels have data too.

Standard library only, so it runs in a plain ``python`` container.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("traffic")

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
OPENAI_PATH = "/openai/v1/chat/completions"
ANTHROPIC_PATH = "/anthropic/v1/messages"

# About 1,300 tokens at four characters per token: above the 1,024-token minimum that
# both providers need before they cache a prefix.
SYSTEM_PROMPT = " ".join(
    f"Rule {number}: answer in plain English, cite the internal handbook section when one applies, "
    "and never include customer data in the answer."
    for number in range(1, 41)
)
QUESTIONS = (
    "How do I rotate the API key of my team?",
    "Summarise the last incident report in three sentences.",
    "Which regions does the gateway run in, and why those?",
    "Write a haiku about rate limits.",
    "Explain the difference between prompt tokens and completion tokens to a new engineer joining the platform team, "
    "with one example for each and a note on how caching changes the bill.",
    "List four ways to cut the cost of a chat assistant without making its answers worse.",
)


@dataclass(frozen=True)
class Scenario:
    """One kind of request: where it goes and how its body is built."""

    name: str
    path: str
    weight: int
    build: Callable[[random.Random], dict[str, Any]]


def _openai(model: str, stream: bool = False, include_usage: bool = True, cached_prefix: bool = False) -> Callable[[random.Random], dict[str, Any]]:
    def build(rng: random.Random) -> dict[str, Any]:
        messages = [{"role": "system", "content": SYSTEM_PROMPT}] if cached_prefix else []
        messages.append({"role": "user", "content": rng.choice(QUESTIONS)})
        body: dict[str, Any] = {"model": model, "messages": messages, "max_completion_tokens": 64}
        if stream:
            body["stream"] = True
            if include_usage:
                body["stream_options"] = {"include_usage": True}
        return body

    return build


def _anthropic(model: str, stream: bool = False, cached_prefix: bool = False) -> Callable[[random.Random], dict[str, Any]]:
    def build(rng: random.Random) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": model,
            "max_tokens": 64,
            "messages": [{"role": "user", "content": rng.choice(QUESTIONS)}],
        }
        if cached_prefix:
            body["system"] = [{"type": "text", "text": SYSTEM_PROMPT, "cache_control": {"type": "ephemeral"}}]
        if stream:
            body["stream"] = True
        return body

    return build


def _missing_model(rng: random.Random) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": rng.choice(QUESTIONS)}]}


SCENARIOS = (
    Scenario("openai gpt-4o-mini", OPENAI_PATH, 30, _openai("gpt-4o-mini")),
    Scenario("openai gpt-4o-mini cached prompt", OPENAI_PATH, 10, _openai("gpt-4o-mini", cached_prefix=True)),
    Scenario("openai gpt-4o stream", OPENAI_PATH, 15, _openai("gpt-4o", stream=True)),
    Scenario("openai o3-mini", OPENAI_PATH, 8, _openai("o3-mini")),
    Scenario("openai gpt-4o stream without usage", OPENAI_PATH, 3, _openai("gpt-4o", stream=True, include_usage=False)),
    Scenario("openai missing model", OPENAI_PATH, 2, _missing_model),
    Scenario("anthropic claude-sonnet-4 cached prompt", ANTHROPIC_PATH, 15, _anthropic("claude-sonnet-4-20250514", cached_prefix=True)),
    Scenario("anthropic claude-3-5-haiku stream", ANTHROPIC_PATH, 17, _anthropic("claude-3-5-haiku-20241022", stream=True)),
)


def send(base_url: str, scenario: Scenario, rng: random.Random, timeout: float) -> int:
    """Send one request of ``scenario``; return the HTTP status, or 0 when no answer came."""
    body = json.dumps(scenario.build(rng)).encode()
    request = urllib.request.Request(base_url.rstrip("/") + scenario.path, data=body, method="POST")
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            reply.read()
            return int(reply.status)
    except urllib.error.HTTPError as exc:
        exc.read()
        return int(exc.code)
    except OSError as exc:
        log.warning("%s: request to %s failed: %s", scenario.name, base_url, exc)
        return 0


def run(base_url: str, interval: float, count: int, seed: int | None, timeout: float) -> dict[str, int]:
    """Send ``count`` requests (forever when 0), ``interval`` seconds apart; return the count per status."""
    rng = random.Random(seed)
    weights = [scenario.weight for scenario in SCENARIOS]
    statuses: dict[str, int] = {}
    sent = 0
    while count == 0 or sent < count:
        scenario = rng.choices(SCENARIOS, weights)[0]
        status = send(base_url, scenario, rng, timeout)
        statuses[str(status)] = statuses.get(str(status), 0) + 1
        log.info("%s -> %s", scenario.name, status or "no answer")
        sent += 1
        if interval > 0 and (count == 0 or sent < count):
            time.sleep(interval * rng.uniform(0.5, 1.5))
    return statuses


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Send a mix of OpenAI- and Anthropic-shaped requests through Kong.")
    parser.add_argument("--base-url", default=DEFAULT_BASE_URL, help="Kong proxy URL (default %(default)s)")
    parser.add_argument("--interval", type=float, default=1.0, help="average pause between requests, in seconds (default %(default)s)")
    parser.add_argument("--count", type=int, default=0, help="number of requests to send; 0 sends until interrupted (default %(default)s)")
    parser.add_argument("--seed", type=int, default=None, help="random seed, for a repeatable mix")
    parser.add_argument("--timeout", type=float, default=30.0, help="timeout of one request, in seconds (default %(default)s)")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    log.info("sending requests to %s", args.base_url)
    try:
        statuses = run(args.base_url, args.interval, args.count, args.seed, args.timeout)
    except KeyboardInterrupt:
        return 0
    log.info("done: %s", ", ".join(f"{count} x {status}" for status, count in sorted(statuses.items())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
