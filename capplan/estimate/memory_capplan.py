"""Memory under `--runtime capplan`: the reference server's fixed-KV engine, term by term.

The engine (reference_server/engine/) allocates its KV cache once, at start, and never grows it,
so its peak is a sum rather than a replay of an allocator:

    device    = non-torch (CUDA context, or the CPU process) + weights + KV pool + workspace
    KV pool   = (num_blocks + 1) x BLOCK_SIZE tokens x KV bytes per token
                (the + 1: a trash block that padded rows write to and read from, masked)
    workspace = the block table + the gather buffers + max(one decode step, one prefill chunk)

Given `kv_cache_memory` bytes, num_blocks = bytes // one block - 1: the engine calls the
same `pool_blocks` and `pool_bytes`, so the pool it allocates is the estimate's term to the byte.
Without it, the budget is vLLM's rule (total x gpu_memory_utilization - weights - non-torch -
workspace) on a GPU, and at most `CPU_DEFAULT_KV_BYTES` on a CPU.

Nothing here imports torch: the engine passes its shape in, the estimator builds it from a spec.
"""

from __future__ import annotations

from dataclasses import dataclass

from capplan.estimate.shape import DecoderShape
from capplan.units import format_bytes

BLOCK_SIZE = 16  # tokens per KV block, as vLLM's default page
DEFAULT_GPU_MEMORY_UTILIZATION = 0.9  # vLLM's classic default share of the device
CPU_DEFAULT_KV_BYTES = 4 * 1024**3  # vLLM's CPU default KV space (VLLM_CPU_KVCACHE_SPACE=4)
# Prompt tokens per prefill forward (padding included). A running stream waits one decode step
# plus one chunk while prompts join; fewer, larger forwards finish the prompts sooner. On a GPU an
# eager forward costs its host floor (~70 ms for an 8B model) up to about 2048 tokens, so smaller
# chunks only add forwards; on a CPU every token costs, and 512 keeps the wait near 3 decode steps
# (docs/server.md, "The engine").
DEFAULT_PREFILL_CHUNK_TOKENS = {"cpu": 512, "gpu": 2048}


def default_prefill_chunk(device: str) -> int:
    """The default chunk for a device: "cpu", "gpu", or a torch device name ("cuda:0")."""
    return DEFAULT_PREFILL_CHUNK_TOKENS["cpu" if device.startswith("cpu") else "gpu"]


# Sampling holds, per logit of a sampled row: the fp32 logits, the scaled copy and its softmax,
# and for top-p the sorted probabilities (fp32), their order (int64), the cumulative sum, the
# mask and the scattered result: 4 + 4 + 4 + 12 + 4 + 1 + 4 + 4 bytes, rounded up.
SAMPLING_BYTES_PER_LOGIT = 40
INDEX_BYTES = 8  # int64 block ids in the block table


def block_bytes(shape: DecoderShape) -> int:
    """KV bytes of one block of BLOCK_SIZE tokens."""
    return BLOCK_SIZE * shape.kv_bytes_per_token


@dataclass(frozen=True)
class EngineLimits:
    """The engine's settings that size its workspace."""

    max_batch: int  # rows decoded together (`--max-batch`)
    prefill_chunk_tokens: int  # prompt tokens per prefill forward (`--prefill-chunk-tokens`)
    max_context: int  # positions per request: the block table spans them


