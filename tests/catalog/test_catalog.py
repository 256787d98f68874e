"""The built-in catalogs: complete rows, sources, (check) marks, lookups."""

from __future__ import annotations

import pytest

from capplan.catalog import loader
from capplan.errors import InputError


def test_every_gpu_has_a_source_and_sane_figures() -> None:
    for gpu in loader.gpus().values():
        assert gpu.source
        assert 8 * 1024**3 < gpu.total_bytes < 150 * 1024**3
        assert gpu.total_bytes <= gpu.vram_nominal_gib * 1024**3 * 1.1
        assert 200 <= gpu.bandwidth_gbs <= 5000 and gpu.tflops_fp16 > 0


def test_every_model_has_a_source_and_a_consistent_shape() -> None:
    for model in loader.models().values():
        assert model.source.startswith("https://huggingface.co/" + model.hf_id)
        assert model.heads % model.kv_heads == 0


def test_secondary_source_rows_are_marked() -> None:
    assert "tflops_fp16" in loader.gpu("a10g").check
    assert "total_mib" in loader.gpu("rtxa5000").check
    assert any("tied_embeddings" in c for c in loader.model("qwen3-4b").check)


def test_seed_gpu_reports_what_torch_reports() -> None:
    assert loader.gpu("rtx3080").total_bytes == pytest.approx(9.78 * 1024**3, rel=1e-6)


def test_gpu_totals_are_torch_s_below_nvidia_smi_s_where_known() -> None:
    for gpu in loader.gpus().values():
        # Consumer cards report about the same figure to both (RTX 3080: 9.78 GiB and 10010 MiB,
        # from different drivers); data-center cards lose 0.5-4 GiB to the driver's reserve.
        assert gpu.total_bytes <= gpu.nvidia_smi_bytes + 16 * 1024**2
    # Measured on an H200 (shared/facts/gpu-2026-11-30): torch 150,109,880,320 B, NVML 143771 MiB.
    h200 = loader.gpu("h200")
    assert h200.total_bytes == pytest.approx(150_109_880_320, rel=1e-5)
    assert h200.nvidia_smi_bytes == 150_754_820_096
    assert loader.gpu("h100").total_bytes / 1024**3 == pytest.approx(79.19)
    assert loader.gpu("a100-40").total_bytes / 1024**3 == pytest.approx(39.39)


def test_lookup_is_case_insensitive_and_unknown_ids_suggest() -> None:
    assert loader.gpu("RTX3080").id == "rtx3080"
    with pytest.raises(InputError, match="did you mean a100-80"):
        loader.gpu("a100-8")
    with pytest.raises(InputError, match=r"did you mean llama-3\.1-8b"):
        loader.model("llama-3-8b")
