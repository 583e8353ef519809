"""The Prometheus text format (version 0.0.4) for ``/metrics``, rendered faster than prometheus_client does.

prometheus_client 0.26 builds a ``Sample`` with a label dict for every sample, then
validates and escapes each label name of each sample again: about 20 us a sample on a
2-core VM (``benchmarks/run.py``). A scrape of 10,000 series then takes some 200 ms of
the plugin server's CPU, and plugin events wait for the interpreter lock meanwhile.
``render_text`` writes the same bytes as ``prometheus_client.generate_latest``, but it
formats each child's labels once for all its samples and reads the values straight
from the children.

It reads prometheus_client's internals (``CollectorRegistry._collector_to_names``,
``MetricWrapperBase._metrics`` and the child value fields), so it takes that path only
for plain labelled Counter, Gauge and Histogram objects and falls back to
``generate_latest`` for anything else. ``tests/test_exposition.py`` checks that both give
identical bytes.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from typing import Any, cast

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client import metrics as client_metrics
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

# Go's float formatting, as prometheus_client writes values ("+Inf", "1e+07").
_go_float = cast(Callable[[float], str], floatToGoString)

# Names that prometheus_client's text format writes unchanged.
_LEGACY_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LEGACY_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_FAST_TYPES = (Counter, Gauge, Histogram)


class _OneCollector(Collector):
    """A registry stand-in that collects a single collector, for ``generate_latest``."""

    def __init__(self, collector: Collector) -> None:
        self.collector = collector

    def collect(self) -> Iterable[Any]:
        return self.collector.collect()


def render_text(registry: Collector) -> bytes:
    """Return ``registry`` in the Prometheus text format, byte for byte as ``generate_latest`` writes it."""
    collectors = _collectors(registry)
    if collectors is None:
        return generate_latest(registry)
    out: list[str] = []
    for collector in collectors:
        if _fast_path(collector):
            lines: list[str] = []
            try:
                _render_wrapper(collector, lines)
            except (AttributeError, TypeError, IndexError):
                # A prometheus_client release with other internals: render it the slow way.
                lines = [generate_latest(_OneCollector(collector)).decode("utf-8")]
            out.extend(lines)
        else:
            out.append(generate_latest(_OneCollector(collector)).decode("utf-8"))
    return "".join(out).encode("utf-8")


def _collectors(registry: Collector) -> list[Collector] | None:
    """Return the registry's collectors in registration order, or None when only ``generate_latest`` can render it."""
    if client_metrics._use_created or os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return None
    names = getattr(registry, "_collector_to_names", None)
    lock = getattr(registry, "_lock", None)
    if not isinstance(names, dict) or lock is None or getattr(registry, "_target_info", None):
        return None
    with lock:
        return list(names)


def _fast_path(collector: Collector) -> bool:
    return (
        type(collector) in _FAST_TYPES
        and bool(getattr(collector, "_labelnames", ()))
        and isinstance(getattr(collector, "_metrics", None), dict)
        and bool(_LEGACY_NAME.match(collector._name))  # type: ignore[attr-defined]
        and all(_LEGACY_LABEL.match(name) for name in collector._labelnames)  # type: ignore[attr-defined]
    )


def _escape_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _render_wrapper(wrapper: Any, out: list[str]) -> None:
    name: str = wrapper._name
    kind: str = wrapper._type
    family = name + "_total" if kind == "counter" else name
    documentation = wrapper._documentation.replace("\\", "\\\\").replace("\n", "\\n")
    out.append(f"# HELP {family} {documentation}\n# TYPE {family} {kind}\n")

    with wrapper._lock:
        children = list(wrapper._metrics.items())
    label_names: tuple[str, ...] = tuple(wrapper._labelnames)

    if kind == "histogram":
        _render_histogram(name, label_names, children, out)
        return
    for values, child in children:
        labels = ",".join(f'{k}="{_escape_value(v)}"' for k, v in sorted(zip(label_names, values)))
        out.append(f"{family}{{{labels}}} {_go_float(child._value.get())}\n")


def _render_histogram(name: str, label_names: tuple[str, ...], children: list[tuple[tuple[str, ...], Any]], out: list[str]) -> None:
    # generate_latest sorts every sample's labels by name, "le" included, so the bucket
    # bound goes between the labels that sort before and after it.
    for values, child in children:
        pairs = sorted(zip(label_names, values))
        before = "".join(f'{k}="{_escape_value(v)}",' for k, v in pairs if k < "le")
        after = "".join(f',{k}="{_escape_value(v)}"' for k, v in pairs if k > "le")
        plain = ",".join(f'{k}="{_escape_value(v)}"' for k, v in pairs)
        count = 0.0
        for bound, bucket in zip(child._upper_bounds, child._buckets):
            count += bucket.get()
            out.append(f'{name}_bucket{{{before}le="{_go_float(bound)}"{after}}} {_go_float(count)}\n')
        out.append(f"{name}_count{{{plain}}} {_go_float(count)}\n")
        if child._upper_bounds[0] >= 0:
            out.append(f"{name}_sum{{{plain}}} {_go_float(child._sum.get())}\n")
