"""`RedisStore`: the shared facts of a pool in Redis, for many processes (the ``redis`` extra).

Theory of operation
-------------------
The rules are those of `keysched._store.SharedPool`, run as two Lua scripts so that each is one
atomic step on the server, and one round trip:

- ``ADMIT`` (one call per attempt, at dispatch): drops expired leases on the key and expired
  entries of the group's sliding minute window, refuses the claim if a per-key cap or a known
  limit (requests or tokens per minute, requests per day) would be exceeded or the room left is
  held for an older request in the group's line, and otherwise takes the units and the lease.
  A claim refused on the minute budget takes its process's place in the line.  It also returns
  every shared fact when their version differs from the one the caller knows, so a process
  learns what others learned on its next dispatch, without a second trip.  Budgets and leases
  run on Redis's own clock (``TIME``), so the processes' clocks do not have to agree for them;
  a refusal says how long until room returns (a delay, not a time).  Facts (and the line's
  start_by) carry the processes' wall times and are compared with the caller's.
- ``SETTLE`` (batched, fire-and-forget, after attempts end): releases leases, gives back the
  units of attempts that a quota 429 refused, and merges facts: a cooldown only if it ends later
  than the one stored (``if new > old then set``), a learned limit if its value changed.  Each
  change bumps the version and is PUBLISHed on ``{pool}:events`` for dashboards.

Every key of a pool starts with the hash tag ``{pool_name}``, so all of them live in one slot
and the scripts run on Redis Cluster too (each script names every key it touches in KEYS).
Nothing secret is written: keys are named by label (see `keysched._store`).

Decisions where the issue was silent:

- Connection and read timeouts are short (0.25 s by default) and redis-py's own retries are
  off: the driver (`keysched._sharing`) decides what a failure means (go on with local state),
  and a call stuck in retries would hold an attempt back.
- A group's minute window and token total expire a window after their last entry; a day's count
  expires an hour after its day ends; leases expire a TTL after their last grant: an abandoned
  pool leaves nothing behind for long but its facts (a disabled key stays disabled).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from keysched._errors import ConfigurationError
from keysched._store import (
    LINE_GRACE,
    LINE_RECHECK,
    SEP,
    Claim,
    Grant,
    Settlement,
    StoredFact,
)

if TYPE_CHECKING:
    import redis.asyncio

__all__ = ["RedisStore"]

DEFAULT_TIMEOUT = 0.25

# KEYS: facts, version, leases of the key, the group's window, its token total, its day count,
# its line.
# ARGV: member, tokens, spends (0/1), rpm, tpm, rpd, window, day_end, lease_ttl, key_cap, known,
# the caller's wall time, whether budgets and leases run on Redis's clock (1) or the caller's
# (0), the claim's start_by, its owner, `LINE_GRACE`, `LINE_RECHECK`, then the fields of the
# facts that would hold the attempt back (`Claim.blockers`).  A refusal says in how many seconds
# room returns.  The line is a hash: owner -> "start_by SEP until" (see `SharedPool`).
ADMIT = r"""
local now = tonumber(ARGV[12])
if ARGV[13] == '1' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local member, tokens, spends = ARGV[1], tonumber(ARGV[2]), ARGV[3] == '1'
local rpm, tpm, rpd = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local window, day_end = tonumber(ARGV[7]), tonumber(ARGV[8])
local ttl, cap = tonumber(ARGV[9]), tonumber(ARGV[10])
local version = redis.call('GET', KEYS[2]) or '0'
local facts = {}
if version ~= ARGV[11] then facts = redis.call('HGETALL', KEYS[1]) end
local function refuse(why, after)
  return {0, string.format('%.17g', after), why, version, facts}
end
local start_by, owner = tonumber(ARGV[14]), ARGV[15]
local grace, recheck = tonumber(ARGV[16]), tonumber(ARGV[17])
local function wait(why, after)  -- refused on the minute budget: a place in the line
  if start_by ~= 0 then
    redis.call('HSET', KEYS[7], owner,
               string.format('%.17g', start_by) .. '\31' .. string.format('%.17g', now + after + grace))
    redis.call('PEXPIRE', KEYS[7], math.ceil((window + grace) * 1000) + 1000)
  end
  return refuse(why, after)
