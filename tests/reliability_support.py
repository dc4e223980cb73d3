"""Shared pieces of the reliability suite: a faulty scenario, scaled time, load runs, accounting.

Time: the fake server runs `SCALE` virtual seconds per real second, and the client is given a
clock in the same virtual seconds (``ScaledTime``), so the retry delays and cooldowns the server
speaks of (virtual seconds) mean the same thing to both sides.  The one exception is the
per-attempt ``timeout``, which is real seconds (the HTTP libraries read the event loop's clock).
Nothing here sleeps to check timing: the client's own timer sleeps, scaled.
"""

from __future__ import annotations

import asyncio
import collections
import json
import random
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs
import httpx

from keysched import GenerateResult, KeyedClient, KeyschedError, RetryPolicy
from keysched._outcomes import OutcomeKind
from keysched._results import AttemptRecord
from sim.scenario import Scenario, parse_scenario
from sim.world import World

SCALE = 1000.0
"""Virtual seconds per real second, for the server and the client alike."""
FLASH = "gemini-2.5-flash"
LITE = "gemini-2.5-flash-lite"
CLIENT_TIMEOUT = 8.0
"""Seconds on the event loop's clock an attempt may take, waiting for a pooled connection
included.  On a `virtual_loop.VirtualTimeLoop` (the load test) they are virtual: an attempt
takes its scenario latency (0.1 to about 2 s) whatever the machine's load, and a hang (`HANG`)
always passes them.  In real time (the soak, in-process without latencies) they only bound a
hang."""
HANG = 12_000.0
DISABLING = frozenset({OutcomeKind.KEY_INVALID, OutcomeKind.KEY_LEAKED,
                       OutcomeKind.KEY_FORBIDDEN, OutcomeKind.KEY_TYPE_UNSUPPORTED,
                       OutcomeKind.PROJECT_DISABLED})


def faulty_scenario(keys: int = 50, *, revoke_at: Sequence[float] = (0.0, 150.0, 400.0),
                    seed: int = 11, scale: float = SCALE, probability: float = 1.0,
                    timeouts: float = 0.001, at: float = 1.0) -> Scenario:
    """`keys` keys in pairs per project, every fault kind the load test needs, a few revocations.

    Projects ``p0``..``p3`` have an RPM quota of 1 (so 429s with details happen), project ``p4``
    has its API disabled at virtual t = 250, key ``p5-1`` leaks at t = 300 and keys ``p6-1``,
    ``p7-1``, ... are revoked at the times in `revoke_at`; `at` multiplies all those times (a
    run in virtual time lasts seconds, not thousands of them).  `probability` scales every
    random fault (1.0: the rates below); `timeouts` is the probability of a hang (each one holds
    a call for `CLIENT_TIMEOUT`, so small runs raise it to meet a few).
    """
    projects = keys // 2
    assert projects >= 8 + len(revoke_at)
    p = probability
    faults: list[dict[str, Any]] = [
        {"kind": "shared_429", "probability": 0.02 * p},
        {"kind": "overloaded", "model": FLASH, "probability": 0.02 * p},
        {"kind": "server_error", "probability": 0.02 * p},
        {"kind": "timeout", "probability": timeouts * p},
        {"kind": "reset", "probability": 0.02 * p},
        {"kind": "truncated_body", "probability": 0.01 * p},
        {"kind": "garbage_body", "probability": 0.01 * p},
        {"kind": "project_disabled", "project": "p4", "start": 250.0 * at},
        {"kind": "key_leaked", "key": "p5-1", "start": 300.0 * at},
    ]
    faults += [{"kind": "key_revoked", "key": f"p{6 + i}-1", "start": start * at}
               for i, start in enumerate(revoke_at)]
    tight = {FLASH: {"rpm": 1}, LITE: {"rpm": 1}}
    return parse_scenario({
        "description": "reliability: every fault at once", "start": "2026-05-12T10:00:00-07:00",
        "duration": 1e9, "time_scale": scale, "seed": seed, "timeout": HANG,
        "error_latency": 0.1,
        "models": [{"name": FLASH, "latency_median": 0.5, "latency_sigma": 0.3,
                    "output_tokens": [5, 20], "stream_chunks": 4},
                   {"name": LITE, "latency_median": 0.3, "latency_sigma": 0.3,
                    "output_tokens": [5, 20], "stream_chunks": 4}],
        "projects": [{"name": f"p{n}", "keys": 2, **({"quotas": tight} if n < 4 else {})}
                     for n in range(projects)],
        "faults": faults,
    }, source="<reliability>")


