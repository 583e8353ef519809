"""kong-pdk's stock plugin server, made to end the events that Kong abandons.

When a PDK method raises a Lua error on Kong's side, Kong sends neither a Step nor a
StepError for that event, because Kong 3.10 calls PDK methods without catching Lua
errors. kong-pdk 0.36 then keeps the event's entry and leaves the handler's greenlet
blocked on its channel for good, so every such event leaks a greenlet, a channel and a
dict entry. ``ExpiringPluginServer`` notes when each
pending event last heard from Kong and, after ``event_timeout`` seconds of silence, drops
the entry and kills the handler's greenlet.

It also starts instance and event ids at random offsets. kong-pdk counts both from 0 in
every process, so after a restart an instance id that Kong still caches could name an
instance of another plugin config, and a late Step could reach another request's event.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import gevent
from kong_pdk.server import PluginServer

log = logging.getLogger("kong_ai_metrics")

DEFAULT_EVENT_TIMEOUT = 60.0
# Ids stay far below 2**53, the largest integer that a Lua number represents exactly.
_ID_OFFSET_RANGE = 1 << 31


class ExpiringPluginServer(PluginServer):  # type: ignore[misc]
    """kong-pdk's ``PluginServer`` that ends events Kong stopped stepping.

    ``on_abandoned`` is called with the event's phase name for every event it ends.
    """

    def __init__(self, event_timeout: float, on_abandoned: Callable[[str], None], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if event_timeout <= 0:
            raise ValueError(f"event_timeout must be positive, got {event_timeout}")
        self.event_timeout = event_timeout
        self._on_abandoned = on_abandoned
        # Event id -> (monotonic time of the last reply sent to Kong, phase name). An event
        # is absent while a Step is being handled, so a slow handler is never ended.
        self._waiting: dict[int, tuple[float, str]] = {}
        rng = random.SystemRandom()
        self.instance_id = rng.randrange(_ID_OFFSET_RANGE)
        self.event_id = rng.randrange(_ID_OFFSET_RANGE)

    def handle_event(self, event: dict[str, Any]) -> dict[str, Any]:
        reply: dict[str, Any] = super().handle_event(event)
        event_id = reply["EventId"]
        if event_id in self.events:
            self._waiting[event_id] = (time.monotonic(), str(event.get("EventName", "")))
        return reply

    def _step(self, data: dict[str, Any], is_error: bool) -> dict[str, Any]:
        event_id = data.get("EventId") if isinstance(data, dict) else None
        if not isinstance(event_id, int):
            return super()._step(data, is_error)  # type: ignore[no-any-return]
        waiting = self._waiting.pop(event_id, None)
        reply: dict[str, Any] = super()._step(data, is_error)
        if waiting is not None and event_id in self.events:
            self._waiting[event_id] = (time.monotonic(), waiting[1])
        return reply

    def expire_abandoned(self) -> int:
        """End every event that has waited longer than ``event_timeout`` for a Step; return how many."""
        deadline = time.monotonic() - self.event_timeout
        expired = [event_id for event_id, (since, _) in self._waiting.items() if since < deadline]
        phases: Counter[str] = Counter()
        for event_id in expired:
            _, phase = self._waiting.pop(event_id)
            channel = self.events.pop(event_id, None)
            if channel is None:
                continue
            _kill_blocked_greenlets(channel)
            phases[phase] += 1
            self._on_abandoned(phase)
        if phases:
            summary = ", ".join(f"{count} {phase}" for phase, count in sorted(phases.items()))
            log.warning("ended events that Kong abandoned after %.0f s without a Step: %s", self.event_timeout, summary)
        return sum(phases.values())

    def run_expiry(self) -> None:
        """Sweep for abandoned events forever; run it in its own greenlet."""
        interval = max(0.2, min(self.event_timeout / 4, 5.0))
        while True:
            gevent.sleep(interval)
            self.expire_abandoned()


def _kill_blocked_greenlets(channel: Any) -> None:
    # The handler is blocked in channel.get() waiting for its PDK result, or in
    # channel.put() handing over "ret" after a kong.response.exit. gevent's Channel keeps
    # the Waiter of each blocked greenlet in `getters` and `putters`.
    # NOTE: these are gevent internals (stable from gevent 1.x to 26.x); if they change,
    # the entry is still dropped but the greenlet stays blocked.
    waiters = list(getattr(channel, "getters", ())) + [entry[1] for entry in getattr(channel, "putters", ())]
    for waiter in waiters:
        handler = getattr(waiter, "greenlet", None)
        if handler is not None and not handler.dead:
            gevent.kill(handler)
