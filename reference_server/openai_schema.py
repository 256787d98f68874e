"""OpenAI-compatible request bodies: the project's only pydantic, at the HTTP boundary.

Unknown fields are accepted and ignored (clients send many: `user`, `tools`, `presence_penalty`,
...), so any OpenAI client works; wrong types and values out of range are refused with the field
named. Fields whose answer this server cannot give (`n` > 1, `logprobs`, `echo`) are refused with
a 422 rather than silently answered without them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator


def _valid_unicode(value: str) -> str:
    # JSON's "\udc00" escape decodes to a lone surrogate, which no tokenizer can encode: refuse it
    # here, naming the field, instead of failing later inside a backend.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"not valid Unicode: lone surrogate {value[exc.start]!r} at character {exc.start}"
        ) from None
    return value


Text = Annotated[str, AfterValidator(_valid_unicode)]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=False)

    model: Text | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    # A 64-bit signed range, as vLLM's: torch generators refuse anything wider.
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)
    stop: Text | list[Text] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, description="only 1: send n requests for n answers")
    # Accepted so clients that send the defaults work; refused when they ask for what this server
    # cannot give, rather than answered without it (a silent `logprobs: null` breaks evaluators).
    logprobs: bool | int | None = Field(default=None, description="not supported: false/0/null")
    top_logprobs: int | None = Field(default=None, description="not supported: 0/null")

    @field_validator("n")
    @classmethod
    def _one_choice(cls, value: int) -> int:
        if value != 1:
            raise ValueError("only n=1 is supported; send n requests for n answers")
        return value

    @field_validator("logprobs", "top_logprobs")
    @classmethod
    def _no_logprobs(cls, value: bool | int | None) -> bool | int | None:
        if value:
            raise ValueError("log probabilities are not supported by this server; omit the field")
        return value

    @field_validator("stop")
    @classmethod
    def _few_stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences")
        return value

    def stop_tuple(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        if isinstance(self.stop, str):
            return (self.stop,) if self.stop else ()
        return tuple(s for s in self.stop if s)

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens if self.max_tokens is not None else self.max_completion_tokens

    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


class CompletionRequest(_Sampling):
    prompt: Text | list[Text] = Field(description="text prompt (a one-element list is accepted)")
    echo: bool = Field(default=False, description="not supported: false only")

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, value: bool) -> bool:
        if value:
            raise ValueError("echo is not supported by this server; omit the field")
        return value

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and len(value) != 1:
            raise ValueError("exactly one prompt per request (batch prompts are not supported)")
        return value

    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: Text


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: Text | list[ContentPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)

    def message_dicts(self) -> list[dict[str, str]]:
        return [{"role": m.role, "content": m.text()} for m in self.messages]


def first_error(exc: ValidationError) -> tuple[str, str]:
    """(field path, message) of the first validation error, for a 422 that names the field."""
    # A union field reports one error per member; the deepest names the real problem
    # (`messages.0.content.1.type`, not `messages.0.content.str`).
    errors = exc.errors()
    err = max(errors, key=lambda e: len(e.get("loc", ())))
    loc = ".".join(str(part) for part in err.get("loc", ()) if not _is_union_tag(part))
    message = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    return loc or "body", message


_UNION_TAGS = frozenset({"str", "int", "bool", "float", "none"})


def _is_union_tag(part: int | str) -> bool:
    """pydantic's name for a union member or validator in an error location."""
    text = str(part)
    return isinstance(part, str) and (text in _UNION_TAGS or "[" in text)


def error_body(
    message: str, *, type_: str, code: int | str, param: str | None = None
) -> dict[str, Any]:
    """The OpenAI error shape."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
