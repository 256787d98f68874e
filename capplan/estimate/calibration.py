"""Step costs a runtime adds to the roofline: defaults from `runtimes.toml`, or a calibration.

A calibration profile is a small versioned JSON file that `capplan calibrate` writes after
measuring a server (docs/calibration.md): the runtime's floor per decoder layer, the bandwidth and
compute efficiencies, and the per-request overhead, each marked measured or carried from the
defaults. `--calibration FILE` makes every timing figure use it instead of the defaults, and
every output says which of the two it used.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from capplan.catalog import loader
from capplan.errors import InputError

SCHEMA_VERSION = "1.0"
KIND = "capplan-calibration"
FITTED = ("floor", "per-sequence", "bandwidth", "compute", "overhead")


@dataclass(frozen=True)
class StepCosts:
    """The per-step costs in effect for one estimate, and where they come from."""

    floor_ms_per_layer: float
    host_ms_per_sequence: float
    bandwidth_efficiency: float
    compute_efficiency: float
    overhead_ms: float
    calibrated: bool
    basis: str  # one line: the calibration file, or the defaults and where they were measured
    largest_batch: int | None = None  # calibrated: the largest batch measured (no extrapolation)


@dataclass(frozen=True)
class CalibrationProfile:
    """What `capplan calibrate` measured (docs/calibration.md)."""

    runtime: str
    gpu: str  # catalog id or name of the device measured
    model: str
    layers: int
    floor_ms_per_layer: float
    host_ms_per_sequence: float
    bandwidth_efficiency: float
    compute_efficiency: float
    overhead_ms: float
    measured: tuple[str, ...]  # which of FITTED the measurements constrained
    source: str  # the command that measured it
    created_at: str = ""
    fit_rms_error: float = 0.0  # relative, over the points
    points: tuple[dict[str, Any], ...] = ()
    schema_version: str = SCHEMA_VERSION
    path: str = field(default="", compare=False)  # where it was read from (not written)

    @property
    def floor_ms(self) -> float:
        """The floor of the measured model (per layer x its layers)."""
        return self.floor_ms_per_layer * self.layers

    @property
    def largest_batch(self) -> int | None:
        """The largest batch a point measured: past it the step time is extrapolated."""
        batches = [round(float(p["batch"])) for p in self.points if "batch" in p]
        return max(batches) if batches else None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("path")
        data["kind"] = KIND
        data["floor_ms"] = round(self.floor_ms, 4)
        data["measured"] = list(self.measured)
        data["points"] = list(self.points)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], origin: str) -> CalibrationProfile:
        if data.get("kind") != KIND:
            raise InputError(f'{origin} is not a capplan calibration (no "kind": "{KIND}")')
        major = str(data.get("schema_version", "")).split(".")[0]
        if major != SCHEMA_VERSION.split(".")[0]:
            raise InputError(
                f"{origin} has calibration schema {data.get('schema_version')!r}; this capplan "
                f"reads {SCHEMA_VERSION.split('.')[0]}.x: run capplan calibrate again"
            )
        names = {f.name for f in fields(cls)} - {"path"}
        try:
            values = {k: v for k, v in data.items() if k in names}
            values["measured"] = tuple(values.get("measured", ()))
            values["points"] = tuple(values.get("points", ()))
            profile = cls(**values, path=origin)
        except TypeError as exc:
            raise InputError(f"{origin} is missing calibration fields ({exc})") from None
        for name in ("floor_ms_per_layer", "host_ms_per_sequence", "overhead_ms"):
            if not float(getattr(profile, name)) >= 0:
                raise InputError(f"{origin}: {name} must be 0 or more")
        for name in ("bandwidth_efficiency", "compute_efficiency"):
            if not 0 < float(getattr(profile, name)) <= 1.5:
                raise InputError(f"{origin}: {name} must be a fraction of the datasheet figure")
        return profile


def read_profile(path: str | Path) -> CalibrationProfile:
    """A calibration file, checked; InputError naming the fix when it is not one."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(
            f"cannot read calibration {p}: {exc.strerror}; run capplan calibrate"
        ) from None
    except json.JSONDecodeError as exc:
        raise InputError(f"calibration {p} is not JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise InputError(f"calibration {p} is not a JSON object")
    return CalibrationProfile.from_dict(data, str(p))


def write_profile(profile: CalibrationProfile, path: str | Path) -> Path:
    p = Path(path)
    stamped = profile if profile.created_at else replace(profile, created_at=_now())
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(stamped.to_dict(), indent=2) + "\n", encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot write {p} ({exc.strerror}); choose another --out") from None
    return p


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def step_costs(
    runtime: str, *, device_kind: str, calibration: CalibrationProfile | None = None
) -> StepCosts:
    """The costs for `runtime` on a GPU or CPU: the calibration when given, else the defaults."""
    entry = loader.runtime(runtime)
    if calibration is not None:
        where = f"{calibration.gpu}, {calibration.model}"
        fitted = ", ".join(calibration.measured) or "nothing"
        return StepCosts(
            floor_ms_per_layer=calibration.floor_ms_per_layer,
            host_ms_per_sequence=calibration.host_ms_per_sequence,
            bandwidth_efficiency=calibration.bandwidth_efficiency,
            compute_efficiency=calibration.compute_efficiency,
            overhead_ms=calibration.overhead_ms,
            calibrated=True,
            basis=f"calibrated: {calibration.path or 'profile'} (measured {where}, "
            f"{calibration.created_at or 'undated'}; fitted: {fitted})",
            largest_batch=calibration.largest_batch,
        )
    cpu = device_kind == "cpu"
    floor = entry.cpu_floor_ms_per_layer if cpu else entry.gpu_floor_ms_per_layer
    per_sequence = entry.cpu_host_ms_per_sequence if cpu else entry.gpu_host_ms_per_sequence
    floor_source = entry.cpu_floor_source if cpu else entry.gpu_floor_source
    return StepCosts(
        floor_ms_per_layer=floor,
        host_ms_per_sequence=per_sequence,
        bandwidth_efficiency=entry.bandwidth_efficiency,
        compute_efficiency=entry.compute_efficiency,
        overhead_ms=0.0,
        calibrated=False,
        basis=f"uncalibrated: {entry.id} defaults (floor {floor:g} ms/layer, "
        f"{_where(floor_source)}); `capplan calibrate` measures this host (--calibration FILE)",
    )


def _where(source: str) -> str:
    """The first clause of a source: where it was measured (the rest is in the assumptions)."""
    return source.split(":")[0].split(",")[0].strip()


def check_matches(calibration: CalibrationProfile, runtime: str, gpu: str) -> list[str]:
    """Notes (not errors) when a profile is applied beyond what it measured."""
    notes = []
    if calibration.runtime != runtime:
        notes.append(
            f"calibration {calibration.path} measured runtime {calibration.runtime}, applied to "
            f"{runtime}"
        )
    if calibration.gpu != gpu:
        notes.append(
            f"calibration {calibration.path} was measured on {calibration.gpu}, applied to "
            f"{gpu}: its floor and efficiencies belong to that host and device"
        )
    return notes
