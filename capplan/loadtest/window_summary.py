"""A step's window and its refusals as summary.json tells them, from the records and config.

Records carry what each request was (`warmup`, `extension`, `retry`, `backoff_s`), so a summary
rebuilt by `capplan report` says the same as the engine's. docs/metrics.md, "A step's window".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from capplan.loadtest.backoff import RETRY_STATUSES
from capplan.loadtest.record import RequestRecord
from capplan.loadtest.summary_blocks import Retries, Window, count, mapping, number


@dataclass(frozen=True)
class StepPlan:
    """What `window_block` needs of a run's config for one step."""

    duration_s: float | None = None
    requests: int | None = None
    warmup_s: float = 0.0
    warmup_requests: int = 0
    min_requests: int | None = None  # None: a config from before --min-requests
    timeout_s: float | None = None
    backoff: bool | None = None

    @classmethod
    def from_config(cls, config: Mapping[str, Any], label: str) -> StepPlan:
        """From the config dict summary.json records (`LoadConfig.to_dict`), old ones too."""
        backoff = config.get("backoff")
        return cls(
            duration_s=number(config.get("duration_s")),
            requests=count(config.get("requests")),
            warmup_s=number(config.get("warmup_s")) or 0.0,
            warmup_requests=count(config.get("warmup_requests")) or 0,
            min_requests=count(mapping(config.get("step_min_requests")).get(label)),
            timeout_s=number(config.get("timeout_s")),
            backoff=backoff if isinstance(backoff, bool) else None,
        )


def window_block(records: Sequence[RequestRecord], plan: StepPlan) -> Window:
    """`steps[i].window`: how long the step was planned and ran, its warmup, and whether (and
    why) it was extended to reach its minimum of measured requests."""
    open_loop = any(r.intended_start is not None for r in records)
    measured = [r for r in records if not r.warmup]
    extension = [r for r in records if r.extension]
    start = min((_started(r) for r in records), default=None)
    ran_s = max(r.end for r in records) - start if start is not None else 0.0
    planned_s, minimum = plan.duration_s, plan.min_requests
    why = None
    if extension and start is not None:
        if planned_s is not None:
            by_then = [r for r in measured if not r.extension and r.end <= start + planned_s]
            when = f"by the end of its planned {planned_s:g} s"
        else:
            by_then = [r for r in measured if not r.extension]
            when = f"after its {plan.requests} planned requests"
        more = f"{len(extension)} more {'was' if len(extension) == 1 else 'were'} sent"
        why = (
            f"{when} only {len(by_then)} requests started after the warmup had completed, "
            f"fewer than --min-requests {minimum}: {more} and the step ran {ran_s:.1f} s"
        )
    return Window(
        planned_s=planned_s,
        ran_s=round(ran_s, 3),
        warmup=_warmup_text(plan, open_loop),
        min_requests=minimum,
        measured=len(measured),
        extended=bool(extension),
        extension_requests=len(extension),
        why=why,
    )


def window_notes(window: Window, plan: StepPlan) -> list[str]:
    """What a reader of the step's figures must know about its window."""
    notes = []
    if window.why:
        notes.append(f"step extended: {window.why}")
    minimum, measured = window.min_requests, window.measured or 0
    if minimum and 0 < measured < minimum:
        timeout = plan.timeout_s
        bound = (
            f" within the request timeout ({timeout:g} s)"
            if window.extended and timeout is not None
            else ""
        )
        notes.append(f"only {measured} of --min-requests {minimum} measured{bound}")
    return notes


def retries_block(records: Sequence[RequestRecord]) -> Retries:
    """`steps[i].retries`: 429/503 answers, resends and the time users waited (warmup included:
    the server saw those too)."""
    waits = [r.backoff_s for r in records if r.backoff_s]
    return Retries(
        refused=sum(1 for r in records if r.status in RETRY_STATUSES),
        resent=sum(1 for r in records if r.retry),
        backoffs=len(waits),
        backoff_s=round(sum(waits), 3),
    )


def retries_notes(retries: Retries, records: Sequence[RequestRecord], plan: StepPlan) -> list[str]:
    """How the client answered the server's refusals, in one line when there were any."""
    refused = retries.refused
    if not refused:
        return []
    if any(r.intended_start is not None for r in records):
        return [
            f"{refused} arrivals were refused with 429/503 and not resent (open loop: the "
            "schedule is the point)"
        ]
    if retries.backoffs:
        return [
            f"{refused} answers were 429/503: users backed off {retries.backoffs} times "
            f"({retries.backoff_s or 0.0:.1f} s in all) and resent {retries.resent} requests"
        ]
    if plan.backoff is False:
        return [f"{refused} answers were 429/503 and users sent again at once (--no-backoff)"]
    return []


def _started(record: RequestRecord) -> float:
    return record.intended_start if record.intended_start is not None else record.send


def _warmup_text(plan: StepPlan, open_loop: bool) -> str:
    requests, seconds = plan.warmup_requests, plan.warmup_s
    if requests:
        if open_loop:
            return "the first arrival" if requests == 1 else f"the first {requests} arrivals"
        return f"{requests} {'request' if requests == 1 else 'requests'} per user"
    return f"{seconds:g} s" if seconds else "none"