def pool_blocks(shape: DecoderShape, budget_bytes: int) -> int:
    """Whole blocks that fit in `budget_bytes` beside the trash block."""
    return max(0, budget_bytes // block_bytes(shape) - 1)


def pool_bytes(shape: DecoderShape, num_blocks: int) -> int:
    """What the engine allocates for `num_blocks`: the blocks and the trash block."""
    return (num_blocks + 1) * block_bytes(shape)


def context_blocks(limits: EngineLimits) -> int:
    """Blocks one request can span: the block table's width."""
    return -(-limits.max_context // BLOCK_SIZE)


def decode_gather_tokens(limits: EngineLimits, pool_tokens: int) -> int:
    """The most keys one decode forward gathers per layer (rows x longest row in whole
    blocks, padding included): every running row at full context, and never more than the pool
    holds (the engine splits a step whose padded gather would exceed it)."""
    full = limits.max_batch * context_blocks(limits) * BLOCK_SIZE
    return max(BLOCK_SIZE, min(pool_tokens, full))


def prefill_gather_tokens(limits: EngineLimits, pool_tokens: int) -> int:
    """The most keys one prefill forward gathers per layer: one request's context in whole
    blocks (the engine adds rows to a chunk only while rows x longest context stays within
    it)."""
    return max(BLOCK_SIZE, min(pool_tokens, context_blocks(limits) * BLOCK_SIZE))


def hidden_bytes(shape: DecoderShape, tokens: int) -> int:
    """Peak temporaries of one layer for `tokens` query tokens: the gated MLP (gate, up and
    their product) beside the residual stream, the normed input and its fp32 upcast, q/k/v and
    the attention output."""
    act = shape.act_bytes
    mlp = 3 * tokens * shape.intermediate * act
    residual = 3 * tokens * shape.hidden * act + tokens * shape.hidden * 4
    qkv = tokens * (2 * shape.heads + 2 * shape.kv_heads) * shape.head_dim * act
    return mlp + residual + qkv


def logits_bytes(shape: DecoderShape, rows: int) -> int:
    """Logits of the sampled rows (only the last position of each: `logits_to_keep=1`), their
    fp32 copy, and what sampling holds beside them."""
    return rows * shape.vocab * (shape.act_bytes + 4 + SAMPLING_BYTES_PER_LOGIT)


def gather_bytes(shape: DecoderShape, limits: EngineLimits, pool_tokens: int) -> int:
    """The two buffers (K and V) every layer's gather reuses, allocated at start: as many keys
    as one forward may gather."""
    tokens = max(
        decode_gather_tokens(limits, pool_tokens), prefill_gather_tokens(limits, pool_tokens)
    )
    return tokens * shape.kv_bytes_per_token_layer


def attention_bytes(shape: DecoderShape, queries: int, keys: int) -> int:
    """One layer's attention over the gathered keys besides the buffers: the boolean mask with
    the query heads packed onto the KV heads (`queries` x `keys` per group) beside its
    conversion to an additive mask in the model's dtype. No score matrix: with a mask, sdpa
    runs the memory-efficient kernel on cuda and the flash kernel on cpu (measured there: a
    2048 x 8192 masked call grew the RSS by the float mask, 67 MB, not by 537 MB of scores)."""
    return shape.groups * queries * keys * (1 + shape.act_bytes)


@dataclass(frozen=True)
class Workspace:
    """The engine's memory besides weights and pool, at its largest."""

    block_table_bytes: int  # the block table, [max_batch, context blocks] int64, at start
    gather_bytes: int  # the K and V gather buffers, at start
    decode_bytes: int  # one decode forward of max_batch rows and its sampling
    prefill_bytes: int  # one prefill forward of a full chunk and its sampling

    @property
    def total_bytes(self) -> int:
        fixed = self.block_table_bytes + self.gather_bytes
        return fixed + max(self.decode_bytes, self.prefill_bytes)


def workspace(shape: DecoderShape, limits: EngineLimits, pool_tokens: int) -> Workspace:
    """The workspace of an engine with `limits` over a pool of `pool_tokens` tokens."""
    rows = limits.max_batch
    chunk = limits.prefill_chunk_tokens
    decode_keys = decode_gather_tokens(limits, pool_tokens)
    prefill_keys = prefill_gather_tokens(limits, pool_tokens)
    decode = (
        hidden_bytes(shape, rows)
        + attention_bytes(shape, 1, decode_keys)
        + logits_bytes(shape, rows)
    )
    prefill = (
        hidden_bytes(shape, chunk)
        + attention_bytes(shape, chunk, prefill_keys)
        + logits_bytes(shape, min(rows, chunk))
    )
    return Workspace(
        block_table_bytes=rows * context_blocks(limits) * INDEX_BYTES,
        gather_bytes=gather_bytes(shape, limits, pool_tokens),
        decode_bytes=decode,
        prefill_bytes=prefill,
    )


@dataclass(frozen=True)
class PoolPlan:
    """A pool and the workspace beside it, inside a budget."""

    num_blocks: int
    pool_bytes: int
    workspace: Workspace

    @property
    def tokens(self) -> int:
        return self.num_blocks * BLOCK_SIZE

    @property
    def total_bytes(self) -> int:
        return self.pool_bytes + self.workspace.total_bytes


def plan_pool(shape: DecoderShape, limits: EngineLimits, budget_bytes: int) -> PoolPlan:
    """The largest pool whose bytes plus the workspace it implies fit in `budget_bytes`
    (the workspace grows with the pool up to a full batch at full context: a bisection)."""

    def plan(blocks: int) -> PoolPlan:
        return PoolPlan(
            blocks,
            pool_bytes(shape, blocks),
            workspace(shape, limits, blocks * BLOCK_SIZE),
        )

    low, high = 0, pool_blocks(shape, budget_bytes)
    if plan(high).total_bytes <= budget_bytes:
        return plan(high)
    while low < high:
        mid = (low + high + 1) // 2
        if plan(mid).total_bytes <= budget_bytes:
            low = mid
        else:
            high = mid - 1
    return plan(low)


def fixed_pool(shape: DecoderShape, limits: EngineLimits, kv_cache_memory: int) -> PoolPlan:
    """The pool `--kv-cache-memory` asks for, exactly, and its workspace."""
    blocks = pool_blocks(shape, kv_cache_memory)
    return PoolPlan(
        blocks, pool_bytes(shape, blocks), workspace(shape, limits, blocks * BLOCK_SIZE)
    )


def cpu_default_budget(shape: DecoderShape, limits: EngineLimits) -> int:
    """The server's pool on a CPU when no size is given: room for max_batch requests at full
    context, at most CPU_DEFAULT_KV_BYTES."""
    needed = pool_bytes(shape, -(-limits.max_batch * limits.max_context // BLOCK_SIZE))
    return min(CPU_DEFAULT_KV_BYTES, needed)


@dataclass(frozen=True)
class CapplanBudget:
    """The engine's memory on one device (one rank): every term, and what sized the pool."""

    total_bytes: int
    gpu_memory_utilization: float | None  # None on a CPU
    requested_bytes: int  # what the pool and workspace were planned in (cuda: total x share)
    weights_bytes: int
    non_torch_bytes: int  # CUDA context and workspaces, or the CPU process
    pool_bytes: int  # what the engine allocates: `--kv-cache-memory` to emit
    num_blocks: int
    kv_per_token_bytes: int
    workspace: Workspace
    limits: EngineLimits
    request_tokens: int
    sized_by: str

    @property
    def block_size(self) -> int:
        return BLOCK_SIZE

    @property
    def tokens(self) -> int:
        return self.num_blocks * BLOCK_SIZE

    @property
    def request_blocks(self) -> int:
        return -(-self.request_tokens // BLOCK_SIZE)

    @property
    def workload_concurrency(self) -> int:
        """Requests of the workload whose reservations fit the pool at once."""
        return self.num_blocks // self.request_blocks if self.request_blocks else 0

    @property
    def allocated_bytes(self) -> int:
        """Weights + pool + workspace: what torch allocates at the engine's peak."""
        return self.weights_bytes + self.pool_bytes + self.workspace.total_bytes

    @property
    def peak_bytes(self) -> int:
        """Everything the process holds at its peak, as NVML (or the RSS) shows it."""
        return self.non_torch_bytes + self.allocated_bytes


def capplan_budget(
    shape: DecoderShape,
    limits: EngineLimits,
    *,
    total_bytes: int,
    weights_bytes: int,
    non_torch_bytes: int,
    request_tokens: int,
    cpu: bool,
    gpu_memory_utilization: float | None = None,
) -> CapplanBudget:
    """The pool the server allocates by default on this device, and every term beside it:
    on a GPU what `gpu_memory_utilization` of the total leaves after weights, context and the
    workspace (vLLM's rule); on a CPU the room left in RAM, at most CPU_DEFAULT_KV_BYTES."""
    if cpu:
        requested = total_bytes
        plan = plan_pool(shape, limits, total_bytes - weights_bytes - non_torch_bytes)
        if plan.pool_bytes > CPU_DEFAULT_KV_BYTES:
            plan = fixed_pool(shape, limits, CPU_DEFAULT_KV_BYTES)
        utilization = None
        sized_by = (
            "cpu: the RAM left after the process and the weights, at most "
            f"{CPU_DEFAULT_KV_BYTES // 1024**3} GiB"
        )
    else:
        utilization = gpu_memory_utilization or DEFAULT_GPU_MEMORY_UTILIZATION
        requested = int(total_bytes * utilization)
        plan = plan_pool(shape, limits, requested - weights_bytes - non_torch_bytes)
        source = "--gpu-memory-utilization" if gpu_memory_utilization else "default"
        sized_by = (
            f"gpu_memory_utilization {utilization} ({source}) minus weights, context, workspace"
        )
    return CapplanBudget(
        total_bytes=total_bytes,
        gpu_memory_utilization=utilization,
        requested_bytes=requested,
        weights_bytes=weights_bytes,
        non_torch_bytes=non_torch_bytes,
        pool_bytes=plan.pool_bytes if plan.num_blocks else 0,
        num_blocks=plan.num_blocks,
        kv_per_token_bytes=shape.kv_bytes_per_token,
        workspace=plan.workspace,
        limits=limits,
        request_tokens=request_tokens,
        sized_by=sized_by,
    )


def capplan_assumptions(b: CapplanBudget) -> list[str]:
    """The capplan lines of an estimate's assumptions: how the pool was sized, every term."""
    w, limits = b.workspace, b.limits
    return [
        f"runtime capplan: capplan serve's fixed-KV engine; KV pool {format_bytes(b.pool_bytes)} "
        f"({b.num_blocks} blocks of {BLOCK_SIZE} tokens + 1 trash block) allocated at start, "
        f"sized by {b.sized_by}; a request reserves prompt + max_tokens in whole blocks "
        "(no preemption, no growth)",
        f"engine workspace {format_bytes(w.total_bytes)} = block table "
        f"{format_bytes(w.block_table_bytes)} + K/V gather buffers {format_bytes(w.gather_bytes)}"
        f" (allocated at start) + max(decode step of {limits.max_batch} rows "
        f"{format_bytes(w.decode_bytes)}, prefill chunk of {limits.prefill_chunk_tokens} tokens "
        f"{format_bytes(w.prefill_bytes)}): activations, the attention mask, the sampled rows' "
        "logits and sampling; capplan serve sets "
        "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True, so no allocator cache is counted",
    ]
