"""The store of a fleet: Redis (or Valkey), shared by every replica and worker.

Round trips. A call's admission is one script (ADMIT): it reads the client's
limits as stored (so a change on one replica holds on all at once), checks
budget, request and token windows and calls in flight, and reserves the
call's estimate, atomically. Calls of clients without limits need no round
trip. Admissions are pipelined on one connection (store/pipelining.py): the
pooled client's per-command machinery cost more CPU than the round trip.
The settle at a call's end is buffered and written by a background task
every FLUSH_SECONDS, many calls per pipelined batch.

Keys (all under PREFIX):
  clients        hash name -> client JSON        tokens   hash sha256-hex -> name
  version        clients' version (INCR)         settings settings record JSON
  generation     the settings record's generation
  rw:<c>         zset, request times (sliding minute)
  tw:<c>         hash, token slot -> tokens (sliding minute, SLOT_SECONDS slots)
  if:<c>         zset, calls in flight -> lease expiry
  spend:<c>:<p>  spend + reservations of a UTC day or month (USD, float)
  usage:<c>      hash "<model>\\x1f<column>" -> all-time usage of a client ('' = no client)
  usage-all      the same for all traffic      since  when counting started
  conv:<id>      hash: record (JSON), version, owner, expires_at; EXPIREs with the conversation
  conv:<id>:messages   list of the messages (JSON with their token counts), same expiry
  conv:<id>:lease      the token of the turn in progress (SET NX PX, renewed while it runs)
  convs:<c>      zset (score 0) of "<created us>:<id>": a client's conversations, by lex order
  convs-all      the same for every client     convs-expiry  zset "<c>\\x1f<key>" -> expiry
Changes of clients and settings are also published on PREFIX + "events";
every process polls `version` and `generation` every POLL_SECONDS as well.

When Redis cannot be reached, the replica keeps serving: clients and
settings as last known, limits enforced by a LocalLimiter seeded with the
last spend it saw (per replica), usage and spend buffered and written back
when Redis answers again. Admin changes and GetUsage are refused meanwhile
(STORE_UNAVAILABLE). One log line and the gpt_grpc_store_degraded metric
say so on each transition, not per call.
"""

from __future__ import annotations

import asyncio
import builtins
import collections
import contextlib
import hmac
import itertools
import json
import logging
import math
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError, ResponseError

from ..conversations import Conversation, Counted
from ..errors import GatewayError, Reason
from ..limits import (
    LEASE_SECONDS,
    SLOT_SECONDS,
    WINDOW_SECONDS,
    Estimate,
    Limits,
    LocalLimiter,
    Periods,
    Ticket,
    budget_refusal,
    in_flight_refusal,
    rate_refusal,
)
from ..usage import COUNTED_FIELDS, ModelTotals
from .base import (
    ANY_OWNER,
    Appended,
    Charge,
    ClientRow,
    Lease,
    SettingsDoc,
    Store,
    StoreError,
    conversation_json,
    conversation_of,
    message_json,
    message_of,
    sorted_usage,
)
from .pipelining import PipelinedConnection

log = logging.getLogger("gpt_grpc.store")

PREFIX = "gptgrpc:"
# Settles are written in batches this often (and at close).
FLUSH_SECONDS = 0.05
# Settings generation and clients version are polled this often, besides pub/sub.
POLL_SECONDS = 0.5
# One command's answer may take this long before Redis counts as unreachable.
COMMAND_TIMEOUT_SECONDS = 1.0
# At start-up, how long to wait for Redis before giving up (a clear error then).
START_WAIT_SECONDS = 10.0
# Spend keys outlive their period by a margin (a month is at most 31 days).
SPEND_TTL_SECONDS = 40 * 86400
# Clients whose admission keys are kept encoded (a bounded memo: cleared when full).
MAX_CACHED_KEY_SETS = 4096
_USAGE_FIELDS = COUNTED_FIELDS
_SEP = "\x1f"
T = TypeVar("T")

# Admission: KEYS clients, rw, tw, if, spend-day, spend-month.
# ARGV name, now, est_tokens, est_cost, ticket id, requests only ('1': the request rate alone, as
# for CountTokens). The window, slot, lease and TTLs are constants written into the script (below):
# each argument costs redis-py's Python packer a few microseconds on every admitted call.
# Returns {0, day_spend, month_spend} admitted; {1} unknown/revoked; {2, spend} budget;
# {3, wait, flags(1 rpm, 2 tpm)} rate; {4, max_in_flight} in flight. Mirrors limits.LocalLimiter.admit.
_ADMIT = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return {1} end
local c = cjson.decode(raw)
if c.revoked_at ~= nil and c.revoked_at ~= cjson.null then return {1} end
local l = c.limits
if ARGV[6] == '1' then l = {requests_per_minute = l.requests_per_minute} end
local now = tonumber(ARGV[2])
local est_tokens = tonumber(ARGV[3])
local est_cost = tonumber(ARGV[4])
local window = __WINDOW__
local slot_s = __SLOT__
local horizon = now - window
local day_spend = tonumber(redis.call('GET', KEYS[5]) or '0')
local month_spend = tonumber(redis.call('GET', KEYS[6]) or '0')
local function set(v) return v ~= nil and v ~= cjson.null end
if set(l.budget_usd) then
  local spend = day_spend
  if l.budget_period == 'month' then spend = month_spend end
  if spend >= l.budget_usd or spend + est_cost > l.budget_usd then return {2, tostring(spend)} end
