"""Prometheus metrics in the text exposition format (version 0.0.4), written by hand: counters,
gauges and histograms are a few lines each, and prometheus_client is not installed here.

Everything is updated from the event loop thread only, so no locks are needed.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


def _labels(names: tuple[str, ...], values: tuple, extra: str = "") -> str:
    parts = [f'{n}="{_escape(str(v))}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _escape(s: str) -> str:
    return s.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _quote(s: str) -> str:
    return '"' + s + '"'


def _num(v: float) -> str:
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v)) if not float(v).is_integer() else str(int(v))


class Counter:
    def __init__(self, name: str, help: str, labels: tuple[str, ...] = ()):
        self.name, self.help, self.labels = name, help, labels
        self.values: dict[tuple, float] = {} if labels else {(): 0.0}

    def inc(self, *label_values, amount: float = 1.0) -> None:
        self.values[label_values] = self.values.get(label_values, 0.0) + amount

    def get(self, *label_values) -> float:
        return self.values.get(label_values, 0.0)

    def render(self) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        out += [f"{self.name}{_labels(self.labels, k)} {_num(v)}" for k, v in sorted(self.values.items())]
        return out


class Gauge:
    """A gauge read at scrape time from `read()` (so it can never drift from the truth)."""

    def __init__(self, name: str, help: str, read: Callable[[], float]):
        self.name, self.help, self.read = name, help, read

    def render(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} gauge", f"{self.name} {_num(self.read())}"]


class Histogram:
    def __init__(self, name: str, help: str, labels: tuple[str, ...] = (), buckets=LATENCY_BUCKETS):
        self.name, self.help, self.labels = name, help, labels
        self.buckets = tuple(sorted(buckets))
        self.series: dict[tuple, list] = {}  # label values -> [bucket counts..., sum, count]

    def observe(self, value: float, *label_values) -> None:
        s = self.series.setdefault(label_values, [0] * len(self.buckets) + [0.0, 0])
        i = bisect.bisect_left(self.buckets, value)
        if i < len(self.buckets):
            s[i] += 1
        s[-2] += value
        s[-1] += 1

    def count(self, *label_values) -> int:
        s = self.series.get(label_values)
        return s[-1] if s else 0

    def render(self) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        for key, s in sorted(self.series.items()):
            cum = 0
            for le, c in zip(self.buckets, s):
                cum += c
                out.append(f"{self.name}_bucket{_labels(self.labels, key, 'le=' + _quote(_num(le)))} {cum}")
            out.append(f"{self.name}_bucket{_labels(self.labels, key, 'le=' + _quote('+Inf'))} {s[-1]}")
            out.append(f"{self.name}_sum{_labels(self.labels, key)} {_num(s[-2])}")
            out.append(f"{self.name}_count{_labels(self.labels, key)} {s[-1]}")
        return out


class ServerMetrics:
    """The server's metrics. `engine` is the ServingEngine (gauges read its cache at scrape time)."""

    def __init__(self, engine):
        self.engine = engine
        self.requests = Counter("h1r_requests_total", "HTTP requests by endpoint and status code",
                                ("endpoint", "status"))
        self.prompt_tokens = Counter("h1r_prompt_tokens_total", "prompt tokens of finished generations")
        self.generation_tokens = Counter("h1r_generation_tokens_total", "tokens generated (every choice)")
        self.disconnects = Counter("h1r_client_disconnects_total",
                                   "requests whose client went away before the answer (aborted, freed)")
        self.aborted = Counter("h1r_aborted_choices_total", "choices aborted by a shutdown")
        self.ttft = Histogram("h1r_time_to_first_token_seconds", "request received -> first token",
                              ("endpoint",))
        self.e2e = Histogram("h1r_e2e_request_latency_seconds", "request received -> last token", ("endpoint",))
        usage = engine.engine.cache_usage
        self.gauges = [
            Gauge("h1r_requests_in_flight", "generation requests the engine is serving", lambda: engine.num_active),
            Gauge("h1r_queue_waiting_sequences", "sequences waiting to be scheduled", lambda: usage()["waiting"]),
            Gauge("h1r_running_sequences", "sequences decoding", lambda: usage()["running"]),
            Gauge("h1r_prefilling_sequences", "sequences in (chunked) prefill", lambda: usage()["prefilling"]),
            Gauge("h1r_cache_pages_used", "K/V cache pages in use", lambda: _used(usage(), "pages")),
            Gauge("h1r_cache_pages_total", "K/V cache pages", lambda: usage()["pages_total"]),
            Gauge("h1r_cache_slots_used", "Mamba state slots in use", lambda: _used(usage(), "slots")),
            Gauge("h1r_cache_slots_total", "Mamba state slots", lambda: usage()["slots_total"]),
            Gauge("h1r_preemptions", "sequences preempted since start", lambda: usage()["preemptions"]),
            Gauge("h1r_engine_failed_steps", "engine steps that raised", lambda: engine.failed_steps),
        ]

    def render(self) -> str:
        lines: list[str] = []
        for m in (self.requests, self.prompt_tokens, self.generation_tokens, self.disconnects, self.aborted,
                  self.ttft, self.e2e, *self.gauges):
            lines += m.render()
        return "\n".join(lines) + "\n"


def _used(usage: dict, what: str) -> int:
    return usage[f"{what}_total"] - usage[f"{what}_free"]


def parse_text(text: str) -> dict[str, float]:
    """Sample name (with its label string) -> value; for tests and the load benchmark."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out
