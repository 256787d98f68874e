"""Polls the target server's `/metrics` and `/stats` in a thread of its own.

A loaded server can answer slowly; polling apart from the GPU sampler keeps NVML rows on time.
An endpoint that answers 404 (or something unparsable) is dropped for the rest of the run;
connection errors are kept trying, since a launched server may still be starting.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from capplan.loadtest.telemetry.prometheus_scrape import METRICS_COLUMNS, parse_metrics
from capplan.loadtest.telemetry.stats import STATS_COLUMNS, parse_stats

TARGET_COLUMNS: tuple[str, ...] = ("target_t", *METRICS_COLUMNS, *STATS_COLUMNS)


def server_origin(url: str) -> str:
    """`http://h:8000/v1/completions` -> `http://h:8000`: /metrics and /stats live at the root."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    return f"{parts.scheme}://{parts.netloc}"


class TargetPoller:
    """Keeps the latest target readings; `latest()` is safe from any thread."""

    def __init__(
        self,
        target_url: str,
        now: Callable[[], float],
        *,
        interval_s: float = 0.5,
        timeout_s: float = 2.0,
    ) -> None:
        self.origin = server_origin(target_url)
        self._now = now
        self._interval_s = interval_s
        self._timeout_s = timeout_s
        self._endpoints: dict[str, Callable[[Any], dict[str, object]]] = {
            "/metrics": self._read_metrics,
            "/stats": self._read_stats,
        }
        self.status: dict[str, str] = {path: "not polled yet" for path in self._endpoints}
        self._latest: dict[str, object] = {}
        self._polls = 0
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: Any = None

    def remote_host(self) -> str | None:
        """The target's host when it is not this machine (NVML then sees other GPUs)."""
        host = urlsplit(self.origin).hostname or ""
        local = {"localhost", "127.0.0.1", "::1", "0.0.0.0", socket.gethostname()}
        return None if host in local or host.startswith("127.") else host

    def start(self) -> None:
        import httpx

        # Own small pool: never borrows a connection the load engine counts on.
        self._client = httpx.Client(timeout=self._timeout_s, trust_env=False)
        self._thread = threading.Thread(target=self._loop, name="capplan-target-poll", daemon=True)
        self._thread.start()

    def stop(self, *, final_poll: bool = False) -> None:
        """Stop polling; `final_poll` reads the endpoints once more first, so the last row of a
        run shows the server as the load left it, not as it was up to an interval before."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self._timeout_s + 1.0)
            self._thread = None
        if final_poll and self._client is not None and self._endpoints:
            self.poll_once()
        if self._client is not None:
            self._client.close()
            self._client = None

    def latest(self) -> dict[str, object]:
        with self._cond:
            return dict(self._latest)

    def wait_for_polls(self, n: int, timeout: float) -> bool:
        """Block until `n` polls have completed (for tests and `stop()` ordering)."""
        with self._cond:
            return self._cond.wait_for(lambda: self._polls >= n, timeout=timeout)

    def poll_once(self) -> dict[str, object]:
        row: dict[str, object] = {}
        for path, read in list(self._endpoints.items()):
            try:
                response = self._client.get(self.origin + path)
            except Exception as exc:  # connection refused, timeout: keep trying next round
                self.status[path] = f"unreachable: {type(exc).__name__}"
                continue
            if response.status_code == 404:
                self.status[path] = "absent (404)"
                del self._endpoints[path]
                continue
            if response.status_code != 200:
                self.status[path] = f"HTTP {response.status_code}"
                continue
            try:
                row.update(read(response))
            except ValueError as exc:
                self.status[path] = f"unparsable: {exc}"[:200]
                del self._endpoints[path]
                continue
            self.status[path] = "ok"
        if row:
            row["target_t"] = round(self._now(), 6)
        with self._cond:
            if row:
                self._latest = row
            self._polls += 1
            self._cond.notify_all()
        return row

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.poll_once()
            if not self._endpoints:
                return
            self._stop.wait(self._interval_s)

    @staticmethod
    def _read_metrics(response: Any) -> dict[str, object]:
        return parse_metrics(response.text)

    @staticmethod
    def _read_stats(response: Any) -> dict[str, object]:
        return parse_stats(response.json())
