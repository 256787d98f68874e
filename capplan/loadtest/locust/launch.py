"""The capplan side of the Locust engine: SIGTERM as Ctrl-C, and the live progress line fed
from the requests.jsonl its processes write (started and stopped with
`capplan.loadtest.child_process`). Never imports Locust or gevent."""

from __future__ import annotations

import contextlib
import json
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from capplan.loadtest.live import LiveStats, ProgressSnapshot
from capplan.loadtest.record import RequestRecord

STOP_GRACE_S = 10.0  # how long a Locust process may take to finish on its own


@contextlib.contextmanager
def interrupt_on_sigterm() -> Iterator[None]:
    """SIGTERM stops the run like Ctrl-C: children stopped, summary written from what finished."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class RecordTail:
    """Feeds the live progress line from requests.jsonl, which the Locust side appends to."""

    def __init__(
        self,
        path: Path,
        live: LiveStats,
        clock: Any,
        progress: Callable[[ProgressSnapshot], None] | None,
        sampler: Any,
    ) -> None:
        self.path = path
        self.live = live
        self.clock = clock
        self.progress = progress
        self.sampler = sampler
        self._offset = path.stat().st_size if path.is_file() else 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="locust-progress", daemon=True)

    def start(self) -> None:
        if self.progress is not None:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2.0)

    def _loop(self) -> None:
        assert self.progress is not None
        while not self._stop.wait(0.5):
            if self.path.is_file():
                with self.path.open("rb") as f:
                    f.seek(self._offset)
                    data = f.read()
                complete = data[: data.rfind(b"\n") + 1]
                self._offset += len(complete)
                for line in complete.splitlines():
                    try:
                        record = RequestRecord.from_dict(json.loads(line))
                    except ValueError:
                        continue
                    self.live.on_send()
                    self.live.on_record(record)
            latest: dict[str, Any] = {}
            if self.sampler is not None:
                with contextlib.suppress(Exception):  # telemetry never stops a load test
                    latest = dict(self.sampler.latest() or {})
            self.progress(self.live.snapshot(self.clock.now(), latest))
