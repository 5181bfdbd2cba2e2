"""What the server has served, in Prometheus' text format, for operators' dashboards and
alerts (`GET /metrics`, phi3ui/status.py).

`ChatService` reports each request once: refused at the door, or ended (done, stopped, the
client went away, failed) with its stats. Gauges are read from the service and the engine
when scraped. One registry per service, so several apps in one process (the tests) keep
their own counts.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .answer import Stats

CONTENT_TYPE = CONTENT_TYPE_LATEST
OUTCOMES = ("done", "stopped", "left", "failed", "refused")  # how a request ended
TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120)
SPEED_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500)


class Metrics:
    """The counters, histograms and gauges of one `ChatService`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("phi3ui_requests", "Requests for an answer, by door (page, /chat, /v1) and how "
                                "they ended (done, stopped, left: the client went away, failed, refused)",
                                ["door", "outcome"], registry=r)
        self.refusals = Counter("phi3ui_refusals", "Requests refused before an answer started, by door and "
                                "reason (busy: one answer at a time, rate, queue_full, invalid: a request the "
                                "server cannot answer as sent)", ["door", "limit"], registry=r)
        self.ttft = Histogram("phi3ui_time_to_first_token_seconds", "Time from a request's arrival at its answer "
                              "to the first token", ["door"], buckets=TTFT_BUCKETS, registry=r)
        self.speed = Histogram("phi3ui_tokens_per_second", "Answer tokens per second after the first",
                               ["door"], buckets=SPEED_BUCKETS, registry=r)
        self.prompt_tokens = Counter("phi3ui_prompt_tokens", "Prompt tokens of answered requests", registry=r)
        self.answer_tokens = Counter("phi3ui_answer_tokens", "Tokens generated", registry=r)
        self.window_cuts = Counter("phi3ui_window_cuts", "Answers whose prompt left out the oldest exchanges to "
                                   "fit the context window", registry=r)
        self.queued = Gauge("phi3ui_requests_queued", "Requests admitted: generating or waiting for a slot",
                            registry=r)
        self.waiting = Gauge("phi3ui_requests_waiting", "Answers waiting for a generation slot", registry=r)
        self.slots = Gauge("phi3ui_slots", "Generation slots (--concurrency)", registry=r)
        self.slots_busy = Gauge("phi3ui_slots_busy", "Generation slots in use", registry=r)

    def watch(self, queued: Callable[[], float], waiting: Callable[[], float], slots: Callable[[], float],
              busy: Callable[[], float]) -> None:
        """Gauges read when scraped."""
        for gauge, read in ((self.queued, queued), (self.waiting, waiting), (self.slots, slots),
                            (self.slots_busy, busy)):
            gauge.set_function(read)

    def refused(self, door: str, limit: str) -> None:
        self.refusals.labels(door, limit).inc()
        self.requests.labels(door, "refused").inc()

    def ended(self, door: str, outcome: str, stats: Stats | None, window_cut: bool) -> None:
        """An answer that started has ended (`outcome` is one of OUTCOMES)."""
        self.requests.labels(door, outcome).inc()
        if window_cut:
            self.window_cuts.inc()
        if stats is None:
            return
        self.prompt_tokens.inc(stats.prompt_tokens)
        self.answer_tokens.inc(stats.answer_tokens)
        if stats.answer_tokens:
            self.ttft.labels(door).observe(stats.ttft_s)
        if stats.answer_tokens > 1 and stats.tokens_per_s:
            self.speed.labels(door).observe(stats.tokens_per_s)

    def text(self) -> bytes:
        """Every metric in Prometheus' text format."""
        return generate_latest(self.registry)