end
local wait = 0
local flags = 0
if set(l.requests_per_minute) then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', horizon)
  local n = redis.call('ZCARD', KEYS[2])
  if n >= l.requests_per_minute then
    local oldest = redis.call('ZRANGE', KEYS[2], n - l.requests_per_minute, n - l.requests_per_minute, 'WITHSCORES')
    wait = math.max(wait, tonumber(oldest[2]) - horizon)
    flags = flags + 1
  end
end
if set(l.tokens_per_minute) then
  local slots = redis.call('HGETALL', KEYS[3])
  local entries = {}
  local total = 0
  for i = 1, #slots, 2 do
    local s = tonumber(slots[i])
    if (s + 1) * slot_s <= horizon then
      redis.call('HDEL', KEYS[3], slots[i])
    else
      local v = tonumber(slots[i + 1])
      total = total + v
      table.insert(entries, {s, v})
    end
  end
  if total >= l.tokens_per_minute or total + est_tokens > l.tokens_per_minute then
    table.sort(entries, function(a, b) return a[1] < b[1] end)
    local remaining = total
    local w = window
    for _, e in ipairs(entries) do
      remaining = remaining - e[2]
      if remaining + est_tokens <= l.tokens_per_minute then
        w = (e[1] + 1) * slot_s - horizon
        break
      end
    end
    wait = math.max(wait, w)
    flags = flags + 2
  end
end
if flags > 0 then return {3, tostring(wait), flags} end
if set(l.max_in_flight) then
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
  if redis.call('ZCARD', KEYS[4]) >= l.max_in_flight then return {4, l.max_in_flight} end
  redis.call('ZADD', KEYS[4], now + __LEASE__, ARGV[5])
  redis.call('EXPIRE', KEYS[4], __LEASE_TTL__)
end
if set(l.requests_per_minute) then
  redis.call('ZADD', KEYS[2], now, ARGV[5])
  redis.call('EXPIRE', KEYS[2], math.ceil(window) + 1)
end
if est_tokens > 0 then
  redis.call('HINCRBY', KEYS[3], math.floor(now / slot_s), est_tokens)
  redis.call('EXPIRE', KEYS[3], math.ceil(window + slot_s) + 1)
end
if est_cost > 0 then
  day_spend = tonumber(redis.call('INCRBYFLOAT', KEYS[5], ARGV[4]))
  month_spend = tonumber(redis.call('INCRBYFLOAT', KEYS[6], ARGV[4]))
  redis.call('EXPIRE', KEYS[5], __SPEND_TTL__)
  redis.call('EXPIRE', KEYS[6], __SPEND_TTL__)
end
return {0, tostring(day_spend), tostring(month_spend)}
"""
for _name, _value in {
    "__WINDOW__": repr(WINDOW_SECONDS),
    "__SLOT__": repr(SLOT_SECONDS),
    "__LEASE__": repr(LEASE_SECONDS),
    "__LEASE_TTL__": str(int(LEASE_SECONDS * 2)),
    "__SPEND_TTL__": str(SPEND_TTL_SECONDS),
}.items():
    _ADMIT = _ADMIT.replace(_name, _value)

# Add a client: KEYS clients, tokens, version; ARGV name, json, token hex, channel.
_ADD_CLIENT = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[3], ARGV[1])
redis.call('INCR', KEYS[3])
redis.call('PUBLISH', ARGV[4], 'clients')
return 1
"""

# Replace a client record if unchanged: KEYS clients, tokens, version;
# ARGV name, old json, new json, token hex, revoke (1/0), channel.
_SWAP_CLIENT = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
if ARGV[5] == '1' then redis.call('HDEL', KEYS[2], ARGV[4]) end
redis.call('INCR', KEYS[3])
redis.call('PUBLISH', ARGV[6], 'clients')
return 1
"""

# A batch of settles, applied at most once: a batch whose reply was lost (Redis killed after
# applying it) is sent again, and then skipped. KEYS batch marker; ARGV (op, key, field, value)*.
_APPLY = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', 3600) then return 0 end
for i = 1, #ARGV, 4 do
  local op, key, f, v = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  if op == 'hi' then redis.call('HINCRBY', key, f, v)
  elseif op == 'hf' then redis.call('HINCRBYFLOAT', key, f, v)
  elseif op == 'sf' then redis.call('INCRBYFLOAT', key, v); redis.call('EXPIRE', key, f)
  elseif op == 'zr' then redis.call('ZREM', key, v) end
end
return 1
"""

# Client by token hash: KEYS tokens, clients; ARGV hex.
_FIND_TOKEN = """
local name = redis.call('HGET', KEYS[1], ARGV[1])
if not name then return false end
return redis.call('HGET', KEYS[2], name)
"""

# Save the settings record if its generation is unchanged: KEYS settings, generation;
# ARGV expected, new generation, body, channel.
_SAVE_SETTINGS = """
local current = tonumber(redis.call('GET', KEYS[2]) or '0')
if current ~= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[3])
redis.call('SET', KEYS[2], ARGV[2])
redis.call('PUBLISH', ARGV[4], 'settings')
return 1
"""

# Conversations: see the keys above. Expired ones are purged from the indexes this often, this many a time.
PURGE_SECONDS = 60.0
PURGE_BATCH = 500
# Pages of a listing read this many index entries beyond the page (some may have expired).
LIST_SLACK = 16

