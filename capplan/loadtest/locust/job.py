"""What a Locust process is asked to do: one load step, fully resolved, as plain JSON.

The capplan process resolves the scenario (prompts, max_tokens, arrival schedule, model name)
into a `LocustJob`; the Locust master ships it to every worker, so workers on other machines
need neither the scenario file nor a tokenizer, and every engine sends the same request bodies.
No gevent here: the capplan process imports this module.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from capplan.loadtest.request import request_id
from capplan.loadtest.window import WindowPlan


@dataclass
class LocustJob:
    url: str  # full request URL, e.g. http://127.0.0.1:8000/v1/completions
    endpoint: str  # "completions" | "chat"
    stream: bool
    bodies: list[dict[str, Any]]  # request i sends bodies[i % len(bodies)]
    prompt_tokens: list[int | None]  # exact prompt length of each body, when a tokenizer built it
    mode: str  # "closed" | "open"
    step: str = ""  # ladder step label, copied into every record
    users: int = 1  # closed loop: concurrent users across all workers
    requests: int | None = None  # closed loop: total requests; None: until duration_s
    duration_s: float | None = None
    arrivals: list[float] = field(default_factory=list)  # open loop: send offsets from t0 (s)
    extension_arrivals: list[float] = field(default_factory=list)  # open loop, while extended
    warmup_s: float = 0.0  # requests sent before t0 + warmup_s are marked warmup
    warmup_requests: int = 0  # per user (closed), or the step's first arrivals (open)
    min_requests: int = 0  # measured requests the whole step needs before it may end
    timeout_s: float = 120.0
    headers: dict[str, str] = field(default_factory=dict)
    request_id_prefix: str = ""
    tokenizer: str | None = None  # counts output tokens when the server reports no usage
    backoff: bool = True  # closed loop: wait and resend after a 429/503 (loadtest.backoff)
    max_retries: int = 2

    @property
    def total(self) -> int | None:
        """How many requests the step sends, when known in advance."""
        if self.mode == "open":
            return len(self.arrivals)
        return self.requests

    def body(self, index: int) -> dict[str, Any]:
        return self.bodies[index % len(self.bodies)]

    def body_prompt_tokens(self, index: int) -> int | None:
        return self.prompt_tokens[index % len(self.prompt_tokens)] if self.prompt_tokens else None

    def request_id(self, index: int, retry: int = 0) -> str:
        return request_id(self.request_id_prefix, index, retry)  # as the httpx engine names them

    def arrival(self, index: int) -> float:
        """Open loop: arrival `index` of the planned schedule, then of its extension."""
        n = len(self.arrivals)
        return self.arrivals[index] if index < n else self.extension_arrivals[index - n]

    def window_plan(self, share: Share) -> WindowPlan:
        """One worker's window: the step's, with the minimum shared out as the work is."""
        if self.mode == "closed":
            part = len(share.slots) / self.users if self.users else 1.0
        else:
            part = 1.0 / share.n_workers
        return WindowPlan(
            duration_s=self.duration_s,
            warmup_s=self.warmup_s,
            warmup_requests=self.warmup_requests,
            min_requests=math.ceil(self.min_requests * part),
            timeout_s=self.timeout_s,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LocustJob:
        return cls(**data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict()), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> LocustJob:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


@dataclass(frozen=True)
class Share:
    """One worker's part of a step.

    Closed loop: the users of the whole step are numbered 0..users-1 (slots); request i belongs
    to slot i % users, and a worker runs the requests of the slots its users hold, so each
    worker's share is proportional to its users. Open loop: arrival i belongs to worker
    i % n_workers.
    """

    worker: str  # name written into each record's `worker` field
    position: int  # this worker's place among the step's workers
    n_workers: int
    slots: tuple[int, ...] = ()  # closed loop
    t0: float = 0.0  # epoch start of the step (the open-loop schedule's origin)

    def closed_indices(self, job: LocustJob) -> list[int] | None:
        """The request indices this worker runs in order; None when the step is unbounded."""
        if job.requests is None:
            return None
        mine = set(self.slots)
        return [i for i in range(job.requests) if i % job.users in mine]

    def open_indices(self, job: LocustJob) -> range:
        """This worker's arrivals: the planned ones, then those of the extension."""
        total = len(job.arrivals) + len(job.extension_arrivals)
        return range(self.position, total, self.n_workers)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["slots"] = list(self.slots)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Share:
        return cls(**{**data, "slots": tuple(data.get("slots", ()))})
