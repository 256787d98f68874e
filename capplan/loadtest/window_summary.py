"""A step's window and its refusals as summary.json tells them, from the records and config.

Records carry what each request was (`warmup`, `extension`, `retry`, `backoff_s`), so a summary
rebuilt by `capplan report` says the same as the engine's. docs/metrics.md, "A step's window".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from capplan.loadtest.backoff import RETRY_STATUSES
from capplan.loadtest.record import RequestRecord


def step_plan(config: Mapping[str, Any], label: str) -> dict[str, Any]:
    """What `window_block` needs of a run's config dict for one step."""
    minimums = config.get("step_min_requests")
    return {
        "duration_s": config.get("duration_s"),
        "requests": config.get("requests"),
        "warmup_s": config.get("warmup_s") or 0.0,
        "warmup_requests": config.get("warmup_requests") or 0,
        "min_requests": minimums.get(label) if isinstance(minimums, Mapping) else None,
        "timeout_s": config.get("timeout_s"),
        "backoff": config.get("backoff"),
    }


def window_block(records: Sequence[RequestRecord], plan: Mapping[str, Any]) -> dict[str, Any]:
    """`steps[i].window`: how long the step was planned and ran, its warmup, and whether (and
    why) it was extended to reach its minimum of measured requests."""
    open_loop = any(r.intended_start is not None for r in records)
    measured = [r for r in records if not r.warmup]
    extension = [r for r in records if r.extension]
    start = min((_started(r) for r in records), default=None)
    ran_s = max(r.end for r in records) - start if start is not None else 0.0
    planned_s, minimum = plan.get("duration_s"), plan.get("min_requests")
    block: dict[str, Any] = {
        "planned_s": planned_s,
        "ran_s": round(ran_s, 3),
        "warmup": _warmup_text(plan, open_loop),
        "min_requests": minimum,
        "measured": len(measured),
        "extended": bool(extension),
        "extension_requests": len(extension),
        "why": None,
    }
    if extension and start is not None:
        if planned_s is not None:
            by_then = [r for r in measured if not r.extension and r.end <= start + planned_s]
            when = f"by the end of its planned {planned_s:g} s"
        else:
            by_then = [r for r in measured if not r.extension]
            when = f"after its {plan.get('requests')} planned requests"
        more = f"{len(extension)} more {'was' if len(extension) == 1 else 'were'} sent"
        block["why"] = (
            f"{when} only {len(by_then)} requests started after the warmup had completed, "
            f"fewer than --min-requests {minimum}: {more} and the step ran {ran_s:.1f} s"
        )
    return block


def window_notes(block: Mapping[str, Any], plan: Mapping[str, Any]) -> list[str]:
    """What a reader of the step's figures must know about its window."""
    notes = []
    if block.get("why"):
        notes.append(f"step extended: {block['why']}")
    minimum = block.get("min_requests")
    if minimum and 0 < block["measured"] < minimum:
        timeout = plan.get("timeout_s")
        bound = f" within the request timeout ({timeout:g} s)" if block["extended"] else ""
        notes.append(f"only {block['measured']} of --min-requests {minimum} measured{bound}")
    return notes


def retries_block(records: Sequence[RequestRecord]) -> dict[str, Any]:
    """`steps[i].retries`: 429/503 answers, resends and the time users waited (warmup included:
    the server saw those too)."""
    waits = [r.backoff_s for r in records if r.backoff_s]
    return {
        "refused": sum(1 for r in records if r.status in RETRY_STATUSES),
        "resent": sum(1 for r in records if r.retry),
        "backoffs": len(waits),
        "backoff_s": round(sum(waits), 3),
    }


def retries_notes(
    block: Mapping[str, Any], records: Sequence[RequestRecord], plan: Mapping[str, Any]
) -> list[str]:
    """How the client answered the server's refusals, in one line when there were any."""
    refused = block["refused"]
    if not refused:
        return []
    if any(r.intended_start is not None for r in records):
        return [
            f"{refused} arrivals were refused with 429/503 and not resent (open loop: the "
            "schedule is the point)"
        ]
    if block["backoffs"]:
        return [
            f"{refused} answers were 429/503: users backed off {block['backoffs']} times "
            f"({block['backoff_s']:.1f} s in all) and resent {block['resent']} requests"
        ]
    if plan.get("backoff") is False:
        return [f"{refused} answers were 429/503 and users sent again at once (--no-backoff)"]
    return []


def _started(record: RequestRecord) -> float:
    return record.intended_start if record.intended_start is not None else record.send


def _warmup_text(plan: Mapping[str, Any], open_loop: bool) -> str:
    count, seconds = plan.get("warmup_requests") or 0, plan.get("warmup_s") or 0.0
    if count:
        if open_loop:
            return "the first arrival" if count == 1 else f"the first {count} arrivals"
        return f"{count} {'request' if count == 1 else 'requests'} per user"
    return f"{seconds:g} s" if seconds else "none"