end
local wall = tonumber(ARGV[12])
for i = 18, #ARGV do
  local fact = redis.call('HGET', KEYS[1], ARGV[i])
  if fact then
    local until_ = tonumber(string.match(fact, '^([^\31]*)'))
    if until_ > wall then return refuse(string.match(ARGV[i], '^([^\31]*)'), until_ - wall) end
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
if cap > 0 and redis.call('ZCARD', KEYS[3]) >= cap then
  return refuse('in_flight', redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')[2] - now)
end
if spends then
  local gone = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now - window)
  if #gone > 0 then
    local freed = 0
    for _, m in ipairs(gone) do freed = freed + tonumber(string.match(m, '(%d+)$')) end
    redis.call('DECRBY', KEYS[5], freed)
    redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now - window)
  end
  local count = redis.call('ZCARD', KEYS[4])
  local oldest = now
  if count > 0 then oldest = tonumber(redis.call('ZRANGE', KEYS[4], 0, 0, 'WITHSCORES')[2]) end
  if rpm > 0 and count + 1 > rpm then return wait('rpm', oldest + window - now) end
  local used = tonumber(redis.call('GET', KEYS[5]) or '0')
  if tpm > 0 and count > 0 and used + tokens > tpm then
    return wait('tpm', oldest + window - now)
  end
  local day = tonumber(redis.call('GET', KEYS[6]) or '0')
  if rpd > 0 and day >= rpd then return refuse('rpd', day_end - wall) end
  if rpm > 0 and start_by ~= 0 then
    local line = redis.call('HGETALL', KEYS[7])
    local ahead, first = 0, nil
    for i = 1, #line, 2 do
      local place_start, place_until = string.match(line[i + 1], '^([^\31]*)\31(.*)$')
      place_start, place_until = tonumber(place_start), tonumber(place_until)
      if place_until <= now then
        redis.call('HDEL', KEYS[7], line[i])
      elseif line[i] ~= owner and place_start < start_by then
        ahead = ahead + 1
        if first == nil or place_until < first then first = place_until end
      end
    end
    if ahead > 0 and count + ahead + 1 > rpm then
      return wait('line', math.min(recheck, first - now))
    end
  end
  local keep = math.ceil(window * 1000) + 1000
  redis.call('ZADD', KEYS[4], now, member)
  redis.call('PEXPIRE', KEYS[4], keep)
  redis.call('INCRBY', KEYS[5], tokens)
  redis.call('PEXPIRE', KEYS[5], keep)
  redis.call('INCR', KEYS[6])
  if day_end < 1e15 then redis.call('EXPIREAT', KEYS[6], math.ceil(day_end) + 3600) end
  redis.call('HDEL', KEYS[7], owner)
end
redis.call('ZADD', KEYS[3], now + ttl, member)
redis.call('PEXPIRE', KEYS[3], math.ceil(ttl * 1000) + 1000)
return {1, '0', '', version, facts}
"""

# KEYS: facts, version, then per settlement: its key's leases, window, token total, day count.
# ARGV: channel, settlements n, per settlement (member, refund 0/1, tokens), then facts as
# (field, value) pairs.
SETTLE = r"""
local n = tonumber(ARGV[2])
for i = 0, n - 1 do
  local member, refund, tokens = ARGV[3 + 3 * i], ARGV[4 + 3 * i], tonumber(ARGV[5 + 3 * i])
  local k = 3 + 4 * i
  redis.call('ZREM', KEYS[k], member)
  if refund == '1' and redis.call('ZREM', KEYS[k + 1], member) == 1 then
    redis.call('DECRBY', KEYS[k + 2], tokens)
    if tonumber(redis.call('GET', KEYS[k + 3]) or '0') > 0 then redis.call('DECR', KEYS[k + 3]) end
  end
end
local changed = 0
for i = 3 + 3 * n, #ARGV, 2 do
  local field, value = ARGV[i], ARGV[i + 1]
  local old = redis.call('HGET', KEYS[1], field)
  local take = not old
  if old then
    local new_until, new_value = string.match(value, '^([^\31]*)\31([^\31]*)')
    local old_until, old_value = string.match(old, '^([^\31]*)\31([^\31]*)')
    if string.sub(field, 1, 6) == 'limit\31' then
      take = new_value ~= old_value
    else
      take = tonumber(new_until) > tonumber(old_until)
    end
  end
  if take then
    redis.call('HSET', KEYS[1], field, value)
    redis.call('PUBLISH', ARGV[1], field .. '\31' .. value)
    changed = changed + 1
  end