class ScaledTime:
    """The client's clock and sleep in the server's virtual seconds (see the module docstring).

    The clock starts at a non-zero epoch so that code assuming ``now == 0`` would break.
    """

    EPOCH = 1_000_000.0

    def __init__(self, scenario: Scenario, scale: float = SCALE) -> None:
        self.scale = scale
        self.t0 = time.monotonic()
        self.wall_epoch = scenario.start_epoch

    def clock(self) -> float:
        return self.EPOCH + (time.monotonic() - self.t0) * self.scale

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds / self.scale)

    def wall(self) -> float:
        return self.wall_epoch + (self.clock() - self.EPOCH)


def virtual_client(scenario: Scenario, base_url: str, **kwargs: Any) -> KeyedClient:
    """A client for `scenario` at `base_url` on the running `VirtualTimeLoop`'s clock (the
    scenario's time at scale 1, if the server was made with the same clock)."""
    loop = asyncio.get_running_loop()
    options: dict[str, Any] = {
        "keys": scenario.pool_keys(), "models": scenario.models_best_first,
        "retry": RetryPolicy(deadline=60_000.0), "timeout": CLIENT_TIMEOUT,
        "rng": random.Random(5), **kwargs}
    return KeyedClient(base_url=base_url, clock=loop.time, sleep=asyncio.sleep,
                       wall_clock=lambda: scenario.start_epoch + loop.time(), **options)


def make_client(scenario: Scenario, base_url: str, **kwargs: Any) -> KeyedClient:
    """A client for `scenario`'s keys and models at `base_url`, in the scenario's virtual time."""
    scaled = ScaledTime(scenario)
    options: dict[str, Any] = {
        "keys": scenario.pool_keys(), "models": scenario.models_best_first,
        "retry": RetryPolicy(deadline=60_000.0), "timeout": CLIENT_TIMEOUT,
        "rng": random.Random(5), **kwargs}
    return KeyedClient(base_url=base_url, clock=scaled.clock, sleep=scaled.sleep,
                       wall_clock=scaled.wall, **options)


@attrs.define
class Tally:
    """How a batch of calls ended, and every attempt they made."""

    calls: int = 0
    outcomes: collections.Counter[str] = attrs.field(factory=collections.Counter)
    """Results and errors by class name (``GenerateResult``, ``AttemptsExhaustedError``...)."""
    attempts: collections.Counter[tuple[str, str, str]] = attrs.field(
        factory=collections.Counter)
    """Attempts by (key label, model, outcome kind value)."""
    records: list[AttemptRecord] = attrs.field(factory=list)
    """Every attempt record, when `keep_records` (a soak keeps counts only)."""
    unexpected: list[BaseException] = attrs.field(factory=list)
    keep_records: bool = True
    attempt_count: int = 0

    def add(self, ended: object) -> None:
        self.calls += 1
        if isinstance(ended, GenerateResult):
            records: Iterable[AttemptRecord] = ended.attempts
        elif isinstance(ended, KeyschedError):
            records = getattr(ended, "attempts", ())
        else:
            assert isinstance(ended, BaseException)
            self.unexpected.append(ended)
            records = ()
        self.outcomes[type(ended).__name__] += 1
        for record in records:
            self.attempts[record.key, record.model, record.outcome.value] += 1
            self.attempt_count += 1
            if self.keep_records:
                self.records.append(record)

    def by_kind(self) -> dict[str, int]:
        counts: collections.Counter[str] = collections.Counter()
        for (_, _, kind), n in self.attempts.items():
            counts[kind] += n
        return dict(sorted(counts.items()))


