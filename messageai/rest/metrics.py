"""`GET /metrics`: the server's figures in Prometheus' text format (`prometheus_client`).

Nothing here runs per message. At each scrape, `ServerCollector` reads the gauges
from their owners (presence, the registry, push, jobs) and the tallies the hot path
keeps in `messageai.counters`, and turns them into metric families; the process
collectors add CPU, memory and file descriptors. The media folder's size is summed
at each scrape too, in a worker thread (`ServerCollector.refresh`). Mounted by
`rest.mount` when `metrics.enabled` (otherwise the path is 404); with
`metrics.token_file` or `token_env`, a scrape without that bearer token is 401.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import (
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from messageai.config import MetricsConfig, read_secret
from messageai.counters import COUNTS, Buckets
from messageai.edge.asgi import Request, Response, Router
from messageai.errors import Unauthorized
from messageai.threads import blocking

# The classic text format, which every Prometheus reads (our names need none of 1.0.0's
# escaping); prometheus_client's CONTENT_TYPE_LATEST moved on to 1.0.0.
CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"

if TYPE_CHECKING:
    from messageai.conversations.registry import Registry
    from messageai.jobs import Jobs
    from messageai.live.presence import Cluster, Presence
    from messageai.services.push import Push


def load_token(config: MetricsConfig) -> str | None:
    """The scrape token from `metrics.token_file` (its first line) or `metrics.token_env`;
    None when neither is set. Called once at start-up, by `rest.mount`."""
    return read_secret("metrics", "token_file", config.token_file, "token_env", config.token_env)


def histogram(name: str, documentation: str, buckets: Buckets) -> HistogramMetricFamily:
    """A `Buckets` as Prometheus' cumulative `le` buckets, `_sum` and `_count`."""
    cumulative: list[tuple[str, float]] = []
    running = 0
    # A copy first: the loop may bump a bucket between two reads of the list.
    counts = list(buckets.counts)
    for bound, count in zip((*buckets.bounds, float("inf")), counts, strict=True):
        running += count
        cumulative.append(("+Inf" if bound == float("inf") else repr(float(bound)), running))
    return HistogramMetricFamily(name, documentation, buckets=cumulative, sum_value=buckets.total)


def _cluster_metrics(cluster: Cluster) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "messageai_cluster_users_online",
        "Users with an open connection on any node, as this node knows.",
        cluster.users_online(),
    )
    dropped = CounterMetricFamily(
        "messageai_cluster_user_frames_dropped",
        "A user's own frames (conversation_added...) this node's bus dropped, its queue"
        " full: not published, or not delivered here.",
        labels=["direction"],
    )
    published, delivered = cluster.frames_dropped()
    dropped.add_metric(["published"], published)
    dropped.add_metric(["delivered"], delivered)
    yield dropped


