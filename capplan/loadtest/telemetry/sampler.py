"""Writes telemetry.csv during a run: NVML, host and target readings on the requests' clock.

One row per tick, flushed at once, so a killed run keeps its telemetry. Column names carry their
source (`gpu*_` NVML, `host_`/`client_` psutil, `metrics_` the target's /metrics, `stats_` the
target's /stats); docs/telemetry.md lists them. `gpu_mem_used_mib` and `gpu_mem_source` hold the
best GPU memory figure available, so a reader need not know which source a run had.
A sidecar `telemetry.json` records which sources answered, and the GPUs seen.
"""

from __future__ import annotations

import csv
import json
import threading
from pathlib import Path
from typing import IO, Any

from capplan.devices import load_nvml
from capplan.loadtest.clock import RunClock
from capplan.loadtest.telemetry.host import HostSource
from capplan.loadtest.telemetry.nvml import NvmlSource
from capplan.loadtest.telemetry.target import TARGET_COLUMNS, TargetPoller

BASE_COLUMNS = ("t", "elapsed_s")
BEST_COLUMNS = ("gpu_mem_used_mib", "gpu_mem_total_mib", "gpu_util_pct", "gpu_mem_source")

_NOT_GIVEN: Any = object()


class TelemetrySampler:
    """Samples every `interval_s` in its own thread from `start()` until `stop()`.

    `nvml` is the pynvml module (a fake in tests); by default the real one when importable.
    Pass `nvml=None` to skip NVML.
    """

    def __init__(
        self,
        clock: RunClock,
        out_csv: Path,
        *,
        target_url: str | None,
        interval_s: float = 0.5,
        nvml: Any = _NOT_GIVEN,
        host: bool = True,
    ) -> None:
        self.clock = clock
        self.out_csv = Path(out_csv)
        self.target_url = target_url
        self.interval_s = interval_s
        self.nvml = NvmlSource(load_nvml() if nvml is _NOT_GIVEN else nvml)
        self.host = HostSource() if host else None
        self.target = (
            TargetPoller(target_url, clock.now, interval_s=interval_s) if target_url else None
        )
        self.columns: list[str] = []
        self.samples = 0
        self.error: str | None = None
        self._t0 = 0.0
        self._latest: dict[str, object] = {}
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._file: IO[str] | None = None
        self._writer: Any = None
        self._opened = False

    def open(self) -> None:
        """Open the sources and write the CSV header; `start()` calls it when needed."""
        if self._opened:
            return
        self._opened = True
        self._t0 = self.clock.now()
        self.nvml.open()
        if self.host is not None:
            self.host.open()
        self.columns = [*BASE_COLUMNS, *self.nvml.columns()]
        if self.host is not None:
            self.columns += self.host.columns()
        if self.target is not None:
            self.columns += TARGET_COLUMNS
        self.columns += BEST_COLUMNS
        self.out_csv.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.out_csv.open("w", newline="", encoding="utf-8")
        self._writer = csv.DictWriter(self._file, fieldnames=self.columns, extrasaction="ignore")
        self._writer.writeheader()
        self._file.flush()
        self._write_sidecar()

    def start(self) -> None:
        self.open()
        if self.target is not None:
            self.target.start()
        self._thread = threading.Thread(target=self._loop, name="capplan-telemetry", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread, take one last sample (closing the energy reading) and close."""
        if not self._opened:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
        if self.target is not None:
            self.target.stop(final_poll=True)
        if self._file is not None and not self._file.closed:
            self.sample_once()
            self._write_sidecar()
            self._file.close()
        self.nvml.close()
        if self.host is not None:
            self.host.close()

    def latest(self) -> dict[str, object]:
        """The last row written (empty before the first); safe from any thread."""
        with self._cond:
            return dict(self._latest)

    def wait_for_samples(self, n: int, timeout: float) -> bool:
        """Block until `n` rows have been written; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self.samples >= n, timeout=timeout)

    def sample_once(self) -> dict[str, object]:
        """Read every source now and append the row."""
        self.open()
        t = self.clock.now()
        row: dict[str, object] = {"t": round(t, 6), "elapsed_s": round(t - self._t0, 4)}
        row.update(self.nvml.sample(t))
        if self.host is not None:
            row.update(self.host.sample(t))
        if self.target is not None:
            row.update(self.target.latest())
        row.update(best_gpu_figures(row, len(self.nvml.gpus)))
        with self._cond:
            if self._file is not None and not self._file.closed:
                self._writer.writerow(row)
                self._file.flush()
            self._latest = row
            self.samples += 1
            self._cond.notify_all()
        return row

    def _loop(self) -> None:
        next_t = self.clock.now()
        while not self._stop.is_set():
            try:
                self.sample_once()
            except Exception as exc:  # telemetry must never take the load test down with it
                self.error = f"sampling stopped: {type(exc).__name__}: {exc}"
                return
            # Keep a fixed cadence: a slow sample does not push every later one back.
            next_t += self.interval_s
            delay = next_t - self.clock.now()
            if delay < 0:
                next_t = self.clock.now()
                delay = 0.0
            self._stop.wait(delay)

    def _write_sidecar(self) -> None:
        sources: dict[str, str] = {
            "nvml": "ok" if self.nvml.available else f"unavailable: {self.nvml.error}",
        }
        remote = self.target.remote_host() if self.target is not None else None
        if self.nvml.available and remote:
            sources["nvml"] = f"ok: GPUs of this client machine, not of the target {remote}"
        if self.host is not None:
            sources["host"] = "ok" if self.host.available else f"unavailable: {self.host.error}"
        if self.error is not None:
            sources["sampler"] = self.error
        if self.target is not None:
            for path, status in self.target.status.items():
                sources[f"target{path}"] = status
        meta = {
            "interval_s": self.interval_s,
            "started_at": self._t0,
            "target_url": self.target_url,
            "target_origin": self.target.origin if self.target is not None else None,
            "sources": sources,
            "gpus": [
                {"index": g.index, "name": g.name, "memory_total_mib": g.memory_total_mib}
                for g in self.nvml.gpus
            ],
            "samples": self.samples,
        }
        sidecar = self.out_csv.with_suffix(".json")
        sidecar.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _sum_all(values: list[float | None]) -> float | None:
    if not values or any(v is None for v in values):
        return None
    return sum(v for v in values if v is not None)