async def run_calls(client: KeyedClient, calls: int, concurrency: int,
                    tally: Tally | None = None) -> Tally:
    """`calls` generate calls, at most `concurrency` at a time; each end is tallied once."""
    tally = tally or Tally()
    ends: list[int] = [0] * calls
    counter = iter(range(calls))

    async def worker() -> None:
        for n in counter:
            try:
                ended: object = await client.generate(f"request {n}: " + "x" * (n % 40))
            except Exception as exc:  # every end is counted by its class, expected or not
                ended = exc
            ends[n] += 1
            tally.add(ended)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    assert ends == [1] * calls, "a call ended more or less than once"
    return tally


def server_attempts(counters: Mapping[str, Mapping[str, Mapping[str, int]]]
                    ) -> collections.Counter[tuple[str, str, str]]:
    """The server's counters as (key label, model, outcome kind value) counts."""
    out: collections.Counter[tuple[str, str, str]] = collections.Counter()
    for label, models in counters.items():
        for model, kinds in models.items():
            for kind, n in kinds.items():
                if kind != "requests":
                    out[label, model, kind] += n
    return out


async def fetch_counters(base_url: str) -> dict[str, dict[str, dict[str, int]]]:
    """GET /_sim/counters from the server."""
    async with httpx.AsyncClient(base_url=base_url) as http:
        response = await http.get("/_sim/counters")
        response.raise_for_status()
        data: dict[str, dict[str, dict[str, int]]] = json.loads(response.content)
        return data


def client_sockets(port: int) -> int | None:
    """Sockets of this host connected to `port` and still open on the client's side.

    Read from ``/proc/net/tcp`` (ESTABLISHED or CLOSE_WAIT, remote port `port`), so it counts
    what the kernel holds whatever the HTTP library; ``None`` where there is no such file.
    """
    try:
        with open("/proc/net/tcp", encoding="ascii") as table:
            rows = table.read().splitlines()[1:]
    except OSError:
        return None
    count = 0
    for row in rows:
        fields = row.split()
        remote, state = fields[2], fields[3]
        if int(remote.rsplit(":", 1)[1], 16) == port and state in ("01", "08"):
            count += 1
    return count


def used_after_disabled(records: Sequence[AttemptRecord]) -> list[AttemptRecord]:
    """Attempts sent on a key after a refusal that disabled it had come back to the client."""
    refused: dict[str, float] = {}
    for record in records:
        if record.outcome in DISABLING:
            refused[record.key] = min(refused.get(record.key, record.ended), record.ended)
    return [r for r in records if r.key in refused and r.started > refused[r.key]]


def world_handler(world: World, scale: float, clock: ScaledTime,
                  ) -> Any:
    """An `httpx.MockTransport` handler that answers as the fake server would, in-process.

    It renders the world's exact bytes; ``reset`` and ``timeout`` become the network errors a
    socket would raise (no latency is slept: this path is about throughput and memory).
    """

    def handle(request: httpx.Request) -> httpx.Response:
        secret = request.headers.get("x-goog-api-key", "")
        model = request.url.path.rsplit("/", 1)[-1].partition(":")[0]
        payload = json.loads(request.content)
        from keysched._wire import estimate_tokens

        t = (clock.clock() - clock.EPOCH)
        reply = world.attempt(t, secret, model, estimate_tokens(payload))
        if reply.fault == "reset":
            raise httpx.ReadError("simulated reset", request=request)
        if reply.fault == "timeout":
            raise httpx.ReadTimeout("simulated timeout", request=request)
        status, headers, body = reply.render()
        return httpx.Response(status, headers=[(k.decode(), v.decode()) for k, v in headers],
                              content=body)

    return handle


class Tap:
    """An ASGI wrapper that records every request line and every response byte of an app."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.requests: list[tuple[str, bytes, list[tuple[bytes, bytes]]]] = []
        """(path, query string, headers) of each request."""
        self.responses: list[list[bytes]] = []
        """The body parts of each response, in order (one part per SSE event for a stream)."""
        self.response_headers: list[list[tuple[bytes, bytes]]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.requests.append((scope["path"], bytes(scope.get("query_string", b"")),
                              list(scope.get("headers", []))))
        parts: list[bytes] = []
        headers: list[tuple[bytes, bytes]] = []
        self.responses.append(parts)
        self.response_headers.append(headers)

        async def tapped(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers.extend(message.get("headers", []))
            elif message["type"] == "http.response.body":
                parts.append(bytes(message.get("body", b"")))
            await send(message)

        await self.app(scope, receive, tapped)
