"""PyTorch's CUDA caching allocator under transformers `generate()`: the reserved peak.

The DynamicCache grows every layer's K and V by `torch.cat` each decode step; the freed blocks
cannot hold the next, larger tensor, so what the allocator *reserves* grows far faster than what
is *allocated*. This module replays the allocations of one `generate()` call
(`generate_trace`, written out from transformers' code) on the allocator's own rules and
reports both peaks, as `torch.cuda.max_memory_allocated()` / `max_memory_reserved()` would:

* default configuration: a lean copy of the rules (`_FastAllocator`) on the hot path, checked
  against the full simulator (`caching_allocator`) in the tests;
* `PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True`: the full simulator (not yet measured on a
  GPU: labelled so in every output).

Against an H200 measurement of a Qwen3-8B shape at 512 + 512 tokens (batch 1, 16, 64, 128;
shared/facts/gpu-2026-11-30) the reserved peak is within 3.1% and the allocated peak within
0.001%, with no fitted parameter (docs/estimator.md). The process is chaotic past batch ~64
(segment addresses decide which cached block a new tensor reuses): treat single figures there as
+-25%.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from functools import lru_cache

from capplan.estimate.caching_allocator import CachingAllocator
from capplan.estimate.caching_allocator import OutOfMemory as _SimOutOfMemory
from capplan.estimate.generate_trace import (
    GenerateConfig,
    iter_generate_events,
    replay_kv_events,
)
from capplan.estimate.shape import DecoderShape

ALLOC_CONFS = ("default", "expandable")
MIB = 1 << 20
CUBLAS_WORKSPACE = 32 * MIB  # sm90 cuBLAS workspace, through the caching allocator
_SMALL = 1 << 20  # kSmallSize
_LARGE_BUF = 20 << 20  # kLargeBuffer
_MIN_LARGE = 10 << 20  # kMinLargeAlloc
_ROUND_LARGE = 2 << 20  # kRoundLarge
# Decode steps simulated one by one; a longer generation is strided (every k-th step with its
# real sizes): within 0.7% of the exact replay at this bound.
MAX_STEPS = 512


@dataclass(frozen=True)
class GeneratePeaks:
    """The peaks of one generate() call, weights included (bytes)."""

    allocated: int
    reserved: int
    oom: bool  # the allocator could not reserve what it needed within `capacity`


def weight_sizes(s: DecoderShape, tied: bool = False, elem: int = 2) -> list[int]:
    """Parameter byte sizes in creation order (embedding, per layer q k v o [q_norm k_norm]
    gate up down in_norm post_norm, final norm, rotary buffers, lm_head)."""
    h, d = s.hidden, s.head_dim
    out = [s.vocab * h * elem]
    for _ in range(s.layers):
        out += [
            s.heads * d * h * elem,
            s.kv_heads * d * h * elem,
            s.kv_heads * d * h * elem,
            h * s.heads * d * elem,
        ]
        if s.qk_norm:
            out += [d * elem, d * elem]
        out += [s.intermediate * h * elem] * 3 + [h * elem, h * elem]
    out += [h * elem, (d // 2) * 4, (d // 2) * 4]  # final norm; inv_freq, original_inv_freq (fp32)
    if not tied:
        out.append(s.vocab * h * elem)
    return out


class _OutOfMemory(Exception):
    pass


class _FastAllocator:
    """Native caching allocator, default configuration, one stream -- the hot path only.

    Blocks are lists [addr, size, prev, next, allocated, free_list_of_its_pool]; each pool's
    free blocks are a sorted list of (size, addr, block). Same rules as
    cca_sim.CachingAllocator(expandable=False): 512 B rounding, small pool <= 1 MiB in 2 MiB
    segments, 20 MiB segments below 10 MiB, else 2 MiB multiples; best fit; split when the
    remainder is >= 512 B (small) / > 1 MiB (large); merge with free neighbours on free.
    """

    def __init__(self, capacity: int | None = None, stop_on_oom: bool = False) -> None:
        self.stop_on_oom = stop_on_oom
        self.free_small: list = []
        self.free_large: list = []
        self.allocated = self.reserved = self.peak_allocated = self.peak_reserved = 0
        self.segments = 0
        self.capacity = capacity
        self.oom = False
        self._addr = 1 << 40

    def malloc(self, nbytes: int) -> list | None:
        if nbytes == 0:
            return None  # the CUDA allocator hands out no block for 0 bytes
        size = 512 if nbytes < 512 else (nbytes + 511) & ~511
        small = size <= _SMALL
        fl = self.free_small if small else self.free_large
        i = bisect.bisect_left(fl, (size,))
        if i < len(fl):
            blk = fl.pop(i)[2]
        else:
            if small:
                alloc = 2 * MIB
            elif size < _MIN_LARGE:
                alloc = _LARGE_BUF
            else:
                alloc = -(-size // _ROUND_LARGE) * _ROUND_LARGE
            if self.capacity is not None and self.reserved + alloc > self.capacity:
                self.release_cached()  # cudaMalloc failed: free cached segments, retry
                if self.reserved + alloc > self.capacity:
                    self.oom = True  # torch would raise OutOfMemoryError here
                    if self.stop_on_oom:
                        raise _OutOfMemory
                    # else carry on (as if the memory existed) to report an unconstrained peak
            blk = [self._addr, alloc, None, None, False, fl]
            self._addr += alloc + 2 * MIB
            self.reserved += alloc
            self.segments += 1
            if self.reserved > self.peak_reserved:
                self.peak_reserved = self.reserved
        rem = blk[1] - size
        if (rem >= 512) if small else (rem > _SMALL):
            rest = blk
            blk = [rest[0], size, rest[2], rest, False, fl]
            if rest[2] is not None:
                rest[2][3] = blk
            rest[2] = blk
            rest[0] += size
            rest[1] = rem
            bisect.insort(fl, (rem, rest[0], rest))
        blk[4] = True
        self.allocated += blk[1]
        if self.allocated > self.peak_allocated:
            self.peak_allocated = self.allocated
        return blk

    def free(self, blk: list | None) -> None:
        if blk is None:
            return
        blk[4] = False
        self.allocated -= blk[1]
        fl = blk[5]
        prev, nxt = blk[2], blk[3]
        if prev is not None and not prev[4]:
            del fl[bisect.bisect_left(fl, (prev[1], prev[0]))]
            blk[0] = prev[0]
            blk[1] += prev[1]
            blk[2] = pp = prev[2]
            if pp is not None:
                pp[3] = blk
        if nxt is not None and not nxt[4]:
            del fl[bisect.bisect_left(fl, (nxt[1], nxt[0]))]
            blk[1] += nxt[1]
            blk[3] = nn = nxt[3]
            if nn is not None:
                nn[2] = blk
        bisect.insort(fl, (blk[1], blk[0], blk))

    def release_cached(self) -> None:
        """empty_cache(): cudaFree every segment that is one whole free block."""
        for fl in (self.free_small, self.free_large):
            keep = []
            for k in fl:
                b = k[2]
                if b[2] is None and b[3] is None:
                    self.reserved -= b[1]
                    self.segments -= 1
                else:
                    keep.append(k)
            fl[:] = keep

    def reset_peak(self) -> None:
        self.peak_allocated, self.peak_reserved = self.allocated, self.reserved


class _ExpandableAllocator:
    """The full simulator with expandable segments, behind _FastAllocator's interface."""

    def __init__(self, capacity: int | None) -> None:
        self._sim = CachingAllocator(expandable=True, capacity=capacity)
        self.oom = False

    def malloc(self, nbytes: int) -> object:
        try:
            return self._sim.malloc(nbytes)
        except _SimOutOfMemory:
            self.oom = True
            raise _OutOfMemory from None

    def free(self, handle: object) -> None:
        self._sim.free(handle)  # type: ignore[arg-type]

    def release_cached(self) -> None:
        self._sim.empty_cache()

    def reset_peak(self) -> None:
        self._sim.reset_peak()

    @property
    def allocated(self) -> int:
        return self._sim.stats.allocated

    @property
    def reserved(self) -> int:
        return self._sim.stats.reserved

    @property
    def peak_allocated(self) -> int:
        return self._sim.stats.peak_allocated

    @property
    def peak_reserved(self) -> int:
        return self._sim.stats.peak_reserved


