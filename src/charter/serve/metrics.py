"""What ``charter serve`` counts, as Prometheus text on ``GET /metrics`` (prometheus_client,
one registry per server so that two in one process keep apart)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


class Metrics:
    """Requests by route and status, their latency, completions per request, completions
    left ungraded, requests in flight, and the batch sizes a reward model ran."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "charter_serve_requests", "HTTP requests answered", ["route", "status"], registry=r
        )
        self.latency = Histogram(
            "charter_serve_request_seconds", "Seconds to answer a request", ["route"], registry=r
        )
        self.completions = Counter(
            "charter_serve_completions", "Completions asked to reward", ["route"], registry=r
        )
        self.ungraded = Counter(
            "charter_serve_ungraded",
            "Completions no source could reward (given --ungraded-reward, or an error)",
            ["route"],
            registry=r,
        )
        self.batch_size = Histogram(
            "charter_serve_request_completions",
            "Completions per request",
            ["route"],
            buckets=SIZES,
            registry=r,
        )
        self.model_batch = Histogram(
            "charter_serve_model_batch_size",
            "Completions a reward model scored in one forward pass",
            buckets=SIZES,
            registry=r,
        )
        self.split_by_marker = Counter(
            "charter_serve_split_by_marker",
            "OpenRLHF queries split at the template's assistant marker, not by their prompt",
            registry=r,
        )
        self.in_flight = Gauge(
            "charter_serve_requests_in_flight", "Requests being answered", registry=r
        )

    def render(self) -> tuple[bytes, str]:
        """The text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
