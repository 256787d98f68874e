"""Per-client rate limits through the `limits` library.

Windows like `10/minute;100/hour`, keyed by the API key when the server requires one (so only a
key it accepts), else by the client's address (the peer, or X-Forwarded-For only from the proxies
`--forwarded-allow-ips` names). The counters live in a `limits` storage named by URI:
`memory://` is per process (so per gunicorn worker); `redis://host:6379` (or memcached, mongodb)
shares them across workers and hosts.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass
from typing import Any

from capplan.errors import InputError


def parse_rate_limit(spec: str) -> list[Any]:
    """`10/minute;100/hour` -> limits' RateLimitItems (InputError when malformed)."""
    from limits import parse_many

    try:
        items = parse_many(spec)
    except ValueError:
        raise InputError(
            f"rate limit {spec!r} is not valid; write windows like '10/minute;100/hour'"
        ) from None
    if not items:
        raise InputError(f"rate limit {spec!r} names no window; write e.g. '10/minute'")
    return list(items)


def check_storage(uri: str) -> None:
    """Refuse, at start, a storage URI that `limits` cannot use (unknown scheme, driver missing).
    Building the storage does not connect, so an unreachable server is found on first use."""
    from limits.storage import storage_from_string

    try:
        storage_from_string(_async_uri(uri))
    except Exception as exc:  # limits raises ConfigurationError and driver errors
        raise InputError(
            f"rate limit storage {uri!r} unusable: {exc}; use memory:// or redis://host:port"
        ) from None


def _async_uri(uri: str) -> str:
    return uri if uri.startswith("async+") else f"async+{uri}"


def shared_storage(uri: str) -> bool:
    """Whether counters in this storage are seen by every worker process."""
    return not uri.replace("async+", "").startswith("memory")


@dataclass(frozen=True)
class RateDecision:
    allowed: bool
    retry_after_s: int = 0
    limit: str = ""


class RateLimiter:
    """Checks and counts one hit per request against every window of the spec."""

    def __init__(self, spec: str, storage_uri: str = "memory://") -> None:
        self.spec = spec
        self.storage_uri = storage_uri
        self.items = parse_rate_limit(spec)
        self._limiter: Any = None

    def _get_limiter(self) -> Any:
        # Built on first use, inside the serving event loop: async storages bind to it.
        if self._limiter is None:
            from limits.aio.storage import MovingWindowSupport
            from limits.aio.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter
            from limits.storage import storage_from_string

            check_storage(self.storage_uri)
            storage = storage_from_string(_async_uri(self.storage_uri))
            if isinstance(storage, MovingWindowSupport):
                self._limiter = MovingWindowRateLimiter(storage)
            else:
                self._limiter = FixedWindowRateLimiter(storage)
        return self._limiter

    async def hit(self, client_key: str) -> RateDecision:
        limiter = self._get_limiter()
        # Test every window before counting, so a refused request uses up none of them.
        for item in self.items:
            if not await limiter.test(item, "capplan", client_key):
                return await self._refused(limiter, item, client_key)
        for item in self.items:
            # hit() checks again as it counts: a concurrent request (on a shared store) may
            # have taken the last place since test().
            if not await limiter.hit(item, "capplan", client_key):
                return await self._refused(limiter, item, client_key)
        return RateDecision(True)

    @staticmethod
    async def _refused(limiter: Any, item: Any, client_key: str) -> RateDecision:
        stats = await limiter.get_window_stats(item, "capplan", client_key)
        wait = max(1, math.ceil(stats.reset_time - time.time()))
        return RateDecision(False, wait, str(item))


def client_key(accepted_api_key: str | None, client_host: str | None) -> str:
    """The API key the server accepted for this request (hashed: never stored in clear), else
    the client's address. A bearer token the server did not check is no identity: keyed on it,
    a client would get a fresh window with every random token it sends."""
    if accepted_api_key:
        return "key:" + hashlib.sha256(accepted_api_key.encode()).hexdigest()[:16]
    return "ip:" + (client_host or "unknown")
