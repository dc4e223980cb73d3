"""Live metrics: the pool's state as a Prometheus collector (``pip install 'keysched[metrics]'``).

Theory of operation
-------------------
`PoolCollector(client)` is a `prometheus_client` custom collector.  Register it once
(``prometheus_client.REGISTRY.register(PoolCollector(client))``) and every scrape builds the
metrics afresh from two sources:

- ``client.snapshot()``, read at scrape time: per lane (key, model) its state (available,
  cooling, disabled, unavailable, with the reason), the seconds until it can serve again, the
  key's requests in flight, attempts sent / answered / failed; per quota group (project, model)
  the budget used in the last minute and today, the limits known (configured or learned) and
  the budget left under each; for the pool, requests waiting and attempts in flight, and
  requests submitted / answered / failed / cancelled.
- the client's outcome trace (`keysched.trace`, via the recorder's listener): attempts counted
  by outcome kind per lane, and how long requests waited for a lane.  The
  collector listens on the client's recorder; a client that records nothing gets one that
  writes nowhere, so the counts exist either way.

Every label is a key label, project name, model or outcome kind, never a secret (a recorder
with a ``hash_key`` gives pseudonyms in the trace-fed metrics; the snapshot's metrics keep the
labels the client was configured with).

Decisions where the issue was silent:

- "Cooling until" is exported as seconds left (``keysched_lane_cooldown_seconds``): the client's
  clock is monotonic, so an absolute time would need the wall clock the core never reads.
- "Disabled and why" is one gauge per lane with ``state`` and ``reason`` labels, set to 1 (the
  enum pattern): reasons are `OutcomeKind` values or a few phrases, so the label set stays small.
- Counts from the trace are as complete as the trace: records the recorder dropped (a slow
  sink) are missing from them too; ``keysched_trace_dropped`` says how many.
- The queue wait of a request is its life less the time its attempts took: waiting for a lane
  at first, and again after a 429 or a backoff.  It is observed when the request ends.

OpenTelemetry: nothing to add in keysched.  An OpenTelemetry Collector's ``prometheus``
receiver scrapes the endpoint ``prometheus_client.start_http_server`` serves, and exports the
same metrics wherever the Collector is configured to send them (see the README).
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from keysched._outcomes import QuotaDimension
from keysched._recorder import recorder_of
from keysched.trace import AttemptLine, RequestLine, TraceLine

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from keysched._client import KeyedClient
    from keysched._snapshot import GroupSnapshot, PoolSnapshot

__all__ = ["SNAPSHOT_TIMEOUT", "WAIT_BUCKETS", "PoolCollector"]

SNAPSHOT_TIMEOUT = 5.0
"""Real seconds a scrape from another thread waits for the client's loop to take a snapshot."""

WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, math.inf)
"""Upper bounds (seconds) of the queue-wait histogram: from "served at once" to "a quota minute"."""

_LANE = ["key", "project", "model"]
_GROUP = ["project", "model"]


