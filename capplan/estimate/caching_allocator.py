"""A simulator of PyTorch's CUDA caching allocator (the native `DeviceCachingAllocator`).

Pure Python (stdlib only). It replays a stream of tensor allocations and frees and reports what
`torch.cuda.max_memory_allocated()` / `max_memory_reserved()` would say, for the default
configuration and for `PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True`.

Rules, from c10/cuda/CUDACachingAllocator.cpp (pytorch/pytorch, read at commit
001074d25084fdb87a799823e395a50f5ec044d3; defaults cross-checked against the c10 headers of
torch 2.13: c10/core/AllocatorConfig.h):

* every request is rounded up to a multiple of 512 B (`round_size`, no power-of-2 divisions by
  default); a request of 0 B allocates nothing;
* requests <= 1 MiB use the small pool, larger ones the large pool (`get_pool`);
* a new segment (cudaMalloc) is 2 MiB for small requests, 20 MiB for requests < 10 MiB, else the
  request rounded up to 2 MiB (`get_allocation_size`);
* `get_free_block`: best fit -- the free block of the same pool/stream with the smallest
  (size, address) >= the request (`std::set` ordered by `BlockComparatorSize`);
* `should_split`: the block is split when the remainder is >= 512 B (small pool or expandable
  segments) or > 1 MiB (large pool); otherwise the whole block is handed out (and counted as
  allocated: stats use block sizes);
* `free_block` merges the freed block with free neighbours of the same segment only;
* cached segments are only returned by `empty_cache()` or when cudaMalloc fails: then all
  completely free segments are released and the allocation retried (`release_cached_blocks`),
  else OOM (`max_split_size` unset, so `release_available_cached_blocks` does nothing);
* expandable segments: one segment per pool and stream, a virtual range mapped page by page
  (2 MiB pages for the small pool, 20 MiB for the large pool); a new allocation maps pages at the
  lowest unmapped address, merging with the free block before it (`find_expandable_block`,
  `map_block`); best fit prefers blocks not touching the unmapped tail (`get_free_block`);
  free pages are unmapped only by `empty_cache()` / an OOM retry (`release_blocks`/`unmap_block`).

Not modelled: multiple streams (everything here runs on one stream), recordStream events, CUDA
graphs / private pools, `max_split_size_mb`, `roundup_power2_divisions`, garbage collection
thresholds.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

KIB = 1024
MIB = 1024 * 1024
K_MIN_BLOCK = 512
K_SMALL_SIZE = 1 * MIB
K_SMALL_BUFFER = 2 * MIB
K_LARGE_BUFFER = 20 * MIB
K_MIN_LARGE_ALLOC = 10 * MIB
K_ROUND_LARGE = 2 * MIB


def round_size(n: int) -> int:
    """`round_size`: at least 512 B, multiples of 512 B."""
    if n < K_MIN_BLOCK:
        return K_MIN_BLOCK
    return K_MIN_BLOCK * ((n + K_MIN_BLOCK - 1) // K_MIN_BLOCK)


def allocation_size(size: int) -> int:
    """`get_allocation_size`: the cudaMalloc size for a (rounded) request that found no block."""
    if size <= K_SMALL_SIZE:
        return K_SMALL_BUFFER
    if size < K_MIN_LARGE_ALLOC:
        return K_LARGE_BUFFER
    return K_ROUND_LARGE * ((size + K_ROUND_LARGE - 1) // K_ROUND_LARGE)


class OutOfMemory(Exception):
    """The simulated device ran out of memory even after releasing cached segments."""


class Block:
    """A block of device memory: a whole segment or a piece of one (prev/next: same segment)."""

    __slots__ = (
        "addr",
        "allocated",
        "expandable",
        "mapped",
        "next",
        "prev",
        "seg",
        "size",
        "small",
    )

    def __init__(
        self,
        addr: int,
        size: int,
        small: bool,
        seg: int,
        mapped: bool = True,
        expandable: bool = False,
    ) -> None:
        self.addr = addr
        self.size = size
        self.small = small
        self.seg = seg
        self.allocated = False
        self.mapped = mapped
        self.expandable = expandable
        self.prev: Block | None = None
        self.next: Block | None = None

    def is_split(self) -> bool:
        return self.prev is not None or self.next is not None


class _Pool:
    """Free blocks of one pool ordered by (size, addr), like `BlockPool::blocks`.

    `keys` is a sorted list of (size, addr, block) (addresses are unique, so blocks are never
    compared)."""

    __slots__ = ("keys", "segment_bases", "small", "unmapped")

    def __init__(self, small: bool) -> None:
        self.small = small
        self.keys: list[tuple[int, int, Block]] = []
        self.unmapped: dict[int, Block] = {}  # addr -> unmapped block (expandable segments)
        self.segment_bases: list[int] = []

    def insert(self, b: Block) -> None:
        bisect.insort(self.keys, (b.size, b.addr, b))

    def remove(self, b: Block) -> None:
        keys = self.keys
        i = bisect.bisect_left(keys, (b.size, b.addr))
        del keys[i]

    def lower_bound(self, size: int) -> int:
        return bisect.bisect_left(self.keys, (size, -1))


@dataclass
class Stats:
    allocated: int = 0
    reserved: int = 0
    peak_allocated: int = 0
    peak_reserved: int = 0
    segments: int = 0
    device_allocs: int = 0
    device_frees: int = 0
    alloc_retries: int = 0
    requested: int = 0  # sum of live requested sizes (before rounding)


class CachingAllocator:
    """One device, one stream.

    `capacity`: bytes the allocator may reserve in total (device memory minus context and other
    processes); None = unlimited. When a cudaMalloc/map would exceed it, cached free segments
    are released and the allocation retried, as the real allocator does; then OutOfMemory.
    """

    def __init__(
        self,
        expandable: bool = False,
        capacity: int | None = None,
        large_page: int = K_LARGE_BUFFER,
        small_page: int = K_SMALL_BUFFER,
        address_seed: int | None = None,
    ) -> None:
        """`address_seed`: None = cudaMalloc returns increasing addresses; an int = addresses in a
        random order (they only break ties between free blocks of equal size)."""
        self.expandable = expandable
        self._rng = None
        if address_seed is not None:
            import random

            self._rng = random.Random(address_seed)
        self.capacity = capacity
        self.pages = {True: small_page, False: large_page}
        self.pools = {True: _Pool(True), False: _Pool(False)}
        self.stats = Stats()
        self._next_addr = 1 << 40
        self._next_seg = 0
        self._live: dict[int, tuple[Block, int]] = {}  # handle -> (block, requested)
        self._next_handle = 0

    # ----------------------------------------------------------------- public API
    def malloc(self, nbytes: int) -> int | None:
        """Allocate; returns a handle for `free`, or None for a 0-byte request."""
        if nbytes == 0:
            return None
        size = round_size(nbytes)
        small = size <= K_SMALL_SIZE
        pool = self.pools[small]
        block = self._get_free_block(pool, size)
        if block is None:
            block = self._alloc_block(pool, size)
            if block is None:
                self.stats.alloc_retries += 1
                self.release_cached_blocks()
                block = self._alloc_block(pool, size)
                if block is None:
                    raise OutOfMemory(
                        f"request {nbytes} B; reserved {self.stats.reserved} B, "
                        f"allocated {self.stats.allocated} B, capacity {self.capacity} B"
                    )
        block = self._alloc_found_block(pool, block, size)
        st = self.stats
        st.allocated += block.size
        st.requested += nbytes
        if st.allocated > st.peak_allocated:
            st.peak_allocated = st.allocated
        h = self._next_handle
        self._next_handle += 1
        self._live[h] = (block, nbytes)
        return h

    def free(self, handle: int | None) -> None:
        if handle is None:
            return
        block, nbytes = self._live.pop(handle)
        self.stats.allocated -= block.size
        self.stats.requested -= nbytes
        block.allocated = False
        pool = self.pools[block.small]
        for other in (block.prev, block.next):
            self._try_merge(block, other, pool)
        pool.insert(block)

    def empty_cache(self) -> None:
        self.release_cached_blocks()

    def reset_peak(self) -> None:
        self.stats.peak_allocated = self.stats.allocated
        self.stats.peak_reserved = self.stats.reserved

    def release_cached_blocks(self) -> None:
        """`release_cached_blocks`: cudaFree every completely free segment; unmap free pages."""
        for pool in self.pools.values():
            to_unmap = []
            for k in list(pool.keys):
                b = k[2]
                if b.expandable:
                    to_unmap.append(b)
                elif b.prev is None and b.next is None:
                    pool.remove(b)
                    self._reserved_change(-b.size)
                    self.stats.segments -= 1
                    self.stats.device_frees += 1
            for b in to_unmap:
                self._unmap_block(pool, b)

    # ------------------------------------------------------------------ internals
    def _reserved_change(self, delta: int) -> None:
        st = self.stats
        st.reserved += delta
        if st.reserved > st.peak_reserved:
            st.peak_reserved = st.reserved

    def _get_free_block(self, pool: _Pool, size: int) -> Block | None:
        i = pool.lower_bound(size)
        keys = pool.keys
        if i == len(keys):
            return None
        b = keys[i][2]
        if b.expandable:
            # expandable: a block next to the unmapped tail counts as big as it could grow
            def exp_size(x: Block) -> int:
                return x.size + (x.next.size if x.next is not None and not x.next.mapped else 0)

            j = i + 1
            while b.expandable and j < len(keys):
                nb = keys[j][2]
                if exp_size(nb) < exp_size(b):
                    b = nb
                    j += 1
                else:
                    break
        pool.remove(b)
        return b

    def _alloc_block(self, pool: _Pool, size: int) -> Block | None:
        if self.expandable:
            return self._try_allocate_expandable_block(pool, size)
        alloc = allocation_size(size)
        if self.capacity is not None and self.stats.reserved + alloc > self.capacity:
            return None
        if self._rng is None:
            addr = self._next_addr
            self._next_addr += alloc + 2 * MIB  # cudaMalloc: distinct, increasing addresses
        else:  # distinct addresses in random order (segments never overlap: 1 TiB slots)
            addr = (1 << 50) + self._rng.randrange(1 << 20) * (1 << 40)
        b = Block(addr, alloc, pool.small, self._next_seg)
        self._next_seg += 1
        self.stats.segments += 1
        self.stats.device_allocs += 1
        self._reserved_change(alloc)
        return b

    def _should_split(self, block: Block, size: int) -> bool:
        rem = block.size - size
        if block.small or block.expandable:
            return rem >= K_MIN_BLOCK
        return rem > K_SMALL_SIZE

    def _alloc_found_block(self, pool: _Pool, block: Block, size: int) -> Block:
        if self._should_split(block, size):
            rest = block
            block = Block(rest.addr, size, rest.small, rest.seg, expandable=rest.expandable)
            block.prev = rest.prev
            if block.prev is not None:
                block.prev.next = block
            block.next = rest
            rest.prev = block
            rest.addr += size
            rest.size -= size
            pool.insert(rest)
        block.allocated = True
        return block

    def _try_merge(self, dst: Block, src: Block | None, pool: _Pool) -> int:
        if src is None or src.allocated or dst.mapped != src.mapped:
            return 0
        if src.mapped:
            pool.remove(src)
        else:
            del pool.unmapped[src.addr]
        if dst.prev is src:
            dst.addr = src.addr
            dst.prev = src.prev
            if dst.prev is not None:
                dst.prev.next = dst
        else:
            dst.next = src.next
            if dst.next is not None:
                dst.next.prev = dst
        dst.size += src.size
        return src.size

    # --------------------------------------------------------- expandable segments
    def _new_expandable_segment(self, pool: _Pool) -> Block:
        va = 1 << 44  # "1 1/8 of device memory" of address space: effectively unbounded here
        b = Block(self._next_addr, va, pool.small, self._next_seg, mapped=False, expandable=True)
        self._next_addr += va
        self._next_seg += 1
        pool.unmapped[b.addr] = b
        pool.segment_bases.append(b.addr)
        return b

    def _find_expandable_block(self, pool: _Pool, size: int) -> Block:
        def allocatable(b: Block | None) -> bool:
            return b is not None and not b.allocated

        for addr in sorted(pool.unmapped):
            c = pool.unmapped[addr]
            if c.prev is not None and allocatable(c.prev):
                c = c.prev
            total = 0
            x: Block | None = c
            while total < size and x is not None and allocatable(x):
                total += x.size
                x = x.next
            if total >= size:
                return c
        return self._new_expandable_segment(pool)

    def _map_block(self, pool: _Pool, to_map: Block, size: int) -> bool:
        page = self.pages[pool.small]
        mapped = page * ((size + page - 1) // page)
        if self.capacity is not None and self.stats.reserved + mapped > self.capacity:
            return False
        del pool.unmapped[to_map.addr]
        to_map.mapped = True
        if mapped < to_map.size:
            rest = Block(
                to_map.addr + mapped,
                to_map.size - mapped,
                pool.small,
                to_map.seg,
                mapped=False,
                expandable=True,
            )
            rest.prev, rest.next = to_map, to_map.next
            if to_map.next is not None:
                to_map.next.prev = rest
            to_map.next = rest
            pool.unmapped[rest.addr] = rest
            to_map.size = mapped
        self._try_merge(to_map, to_map.prev, pool)
        self._try_merge(to_map, to_map.next, pool)
        pool.insert(to_map)
        self._reserved_change(mapped)
        self.stats.device_allocs += 1
        return True

    def _try_allocate_expandable_block(self, pool: _Pool, size: int) -> Block | None:
        c = self._find_expandable_block(pool, size)
        if not c.mapped and not self._map_block(pool, c, min(c.size, size)):
            return None
        while c.size < size:
            nxt = c.next
            assert nxt is not None and not nxt.mapped
            if not self._map_block(pool, nxt, min(size - c.size, nxt.size)):
                return None
            c = nxt  # map_block merged the free block before it into nxt
        pool.remove(c)
        return c

    def _unmap_block(self, pool: _Pool, b: Block) -> None:
        page = self.pages[pool.small]
        base = (
            pool.segment_bases[0]
            if len(pool.segment_bases) == 1
            else max(x for x in pool.segment_bases if x <= b.addr)
        )
        first = base + page * (-(-(b.addr - base) // page))
        last = base + page * ((b.addr + b.size - base) // page)
        if first >= last:
            return
        pool.remove(b)
        if first > b.addr:
            before = Block(b.addr, first - b.addr, pool.small, b.seg, expandable=True)
            before.prev, before.next = b.prev, b
            if b.prev is not None:
                b.prev.next = before
            b.prev = before
            pool.insert(before)
        end = b.addr + b.size
        if end > last:
            after = Block(last, end - last, pool.small, b.seg, expandable=True)
            after.prev, after.next = b, b.next
            if b.next is not None:
                b.next.prev = after
            b.next = after
            pool.insert(after)
        b.addr, b.size, b.mapped = first, last - first, False
        self._try_merge(b, b.prev, pool)
        self._try_merge(b, b.next, pool)
        pool.unmapped[b.addr] = b
        self._reserved_change(-(last - first))
        self.stats.device_frees += 1


def replay(events, alloc: CachingAllocator) -> CachingAllocator:
    """Replay ('a', key, nbytes) / ('f', key) events (key: any hashable) on `alloc`."""
    handles: dict = {}
    for ev in events:
        if ev[0] == "a":
            handles[ev[1]] = alloc.malloc(ev[2])
        else:
            alloc.free(handles.pop(ev[1]))
    return alloc
