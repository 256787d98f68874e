"""docs/estimate-schema.md lists every field `--format json` emits, under the same version."""

from __future__ import annotations

import re
from pathlib import Path

from capplan.estimate.capacity import VllmOptions
from capplan.estimate.estimator import EstimateRequest, estimate
from capplan.estimate.gpu_spec import resolve_gpu
from capplan.estimate.model_spec import resolve_model
from capplan.estimate.result import SCHEMA_VERSION, as_dict

DOC = Path(__file__).resolve().parents[2] / "docs" / "estimate-schema.md"


def emitted_fields(data: dict) -> set[str]:
    names = set()
    for key, value in data.items():
        names.add(key)
        if key == "params_by_role":
            continue
        if isinstance(value, dict):
            names |= {f"{key}.{sub}" for sub in value}
        if isinstance(value, list) and value and isinstance(value[0], dict):
            names |= {f"{key}.{sub}" for sub in value[0]}
    return names


def documented_fields() -> set[str]:
    return set(re.findall(r"^\| `([a-z0-9_.]+)` \|", DOC.read_text(), flags=re.MULTILINE))


def test_schema_doc_names_the_current_version() -> None:
    assert f"schema version {SCHEMA_VERSION}" in DOC.read_text()


def test_every_emitted_field_is_documented() -> None:
    documented = documented_fields()
    gpu = resolve_gpu("rtx3080")
    hf = as_dict(estimate(EstimateRequest(gpu=gpu, model=resolve_model("qwen3-8b"))))
    vllm = as_dict(
        estimate(
            EstimateRequest(
                gpu=gpu,
                model=resolve_model("qwen3-8b-int8"),
                runtime="vllm",
                vllm=VllmOptions(max_model_len=2048),
            )
        )
    )
    capplan = as_dict(
        estimate(EstimateRequest(gpu=gpu, model=resolve_model("qwen3-8b-awq"), runtime="capplan"))
    )
    missing = (emitted_fields(hf) | emitted_fields(vllm) | emitted_fields(capplan)) - documented
    assert not missing
    assert hf["alternatives"]  # bf16 does not fit a 10 GB card, so alternatives were checked