end
if changed > 0 then redis.call('INCRBY', KEYS[2], changed) end
return changed
"""


def check_pool_name(pool_name: object) -> str:
    """A pool name: a short printable string without braces (it is the Redis hash tag)."""
    if (not isinstance(pool_name, str) or not pool_name or len(pool_name) > 100
            or any(ch in "{}" or not ch.isprintable() or ch.isspace() for ch in pool_name)):
        shown = repr(pool_name)[:60] if isinstance(pool_name, str) else type(pool_name).__name__
        raise ConfigurationError("pool_name", f"expected 1 to 100 printable characters without "
                                 f"braces or whitespace, got {shown}")
    return pool_name


class RedisStore:
    """A `keysched.Store` in Redis: several processes (or machines) share one pool.

    Args:
        url: a ``redis://host:port/db`` URL (or ``rediss://``, ``unix://``), or a
            ``redis.asyncio.Redis`` client of your own (not closed by `aclose`).
        pool_name: the namespace (and Redis Cluster hash tag) of this pool's keys.
        timeout: seconds a connection or a call may take before it counts as failed.
        server_clock: run budget windows and leases on Redis's own clock (the default: the
            processes' clocks need not agree).  False runs them on the clients' wall clocks,
            as given to `KeyedClient` (``wall_clock``): for clients on a virtual clock
            (tests, benchmarks against a time-scaled fake server).

    Raises:
        ConfigurationError: redis-py is not installed (``pip install 'keysched[redis]'``), or
            a bad argument.
    """

    def __init__(self, url: str | redis.asyncio.Redis, *, pool_name: str = "keysched",
                 timeout: float = DEFAULT_TIMEOUT, server_clock: bool = True) -> None:
        try:
            import redis.asyncio as aioredis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff
        except ImportError as exc:
            raise ConfigurationError("store", "RedisStore needs redis-py: pip install "
                                     "'keysched[redis]'") from exc
        self.pool_name = check_pool_name(pool_name)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not (
                0 < timeout < math.inf):
            raise ConfigurationError("timeout", f"expected seconds > 0, got {timeout!r}")
        self.timeout = float(timeout)
        self.server_clock = bool(server_clock)
        if isinstance(url, str):
            try:
                self.redis: redis.asyncio.Redis = aioredis.Redis.from_url(
                    url, socket_timeout=timeout, socket_connect_timeout=timeout,
                    retry=Retry(NoBackoff(), 0), retry_on_timeout=False, decode_responses=True,
                    health_check_interval=0)
            except ValueError as exc:  # the URL is not shown: it may hold a password
                raise ConfigurationError("store", f"not a Redis URL ({exc.__class__.__name__}); "
                                         "expected redis://host:port/db") from None
            self._owned = True
        else:
            self.redis = url
            self._owned = False
        tag = "{" + self.pool_name + "}"
        self.prefix = tag
        self._facts_key = f"{tag}:facts"
        self._version_key = f"{tag}:version"
        self.channel = f"{tag}:events"
        self._admit = self.redis.register_script(ADMIT)
        self._settle = self.redis.register_script(SETTLE)

    def __repr__(self) -> str:
        return f"RedisStore(pool_name={self.pool_name!r})"

    def _group_keys(self, claim: Claim) -> list[str]:
        group = f"{self.prefix}:window:{claim.project}{SEP}{claim.model}"
        return [f"{self.prefix}:leases:{claim.key}", group, f"{group}{SEP}tokens",
                f"{group}{SEP}day{SEP}{int(claim.day_end)}"]

    async def admit(self, claim: Claim, known_version: int) -> Grant:
        """See `keysched.Store.admit`: one EVALSHA."""
        line = f"{self.prefix}:line:{claim.project}{SEP}{claim.model}"
        reply: list[Any] = await self._admit(
            keys=[self._facts_key, self._version_key, *self._group_keys(claim), line],
            args=[claim.member, claim.tokens, int(claim.spends_quota), claim.rpm, claim.tpm,
                  claim.rpd, repr(float(claim.window)), repr(float(claim.day_end)),
                  repr(float(claim.lease_ttl)), claim.key_cap, str(known_version),
                  repr(float(claim.wall)), int(self.server_clock),
                  repr(float(claim.start_by)), claim.owner, repr(LINE_GRACE),
                  repr(LINE_RECHECK), *claim.blockers])
        granted, retry_after, why, version, raw = reply
        return Grant(bool(granted), float(retry_after), why, int(version),
                     _decode(raw) if int(version) != known_version else None)

    async def settle(self, settlements: Sequence[Settlement],
                     facts: Sequence[StoredFact]) -> None:
        """See `keysched.Store.settle`: one EVALSHA for the whole batch."""
        if not settlements and not facts:
            return
        keys = [self._facts_key, self._version_key]
        args: list[str | int] = [self.channel, len(settlements)]
        for settlement in settlements:
            claim = settlement.claim
            keys.extend(self._group_keys(claim))
            args.extend((claim.member, int(settlement.refund and claim.spends_quota),
                         claim.tokens))
        for fact in facts:
            args.extend((fact.field, fact.encode()))
        await self._settle(keys=keys, args=args)

    async def facts(self) -> tuple[int, tuple[StoredFact, ...]]:
        """See `keysched.Store.facts`: one pipelined round trip."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.get(self._version_key)
            pipe.hgetall(self._facts_key)
            version, raw = await pipe.execute()
        return int(version or 0), tuple(StoredFact.decode(field, value)
                                        for field, value in raw.items())

    async def aclose(self) -> None:
        """Close the connections this store opened."""
        if self._owned:
            await self.redis.aclose()


def _decode(flat: list[str]) -> tuple[StoredFact, ...]:
    return tuple(StoredFact.decode(flat[i], flat[i + 1]) for i in range(0, len(flat), 2))
