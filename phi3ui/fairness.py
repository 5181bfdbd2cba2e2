"""Fair use of a shared server: one visitor cannot starve the others.

A public link (`--share`, a Space) serves strangers from one model with a few generation
slots. Without limits one client that sends requests in a loop holds every slot, and
everyone else waits behind it. `Gate` decides, for each request that would start an
answer, whether it may:

- **one answer at a time** per browser session, and, while per-client limits are on, per
  client address too (a script calling the API, or the page's events with made-up session
  ids, is one client however many sessions it claims);
- **a request rate** per client address: a token bucket holding `rate_per_minute` requests
  that refills at that rate, so a visitor may send a few at once but not a stream.

A refusal is a `LimitReached` that says which limit was hit and when to try again. Refused
requests cost nothing: they take no token. The gate keeps state only for clients that
still carry some (a bucket not yet full, an answer in flight), so its memory stays bounded
whatever the number of addresses seen. Nothing here imports Gradio; the page maps a
Gradio request to a client address with `client_address`.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

# Per-client rate when a public link or a Space is served and no --rate-limit is given.
PUBLIC_RATE_PER_MINUTE = 20
# Max new tokens visitors may ask for when settings are locked and no cap is given; the
# server-wide limit otherwise (settings.Limits.max_new_tokens).
LOCKED_MAX_NEW_TOKENS = 1024
BUSY_RETRY_S = 2  # suggested wait after "one answer at a time": an answer's length is unknown
# Answers generated at once on a public server: with one answer at a time per client, a
# flooder holds one slot, so a newcomer finds a free one instead of waiting for a whole
# answer (bench/burst.py measures it). The genai engine batches them.
PUBLIC_CONCURRENCY = 4


def default_rate_limit(public: bool) -> int:
    """Requests per minute per client: on for a public server (`--share`, `--auth`, a Space),
    off on one's own machine (where parallel API clients from one address are the owner's own)."""
    return PUBLIC_RATE_PER_MINUTE if public else 0


def default_concurrency(public: bool) -> int:
    """Answers generated at once: a few on a public server, one on one's own machine (where
    one answer at a time is fastest for its one user)."""
    return PUBLIC_CONCURRENCY if public else 1


def default_max_new_tokens_cap(locked: bool, unlocked_limit: int) -> int:
    """What visitors of a locked server may ask for; the host's own limit otherwise."""
    return min(LOCKED_MAX_NEW_TOKENS, unlocked_limit) if locked else unlocked_limit


def client_address(host: str | None, forwarded_for: str | None, trust_proxy: bool) -> str:
    """Who a request comes from: the peer address, or behind a trusted proxy the first
    `X-Forwarded-For` entry (the address the first proxy was asked by).

    The first entry is what Spaces and common proxies put the visitor's address in. A
    proxy that appends to a header the client sent lets that client choose this value;
    only trust proxies that set the header themselves."""
    if trust_proxy and forwarded_for:
        first = forwarded_for.split(",")[0].strip()
        if first:
            return first[:100]  # bounded: the key is kept in memory
    return host or "unknown"


class LimitReached(Exception):
    """A request refused by a fair-use limit; the message is for the visitor as is."""

    def __init__(self, limit: str, retry_after_s: float, message: str):
        super().__init__(message)
        self.limit = limit  # "busy" or "rate"
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class FairUse:
    """The limits; `rate_per_minute` 0 turns per-client limits off (one answer at a time
    per browser session still holds)."""

    rate_per_minute: int = 0
    max_clients: int = 10_000  # clients tracked at most; the least recently seen go first

    @property
    def per_client(self) -> bool:
        return self.rate_per_minute > 0


@dataclass
class _Bucket:
    tokens: float
    stamp: float


@dataclass
class Ticket:
    """An admitted request's place: release it (or leave the `with` block) when its answer
    has ended, whatever way it ended."""

    gate: Gate
    keys: tuple[str, ...]
    released: bool = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.gate._release(self.keys)

    def __enter__(self) -> Ticket:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


