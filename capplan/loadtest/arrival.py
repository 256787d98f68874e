"""When requests are sent: open-loop arrival schedules (constant, Poisson, gamma, ramp), seeded.

An open-loop schedule is a list of offsets (seconds from the step's start). Each request keeps
its intended start, so latency can be measured from when it *should* have been sent, not from
when a slow client got round to it (coordinated omission). Closed loop needs no schedule: N
workers each send their next request when the previous one finishes.

Non-constant rates use time rescaling: draw the gaps of a unit-rate process, then map cumulative
"expected arrivals" back to time through the integrated rate Λ(t) = r0·t + (r1 - r0)·t²/(2T).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator

from capplan.errors import InputError

# Never schedule more than this many arrivals per step: a typo such as --rate 1e9 must not
# allocate the machine away before the duration bound applies.
MAX_SCHEDULED = 1_000_000


def unit_gaps(arrival: str, burstiness: float, rng: random.Random) -> Iterator[float]:
    """Gaps of a rate-1 process: constant 1, exponential, or gamma(shape=B, scale=1/B).

    Gamma with burstiness B keeps the mean rate and sets the gaps' coefficient of variation to
    1/sqrt(B): B=1 is Poisson, B<1 burstier, B>1 more regular (as `vllm bench serve`).
    """
    if arrival == "constant":
        while True:
            yield 1.0
    elif arrival == "poisson":
        while True:
            yield rng.expovariate(1.0)
    elif arrival == "gamma":
        while True:
            yield rng.gammavariate(burstiness, 1.0 / burstiness)
    else:
        raise InputError(f"arrival '{arrival}' is not one of: constant, poisson, gamma")


def _invert_rate_integral(u: float, r0: float, slope: float) -> float:
    """The t where r0·t + slope·t²/2 = u (slope is the rate's increase per second)."""
    if abs(slope) < 1e-12:
        return u / r0
    a = slope / 2.0
    disc = r0 * r0 + 4.0 * a * u
    if disc < 0:
        return math.inf  # a falling rate that never reaches u expected arrivals
    return (-r0 + math.sqrt(disc)) / (2.0 * a)


def schedule(
    *,
    rate: float,
    arrival: str = "poisson",
    burstiness: float = 1.0,
    seed: int | str = 0,
    requests: int | None = None,
    duration_s: float | None = None,
    ramp_to: float | None = None,
) -> list[float]:
    """Intended send offsets (s) for one open-loop step, bounded by `requests` and `duration_s`.

    With `ramp_to`, the rate climbs linearly from `rate` to `ramp_to` over `duration_s`.
    """
    if requests is None and duration_s is None:
        raise InputError("an open-loop step needs a request count or a duration")
    if ramp_to is None and rate <= 0:
        raise InputError("rate must be above 0 requests/s")
    slope = 0.0
    if ramp_to is not None:
        if not duration_s:
            raise InputError("a ramp needs a duration")
        slope = (ramp_to - rate) / duration_s
    limit = min(requests or MAX_SCHEDULED, MAX_SCHEDULED)
    rng = random.Random(f"arrival:{seed}")
    offsets: list[float] = []
    expected = 0.0
    gaps = unit_gaps(arrival, burstiness, rng)
    # A ramp from 0 has no arrival at t=0; a steady rate sends its first request at once
    # for constant arrivals, as other tools do.
    first = True
    while len(offsets) < limit:
        if not (first and arrival == "constant" and ramp_to is None):
            expected += next(gaps)
        first = False
        t = _invert_rate_integral(expected, rate, slope) if (rate > 0 or slope) else math.inf
        if duration_s is not None and t >= duration_s:
            break
        if not math.isfinite(t):
            break
        offsets.append(t)
    return offsets
