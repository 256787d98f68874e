"""Whether a finished run says the target failed: the rule behind exit code 3 (docs/ci.md).

The target failed when the run stopped early on it (`capplan.loadtest.stop`) or when no
request of the run succeeded; a run that was never able to start raises `TargetError` instead.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from capplan.loadtest.record import RequestRecord
from capplan.loadtest.server_message import server_message
from capplan.loadtest.summary_model import RunSummary


def target_failure(summary: RunSummary, records: Sequence[RequestRecord]) -> str | None:
    """One line saying how the target failed, or None when it answered."""
    if summary.stopped is not None:
        return f"the run {summary.stopped.line}"
    if any(r.ok for r in records):
        return None
    if not records:
        return "no request was sent"
    statuses = Counter(str(r.status) if r.status is not None else str(r.error) for r in records)
    shown = ", ".join(f"{status} x{n}" for status, n in statuses.most_common())
    return (
        f"no request succeeded ({len(records)} sent: {shown}); e.g. "
        f"{server_message(records[0].error_detail)}"
    )