class _TraceCounts:
    """What the trace lines say, counted on the recorder's writer thread (hence the lock)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.outcomes: dict[tuple[str, str, str, str], int] = {}
        self.busy: dict[int, float] = {}  # open request -> seconds its attempts took
        self.wait_counts = [0] * len(WAIT_BUCKETS)
        self.wait_sum = 0.0

    def __call__(self, line: TraceLine) -> None:
        with self.lock:
            if isinstance(line, AttemptLine):
                lane = (line.key, line.project, line.model, line.outcome)
                self.outcomes[lane] = self.outcomes.get(lane, 0) + 1
                self.busy[line.request] = self.busy.get(line.request, 0.0) + line.latency
            elif isinstance(line, RequestLine):
                busy = self.busy.pop(line.request, 0.0)
                wait = max(0.0, line.t - line.submitted - busy)
                self.wait_sum += wait
                for index, bound in enumerate(WAIT_BUCKETS):
                    if wait <= bound:
                        self.wait_counts[index] += 1
                        break


class PoolCollector(Collector):
    """The pool of `client` as Prometheus metrics, read at each scrape.

    A scrape usually runs on another thread (``prometheus_client.start_http_server``), and the
    pool's state belongs to the client's event loop: the snapshot is then taken on that loop
    (`loop`, by default the loop running when the collector is made), waiting at most
    `SNAPSHOT_TIMEOUT` seconds.

    Args:
        client: the `KeyedClient` to watch; the collector listens on its recorder (one is
            bound to it if it records nothing).
        prefix: the metric names' prefix.
        loop: the client's event loop (default: the running one, if any).
    """

    def __init__(self, client: KeyedClient, *, prefix: str = "keysched",
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        if loop is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # made outside a loop: snapshots are taken where scraped
                loop = None
        self._loop = loop
        self._client = client
        self._prefix = prefix
        self._counts = _TraceCounts()
        self._recorder = recorder_of(client)
        self._recorder.listen(self._counts)

    def describe(self) -> list[Metric]:
        """Nothing up front: the metrics' label values are only known at scrape time."""
        return []

    def collect(self) -> Iterator[Metric]:
        """Every metric, built from a fresh snapshot and the trace counts."""
        name = self._prefix
        snapshot = self._snapshot()
        now = snapshot.now
        state = GaugeMetricFamily(f"{name}_lane_state", "1 for the lane's state (available, "
                                  "cooling, disabled, unavailable) and why", labels=[
                                      *_LANE, "state", "reason"])
        cooling = GaugeMetricFamily(f"{name}_lane_cooldown_seconds", "Seconds until the lane "
                                    "can serve again (0: it can now)", labels=_LANE)
        in_flight = GaugeMetricFamily(f"{name}_key_in_flight", "Requests in flight on the key",
                                      labels=["key", "project"])
        attempts = CounterMetricFamily(f"{name}_lane_attempts", "Attempts sent on the lane, and "
                                       "how they ended", labels=[*_LANE, "result"])
        keys_seen: set[str] = set()
        for lane in snapshot.lanes:
            where = [lane.key, lane.project, lane.model]
            state.add_metric([*where, lane.state.value, lane.reason or ""], 1)
            until = lane.cooldown_until
            left = until - now if until is not None and math.isfinite(until) else 0.0
            cooling.add_metric(where, max(0.0, left))
            if lane.key not in keys_seen:
                keys_seen.add(lane.key)
                in_flight.add_metric([lane.key, lane.project], lane.in_flight)
            attempts.add_metric([*where, "dispatched"], lane.dispatched)
            attempts.add_metric([*where, "succeeded"], lane.succeeded)
            attempts.add_metric([*where, "failed"], lane.failed)
        yield from (state, cooling, in_flight, attempts)
        yield from self._groups(snapshot.groups)
        yield GaugeMetricFamily(f"{name}_requests_waiting", "Requests waiting for a lane "
                                "(queued or backing off)", value=snapshot.waiting)
        yield GaugeMetricFamily(f"{name}_attempts_in_flight", "Attempts in flight",
                                value=snapshot.in_flight)
        requests = CounterMetricFamily(f"{name}_requests", "Requests by how they ended",
                                       labels=["result"])
        for result, count in (("submitted", snapshot.requests_submitted),
                              ("finished", snapshot.requests_finished),
                              ("failed", snapshot.requests_failed),
                              ("cancelled", snapshot.requests_cancelled)):
            requests.add_metric([result], count)
        yield requests
        yield from self._trace_metrics()

    def _snapshot(self) -> PoolSnapshot:
        """The client's snapshot, taken on its event loop when scraped from another thread."""
        loop = self._loop
        if loop is None or loop.is_closed() or not loop.is_running():
            return self._client.snapshot()
        try:
            on_loop = asyncio.get_running_loop() is loop
        except RuntimeError:
            on_loop = False
        if on_loop:
            return self._client.snapshot()

        async def take() -> PoolSnapshot:
            return self._client.snapshot()

        taking = take()
        try:
            future = asyncio.run_coroutine_threadsafe(taking, loop)
        except RuntimeError:  # the loop closed since the check above: nothing runs on it now
            taking.close()
            return self._client.snapshot()
        return future.result(timeout=SNAPSHOT_TIMEOUT)

    def _groups(self, groups: tuple[GroupSnapshot, ...]) -> Iterator[Metric]:
        name = self._prefix
        used = GaugeMetricFamily(f"{name}_group_used", "Budget used by the quota group: "
                                 "requests and tokens in the last minute, requests today",
                                 labels=[*_GROUP, "dimension"])
        limit = GaugeMetricFamily(f"{name}_group_limit", "A limit the group knows, configured "
                                  "or learned from a 429", labels=[*_GROUP, "dimension", "source"])
        left = GaugeMetricFamily(f"{name}_group_budget_left", "What the group may still spend "
                                 "under each known limit", labels=[*_GROUP, "dimension"])
        for group in groups:
            where = [group.project, group.model]
            spent = {QuotaDimension.REQUESTS_PER_MINUTE: group.requests_last_minute,
                     QuotaDimension.TOKENS_PER_MINUTE: group.tokens_last_minute,
                     QuotaDimension.REQUESTS_PER_DAY: group.requests_today}
            for dimension, value in spent.items():
                if value is not None:
                    used.add_metric([*where, dimension.value], value)
            for known in group.limits:
                limit.add_metric([*where, known.dimension.value, known.source], known.value)
                value = spent.get(known.dimension)
                if value is not None:
                    left.add_metric([*where, known.dimension.value], max(0, known.value - value))
        yield from (used, limit, left)

    def _trace_metrics(self) -> Iterator[Metric]:
        name = self._prefix
        counts = self._counts
        outcomes = CounterMetricFamily(f"{name}_attempt_outcomes", "Attempts by outcome kind",
                                       labels=[*_LANE, "outcome"])
        with counts.lock:
            for labels, count in sorted(counts.outcomes.items()):
                outcomes.add_metric(list(labels), count)
            buckets, total = [], 0
            for bound, count in zip(WAIT_BUCKETS, counts.wait_counts, strict=True):
                total += count
                buckets.append(("+Inf" if math.isinf(bound) else repr(bound), total))
            wait_sum = counts.wait_sum
        yield outcomes
        yield HistogramMetricFamily(f"{name}_queue_wait_seconds", "How long requests waited "
                                    "for a lane (their life less their attempts)", buckets=buckets,
                                    sum_value=wait_sum)
        yield GaugeMetricFamily(f"{name}_trace_dropped", "Trace records the recorder dropped "
                                "(the counts above miss them too)", value=self._recorder.dropped)
