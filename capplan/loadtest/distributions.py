"""Token-count distributions for prompts and max_tokens: a fixed value or a seeded draw.

Written in a scenario as a number (`128`), a table (`{dist = "uniform", min = 64, max = 256}`)
or, on the command line, a short form: `128`, `uniform:64:256`, `normal:512:128`,
`lognormal:200:0.6` (median, sigma), `choice:64,128,512`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from capplan.errors import InputError

KINDS = ("fixed", "uniform", "normal", "lognormal", "choice")


@dataclass(frozen=True)
class TokenDistribution:
    kind: str = "fixed"
    value: int = 128  # fixed
    low: int = 1  # uniform bounds; clamp for normal/lognormal
    high: int = 1_000_000
    mean: float = 0.0  # normal mean, lognormal median
    spread: float = 0.0  # normal std, lognormal sigma
    choices: tuple[int, ...] = ()

    def sample(self, rng: random.Random) -> int:
        if self.kind == "fixed":
            return self.value
        if self.kind == "uniform":
            return rng.randint(self.low, self.high)
        if self.kind == "choice":
            return rng.choice(self.choices)
        if self.kind == "normal":
            draw = rng.gauss(self.mean, self.spread)
        else:  # lognormal, parameterised by its median
            draw = self.mean * math.exp(rng.gauss(0.0, self.spread))
        return max(self.low, min(self.high, round(draw)))

    def to_dict(self) -> dict[str, Any]:
        if self.kind == "fixed":
            return {"dist": "fixed", "value": self.value}
        if self.kind == "uniform":
            return {"dist": "uniform", "min": self.low, "max": self.high}
        if self.kind == "choice":
            return {"dist": "choice", "values": list(self.choices)}
        key = "median" if self.kind == "lognormal" else "mean"
        spread = "sigma" if self.kind == "lognormal" else "std"
        return {
            "dist": self.kind,
            key: self.mean,
            spread: self.spread,
            "min": self.low,
            "max": self.high,
        }


def parse_distribution(value: object, *, name: str) -> TokenDistribution:
    """A distribution from a scenario value (int, table) or a command-line string."""
    if isinstance(value, TokenDistribution):
        return value
    if isinstance(value, bool):
        raise InputError(f"{name}: expected a token count or a distribution, got {value!r}")
    if isinstance(value, int | float):
        return _fixed(int(value), name)
    if isinstance(value, str):
        return _from_text(value, name)
    if isinstance(value, Mapping):
        return _from_table(value, name)
    raise InputError(f"{name}: expected a token count or a distribution, got {value!r}")


def _fixed(value: int, name: str) -> TokenDistribution:
    if value < 1:
        raise InputError(f"{name}: a token count must be at least 1, got {value}")
    return TokenDistribution(kind="fixed", value=value)


def _from_text(text: str, name: str) -> TokenDistribution:
    parts = text.strip().split(":")
    try:
        if len(parts) == 1:
            return _fixed(int(parts[0]), name)
        kind, args = parts[0].lower(), parts[1:]
        if kind == "uniform" and len(args) == 2:
            return _from_table({"dist": kind, "min": int(args[0]), "max": int(args[1])}, name)
        if kind in ("normal", "lognormal") and len(args) in (2, 4):
            key, spread = ("median", "sigma") if kind == "lognormal" else ("mean", "std")
            table: dict[str, Any] = {"dist": kind, key: float(args[0]), spread: float(args[1])}
            if len(args) == 4:
                table.update(min=int(args[2]), max=int(args[3]))
            return _from_table(table, name)
        if kind == "choice" and len(args) == 1:
            return _from_table({"dist": kind, "values": [int(v) for v in args[0].split(",")]}, name)
    except ValueError:
        pass
    raise InputError(
        f"{name}: cannot read '{text}'; write 128, uniform:64:256, normal:MEAN:STD[:MIN:MAX], "
        "lognormal:MEDIAN:SIGMA[:MIN:MAX] or choice:64,128"
    )


def _from_table(table: Mapping[str, Any], name: str) -> TokenDistribution:
    kind = str(table.get("dist", "fixed")).lower()
    if kind not in KINDS:
        raise InputError(f"{name}: unknown dist '{kind}'; use one of {', '.join(KINDS)}")
    try:
        if kind == "fixed":
            return _fixed(int(table["value"]), name)
        if kind == "choice":
            values = tuple(int(v) for v in table["values"])
            if not values or min(values) < 1:
                raise InputError(f"{name}: choice needs token counts of at least 1")
            return TokenDistribution(kind=kind, choices=values)
        low = int(table.get("min", 1))
        high = int(table.get("max", 1_000_000))
        if kind == "uniform":
            low, high = int(table["min"]), int(table["max"])
        if not 1 <= low <= high:
            raise InputError(f"{name}: need 1 <= min <= max, got min={low} max={high}")
        if kind == "uniform":
            return TokenDistribution(kind=kind, low=low, high=high)
        center_key, spread_key = ("median", "sigma") if kind == "lognormal" else ("mean", "std")
        center, spread = float(table[center_key]), float(table[spread_key])
        if center <= 0 or spread < 0:
            raise InputError(f"{name}: {center_key} must be > 0 and {spread_key} >= 0")
        return TokenDistribution(kind=kind, low=low, high=high, mean=center, spread=spread)
    except KeyError as exc:
        raise InputError(f"{name}: dist '{kind}' needs the key {exc.args[0]!r}") from None
    except (TypeError, ValueError):
        raise InputError(f"{name}: dist '{kind}' needs numeric values") from None