# Create: KEYS conv, convs:<c>, convs-all, convs-expiry; ARGV record, version, owner, expires_at, ttl s,
# list key, expiry member.
_CONV_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'record', ARGV[1], 'version', ARGV[2], 'owner', ARGV[3], 'expires_at', ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('ZADD', KEYS[2], 0, ARGV[6])
redis.call('ZADD', KEYS[3], 0, ARGV[6])
redis.call('ZADD', KEYS[4], ARGV[4], ARGV[7])
return 1
"""

# Lease: KEYS conv, lease; ARGV owner ('*': any), token, milliseconds, now.
# Returns 1 taken, 2 busy, 0 missing (or another owner's, or expired).
_CONV_LEASE = """
local rec = redis.call('HMGET', KEYS[1], 'owner', 'expires_at')
if not rec[1] or not rec[2] then return 0 end
if ARGV[1] ~= '*' and rec[1] ~= ARGV[1] then return 0 end
if tonumber(rec[2]) <= tonumber(ARGV[4]) then return 0 end
if redis.call('SET', KEYS[2], ARGV[2], 'NX', 'PX', ARGV[3]) then return 1 end
return 2
"""

# Renew (ARGV token, ms) or release (ARGV token) a lease the caller holds: KEYS lease.
_CONV_RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""
_CONV_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""

# Append a turn: KEYS conv, messages, lease, convs-expiry; ARGV token, expected version, record,
# new version, expires_at, ttl s, expiry member, messages... Returns 1 done, 2 lost, 0 missing.
_CONV_APPEND = """
local version = redis.call('HGET', KEYS[1], 'version')
if not version then return 0 end
if redis.call('GET', KEYS[3]) ~= ARGV[1] or version ~= ARGV[2] then return 2 end
for i = 8, #ARGV do redis.call('RPUSH', KEYS[2], ARGV[i]) end
redis.call('HSET', KEYS[1], 'record', ARGV[3], 'version', ARGV[4], 'expires_at', ARGV[5])
redis.call('EXPIRE', KEYS[1], ARGV[6])
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('EXPIRE', KEYS[2], ARGV[6]) end
redis.call('ZADD', KEYS[4], ARGV[5], ARGV[7])
redis.call('DEL', KEYS[3])
return 1
"""

# Delete: KEYS conv, messages, lease, convs:<c>, convs-all, convs-expiry; ARGV list key, expiry member.
_CONV_DELETE = """
local gone = redis.call('DEL', KEYS[1])
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('ZREM', KEYS[5], ARGV[1])
redis.call('ZREM', KEYS[6], ARGV[2])
return gone
"""

# Purge the expired: KEYS convs-expiry, convs-all; ARGV now, batch, key prefix. The conversations'
# own keys are gone already (EXPIRE) unless the clock runs ahead of Redis's: deleted too.
_CONV_PURGE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do
  local sep = string.find(member, '\\31', 1, true)
  local owner = string.sub(member, 1, sep - 1)
  local key = string.sub(member, sep + 1)
  local id = string.sub(key, 22)
  redis.call('ZREM', ARGV[3] .. 'convs:' .. owner, key)
  redis.call('ZREM', KEYS[2], key)
  redis.call('DEL', ARGV[3] .. 'conv:' .. id, ARGV[3] .. 'conv:' .. id .. ':messages')
  redis.call('ZREM', KEYS[1], member)
end
return #due
"""