@dataclass
class Gate:
    """Admits requests under a `FairUse` policy. Thread-safe; `clock` is injectable so tests
    need not sleep."""

    policy: FairUse = field(default_factory=FairUse)
    clock: Callable[[], float] = time.monotonic
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _buckets: OrderedDict[str, _Bucket] = field(default_factory=OrderedDict)  # least recently seen first
    _busy: set[str] = field(default_factory=set)  # sessions and clients with an answer in flight

    def check(self, client: str, session: str | None) -> None:
        """`LimitReached` if `admit` would refuse now; takes nothing. For a web framework's
        own door, before a request costs it anything (`admit` still decides)."""
        with self._lock:
            self._refusal(client, session, self._keys(client, session), self.clock(), take=False)

    def admit(self, client: str, session: str | None) -> Ticket:
        """A place for one answer, taken when the request arrives (so requests still
        waiting for a slot count), or `LimitReached`."""
        keys = self._keys(client, session)
        with self._lock:
            self._refusal(client, session, keys, self.clock(), take=True)
            self._busy.update(keys)
        return Ticket(self, keys)

    def _keys(self, client: str, session: str | None) -> tuple[str, ...]:
        keys = (f"session:{session}",) if session else ()
        return keys + (f"client:{client}",) if self.policy.per_client else keys

    def _refusal(self, client: str, session: str | None, keys: tuple[str, ...], now: float, take: bool) -> None:
        """Raise `LimitReached` if a limit refuses; with `take`, spend a request's token."""
        if any(key in self._busy for key in keys):
            who = ("this address" if f"client:{client}" in self._busy
                   and not (session and f"session:{session}" in self._busy) else "this chat")
            raise LimitReached(
                "busy", BUSY_RETRY_S,
                f"One answer at a time: {who} already has one being written. Wait until it has "
                f"finished (or stop it), then try again; retry in {BUSY_RETRY_S} s at the earliest.")
        if self.policy.per_client:
            bucket = self._refill(client, now)
            if bucket.tokens < 1:
                wait = math.ceil((1 - bucket.tokens) / self._per_second)
                raise LimitReached(
                    "rate", wait,
                    f"Too many requests: at most {self.policy.rate_per_minute} a minute from one "
                    f"address. Try again in {wait} s.")
            if take:
                bucket.tokens -= 1
                self._forget_idle(now)

    @property
    def _per_second(self) -> float:
        return self.policy.rate_per_minute / 60

    def _refill(self, client: str, now: float) -> _Bucket:
        capacity = self.policy.rate_per_minute
        bucket = self._buckets.pop(client, None) or _Bucket(float(capacity), now)
        bucket.tokens = min(capacity, bucket.tokens + (now - bucket.stamp) * self._per_second)
        bucket.stamp = now
        self._buckets[client] = bucket  # now the most recently seen
        return bucket

    def _forget_idle(self, now: float) -> None:
        """Drop clients not seen for a minute: their bucket has refilled, so they carry
        nothing a new bucket would not. Oldest first and stopping at the first recent one,
        so each request does constant work on average. Beyond `max_clients` the least
        recently seen go too (a generous reset, never a refusal)."""
        skipped = 0
        while self._buckets and skipped <= len(self._busy):
            client, bucket = next(iter(self._buckets.items()))
            if bucket.stamp > now - 60:
                break
            if f"client:{client}" in self._busy:  # answering now: keep it, look further
                self._buckets.move_to_end(client)
                skipped += 1
            else:
                del self._buckets[client]
        while len(self._buckets) > self.policy.max_clients:
            self._buckets.popitem(last=False)

    def _release(self, keys: tuple[str, ...]) -> None:
        with self._lock:
            self._busy.difference_update(keys)

    def tracked(self) -> int:
        """Clients with state kept (for tests and the log)."""
        with self._lock:
            return len(self._buckets)
