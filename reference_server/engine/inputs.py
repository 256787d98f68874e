"""The tensors of one forward over the pool: which rows, which tokens, which slots, which mask.

A decode forward feeds each row its last sampled token; a prefill forward feeds chunks of prompts,
right-aligned (left-padded) so that every row's last real token sits in the last column: then
`logits_to_keep=1` computes exactly the logits that are sampled, in every transformers release.
Rows read their keys a whole block at a time (the block table's row), so a row's keys are padded
to whole blocks: the mask hides what lies past each query's position. Padded queries write to
the pool's trash block and see their row's first key, so no attention row is ever empty (an
all-masked row would put NaN into the trash block, and from there into every masked read).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from capplan.estimate.memory_capplan import BLOCK_SIZE
from reference_server.engine.attention import packed_mask


@dataclass(frozen=True)
class Forward:
    """Everything one model call needs besides the model."""

    input_ids: torch.Tensor  # [rows, queries]
    positions: torch.Tensor  # [rows, queries]
    mask: torch.Tensor  # [rows, 1, groups x queries, blocks x BLOCK_SIZE], True = attend
    write_slots: torch.Tensor  # [rows x queries] pool token slots of the new K/V
    read_blocks: torch.Tensor  # [rows, blocks] pool blocks every row attends to, in order


@dataclass(frozen=True)
class Chunk:
    """Part of one prompt in a prefill forward."""

    row: int  # its row of the block table
    token_ids: list[int]
    start: int  # position of its first token

    @property
    def end(self) -> int:
        return self.start + len(self.token_ids)


def _slots(read_blocks: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """The pool token slot of each position ([rows, n]) of rows holding `read_blocks`."""
    blocks = read_blocks.gather(1, torch.div(positions, BLOCK_SIZE, rounding_mode="floor"))
    return blocks * BLOCK_SIZE + positions % BLOCK_SIZE


def decode_forward(
    table: torch.Tensor, rows: list[int], tokens: list[int], positions: list[int], groups: int
) -> Forward:
    """One token per row, at `positions`; row i attends to its keys 0..positions[i]."""
    device = table.device
    blocks = max(positions) // BLOCK_SIZE + 1
    pos = torch.tensor(positions, device=device)[:, None]
    read_blocks = table[:, :blocks].index_select(0, torch.tensor(rows, device=device))
    visible = torch.arange(blocks * BLOCK_SIZE, device=device)[None, :] <= pos
    return Forward(
        input_ids=torch.tensor(tokens, device=device)[:, None],
        positions=pos,
        mask=packed_mask(visible[:, None, :], groups),
        write_slots=_slots(read_blocks, pos).reshape(-1),
        read_blocks=read_blocks,
    )


def prefill_forward(table: torch.Tensor, chunks: list[Chunk], trash: int, groups: int) -> Forward:
    """Chunks right-aligned to the longest; query j of a row at position p sees keys 0..p."""
    device = table.device
    width = max(len(c.token_ids) for c in chunks)
    blocks = (max(c.end for c in chunks) - 1) // BLOCK_SIZE + 1
    ids = torch.zeros((len(chunks), width), dtype=torch.long)
    positions = torch.zeros((len(chunks), width), dtype=torch.long)
    real = torch.zeros((len(chunks), width), dtype=torch.bool)
    for i, chunk in enumerate(chunks):
        n = len(chunk.token_ids)
        ids[i, width - n :] = torch.tensor(chunk.token_ids)
        # padded columns take the row's first position: they see its keys up to there
        positions[i] = chunk.start + (torch.arange(width) - (width - n)).clamp(min=0)
        real[i, width - n :] = True
    positions, real = positions.to(device), real.to(device)
    row_index = torch.tensor([c.row for c in chunks], device=device)
    read_blocks = table[:, :blocks].index_select(0, row_index)
    slots = _slots(read_blocks, positions)
    write_slots = torch.where(real, slots, torch.full_like(slots, trash)).reshape(-1)
    keys = torch.arange(blocks * BLOCK_SIZE, device=device)
    visible = keys[None, None, :] <= positions[:, :, None]
    return Forward(
        input_ids=ids.to(device),
        positions=positions,
        mask=packed_mask(visible, groups),
        write_slots=write_slots,
        read_blocks=read_blocks,
    )


def decode_groups(lengths: list[int], key_budget: int) -> list[list[int]]:
    """Indices of the decoding rows split so that rows x longest keys stays within
    `key_budget` per forward (one group unless short and long contexts mix past it)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups: list[list[int]] = [[]]
    for i in order:
        current = groups[-1]
        if current and (len(current) + 1) * lengths[i] > key_budget:
            groups.append([])
        groups[-1].append(i)
    return groups


def plan_chunks(
    remaining: list[int], starts: list[int], token_budget: int, key_budget: int
) -> list[tuple[int, int]]:
    """(candidate index, tokens) for one prefill forward, in candidate order: each takes up to
    `token_budget` of its remaining prompt, and joins while the padded queries (rows x widest
    chunk) stay within `token_budget` and the padded keys (rows x longest context, in whole
    blocks) within `key_budget`. A long prompt fills a forward alone; short ones share one."""
    plan: list[tuple[int, int]] = []
    width = longest = 0
    for i, left in enumerate(remaining):
        n = min(left, token_budget)
        keys = -(-(starts[i] + n) // BLOCK_SIZE) * BLOCK_SIZE  # gathered in whole blocks
        wider, keys = max(width, n), max(longest, keys)
        rows = len(plan) + 1
        if plan and (rows * wider > token_budget or rows * keys > key_budget):
            break
        plan.append((i, n))
        width, longest = wider, keys
    return plan