def redact(url: str) -> str:
    """The URL without its password, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit((parts.scheme, user + host, parts.path, parts.query, parts.fragment))


def _row_json(row: ClientRow) -> str:
    lim = row.limits
    return json.dumps(
        {
            "name": row.name,
            "token_sha256": row.token_hash.hex(),
            "token_prefix": row.token_prefix,
            "limits": {
                "requests_per_minute": lim.requests_per_minute,
                "tokens_per_minute": lim.tokens_per_minute,
                "budget_usd": lim.budget_usd,
                "budget_period": lim.budget_period,
                "max_in_flight": lim.max_in_flight,
            },
            "created_at": row.created_at,
            "revoked_at": row.revoked_at,
        },
        separators=(",", ":"),
    )


def _row_of(name: str, raw: bytes | str) -> ClientRow:
    d = json.loads(raw)
    lim = d["limits"]
    return ClientRow(
        name=name,
        token_hash=bytes.fromhex(d["token_sha256"]),
        token_prefix=d["token_prefix"],
        limits=Limits(
            requests_per_minute=lim["requests_per_minute"],
            tokens_per_minute=lim["tokens_per_minute"],
            budget_usd=lim["budget_usd"],
            budget_period=lim["budget_period"],
            max_in_flight=lim["max_in_flight"],
        ),
        created_at=float(d["created_at"]),
        revoked_at=None if d["revoked_at"] is None else float(d["revoked_at"]),
    )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@dataclass
class _Pending:
    """Settles not yet written: summed per key, so a batch is small whatever the call rate."""

    usage: dict[tuple[str, str], ModelTotals] = field(default_factory=dict)  # (client, model)
    spend: dict[tuple[str, str], float] = field(default_factory=dict)  # (client, period label)
    tokens: dict[tuple[str, int], int] = field(default_factory=dict)  # (client, slot)
    releases: list[tuple[str, str]] = field(default_factory=list)  # (client, ticket id)

    def __bool__(self) -> bool:
        return bool(self.usage or self.spend or self.tokens or self.releases)


class RedisStore(Store):
    """See the module docstring."""

    shared = True

    def __init__(
        self,
        url: str,
        *,
        password: str | None = None,
        clock: Callable[[], float] = time.time,
        prefix: str = PREFIX,
        start_wait: float = START_WAIT_SECONDS,
    ) -> None:
        super().__init__()
        self.description = redact(url)
        self._url = url
        self._password = password
        self._clock = clock
        self._p = prefix
        self._channel = prefix + "events"
        self._start_wait = start_wait
        self._redis: aioredis.Redis | None = None
        self._clients: dict[str, ClientRow] = {}
        self._by_hash: dict[bytes, ClientRow] = {}
        self._version: bytes | str | None = None
        self._generation: bytes | str | None = None
        self._local = LocalLimiter(clock)
        self._pending = _Pending()
        self._unsent: list[tuple[str, list[str | int | float]]] = []  # batches not yet applied, oldest first
        self._flush_lock = asyncio.Lock()
        self._last_spend: dict[str, tuple[str, float, str, float]] = {}
        self._keys_of: dict[tuple[str, str, str], list[bytes]] = {}
        self._open_leases: dict[str, str] = {}  # ticket id -> client, for calls holding an in-flight slot
        self._degraded = False
        self._since = clock()
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self.trips: collections.Counter[str] = collections.Counter()  # round trips by purpose (tests, bench)
        self._serial = itertools.count(1)
        self._ticket_prefix = secrets.token_hex(6)

    # -- life cycle ------------------------------------------------------------

    async def open(self) -> None:
        options: dict[str, Any] = {
            "socket_timeout": COMMAND_TIMEOUT_SECONDS,
            "socket_connect_timeout": COMMAND_TIMEOUT_SECONDS,
            # This store decides what a failure means (degraded mode). One immediate retry only:
            # a pooled connection broken by a Redis restart fails once, then reconnects.
            "retry": Retry(NoBackoff(), 1),
            "client_name": f"gpt-grpc-{os.getpid()}",
        }
        if self._password:
            options["password"] = self._password
        try:
            self._redis = aioredis.Redis.from_url(self._url, **options)
        except (ValueError, RedisError):  # the parser's message may quote the URL, password and all
            raise StoreError(f"--store {self.description} is not a usable Redis URL") from None
        r = self._redis
        self._pipelined = PipelinedConnection(r.connection_pool, timeout=COMMAND_TIMEOUT_SECONDS)
        self._admit_script = r.register_script(_ADMIT)
        self._add_script = r.register_script(_ADD_CLIENT)
        self._swap_script = r.register_script(_SWAP_CLIENT)
        self._find_script = r.register_script(_FIND_TOKEN)
        self._save_script = r.register_script(_SAVE_SETTINGS)
        self._apply_script = r.register_script(_APPLY)
        self._conv_create = r.register_script(_CONV_CREATE)
        self._conv_lease = r.register_script(_CONV_LEASE)
        self._conv_renew = r.register_script(_CONV_RENEW)
        self._conv_release = r.register_script(_CONV_RELEASE)
        self._conv_append = r.register_script(_CONV_APPEND)
        self._conv_delete = r.register_script(_CONV_DELETE)
        self._conv_purge = r.register_script(_CONV_PURGE)
        deadline = time.monotonic() + self._start_wait
        while True:
            try:
                await r.setnx(self._p + "since", repr(self._clock()))
                since = await r.get(self._p + "since")
                self._since = float(_text(since)) if since is not None else self._since
                await self._reload_clients()
                self._version, self._generation = await r.mget(self._p + "version", self._p + "generation")
                break
            except ResponseError as exc:  # reachable, but refuses (auth, wrong type...): not worth waiting
                await r.aclose()
                raise StoreError(f"Redis at {self.description} refused the gateway: {exc}") from None
            except (RedisError, OSError) as exc:
                if time.monotonic() >= deadline:
                    await r.aclose()
                    raise StoreError(
                        f"cannot reach Redis at {self.description} within {self._start_wait:.0f}s: {exc}"
                    ) from None
                await asyncio.sleep(0.2)
        loop = asyncio.get_running_loop()
        self._flusher_task = loop.create_task(self._flush_forever())
        self._tasks = [self._flusher_task, loop.create_task(self._watch())]

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # The watcher sees _closed within POLL_SECONDS and closes its subscription itself:
        # a cancelled PubSub.get_message can leave the task hanging.
        self._flusher_task.cancel()
        done, stuck = await asyncio.wait(self._tasks, timeout=POLL_SECONDS * 4)
        for task in stuck:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                if task in done:
                    await task
        if self._redis is not None:
            with contextlib.suppress(RedisError, OSError):
                await self.flush()
            if self._pending or self._unsent:
                log.error("Redis unreachable at shutdown: usage of recent calls was not written")
            await self._pipelined.aclose()
            await self._redis.aclose()

    async def flush(self) -> None:
        """Write what is buffered, as batches applied at most once each (see _APPLY)."""
        pending, self._pending = self._pending, _Pending()
        if pending:
            self._unsent.append((f"{self._ticket_prefix}-b{next(self._serial)}", self._ops(pending)))
        async with self._flush_lock:  # the background flusher and a reader's flush: one batch at a time
            while self._unsent:
                batch_id, ops = self._unsent[0]
                self._count("batch")
                await self._apply_script(keys=[self._p + "batch:" + batch_id], args=ops, client=self._client())
                self._unsent.pop(0)

    @property
    def degraded(self) -> bool:
        return self._degraded

    @property
    def since(self) -> float:
        return self._since

    # -- connectivity ------------------------------------------------------------

    def _client(self) -> aioredis.Redis:
        if self._redis is None:
            raise GatewayError(Reason.INTERNAL_ERROR, "the store is not open")
        return self._redis

    def _count(self, kind: str) -> None:
        self.round_trips += 1
        self.trips[kind] += 1

    async def _call(
        self, op: Callable[[aioredis.Redis], Awaitable[T]], *, counted: bool = False, kind: str = "admin"
    ) -> T:
        """One round trip (`counted`: op counts its own); unreachable Redis -> degraded mode, STORE_UNAVAILABLE."""
        if self._degraded:
            raise _unavailable()
        try:
            if not counted:
                self._count(kind)
            return await op(self._client())
        except (RedisError, OSError) as exc:
            if isinstance(exc, ResponseError) and not isinstance(exc, NoScriptError):
                raise
            self._set_degraded(True, exc)
            raise _unavailable() from exc

    def _set_degraded(self, degraded: bool, cause: BaseException | None = None) -> None:
        if degraded == self._degraded:
            return
        self._degraded = degraded
        if degraded:
            log.error(
                "store %s unreachable (%s): serving with the last known clients and settings, "
                "limits per replica, usage kept here until it returns",
                self.description,
                type(cause).__name__ if cause else "?",
            )
            for name, (day, day_spend, month, month_spend) in self._last_spend.items():
                self._local.seed_spend(name, day, day_spend, month, month_spend)
        else:
            log.warning("store %s reachable again: usage written back, limits fleet-wide again", self.description)
        self._degraded_changed(degraded)

    async def _watch(self) -> None:
        """Follow settings and clients changed elsewhere (pub/sub + polling); detect Redis coming back."""
        pubsub: Any = None
        last_renewal = last_purge = time.monotonic()
        while not self._closed:
            try:
                if pubsub is None:
                    pubsub = self._client().pubsub()
                    await pubsub.subscribe(self._channel)
                await pubsub.get_message(ignore_subscribe_messages=True, timeout=POLL_SECONDS)
                await self._poll()
                if time.monotonic() - last_renewal >= LEASE_SECONDS / 3:
                    await self._renew_leases()
                    last_renewal = time.monotonic()
                if time.monotonic() - last_purge >= PURGE_SECONDS:
                    last_purge = time.monotonic()
                    await self._purge()
            except asyncio.CancelledError:
                if pubsub is not None:
                    with contextlib.suppress(RedisError, OSError):
                        await pubsub.aclose()
                raise
            except (RedisError, OSError) as exc:
                self._set_degraded(True, exc)
                if pubsub is not None:
                    with contextlib.suppress(RedisError, OSError):
                        await pubsub.aclose()
                    pubsub = None
                await asyncio.sleep(POLL_SECONDS)
            except Exception:
                log.exception("error while following the store")
                await asyncio.sleep(POLL_SECONDS)
        if pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()

    async def _poll(self) -> None:
        r = self._client()
        self._count("poll")
        version, generation = await r.mget(self._p + "version", self._p + "generation")
        if self._degraded:
            # Connections pooled before the outage are dead: drop them all, then write back.
            await r.connection_pool.disconnect()
            await self.flush()
            self._set_degraded(False)
        if version != self._version:
            await self._reload_clients()
            self._version = version
        if generation != self._generation:
            doc = await self._load_settings_raw()
            self._generation = generation
            if doc is not None:
                self._settings_changed(doc)

    async def _reload_clients(self) -> None:
        self._count("clients")
        rows = await self._client().hgetall(self._p + "clients")
        clients = {_text(k): _row_of(_text(k), v) for k, v in rows.items()}
        self._clients = clients
        self._by_hash = {row.token_hash: row for row in clients.values() if row.revoked_at is None}

    async def _renew_leases(self) -> None:
        if not self._open_leases:
            return
        until = self._clock() + LEASE_SECONDS
        async with self._client().pipeline(transaction=False) as pipe:
            for ticket_id, client in list(self._open_leases.items()):
                pipe.zadd(self._p + "if:" + client, {ticket_id: until}, xx=True)
            self._count("leases")
            await pipe.execute()

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            if self._degraded or not (self._pending or self._unsent):
                continue
            try:
                await self.flush()
            except (RedisError, OSError) as exc:
                self._set_degraded(True, exc)
            except Exception:
                log.exception("could not write usage to %s", self.description)

    def _ops(self, pending: _Pending) -> list[str | int | float]:
        """The batch as _APPLY's argument list (op, key, field, value)."""
        p = self._p
        ops: list[str | int | float] = []
        for (client, model), totals in pending.usage.items():
            for key in (p + "usage:" + client, p + "usage-all"):
                for column in _USAGE_FIELDS:
                    value = getattr(totals, column)
                    if value:
                        op = "hf" if column == "cost_usd" else "hi"
                        ops += [op, key, model + _SEP + column, repr(value) if op == "hf" else value]
        for (client, label), amount in pending.spend.items():
            if amount:
                ops += ["sf", p + f"spend:{client}:{label}", SPEND_TTL_SECONDS, repr(amount)]
        for (client, slot), n in pending.tokens.items():
            if n:
                ops += ["hi", p + "tw:" + client, str(slot), n]
        for client, ticket_id in pending.releases:
            ops += ["zr", p + "if:" + client, "", ticket_id]
        return ops

    # -- clients -----------------------------------------------------------------

    @property
    def has_clients(self) -> bool:
        return bool(self._clients)

    async def add_client(self, row: ClientRow) -> None:
        p = self._p
        added = await self._call(
            lambda r: self._add_script(
                keys=[p + "clients", p + "tokens", p + "version"],
                args=[row.name, _row_json(row), row.token_hash.hex(), self._channel],
                client=r,
            )
        )
        if not added:
            raise GatewayError(Reason.CLIENT_EXISTS, f"a client named {row.name!r} exists")
        self._remember(row)

    async def set_limits(self, name: str, limits: Limits) -> ClientRow:
        return await self._swap(name, lambda row: replace(row, limits=limits), revoke=False)

    async def revoke_client(self, name: str, at: float) -> ClientRow:
        return await self._swap(name, lambda row: replace(row, revoked_at=at), revoke=True)

    async def _swap(self, name: str, change: Callable[[ClientRow], ClientRow], *, revoke: bool) -> ClientRow:
        p = self._p
        for _ in range(5):
            raw = await self._call(lambda r: r.hget(p + "clients", name))
            if raw is None or _row_of(name, raw).revoked_at is not None:
                raise GatewayError(Reason.CLIENT_NOT_FOUND, f"no active client named {name!r}")
            row = change(_row_of(name, raw))
            args = [name, raw, _row_json(row), row.token_hash.hex(), "1" if revoke else "0", self._channel]
            keys = [p + "clients", p + "tokens", p + "version"]

            def swap(r: aioredis.Redis, keys: list[str] = keys, args: list[Any] = args) -> Awaitable[Any]:
                return self._swap_script(keys=keys, args=args, client=r)

            swapped = await self._call(swap)
            if swapped:
                self._remember(row)
                return row
        raise GatewayError(Reason.STORE_UNAVAILABLE, f"client {name!r} kept changing; nothing was changed")

    def _remember(self, row: ClientRow) -> None:
        clients = dict(self._clients)
        clients[row.name] = row
        self._clients = clients
        by_hash = dict(self._by_hash)
        if row.revoked_at is None:
            by_hash[row.token_hash] = row
        else:
            by_hash.pop(row.token_hash, None)
        self._by_hash = by_hash

    async def list_clients(self) -> builtins.list[ClientRow]:
        if not self._degraded:
            await self._call(lambda r: self._reload_clients(), counted=True)  # fresh, not as last notified
        return [row for _, row in sorted(self._clients.items())]

    async def get_client(self, name: str) -> ClientRow | None:
        if self._degraded:
            return self._clients.get(name)
        raw = await self._call(lambda r: r.hget(self._p + "clients", name))
        return None if raw is None else _row_of(name, raw)

    async def find_token(self, token_hash: bytes) -> ClientRow | None:
        row = self._by_hash.get(token_hash)
        if row is None and not self._degraded:
            # Created on another replica a moment ago, before the notification arrived.
            p = self._p
            try:
                raw = await self._call(
                    lambda r: self._find_script(keys=[p + "tokens", p + "clients"], args=[token_hash.hex()], client=r)
                )
            except GatewayError:
                return None
            if raw is not None:
                found = _row_of(str(json.loads(raw)["name"]), raw)
                if found.revoked_at is None:
                    self._remember(found)
                    row = found
        if row is None or not hmac.compare_digest(row.token_hash, token_hash):
            return None
        return row

    # -- limits --------------------------------------------------------------------

    async def admit(self, client: ClientRow, estimate: Estimate, *, requests_only: bool = False) -> Ticket:
        now = self._clock()
        p = Periods.at(now)
        if self._degraded:
            return self._local.admit(client.name, client.limits, estimate, requests_only=requests_only)
        ticket_id = f"{self._ticket_prefix}-{next(self._serial)}"
        name = client.name
        keys = self._admit_keys(name, p)
        args: list[str | int] = [
            name,
            repr(now),
            estimate.tokens,
            repr(estimate.cost_usd),
            ticket_id,
            "1" if requests_only else "0",
        ]
        try:
            reply = await self._call(lambda r: self._run_admit(r, keys, args), kind="admit")
        except GatewayError as exc:
            if exc.reason is not Reason.STORE_UNAVAILABLE:
                raise
            # Degraded now: per replica.
            return self._local.admit(client.name, client.limits, estimate, requests_only=requests_only)
        code = int(reply[0])
        if code == 0:
            self._last_spend[name] = (p.day, float(reply[1]), p.month, float(reply[2]))
            if client.limits.max_in_flight is not None and not requests_only:
                self._open_leases[ticket_id] = name
            return Ticket(ticket_id, name, estimate, now, p.day, p.month, local=False)
        if code == 1:
            raise GatewayError(Reason.CLIENT_TOKEN_INVALID, "the client token is unknown or revoked")
        stored = self._clients.get(name, client)
        if code == 2:
            raise budget_refusal(name, stored.limits, float(reply[1]), p, estimate.cost_usd)
        if code == 3:
            flags = int(reply[2])
            why = []
            if flags & 1 and stored.limits.requests_per_minute is not None:
                why.append(f"{stored.limits.requests_per_minute} requests per minute")
            if flags & 2 and stored.limits.tokens_per_minute is not None:
                why.append(f"{stored.limits.tokens_per_minute} tokens per minute")
            raise rate_refusal(name, why or ["its rate limits"], float(reply[1]))
        raise in_flight_refusal(name, int(reply[1]))

    async def _run_admit(self, r: aioredis.Redis, keys: list[bytes], args: list[str | int]) -> Any:
        """The admission script, pipelined on the shared connection (store/pipelining.py)."""
        try:
            return await self._pipelined.execute("EVALSHA", self._admit_script.sha, len(keys), *keys, *args)
        except NoScriptError:  # Redis restarted or its scripts were flushed: redis-py's Script loads it again
            return await self._admit_script(keys=keys, args=args, client=r)

    def _admit_keys(self, name: str, p: Periods) -> list[bytes]:
        """The admission script's keys for a client in a period, encoded once (not on every call)."""
        cache_key = (name, p.day, p.month)
        keys = self._keys_of.get(cache_key)
        if keys is None:
            if len(self._keys_of) >= MAX_CACHED_KEY_SETS:
                self._keys_of.clear()
            k = self._p
            keys = self._keys_of[cache_key] = [
                key.encode()
                for key in (
                    k + "clients",
                    k + "rw:" + name,
                    k + "tw:" + name,
                    k + "if:" + name,
                    k + f"spend:{name}:{p.day}",
                    k + f"spend:{name}:{p.month}",
                )
            ]
        return keys

    def settle(self, charge: Charge) -> None:
        now = self._clock()
        pending = self._pending
        key = (charge.client, charge.model)
        seen = pending.usage.get(key)
        pending.usage[key] = charge.totals if seen is None else seen.plus(charge.totals)
        if not charge.client:
            return
        name, ticket = charge.client, charge.ticket
        p = Periods.at(now)
        cost, tokens = charge.totals.cost_usd, charge.tokens
        if ticket is not None and ticket.local:
            self._local.settle(ticket, name, tokens, cost)
        reserved = ticket.estimate if ticket is not None and not ticket.local else Estimate()
        day_cost = cost - (reserved.cost_usd if ticket is not None and ticket.day == p.day else 0.0)
        month_cost = cost - (reserved.cost_usd if ticket is not None and ticket.month == p.month else 0.0)
        pending.spend[(name, p.day)] = pending.spend.get((name, p.day), 0.0) + day_cost
        pending.spend[(name, p.month)] = pending.spend.get((name, p.month), 0.0) + month_cost
        at = ticket.at if ticket is not None and not ticket.local else now
        delta = tokens - reserved.tokens
        if delta and at > now - WINDOW_SECONDS:
            slot = int(at // SLOT_SECONDS)
            pending.tokens[(name, slot)] = pending.tokens.get((name, slot), 0) + delta
        if ticket is not None and not ticket.local and self._open_leases.pop(ticket.id, None) is not None:
            pending.releases.append((name, ticket.id))

    async def period_spend(self, client: ClientRow) -> float:
        p = Periods.at(self._clock())
        label = p.label(client.limits.budget_period)
        if self._degraded:
            return self._local.spend(client.name, client.limits.budget_period)
        await self.flush_quietly()
        raw = await self._call(lambda r: r.get(self._p + f"spend:{client.name}:{label}"))
        return max(0.0, float(_text(raw))) if raw is not None else 0.0

    async def flush_quietly(self) -> None:
        """Write this process's buffered settles before a read, so it reads its own calls."""
        try:
            await self.flush()
        except (RedisError, OSError) as exc:
            self._set_degraded(True, exc)
            raise _unavailable() from exc

    # -- usage -----------------------------------------------------------------------

    async def usage(self, client: str | None) -> builtins.list[ModelTotals]:
        await self.flush_quietly()
        key = self._p + ("usage-all" if client is None else "usage:" + client)
        raw = await self._call(lambda r: r.hgetall(key))
        columns: dict[str, dict[str, float]] = {}
        for f, v in raw.items():
            model, _, column = _text(f).rpartition(_SEP)
            columns.setdefault(model, {})[column] = float(_text(v))
        out: dict[str, ModelTotals] = {}
        for model, values in columns.items():
            counts = {c: int(values.get(c, 0)) for c in _USAGE_FIELDS if c != "cost_usd"}
            out[model] = ModelTotals(model=model, cost_usd=values.get("cost_usd", 0.0), **counts)
        return sorted_usage(out)

    # -- settings ----------------------------------------------------------------------

    async def load_settings(self) -> SettingsDoc | None:
        return await self._call(lambda r: self._load_settings_raw(), counted=True)

    async def _load_settings_raw(self) -> SettingsDoc | None:
        self._count("settings")
        body, generation = await self._client().mget(self._p + "settings", self._p + "generation")
        if body is None or generation is None:
            return None
        return SettingsDoc(int(generation), body.encode() if isinstance(body, str) else bytes(body))

    async def save_settings(self, doc: SettingsDoc, expected_generation: int) -> bool:
        p = self._p
        saved = await self._call(
            lambda r: self._save_script(
                keys=[p + "settings", p + "generation"],
                args=[expected_generation, doc.generation, doc.body, self._channel],
                client=r,
            )
        )
        if saved:
            self._generation = str(doc.generation).encode()
        return bool(saved)

    # -- conversations ----------------------------------------------------------------

    def _conv_keys(self, conversation_id: str) -> tuple[str, str, str]:
        base = self._p + "conv:" + conversation_id
        return base, base + ":messages", base + ":lease"

    def _expiry_member(self, c: Conversation) -> str:
        return c.owner + _SEP + c.list_key

    def _ttl(self, c: Conversation) -> int:
        """Seconds until `c` expires, for EXPIRE (at least 1)."""
        return max(1, math.ceil(c.expires_at - self._clock()))

    async def create_conversation(self, conversation: Conversation) -> None:
        c, p = conversation, self._p
        keys = [self._conv_keys(c.id)[0], p + "convs:" + c.owner, p + "convs-all", p + "convs-expiry"]
        args: builtins.list[bytes | str | int] = [
            conversation_json(c),
            c.version,
            c.owner,
            repr(c.expires_at),
            self._ttl(c),
            c.list_key,
            self._expiry_member(c),
        ]
        created = await self._call(lambda r: self._conv_create(keys=keys, args=args, client=r), kind="conversation")
        if not created:
            raise GatewayError(Reason.INTERNAL_ERROR, "a conversation with that id exists")

    async def get_conversation(
        self, conversation_id: str, *, messages: bool = False
    ) -> tuple[Conversation, builtins.list[Counted]] | None:
        meta, listed, _ = self._conv_keys(conversation_id)

        async def read(r: aioredis.Redis) -> builtins.list[Any]:
            async with r.pipeline(transaction=True) as pipe:
                pipe.hget(meta, "record")
                if messages:
                    pipe.lrange(listed, 0, -1)
                return await pipe.execute()  # type: ignore[no-any-return]

        reply = await self._call(read, kind="conversation")
        if reply[0] is None:
            return None
        conversation = conversation_of(reply[0])
        if conversation.expires_at <= self._clock():
            return None
        return conversation, [message_of(raw) for raw in reply[1]] if messages else []

    async def list_conversations(self, owner: str, after: str | None, limit: int) -> builtins.list[Conversation]:
        index = self._p + ("convs-all" if owner == ANY_OWNER else "convs:" + owner)
        now = self._clock()
        out: builtins.list[Conversation] = []
        start = "+" if after is None else "(" + after
        for _ in range(8):  # stale entries (expired, not yet purged) are skipped; bounded rounds
            want = limit - len(out)

            def page(r: aioredis.Redis, start: str = start, want: int = want) -> Awaitable[Any]:
                return r.zrange(index, start, "-", desc=True, bylex=True, offset=0, num=want + LIST_SLACK)

            keys = await self._call(page, kind="conversation")
            if not keys:
                break
            ids = [_text(k)[21:] for k in keys]

            async def read(r: aioredis.Redis, ids: builtins.list[str] = ids) -> builtins.list[Any]:
                async with r.pipeline(transaction=False) as pipe:
                    for conversation_id in ids:
                        pipe.hget(self._conv_keys(conversation_id)[0], "record")
                    return await pipe.execute()  # type: ignore[no-any-return]

            records = await self._call(read, kind="conversation")
            for raw in records:
                if raw is None:
                    continue
                conversation = conversation_of(raw)
                if conversation.expires_at > now and len(out) < limit:
                    out.append(conversation)
            if len(out) >= limit or len(keys) < want + LIST_SLACK:
                break
            start = "(" + _text(keys[-1])
        return out

    async def delete_conversation(self, conversation: Conversation) -> bool:
        c, p = conversation, self._p
        meta, listed, lease = self._conv_keys(c.id)
        keys = [meta, listed, lease, p + "convs:" + c.owner, p + "convs-all", p + "convs-expiry"]
        args = [c.list_key, self._expiry_member(c)]
        gone = await self._call(lambda r: self._conv_delete(keys=keys, args=args, client=r), kind="conversation")
        return bool(gone)

    async def lease_conversation(self, conversation_id: str, owner: str, token: str, seconds: float) -> Lease:
        meta, _, lease = self._conv_keys(conversation_id)
        args: builtins.list[str | int] = [owner, token, max(1, round(seconds * 1000)), repr(self._clock())]
        reply = await self._call(
            lambda r: self._conv_lease(keys=[meta, lease], args=args, client=r), kind="conversation"
        )
        return {1: Lease.TAKEN, 2: Lease.BUSY}.get(int(reply), Lease.MISSING)

    async def renew_lease(self, conversation_id: str, token: str, seconds: float) -> bool:
        lease = self._conv_keys(conversation_id)[2]
        args: builtins.list[str | int] = [token, max(1, round(seconds * 1000))]
        reply = await self._call(lambda r: self._conv_renew(keys=[lease], args=args, client=r), kind="conversation")
        return bool(reply)

    async def release_conversation(self, conversation_id: str, token: str) -> None:
        lease = self._conv_keys(conversation_id)[2]
        await self._call(lambda r: self._conv_release(keys=[lease], args=[token], client=r), kind="conversation")

    async def append_turn(
        self, conversation: Conversation, token: str, expected_version: int, messages: Sequence[Counted]
    ) -> Appended:
        c = conversation
        meta, listed, lease = self._conv_keys(c.id)
        keys = [meta, listed, lease, self._p + "convs-expiry"]
        args: builtins.list[Any] = [
            token,
            str(expected_version),
            conversation_json(c),
            c.version,
            repr(c.expires_at),
            self._ttl(c),
            self._expiry_member(c),
            *(message_json(m) for m in messages),
        ]
        reply = await self._call(lambda r: self._conv_append(keys=keys, args=args, client=r), kind="conversation")
        return {1: Appended.DONE, 2: Appended.LOST}.get(int(reply), Appended.MISSING)

    async def purge_conversations(self) -> int:
        return await self._call(lambda r: self._purge(), counted=True)

    async def _purge(self) -> int:
        p = self._p
        self._count("conversation")
        keys = [p + "convs-expiry", p + "convs-all"]
        purged = await self._conv_purge(keys=keys, args=[repr(self._clock()), PURGE_BATCH, p], client=self._client())
        return int(purged)


def _unavailable() -> GatewayError:
    return GatewayError(
        Reason.STORE_UNAVAILABLE,
        "the shared store cannot be reached; nothing was changed (the data plane still serves)",
    )
