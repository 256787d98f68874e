"""The service-timing contract the emulated backend uses."""

from __future__ import annotations

import dataclasses

import pytest

from capplan.errors import InputError
from capplan.estimate.service_timing import ServiceTiming, service_timing


def test_contract_fields_and_decode_step_ms() -> None:
    st = service_timing("rtx3090", "qwen3-8b")
    for name in (
        "prefill_ms_per_token",
        "decode_step_base_ms",
        "decode_step_ms_per_kv_token",
        "kv_bytes_per_token",
        "kv_budget_bytes",
        "max_context",
    ):
        assert getattr(st, name) > 0
    assert st.kv_bytes_per_token == 144 * 1024
    # A step is the largest of the weights + KV read, the batch's matmuls and the host's floor.
    memory = st.decode_step_base_ms + 1000 * st.decode_step_ms_per_kv_token
    assert st.decode_step_ms(1000) == pytest.approx(
        max(memory, st.floor_ms + st.host_ms_per_sequence)
    )
    assert st.floor_ms > memory  # eager generate(): the host sets the pace (runtimes.toml)
    with pytest.raises(dataclasses.FrozenInstanceError):
        st.max_context = 1  # type: ignore[misc]
    assert isinstance(st, ServiceTiming)


def test_decode_step_is_the_weights_read_at_80_percent_of_bandwidth() -> None:
    st = service_timing("rtx3090", "qwen3-8b")
    assert st.decode_step_base_ms == pytest.approx(2 * 8_190_735_360 / (936e9 * 0.8) * 1e3)


def test_quant_and_kv_dtype_change_the_timing() -> None:
    fp16 = service_timing("rtx4090", "qwen3-8b")
    awq = service_timing("rtx4090", "qwen3-8b", quant="awq")
    fp8_kv = service_timing("rtx4090", "qwen3-8b", kv_dtype="fp8")
    assert awq.decode_step_base_ms < fp16.decode_step_base_ms
    assert fp8_kv.kv_bytes_per_token == fp16.kv_bytes_per_token // 2


def test_seed_deployment_has_room_for_about_one_request_of_kv() -> None:
    st = service_timing("rtx3080", "qwen3-8b-int8")
    assert 0 < st.max_context < 4096


@pytest.mark.parametrize("gpu, model", [("rtx308", "qwen3-8b"), ("rtx3080", "qwen9-8b")])
def test_unknown_ids_raise_input_error(gpu: str, model: str) -> None:
    with pytest.raises(InputError, match="did you mean"):
        service_timing(gpu, model)
