"""Where handler stats become Prometheus metrics: an HTTP handler to route next to the WebSockets.

``serve({"/": ws, "/metrics": PrometheusHandler(ws)}, ...)``: a scrape is a plain GET on the
same port, answered from :meth:`WebSocketHandler.stats` snapshots taken at that moment, so the
hot path keeps its plain int counters and nothing is computed between two scrapes.  The text is
made by ``prometheus-client`` (the optional ``metrics`` extra), whose exposition format and
parser are the reference; metric names follow its conventions (``_total`` counters, base units).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ._stats import HandlerStats
from ._types import CallContext, Request, Response

if TYPE_CHECKING:
    from ._handler import WebSocketHandler

__all__ = ["METRICS", "PrometheusHandler", "Snapshot"]

#: Every metric: (name without the ``trio_wshandler_`` prefix, type, the HandlerStats field,
#: the label of a by-code field or "", help text).
METRICS: tuple[tuple[str, str, str, str, str], ...] = (
    ("connections", "gauge", "connections", "", "Live WebSocket connections."),
    ("upgrades", "counter", "upgrades", "", "WebSocket upgrades accepted (101 sent)."),
    (
        "handshakes_refused",
        "counter",
        "refused",
        "status",
        "HTTP requests answered with another status than 101, by status.",
    ),
    ("messages_received", "counter", "messages_received", "", "Whole data messages received."),
    ("received_bytes", "counter", "bytes_received", "", "WebSocket bytes read from clients."),
    ("messages_sent", "counter", "messages_sent", "", "Data messages queued for clients."),
    ("sent_bytes", "counter", "bytes_sent", "", "WebSocket bytes written to clients."),
    ("broadcasts", "counter", "broadcasts", "", "send_all calls in this process."),
    ("publishes", "counter", "publishes", "", "publish calls in this process."),
    ("writes", "counter", "writes", "", "Coalesced writes (batches of queued frames)."),
    ("frames_written", "counter", "frames_written", "", "Frames written in those batches."),
    ("send_queue_bytes", "gauge", "queued_bytes", "", "Bytes queued, all connections."),
    (
        "send_queue_largest_bytes",
        "gauge",
        "largest_queue_bytes",
        "",
        "Bytes queued for the most backed-up connection.",
    ),
    (
        "dropped_messages",
        "counter",
        "dropped_messages",
        "",
        "Messages dropped for a full send queue (slow_consumer='drop').",
    ),
    (
        "slow_consumer_closes",
        "counter",
        "slow_consumer_closes",
        "",
        "Connections closed for a full send queue (slow_consumer='close').",
    ),
    (
        "send_timeouts",
        "counter",
        "send_timeouts",
        "",
        "Connections dropped after send_timeout without progress.",
    ),
    ("close_codes_sent", "counter", "close_codes_sent", "code", "Close frames sent, by code."),
    (
        "close_codes_received",
        "counter",
        "close_codes_received",
        "code",
        "Close frames received, by code.",
    ),
    (
        "protocol_errors",
        "counter",
        "protocol_errors",
        "code",
        "Connections failed for a protocol error or a limit, by close code.",
    ),
    (
        "heartbeat_timeouts",
        "counter",
        "heartbeat_timeouts",
        "",
        "Connections closed for an unanswered heartbeat Ping.",
    ),
    ("idle_timeouts", "counter", "idle_timeouts", "", "Connections closed by idle_timeout."),
    (
        "history_publications",
        "counter",
        "history_publications",
        "",
        "Publications kept in a topic's history.",
    ),
    ("recoveries", "counter", "recoveries", "", "Subscriptions from a position."),
    (
        "recoveries_succeeded",
        "counter",
        "recoveries_succeeded",
        "",
        "Subscriptions from a position that replayed the whole gap.",
    ),
    (
        "recovery_failures",
        "counter",
        "recovery_failures",
        "reason",
        "Subscriptions from a position that did not recover, by reason.",
    ),
    (
        "cap_refusals",
        "counter",
        "cap_refusals",
        "reason",
        "Handshakes refused (429) by a cap, by reason (address, attempts, user).",
    ),
    (
        "rate_limited",
        "counter",
        "rate_limited",
        "",
        "Data messages that found a rate limit's bucket empty (delayed or refused).",
    ),
    ("rate_dropped", "counter", "rate_dropped", "", "Messages discarded by a rate limit."),
    (
        "rate_delay_seconds",
        "counter",
        "rate_delay_seconds",
        "",
        "Seconds readers waited for a rate limit's tokens.",
    ),
    (
        "errors_reported",
        "counter",
        "errors_reported",
        "",
        "Errors the application reported (report_error).",
    ),
    (
        "limit_closes",
        "counter",
        "limit_closes",
        "reason",
        "Connections closed (1008) by a rate limit or an error budget, by reason.",
    ),
    (
        "history_gaps_repaired",
        "counter",
        "history_gaps_repaired",
        "",
        "Publications lost on their way from Redis, read from the stream and delivered.",
    ),
    (
        "history_gaps_closed",
        "counter",
        "history_gaps_closed",
        "",
        "History gaps that could not be repaired: the topic's subscribers were closed.",
    ),
)

#: The backplane's metrics (only for handlers that have one): name, type, field, help.
BACKPLANE_METRICS: tuple[tuple[str, str, str, str], ...] = (
    ("backplane_published", "counter", "published", "Messages sent to Redis."),
    ("backplane_received", "counter", "received", "Messages from other processes delivered."),
    ("backplane_lost", "counter", "lost", "Messages that could not reach other processes."),
    ("backplane_reconnects", "counter", "reconnects", "Times the Redis connection was remade."),
    ("backplane_connected", "gauge", "connected", "1 while Redis is reachable."),
)

#: A snapshot to expose, and the labels (name: value) that tell it apart from the others.
Snapshot = tuple[dict[str, str], HandlerStats]


class PrometheusHandler:
    """An HTTP handler that answers ``GET`` with the Prometheus metrics of ``handlers``.

    Route it in the same server as the WebSockets: ``serve({"/": ws, "/metrics":
    PrometheusHandler(ws)}, ...)``.  Every metric is named ``trio_wshandler_...`` (the gauge
    ``trio_wshandler_connections``, the counter ``trio_wshandler_messages_sent_total``, ...: the
    list is in docs/guide.md); with several handlers each series has a ``handler`` label, the
    handler's ``name`` (so the names must differ).  ``process_metrics`` (True) adds
    prometheus-client's ``process_*`` metrics of this process (CPU seconds, resident memory,
    open files).  Needs ``prometheus-client``: ``pip install trio_wshandler[metrics]``.

    A scrape takes one :meth:`WebSocketHandler.stats` per handler (it walks the live
    connections) and formats the text: about a millisecond per 10,000 connections.
    """

    def __init__(self, *handlers: WebSocketHandler, process_metrics: bool = True) -> None:
        try:
            import prometheus_client
        except ImportError as exc:  # pragma: no cover - the extra is installed in the tests
            raise ImportError(
                "PrometheusHandler needs prometheus-client: pip install trio_wshandler[metrics]"
            ) from exc
        from ._handler import WebSocketHandler

        if not handlers:
            raise TypeError("PrometheusHandler needs at least one WebSocketHandler")
        for handler in handlers:
            if not isinstance(handler, WebSocketHandler):
                raise TypeError(f"not a WebSocketHandler: {handler!r}")
        names = [handler.name for handler in handlers]
        if len(set(names)) != len(names):
            raise ValueError(
                f"handlers need distinct names to be told apart (WebSocketHandler(name=...)): "
                f"{names}"
            )
        self.handlers: tuple[WebSocketHandler, ...] = handlers
        self._prometheus: Any = prometheus_client
        self._registry = prometheus_client.CollectorRegistry(auto_describe=False)
        self._registry.register(_Collector(self))
        if process_metrics:
            prometheus_client.ProcessCollector(registry=self._registry)
            prometheus_client.PlatformCollector(registry=self._registry)

    def snapshots(self) -> list[Snapshot]:
        """The snapshots a scrape exposes, with their labels (``handler`` when several)."""
        several = len(self.handlers) > 1
        return [
            ({"handler": handler.name} if several else {}, handler.stats())
            for handler in self.handlers
        ]

    def extra_families(self) -> Iterator[Any]:
        """Metric families to add to each scrape (prometheus-client ``*MetricFamily``)."""
        return iter(())

    def exposition(self) -> bytes:
        """The metrics in the Prometheus text format, as a scrape gets them."""
        return bytes(self._prometheus.generate_latest(self._registry))

    async def handle_request(self, cx: CallContext, hdr: Request, body: bytes) -> Response:
        """``GET`` (or ``HEAD``): 200 with the metrics; any other method: 405."""
        if hdr.method not in ("GET", "HEAD"):
            return Response(405, "use GET", {"Allow": "GET, HEAD"})
        return Response(
            200, self.exposition(), {"Content-Type": self._prometheus.CONTENT_TYPE_LATEST}
        )


class _Collector:
    """prometheus-client's custom collector protocol: ``collect()`` yields metric families."""

    def __init__(self, owner: PrometheusHandler) -> None:
        self._owner = owner

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        snapshots = self._owner.snapshots()
        base = _label_names(snapshots)

        def family(name: str, kind: str, help_text: str, labels: Sequence[str]) -> Any:
            cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            return cls(f"trio_wshandler_{name}", help_text, labels=[*base, *labels])

        for name, kind, field, by, help_text in METRICS:
            metric = family(name, kind, help_text, [by] if by else [])
            for labels, stats in snapshots:
                values = [labels.get(label, "") for label in base]
                value = getattr(stats, field)
                if by:
                    for code, count in _grouped(value, by).items():
                        metric.add_metric([*values, code], count)
                else:
                    metric.add_metric(values, value)
            yield metric
        with_backplane = [(labels, s.backplane) for labels, s in snapshots if s.backplane]
        if with_backplane:
            for name, kind, field, help_text in BACKPLANE_METRICS:
                metric = family(name, kind, help_text, [])
                for labels, backplane in with_backplane:
                    values = [labels.get(label, "") for label in base]
                    metric.add_metric(values, float(getattr(backplane, field)))
                yield metric
        yield from self._owner.extra_families()


def _label_names(snapshots: list[Snapshot]) -> list[str]:
    names: list[str] = []
    for labels, _ in snapshots:
        names += [name for name in labels if name not in names]
    return names


def _grouped(by_code: Mapping[int, int] | Mapping[str, int], label: str) -> dict[str, int]:
    """Close codes 3000-4999 are the applications' (a client picks any): exposed as "3xxx" and
    "4xxx", so that a client cannot make a series per code it sends."""
    grouped: dict[str, int] = {}
    for code, count in by_code.items():
        if label == "code" and isinstance(code, int) and 3000 <= code <= 4999:
            key = f"{code // 1000}xxx"
        else:
            key = str(code)
        grouped[key] = grouped.get(key, 0) + count
    return grouped
