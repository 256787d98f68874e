"""What a Locust process is asked to do: one load step, fully resolved, as plain JSON.

The capplan process resolves the scenario (prompts, max_tokens, arrival schedule, model name)
into a `LocustJob`; the Locust master ships it to every worker, so workers on other machines
need neither the scenario file nor a tokenizer, and every engine sends the same request bodies.
No gevent here: the capplan process imports this module.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


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
    warmup_s: float = 0.0  # requests sent before t0 + warmup_s are marked warmup
    timeout_s: float = 120.0
    headers: dict[str, str] = field(default_factory=dict)
    request_id_prefix: str = ""
    tokenizer: str | None = None  # counts output tokens when the server reports no usage
    honor_retry_after: bool = False  # closed loop: wait out a 429/503's Retry-After, then resend

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

    def request_id(self, index: int) -> str:
        return f"{self.request_id_prefix}{index}"  # as the httpx engine names them

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
        return range(self.position, len(job.arrivals), self.n_workers)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["slots"] = list(self.slots)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Share:
        return cls(**{**data, "slots": tuple(data.get("slots", ()))})
