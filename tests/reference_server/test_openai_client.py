"""The official `openai` client works against the server (emulated backend here; the
embedded-model variant lives in tests/reference_server/transformers/)."""

from __future__ import annotations

import openai

from tests.reference_server.conftest import ServerFactory


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0, timeout=20)


def test_openai_client_completions_and_chat(emulated_server: ServerFactory) -> None:
    server = emulated_server(api_key="k")
    client = _client(server.url)
    models = client.models.list()
    model = models.data[0].id
    completion = client.completions.create(model=model, prompt="Hello", max_tokens=5)
    assert completion.usage is not None and completion.usage.completion_tokens == 5
    assert completion.choices[0].finish_reason == "length"
    assert len(completion.choices[0].text.split()) == 5
    chat = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=3
    )
    assert chat.choices[0].message.role == "assistant"
    assert chat.choices[0].message.content
    assert chat.usage is not None and chat.usage.total_tokens == chat.usage.prompt_tokens + 3


def test_openai_client_streams_with_usage_included(emulated_server: ServerFactory) -> None:
    server = emulated_server(tpot_ms=1)
    client = _client(server.url)
    stream = client.chat.completions.create(
        model="emulated",
        messages=[{"role": "user", "content": "Count"}],
        max_tokens=6,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(text.split()) == 6
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None and last.usage.completion_tokens == 6

    completions = list(
        client.completions.create(
            model="emulated",
            prompt="Go",
            max_tokens=4,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert completions[-1].usage is not None
    assert completions[-1].usage.completion_tokens == 4