class ServerCollector(Collector):
    """One server's figures, read at scrape time. The counters are the process's
    (`counters.COUNTS`); the gauges are this server's components'."""

    def __init__(
        self,
        presence: Presence,
        registry: Registry,
        push: Push,
        jobs: Jobs | None,
        media_root: Path,
    ) -> None:
        self._presence = presence
        self._registry = registry
        self._push = push
        self._jobs = jobs
        self._media_root = media_root
        self._media_disk_bytes = 0

    async def refresh(self) -> None:
        """Before a scrape: the figures that cost file-system calls, off the event loop."""
        self._media_disk_bytes = await blocking(disk_bytes, self._media_root)

    def collect(self) -> Iterator[Metric]:
        counts = COUNTS
        presence, registry = self._presence, self._registry
        yield GaugeMetricFamily(
            "messageai_connections", "Open WebSocket connections.", presence.connections_open()
        )
        yield GaugeMetricFamily(
            "messageai_users_online", "Users with an open connection.", presence.users_online()
        )
        if presence.cluster is not None:
            yield from _cluster_metrics(presence.cluster)
        yield GaugeMetricFamily(
            "messageai_actors", "Conversation actors running.", registry.actor_count()
        )
        yield GaugeMetricFamily(
            "messageai_open_databases",
            "Conversation database files open.",
            registry.open_database_count(),
        )
        yield CounterMetricFamily(
            "messageai_messages_committed",
            "Messages stored (a resent duplicate is not counted).",
            counts.messages_committed,
        )
        yield CounterMetricFamily(
            "messageai_changes_committed",
            "Edits, deletes and reactions that changed a message.",
            counts.changes_committed,
        )
        yield histogram(
            "messageai_commit_batch_size",
            "Commands per group commit that wrote.",
            counts.commit_batch,
        )
        yield histogram(
            "messageai_commit_seconds",
            "Time of one group commit, from the loop to its commit thread and back.",
            counts.commit_seconds,
        )
        yield histogram(
            "messageai_ack_seconds",
            "Time from a send reaching its conversation to its ack being queued.",
            counts.ack_seconds,
        )
        yield CounterMetricFamily(
            "messageai_slow_consumer_closes",
            "Connections closed with 1013: their outbound queue overflowed.",
            counts.slow_closes,
        )
        yield _labelled(
            "messageai_rate_limited",
            "Refusals by limit: messages (the send budget), connections, logins.",
            "limit",
            counts.rate_limited,
        )
        yield _labelled(
            "messageai_errors", "Errors told to clients, by protocol code.", "code", counts.errors
        )
        yield from self._push_metrics()
        yield CounterMetricFamily(
            "messageai_media_uploaded_bytes",
            "Bytes of media uploads stored.",
            counts.media_bytes_uploaded,
        )
        yield CounterMetricFamily(
            "messageai_media_served_bytes",
            "Bytes of media downloads answered.",
            counts.media_bytes_served,
        )
        yield GaugeMetricFamily(
            "messageai_media_disk_bytes",
            "Bytes of the media folder's files (uploads, and parts being received).",
            self._media_disk_bytes,
        )
        yield histogram(
            "messageai_ai_request_seconds",
            "Time of one request to the AI endpoint (answered, failed or cancelled).",
            counts.ai_request_seconds,
        )
        yield CounterMetricFamily(
            "messageai_ai_request_failures",
            "Requests to the AI endpoint that failed.",
            counts.ai_requests_failed,
        )
        if self._jobs is not None:
            yield GaugeMetricFamily(
                "messageai_jobs_running", "Durable jobs running now.", self._jobs.running
            )
        jobs = CounterMetricFamily(
            "messageai_jobs_finished",
            "Job attempts finished, by kind and outcome (done, retry, dead).",
            labels=["kind", "outcome"],
        )
        for (kind, outcome), value in sorted(counts.jobs_finished.items()):
            jobs.add_metric([kind, outcome], value)
        yield jobs

    def _push_metrics(self) -> Iterator[Metric]:
        push = self._push
        yield GaugeMetricFamily(
            "messageai_push_queue_depth",
            "Messages waiting to be turned into notifications.",
            push.queue_depth(),
        )
        c = push.counters
        outcomes = CounterMetricFamily(
            "messageai_push_notifications",
            "Notifications by outcome: sent (accepted), failed, dropped (queue full).",
            labels=["outcome"],
        )
        for outcome, value in (("sent", c.sent), ("failed", c.failed), ("dropped", c.dropped)):
            outcomes.add_metric([outcome], value)
        yield outcomes
        yield CounterMetricFamily(
            "messageai_push_retries", "Push requests repeated (429, 5xx, network).", c.retries
        )
        yield CounterMetricFamily(
            "messageai_push_removed_tokens",
            "Push tokens removed after DeviceNotRegistered.",
            c.removed_tokens,
        )


def disk_bytes(root: Path) -> int:
    """The sizes of the files under `root` (0 before the first upload made it)."""
    total = 0
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        return 0
    while entries:
        entry = entries.pop()
        try:
            if entry.is_dir(follow_symlinks=False):
                entries.extend(os.scandir(entry.path))
            else:
                total += entry.stat(follow_symlinks=False).st_size
        except FileNotFoundError:  # swept or placed meanwhile
            continue
    return total


def _labelled(
    name: str, documentation: str, label: str, values: dict[str, int]
) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=[label])
    for key, value in sorted(values.items()):
        family.add_metric([key], value)
    return family


class MetricsRoute:
    """`GET /metrics`, on a registry of its own (not prometheus_client's global one:
    tests run several servers in one process)."""

    def __init__(self, collector: ServerCollector, token: str | None) -> None:
        self._collector = collector
        self._token = token
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(collector)
        ProcessCollector(registry=self._registry)
        PlatformCollector(registry=self._registry)
        # No GCCollector: it adds a callback to the process's `gc` per instance.

    def routes(self, router: Router) -> None:
        router.add("GET", "/metrics", self.metrics)

    async def metrics(self, request: Request) -> Response:
        if self._token is not None:
            given = request.bearer_token() or ""
            if not hmac.compare_digest(given.encode(), self._token.encode()):
                raise Unauthorized("/metrics needs its bearer token (metrics.token_file)")
        await self._collector.refresh()
        # A few hundred lines from counters already in memory: inline, no thread.
        body = generate_latest(self._registry)
        return Response(200, body, [(b"content-type", CONTENT_TYPE)])
