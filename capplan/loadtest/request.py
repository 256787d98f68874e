"""What every engine sends: the target, the request body and the auth header."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from capplan.loadtest.prompts import PromptSpec


@dataclass(frozen=True)
class Target:
    """Where and how to send: the parts of a LoadConfig the engine needs."""

    base_url: str
    endpoint: str = "completions"
    model_name: str = "default"
    stream: bool = True
    include_usage: bool = True
    ignore_eos: bool = False
    temperature: float | None = None
    api_key: str | None = None
    timeout_s: float = 120.0

    @property
    def path(self) -> str:
        prefix = "" if self.base_url.rstrip("/").endswith("/v1") else "/v1"
        suffix = "/chat/completions" if self.endpoint == "chat" else "/completions"
        return prefix + suffix


def request_body(target: Target, spec: PromptSpec) -> dict[str, Any]:
    body: dict[str, Any] = {"model": target.model_name, "max_tokens": spec.max_tokens}
    if target.endpoint == "chat":
        body["messages"] = spec.messages()
    else:
        body["prompt"] = spec.prompt
    if target.stream:
        body["stream"] = True
        if target.include_usage:
            body["stream_options"] = {"include_usage": True}
    if target.temperature is not None:
        body["temperature"] = target.temperature
    if target.ignore_eos:
        body["ignore_eos"] = True
    return body


def request_id(prefix: str, index: int, retry: int = 0) -> str:
    """A request's id in its records: `s0-12`, and `s0-12.r1` for its first resend."""
    return f"{prefix}{index}.r{retry}" if retry else f"{prefix}{index}"


def auth_headers(api_key: str | None) -> dict[str, str]:
    """The request headers an API key adds (every engine sends the same)."""
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}