@lru_cache(maxsize=4096)
def generate_peaks(
    shape: DecoderShape,
    batch: int,
    prompt: int,
    new_tokens: int,
    *,
    tied: bool = False,
    logits_processors: int = 0,
    alloc_conf: str = "default",
    capacity: int | None = None,
) -> GeneratePeaks:
    """Peak allocated and reserved bytes of one generate(batch x prompt -> new_tokens).

    `logits_processors`: 2 when generate() gets min_new_tokens (two min-length processors run
    every step, as in the H200 measurement), 0 for a plain call. `capacity` (what the allocator
    can reserve: device memory minus the CUDA context) turns on cudaMalloc failure, the release
    of cached segments and the retry; the replay stops at the first allocation that fails even
    then (`oom`; the peaks are those reached until then).
    """
    if alloc_conf not in ALLOC_CONFS:
        raise ValueError(alloc_conf)
    new_tokens = max(new_tokens, 2)  # the trace needs one decode step
    steps = max(new_tokens - 2, 0)
    stride = max(1, -(-steps // MAX_STEPS))
    config = GenerateConfig(batch, prompt, new_tokens, min_length_processors=logits_processors)
    events = iter_generate_events(
        shape, config, decode_activations=False, stride=stride, min_bytes=4096
    )
    alloc: _FastAllocator | _ExpandableAllocator = (
        _ExpandableAllocator(capacity)
        if alloc_conf == "expandable"
        else _FastAllocator(capacity, stop_on_oom=True)
    )
    try:
        alloc.malloc(CUBLAS_WORKSPACE)
        for size in weight_sizes(shape, tied, shape.act_bytes):
            alloc.malloc(size)
        alloc.malloc(batch * prompt * 8)  # input_ids
        alloc.malloc(batch * prompt * 8)  # attention_mask
        alloc.release_cached()  # empty_cache(); reset_peak_memory_stats()
        alloc.reset_peak()
        replay_kv_events(events, alloc.malloc, alloc.free)
    except _OutOfMemory:
        pass
    return GeneratePeaks(alloc.peak_allocated, alloc.peak_reserved, alloc.oom)
