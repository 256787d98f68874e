"""The tensor allocations and frees of transformers' eager `generate()` for a Llama/Qwen-style
decoder, written out from the model code, with no torch.

The sequence was transcribed from `trace_generate.py` traces of transformers 5.17.0
(`Qwen3ForCausalLM`, sdpa attention, DynamicCache, greedy search with an eos token) and is
checked event by event against them by `check_hf_events.py`. Layer structure: RMSNorm in fp32
(`x.to(float32)`, pow, mean, +eps, rsqrt, mul, `.to(dtype)`, weight *), q/k/v projections,
optional per-head q/k RMSNorm (Qwen3), rotary embedding (`q*cos + rotate_half(q)*sin`),
`DynamicLayer.update` = `torch.cat` of keys and values (the old cache tensors are freed right
after each cat), SDPA as the CUDA flash kernel allocates it (output + fp32 logsumexp), o_proj,
residual add, RMSNorm, gated MLP (gate, silu, up, mul, down), residual add.

`generate()` around it: `logits_to_keep=1` in the prefill, `next_token_logits` copied to fp32,
the min-length logits processors (each: arange(V) int64, isin, clone and where of the (B, V)
fp32 scores), argmax, eos/pad bookkeeping, `torch.cat` of input_ids / attention_mask /
position_ids (int64, (B, L)), MaxLength + Eos stopping criteria.

Events: ("a", key, nbytes, kind) / ("f", key) (and, with decode_activations=False, ("kv", nbytes):
see iter_generate_events); a key is an int; kind is "setup" (before the
first forward), "act" (a forward's activations: embedding, rotary, layers, final norm),
"kv" (a DynamicCache tensor) or "gen" (the logits and generate()'s own tensors).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from capplan.estimate.shape import DecoderShape


@dataclass(frozen=True)
class GenerateConfig:
    batch: int
    prompt: int
    new_tokens: int  # generate(max_new_tokens=...) and the run produces exactly this many
    min_length_processors: int = 2  # memtruth: min_new_tokens=M -> MinLength + MinNewTokensLength
    eos: bool = True  # an eos_token_id is set (EosTokenCriteria, pad bookkeeping)


class _Emitter:
    def __init__(self, min_bytes: int = 0) -> None:
        self.events: list[tuple] = []
        self._n = 0
        self.kind = (
            "setup"  # what the allocation is: setup | act | kv | gen (see iter_generate_events)
        )
        self.min_bytes = min_bytes  # drop allocations smaller than this (and their frees)
        self._dropped: set[int] = set()

    def a(self, nbytes: int) -> int:
        self._n += 1
        if nbytes < self.min_bytes:
            self._dropped.add(self._n)
        else:
            self.events.append(("a", self._n, nbytes, self.kind))
        return self._n

    def f(self, key: int) -> None:
        if key in self._dropped:
            self._dropped.discard(key)
        else:
            self.events.append(("f", key))


def _rmsnorm(em: _Emitter, rows: int, width: int, elem: int) -> int:
    """Qwen3RMSNorm / LlamaRMSNorm on `rows` x `width`; returns the output key."""
    c32 = em.a(rows * width * 4)
    pw = em.a(rows * width * 4)
    mean = em.a(rows * 4)
    em.f(pw)
    add = em.a(rows * 4)
    rs = em.a(rows * 4)
    em.f(add)
    mul = em.a(rows * width * 4)
    em.f(rs)
    em.f(c32)
    cbf = em.a(rows * width * elem)
    out = em.a(rows * width * elem)
    em.f(cbf)
    em.f(mul)
    em.f(mean)
    return out


def _rope(em: _Emitter, tokens: int, heads: int, d: int, elem: int) -> int:
    """q*cos + rotate_half(q)*sin; returns the output key."""
    m1 = em.a(tokens * heads * d * elem)
    neg = em.a(tokens * heads * (d // 2) * elem)
    cat = em.a(tokens * heads * d * elem)
    em.f(neg)
    m2 = em.a(tokens * heads * d * elem)
    em.f(cat)
    out = em.a(tokens * heads * d * elem)
    em.f(m1)
    em.f(m2)
    return out


def generate_events(s: DecoderShape, g: GenerateConfig) -> list[tuple]:
    """All events of one generate() call (exactly g.new_tokens tokens, g.new_tokens >= 2)."""
    return list(iter_generate_events(s, g))


def iter_generate_events(
    s: DecoderShape,
    g: GenerateConfig,
    *,
    decode_activations: bool = True,
    stride: int = 1,
    min_bytes: int = 0,
) -> Iterator[tuple]:
    """Yield the events of one generate() call.

    The defaults give the exact sequence. For a fast estimate:
    * decode_activations=False drops the per-layer activations of the decode forwards (they are
      allocated and freed within one layer, between two cache updates, and -- checked with
      the full replay -- do not change what the allocator does with the cache tensors while
      they fit in the cached blocks; the prefill is always emitted in full);
    * stride > 1 emits only every stride-th decode step (2, 2+stride, ..., and the last one),
      each with its real sizes, as if the cache grew `stride` tokens per step (an approximation);
    * min_bytes drops allocations smaller than that (and their frees).
    """
    em = _Emitter(min_bytes)
    b, p, m = g.batch, g.prompt, g.new_tokens
    e, h, d, hq, hk, v = s.act_bytes, s.hidden, s.head_dim, s.heads, s.kv_heads, s.vocab
    if m < 2:
        raise ValueError("new_tokens >= 2")
    if stride < 1:
        raise ValueError("stride >= 1")

    # ---- setup: special tokens, pad checks, position_ids from the attention mask
    first = None
    if g.eos:  # eos/pad tensors on the device, "eos < 0" / "pad in eos" checks
        first = em.a(8)
        for _ in range(2):
            x, y = em.a(1), em.a(1)
            em.f(x)
            em.f(y)
    if b > 1:
        x, y = em.a(b), em.a(1)
        em.f(x)
        em.f(y)
    cs = em.a(b * p * 8)
    sub = em.a(b * p * 8)
    em.f(cs)
    eq = em.a(b * p)
    pos0 = em.a(b * p * 8)  # masked_fill: position_ids, kept to the end
    em.f(eq)
    em.f(sub)
    unfinished = em.a(b * 8)
    in_clone = em.a(b * p * 8)
    yield from em.events
    em.events.clear()

    kv: list[tuple[int, int]] = []
    st: dict[str, int] = {}
    steps = [1, *range(2, m, stride), m]
    for step in steps:
        prefill = step == 1
        n = p if prefill else 1  # tokens in this forward
        past = 0 if prefill else p + step - 2  # cache length before it
        rows = b * n
        em.kind = "act"
        # ---- model forward: embedding, mask check, rotary cos/sin
        emb = em.a(rows * h * e)
        mk = em.a(b * (past + n))
        x, y = em.a(8), em.a(1)
        em.f(x)
        em.f(y)
        em.f(mk)
        pf = em.a(rows * 4)
        bmm = em.a(b * (d // 2) * n * 4)
        cat = em.a(rows * d * 4)
        cos = em.a(rows * d * 4)
        mc = em.a(rows * d * 4)
        em.f(cos)
        sin = em.a(rows * d * 4)
        ms = em.a(rows * d * 4)
        em.f(sin)
        cosb = em.a(rows * d * e)
        sinb = em.a(rows * d * e)
        for k in (pf, bmm, cat, mc, ms):
            em.f(k)
        hidden = emb
        if not prefill and not decode_activations:  # only the cache updates of each layer
            # one ("kv", nbytes) event: for each layer, K then V are reallocated at nbytes and
            # the old tensor is freed right after its successor exists; the tensors keep the
            # keys of their prefill allocations (see replay_kv_events)
            em.events.append(("kv", b * hk * (past + n) * d * e))
        for layer in range(s.layers if (prefill or decode_activations) else 0):
            xin = hidden
            n1 = _rmsnorm(em, rows, h, e)
            q = em.a(rows * hq * d * e)
            if s.qk_norm:
                qn = _rmsnorm(em, rows * hq, d, e)
                em.f(q)
                k = em.a(rows * hk * d * e)
                kn = _rmsnorm(em, rows * hk, d, e)
                em.f(k)
            else:
                qn = q
                k = kn = em.a(rows * hk * d * e)
            vv = em.a(rows * hk * d * e)
            qe = _rope(em, rows, hq, d, e)
            ke = _rope(em, rows, hk, d, e)
            em.f(qn)
            em.f(kn)
            kv_bytes = b * hk * (past + n) * d * e
            em.kind = "kv"
            nk = em.a(kv_bytes)
            if not prefill:
                em.f(kv[layer][0])
            nv = em.a(kv_bytes)
            em.kind = "act"
            if not prefill:
                em.f(kv[layer][1])
                kv[layer] = (nk, nv)
            else:
                kv.append((nk, nv))
            em.f(ke)
            em.f(vv)
            out = em.a(rows * hq * d * e)  # flash-attention output
            lse = em.a(b * hq * n * 4)
            em.f(lse)
            o = em.a(rows * h * e)
            em.f(out)
            em.f(qe)
            em.f(n1)
            h1 = em.a(rows * h * e)
            em.f(o)
            n2 = _rmsnorm(em, rows, h, e)
            gate = em.a(rows * s.intermediate * e)
            act = em.a(rows * s.intermediate * e)
            em.f(gate)
            up = em.a(rows * s.intermediate * e)
            mul = em.a(rows * s.intermediate * e)
            em.f(act)
            em.f(up)
            down = em.a(rows * h * e)
            em.f(mul)
            em.f(n2)
            h2 = em.a(rows * h * e)
            em.f(down)
            em.f(h1)
            if layer > 0:
                em.f(xin)
            hidden = h2
        fn = _rmsnorm(em, rows, h, e)
        if hidden != emb:
            em.f(hidden)
        em.f(emb)
        em.f(sinb)
        em.f(cosb)
        em.kind = "gen"
        logits = em.a(b * v * e)  # logits_to_keep=1
        em.f(fn)
        # ---- generate(): kwargs update, logits processors, token selection, stopping
        if prefill:
            em.f(in_clone)
        ar = em.a(8)
        a1 = em.a(b * 8)
        em.f(ar)
        a2 = em.a(b * 8)
        em.f(a1)
        pos = em.a(b * (past + n + 1) * 8)
        em.f(a2)
        ones = em.a(b * 8)
        mask = em.a(b * (past + n + 1) * 8)
        em.f(ones)
        if not prefill:
            em.f(st["pos"])
        ntl = em.a(b * v * 4)
        if not prefill:
            em.f(st["ntl"])
        scores = None
        for i in range(g.min_length_processors):
            if i == 0:
                ar_v = em.a(v * 8)
                isin = em.a(v)
                cl = em.a(b * v * 4)
                sc = em.a(4)
                wh = em.a(b * v * 4)
                em.f(sc)
                em.f(cl)
                em.f(ar_v)
                em.f(isin)
            else:
                cl = em.a(b * v * 4)
                ar_v = em.a(v * 8)
                isin = em.a(v)
                sc = em.a(4)
                wh = em.a(b * v * 4)
                em.f(sc)
                em.f(cl)
                em.f(ar_v)
                em.f(isin)
                assert scores is not None
                em.f(scores)
            scores = wh
        if not prefill and "scores" in st:
            em.f(st["scores"])
        am = em.a(b * 8)
        if not prefill:
            em.f(st["tokens"])
        if g.eos:
            t1 = em.a(b * 8)
            t2 = em.a(b * 8)
            t3 = em.a(b * 8)
            em.f(t2)
            tokens = em.a(b * 8)
            em.f(t1)
            em.f(t3)
            em.f(am)
        else:
            tokens = am
        ids = em.a(b * (p + step) * 8)
        if not prefill:
            em.f(st["ids"])
        f1, f2 = em.a(b), em.a(b)
        o1 = em.a(b)
        em.f(f2)
        em.f(f1)
        if g.eos:
            ii = em.a(b)
            an = em.a(b)
            em.f(ii)
            o2 = em.a(b)
            em.f(an)
            em.f(o1)
            o1 = o2
        nt = em.a(b)
        em.f(o1)
        unf = em.a(b * 8)
        em.f(nt)
        em.f(unfinished)
        unfinished = unf
        x, y = em.a(8), em.a(1)
        em.f(x)
        em.f(y)
        em.f(logits)
        if step < m:
            c1, c2 = em.a(b * 8), em.a(b * 8)
            if not prefill:
                em.f(st["c1"])
                em.f(st["c2"])
                em.f(st["mask"])
            st.update(c1=c1, c2=c2)
        else:  # loop ends; generate() returns
            em.f(mask)
            em.f(pos)
            em.f(unfinished)
            em.f(st["c1"])
            em.f(st["c2"])
            em.f(st["mask"])
            em.f(ntl)
            if scores is not None:
                em.f(scores)
            em.f(tokens)
            em.f(pos0)
            if first is not None:
                em.f(first)
        st.update(pos=pos, mask=mask, ntl=ntl, tokens=tokens, ids=ids)
        if scores is not None:
            st["scores"] = scores
        yield from em.events
        em.events.clear()
    # ---- the caller drops the output: sequences, then the cache (last layer first)
    em.f(st["ids"])
    for nk, nv in reversed(kv):
        em.f(nk)
        em.f(nv)
    yield from em.events


def replay_kv_events(events, malloc, free) -> int:
    """Replay events on an allocator's malloc/free (handles are whatever malloc returns).

    A ("kv", nbytes) event reallocates every cache tensor (K0, V0, K1, V1, ... -- the "kv"
    allocations of the prefill, in order), each one allocated before its predecessor is freed.
    Returns the number of events replayed (a "kv" event counts as its 2 x n_tensors).
    """
    handles: dict = {}
    cache: list = []  # keys of the cache tensors, in allocation order
    n = 0
    for ev in events:
        op = ev[0]
        if op == "a":
            handles[ev[1]] = malloc(ev[2])
            if ev[3] == "kv":
                cache.append(ev[1])
            n += 1
        elif op == "f":
            free(handles.pop(ev[1]))
            n += 1
        else:
            nbytes = ev[1]
            for key in cache:
                old = handles[key]
                handles[key] = malloc(nbytes)
                free(old)
            n += 2 * len(cache)
    return n
