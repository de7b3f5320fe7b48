"""Prometheus metrics of one server (own registry, so several apps can live in one process)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST  # noqa: F401  (re-exported for the app)

# Seconds; TTFT under load spans milliseconds to tens of seconds.
_LATENCY = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
ENDPOINTS = ("/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics", "/")


class Metrics:
    """Counters, histograms and gauges exposed at ``/metrics``.

    Args:
        queue_depth: returns how many requests wait for a slot now.
        active: returns how many sequences are generating now.
    """

    def __init__(self, queue_depth, active):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("slm_requests", "HTTP requests by endpoint and status code",
                                ["endpoint", "status"], registry=r)
        self.prompt_tokens = Counter("slm_prompt_tokens", "Prompt tokens processed", registry=r)
        self.completion_tokens = Counter("slm_completion_tokens", "Tokens generated",
                                         registry=r)
        self.cancelled = Counter("slm_cancelled_requests",
                                 "Generations stopped early (client gone, error or shutdown)",
                                 registry=r)
        self.latency = Histogram("slm_request_latency_seconds",
                                 "Whole request time, to the last streamed byte",
                                 ["endpoint"], buckets=_LATENCY, registry=r)
        self.ttft = Histogram("slm_time_to_first_token_seconds",
                              "Admission to first generated text (queue wait included)",
                              buckets=_LATENCY, registry=r)
        self.queue_wait = Histogram("slm_queue_wait_seconds", "Admission to start of generation",
                                    buckets=_LATENCY, registry=r)
        g = Gauge("slm_queue_depth", "Requests waiting for a generation slot", registry=r)
        g.set_function(queue_depth)
        a = Gauge("slm_active_sequences", "Sequences generating now", registry=r)
        a.set_function(active)

    def count(self, path: str, status: int) -> None:
        self.requests.labels(path if path in ENDPOINTS else "other", str(status)).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
