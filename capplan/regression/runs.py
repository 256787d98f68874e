"""Reading a finished run back: its summary.json and, when present, its raw records."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from capplan.errors import InputError
from capplan.loadtest.record import RequestRecord, read_records
from capplan.loadtest.summary_model import RunSummary

SUMMARY_FILE = "summary.json"
RECORDS_FILE = "requests.jsonl"


@dataclass
class LoadedRun:
    path: Path  # the run directory
    summary: RunSummary
    records: list[RequestRecord] = field(default_factory=list)

    def step_records(self, step: str | None) -> list[RequestRecord]:
        """Records of one ladder step (all records when `step` is None)."""
        if step is None:
            return self.records
        return [r for r in self.records if r.step == step]


def load_run(path: str | Path, *, with_records: bool = True) -> LoadedRun:
    """A run directory, or a summary.json with requests.jsonl (optional) beside it.

    `with_records=False` reads the summary alone (a long run's records take seconds)."""
    p = Path(path)
    if p.is_dir():
        summary_path = p / SUMMARY_FILE
        run_dir = p
    elif p.is_file():
        summary_path = p
        run_dir = p.parent
    else:
        raise InputError(f"no run at '{path}'; pass a run directory or its summary.json")
    records_path = run_dir / RECORDS_FILE
    if not summary_path.is_file():
        if records_path.is_file():
            raise InputError(
                f"'{run_dir}' has requests.jsonl but no summary.json; "
                f"run `capplan report {run_dir}` first"
            )
        raise InputError(f"no summary.json in '{run_dir}'; pass a run directory from a load test")
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(f"'{summary_path}' is not valid JSON ({exc.msg}); regenerate it") from exc
    if not isinstance(summary, dict):
        raise InputError(f"'{summary_path}' is not a summary object; regenerate it")
    read = with_records and records_path.is_file()
    records = read_records(records_path) if read else []
    return LoadedRun(run_dir, RunSummary.from_dict(summary), records)