def best_gpu_figures(row: dict[str, object], n_gpus: int) -> dict[str, object]:
    """GPU memory and utilisation from the best source in `row`: NVML, then /stats, /metrics.

    /stats goes before /metrics because it says what its memory figure is; a CPU backend's
    process RSS is not GPU memory and is left out (both endpoints would carry it).
    """
    nvml_used = _sum_all([_number(row.get(f"gpu{i}_mem_used_mib")) for i in range(n_gpus)])
    nvml_total = _sum_all([_number(row.get(f"gpu{i}_mem_total_mib")) for i in range(n_gpus)])
    util = _sum_all([_number(row.get(f"gpu{i}_util_pct")) for i in range(n_gpus)])
    stats_kind = row.get("stats_memory_kind")
    stats_used = _number(row.get("stats_gpu_memory_used_mib"))
    metrics_used = _number(row.get("metrics_gpu_memory_used_bytes"))
    metrics_total = _number(row.get("metrics_gpu_memory_total_bytes"))
    used: float | None = None
    total: float | None = None
    source = ""
    if nvml_used is not None:
        used, total, source = nvml_used, nvml_total, "nvml"
    elif stats_kind == "process_rss":
        pass
    elif stats_used is not None:
        used, total = stats_used, _number(row.get("stats_gpu_memory_total_mib"))
        source = f"target /stats ({stats_kind})" if stats_kind else "target /stats"
    elif metrics_used is not None:
        used = metrics_used / 2**20
        total = metrics_total / 2**20 if metrics_total is not None else None
        source = "target /metrics"
    out: dict[str, object] = {}
    if used is not None:
        out["gpu_mem_used_mib"] = round(used, 3)
        if total is not None:
            out["gpu_mem_total_mib"] = round(total, 3)
        out["gpu_mem_source"] = source
    if util is not None:
        out["gpu_util_pct"] = round(util / n_gpus, 1)
    return out
