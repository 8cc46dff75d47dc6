"""Model runners: turn a scheduled StepBatch into logits for the rows that sample.

ReferenceRunner runs the plain model through EngineContext (the PyTorch reference, any device).
FastRunner runs FastFalconH1 (folded weights, Triton kernels) and replays CUDA graphs for pure-decode
steps: one graph per batch-size bucket, inputs copied into static buffers, padding rows pointed at a
scratch slot and a scratch page so they never touch a live sequence.
"""

from __future__ import annotations

import dataclasses

import torch

from h1r.engine.context import EngineContext, StepBatch


class ReferenceRunner:
    def __init__(self, model, cache):
        self.model, self.cache = model, cache

    def run(self, batch: StepBatch, rows: torch.Tensor) -> torch.Tensor:
        ctx = EngineContext(self.cache, batch)
        h = self.model.hidden_states(batch.input_ids[None], ctx=ctx)[0]
        return self.model.compute_logits(h[rows]).float()


def graph_buckets(max_bs: int) -> list[int]:
    out = [b for b in (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256) if b < max_bs]
    return out + [max_bs]


class FastRunner:
    def __init__(self, fast, cache, max_num_seqs: int, max_model_len: int, scratch_slot: int, scratch_page: int,
                 use_graphs: bool = True):
        self.fast, self.cache = fast, cache
        self.page_size = cache.spec.page_size
        self.max_pages = -(-max_model_len // self.page_size)
        self.max_model_len = max_model_len
        self.scratch_slot, self.scratch_page = scratch_slot, scratch_page
        self.use_graphs = use_graphs and fast.device.type == "cuda"
        self.graphs: dict[int, tuple] = {}
        self.max_bs = max_num_seqs
        if fast.device.type == "cuda":
            self._warmup_prefill()
        if self.use_graphs:
            self._capture_all()

    # ---- eager ----------------------------------------------------------------------------------------
    def _plan(self, batch: StepBatch):
        from h1r.model.fast import PrefillPlan

        if not batch.prefills:
            return None
        dev = batch.input_ids.device
        cu, ctx_cu, ctx_idx = [0], [0], []
        ps = self.page_size
        for seg in batch.prefills:
            cu.append(cu[-1] + seg.length)
            ctx = seg.num_cached + seg.length
            pos = torch.arange(ctx, device=dev)
            ctx_idx.append(seg.pages[pos // ps] * ps + pos % ps)
            ctx_cu.append(ctx_cu[-1] + ctx)
        return PrefillPlan(cu=torch.tensor(cu, device=dev), cu_host=cu,
                           slots=torch.tensor([s.slot for s in batch.prefills], device=dev),
                           cached_host=[s.num_cached for s in batch.prefills], ctx_index=torch.cat(ctx_idx),
                           ctx_cu_host=ctx_cu)

    def _splits(self, bs: int) -> int:
        if not self.fast.use_kernels:  # reference path: no triton needed (CPU CI has none)
            return 1
        from h1r.model.kernels.paged_attention import num_splits_for

        return num_splits_for(bs, self.fast.Hkv, self.max_model_len)

    def run(self, batch: StepBatch, rows: torch.Tensor) -> torch.Tensor:
        S = batch.num_decode
        if not batch.prefills and S in self._bucket_of:
            return self._replay(batch)
        if S and S in self._bucket_of:
            batch, rows = self._pad_decode(batch, rows)
            S = batch.num_decode
        h = self.fast.hidden(batch.input_ids, batch.positions, batch.kv_index, self.cache, batch.decode_slots,
                             batch.decode_pages, batch.decode_context, self._plan(batch),
                             self._splits(self._bucket_of.get(S, max(S, 1))))  # a captured bucket's split count:
        # SPLITS is a Triton constexpr, so an eager step with an odd decode count would otherwise compile anew
        return self.fast.logits(h[rows])

    def _padding_row(self) -> dict[str, int]:
        """What a padding decode row holds: token 0 at position 0, its K/V and state in the scratch page and
        slot, context 1, so it never touches a live sequence (graph buckets and padded mixed steps)."""
        return {"ids": 0, "pos": 0, "kv": self.scratch_page * self.page_size, "slots": self.scratch_slot,
                "table": self.scratch_page, "ctx": 1}

    def _pad_decode(self, batch: StepBatch, rows: torch.Tensor) -> tuple[StepBatch, torch.Tensor]:
        """A mixed step's decode rows padded to their graph bucket (scratch slot and page, context 1) and its page
        table widened to the graphs' width. The decode kernels then see the row count, table stride and split
        count the capture compiled: Triton specialises integer arguments (== 1, multiple of 16), so 31, 47 or
        63 decode rows beside a prefill chunk otherwise compiled a new variant mid-run, 1-2 s each on an H200
        (a burst of 64 x 1k prompts, bench/results/decode_gpu_2026-12-04b_unpadded.json). Costs bucket - S
        extra rows."""
        S = batch.num_decode
        pad = self._bucket_of[S] - S
        fill = self._padding_row()
        table = batch.decode_pages.new_full((S + pad, self.max_pages), fill["table"])
        table[:S, :batch.decode_pages.shape[1]] = batch.decode_pages

        def widen(t, key):  # the decode part is the first S entries of the flat token row
            return torch.cat([t[:S], t.new_full((pad,), fill[key]), t[S:]])

        padded = StepBatch(widen(batch.input_ids, "ids"), widen(batch.positions, "pos"), widen(batch.kv_index, "kv"),
                           widen(batch.decode_slots, "slots"), table, widen(batch.decode_context, "ctx"),
                           [dataclasses.replace(seg, start=seg.start + pad) for seg in batch.prefills])
        return padded, torch.where(rows >= S, rows + pad, rows)

    def _warmup_prefill(self):
        """Compile and autotune the prefill kernels now (a fresh chunk, then one continuing from cached
        tokens), on the scratch slot and page, so the first real request does not pay for it."""
        from h1r.engine.context import PrefillSegment

        dev = self.fast.device
        half = max(1, self.page_size // 2)
        empty = torch.zeros(0, dtype=torch.long, device=dev)
        # (cached, new): odd and 16-aligned token counts, since Triton specialises integer arguments on
        # divisibility by 16; positions past the scratch page wrap onto it (its contents are garbage anyway)
        for cached, n in ((0, half), (half, half), (0, 64)):
            pos = torch.arange(cached, cached + n, device=dev)
            pages = torch.full((-(-(cached + n) // self.page_size),), self.scratch_page, device=dev)
            seg = PrefillSegment(0, n, self.scratch_slot, pages, cached)
            batch = StepBatch(torch.zeros(n, dtype=torch.long, device=dev), pos,
                              self.scratch_page * self.page_size + pos % self.page_size, empty, empty.view(0, 1), empty,
                              [seg])
            self.fast.logits(self.fast.hidden(batch.input_ids, batch.positions, batch.kv_index, self.cache, empty,
                                              empty.view(0, 1), empty, self._plan(batch)))
        torch.cuda.synchronize()

    # ---- CUDA graphs ----------------------------------------------------------------------------------
    @property
    def _bucket_of(self) -> dict[int, int]:
        if not self.graphs:
            return {}
        if not hasattr(self, "_bucket_map"):
            sizes = sorted(self.graphs)
            self._bucket_map = {n: next(b for b in sizes if b >= n) for n in range(1, sizes[-1] + 1)}
        return self._bucket_map

    def _capture_all(self):
        dev = self.fast.device
        B = self.max_bs
        self.buf = {key: torch.full((B, self.max_pages) if key == "table" else (B,), value, dtype=torch.long,
                                    device=dev) for key, value in self._padding_row().items()}
        pool = None
        torch.cuda.synchronize()
        for bs in sorted(graph_buckets(B), reverse=True):
            args = self._graph_args(bs)
            for _ in range(2):  # warm-up: Triton compiles, cuBLAS picks algorithms
                self.fast.logits(self.fast.hidden(*args))
            torch.cuda.synchronize()
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g, pool=pool):
                out = self.fast.logits(self.fast.hidden(*args))
            pool = g.pool()
            self.graphs[bs] = (g, out)
        torch.cuda.synchronize()

    def _graph_args(self, bs):
        b = self.buf
        return (b["ids"][:bs], b["pos"][:bs], b["kv"][:bs], self.cache, b["slots"][:bs], b["table"][:bs],
                b["ctx"][:bs], None, self._splits(bs))

    def _replay(self, batch: StepBatch) -> torch.Tensor:
        S = batch.num_decode
        bs = self._bucket_of[S]
        b = self.buf
        b["ids"][:S].copy_(batch.input_ids, non_blocking=True)
        b["pos"][:S].copy_(batch.positions, non_blocking=True)
        b["kv"][:S].copy_(batch.kv_index, non_blocking=True)
        b["slots"][:S].copy_(batch.decode_slots, non_blocking=True)
        w = batch.decode_pages.shape[1]
        b["table"][:S, :w].copy_(batch.decode_pages, non_blocking=True)
        b["ctx"][:S].copy_(batch.decode_context, non_blocking=True)
        if bs > S:
            for key, value in self._padding_row().items():
                b[key][S:bs].fill_(value)
        g, out = self.graphs[bs]
        g.replay()
        return out[:S]
