"""From weighted examples to the micro-batches one rank runs in one optimiser step.

The run consumes one stream: epoch 0's order, then epoch 1's, ... (each a pure function of the seed and
the epoch, see weighting.epoch_order). Step s takes stream[s*B : (s+1)*B]; every rank computes the same
plan for the whole global batch (pack into rows, deal rows to ranks round-robin, cut into micro-batches),
so the data position is just the step number and resuming, or changing the number of ranks, replays
exactly the same examples. Every rank runs the same number of micro-batches (FSDP's collectives need it);
a rank with fewer rows runs empty ones (no supervised tokens, zero gradient).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from h1r.errors import DataError
from h1r.train.weighting import epoch_order


class DataStream:
    """The global order of example indices for the whole run, cut into global batches."""

    def __init__(self, weights, mode: str, seed: int, batch_size: int, epochs: int,
                 max_steps: int | None = None, shuffle: bool = True):
        self.batch_size = batch_size
        orders, total = [], 0
        while (len(orders) < epochs) if max_steps is None else (total < max_steps * batch_size):
            order = epoch_order(weights, mode, seed, len(orders), shuffle)
            if not len(order):
                raise DataError("no examples left after weighting (every weight is 0)")
            orders.append(order)
            total += len(order)
        self.epoch_sizes = [len(o) for o in orders]
        self.order = np.concatenate(orders)  # int64 [sum of epoch sizes]
        self.total_steps = len(self.order) // batch_size if max_steps is None else max_steps
        if self.total_steps < 1:
            raise DataError(f"one epoch has {len(self.order)} examples, fewer than batch_size={batch_size}")

    def step_items(self, step: int) -> np.ndarray:
        return self.order[step * self.batch_size: (step + 1) * self.batch_size]

    def epoch_at(self, step: int) -> float:
        """Fractional epoch reached after `step` steps (for logs)."""
        pos, done = step * self.batch_size, 0
        for e, n in enumerate(self.epoch_sizes):
            if pos < done + n:
                return e + (pos - done) / n
            done += n
        return float(len(self.epoch_sizes))

    def digest(self) -> str:
        return hashlib.sha256(self.order[: self.total_steps * self.batch_size].tobytes()).hexdigest()[:16]


def pack_first_fit(lengths: list[int], capacity: int) -> list[list[int]]:
    """First-fit decreasing: indices into `lengths` grouped into rows of at most `capacity` tokens."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        for r, free in enumerate(room):
            if lengths[i] <= free:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(capacity - lengths[i])
    return rows


def plan_rows(lengths: list[int], pack: bool, capacity: int) -> list[list[int]]:
    """Rows of one global batch (indices into `lengths`). Unpacked: one example per row, longest first,
    so that micro-batches hold similar lengths and pad little."""
    if pack:
        return pack_first_fit(lengths, capacity)
    return [[i] for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))]


def rank_micro_batches(rows: list, rank: int, world_size: int, micro_batch_size: int) -> list[list]:
    """This rank's rows (dealt round-robin) cut into micro-batches; the count is the same on every rank."""
    mine = rows[rank::world_size]
    per_rank = -(-len(rows) // world_size)
    n_micro = max(1, -(-per_rank // micro_batch_size))
    return [mine[i * micro_batch_size:(i + 1) * micro_batch_size] for i in range(n_micro)]


@dataclass
class MicroBatch:
    input_ids: torch.Tensor  # [R,T] long
    target_mask: torch.Tensor  # [R,T] bool: token t is supervised (predicted from position t-1)
    token_weight: torch.Tensor  # [R,T] float32: loss factor of token t (0 where not supervised)
    attention_mask: torch.Tensor | None  # [R,T] bool, False on right padding; None without padding
    reset: torch.Tensor | None  # [R,T] bool, True at the first token of each packed document
    n_tokens: int  # real (non-padding) tokens
    n_supervised: int

    def to(self, device) -> "MicroBatch":
        mv = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return MicroBatch(mv(self.input_ids), mv(self.target_mask), mv(self.token_weight),
                          mv(self.attention_mask), mv(self.reset), self.n_tokens, self.n_supervised)


def collate(rows: list[list], pad_id: int, packed: bool) -> MicroBatch:
    """rows: each a list of (input_ids int array, sup_start, sup_end, token weight), one per document.
    An empty list gives a one-token placeholder with nothing supervised."""
    if not rows:
        z = torch.zeros(1, 1, dtype=torch.bool)
        return MicroBatch(torch.full((1, 1), pad_id, dtype=torch.long), z, torch.zeros(1, 1), None, None, 0, 0)
    lens = [sum(len(d[0]) for d in row) for row in rows]
    R, T = len(rows), max(lens)
    ids = np.full((R, T), pad_id, dtype=np.int64)
    target = np.zeros((R, T), dtype=bool)
    weight = np.zeros((R, T), dtype=np.float32)
    reset = np.zeros((R, T), dtype=bool)
    for r, row in enumerate(rows):
        t = 0
        for doc_ids, s0, s1, w in row:
            n = len(doc_ids)
            ids[r, t:t + n] = doc_ids
            target[r, t + s0:t + s1] = True
            weight[r, t + s0:t + s1] = w
            reset[r, t] = True
            t += n
    valid = np.arange(T)[None, :] < np.asarray(lens)[:, None]
    return MicroBatch(
        input_ids=torch.from_numpy(ids), target_mask=torch.from_numpy(target), token_weight=torch.from_numpy(weight),
        attention_mask=None if valid.all() else torch.from_numpy(valid),
        reset=torch.from_numpy(reset) if packed else None,
        n_tokens=int(sum(lens)), n_supervised=int(target.sum()))
