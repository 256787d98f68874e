"""The seed explanation in docs/estimator.md quotes what `capplan estimate` prints today."""

from __future__ import annotations

from pathlib import Path

from capplan.estimate.estimator import EstimateRequest, estimate
from capplan.estimate.gpu_spec import resolve_gpu
from capplan.estimate.model_spec import resolve_model
from capplan.units import format_bytes

DOC = Path(__file__).resolve().parents[2] / "docs" / "estimator.md"


def seed(model: str = "qwen3-8b-int8", **options):
    request = EstimateRequest(
        gpu=resolve_gpu("rtx3080"),
        model=resolve_model(model),
        prompt_tokens=512,
        max_tokens=512,
        **options,
    )
    return estimate(request)


def seed_section() -> str:
    text = DOC.read_text()
    start = text.index("## The seed deployment, explained")
    return text[start : text.index("\n## ", start + 1)]


def test_seed_figures_in_the_doc_are_what_the_estimate_prints() -> None:
    doc, r = seed_section(), seed()
    m = r.memory
    assert f"{format_bytes(r.gpu.total_bytes)} (what CUDA reports)" in doc
    assert f"| weights | ~7 GB | {format_bytes(m.weights_bytes)}:" in doc
    assert f"{format_bytes(m.kv_per_request_bytes)} KV (1024 tokens" in doc
    assert m.peak_phase == "prefill"
    assert f"a {format_bytes(m.activation_bytes)} prefill peak" in doc
    zero = seed(margin=0.0).concurrency
    assert (
        f"{r.zero_margin_concurrency} is the out-of-memory ceiling; {zero} fit the device with "
        f"zero margin; {r.concurrency} with" in doc
    )
    assert f"~{r.timing.request_s_c1:.0f} s for 512 output tokens" in doc
    assert f"~{r.timing.decode_ms_per_token_c1:.0f} ms/token" in doc
    assert r.timing.decode_bound == "floor" and not r.timing.calibrated
    assert f"a queue of {r.settings.queue_size}" in doc
    assert f"~{round(r.settings.request_timeout_s, -1):.0f} s request timeout" in doc
    assert seed(target_concurrency=3).target_max_tokens is None
    assert f"up to {seed(target_concurrency=3, margin=0.0).target_max_tokens} output" in doc
    awq = seed("qwen3-8b-awq")
    assert f"{format_bytes(awq.weights.total_bytes)} weights, {awq.concurrency} concurrent" in doc
    note = r.notes[0]
    assert note.startswith("params x 1 byte = 7.63 GiB is 13% below the real 8.79 GiB")
    assert "(7.63 GiB) is 13% below the real 8.79 GiB" in DOC.read_text()
