"""Continuous batching: which sequences compute which tokens in the next step.

Each step takes every running sequence's next token (decode) and fills the rest of the token budget
with prefill chunks. A prompt is prefilled once into a *snapshot*; its samples fork from it (sharing
the prompt's full K/V pages by reference count, copying the last partial page and the Mamba state
slot). When pages run out, the youngest running sequence is preempted: its pages and slot are freed
and it is later recomputed from its tokens.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from h1r.engine.block_manager import OutOfPages, PageAllocator, SlotAllocator
from h1r.engine.cache import EngineCache
from h1r.engine.sequence import PrefillGroup, Sequence, Status


@dataclass
class ScheduledStep:
    decodes: list[Sequence] = field(default_factory=list)  # one token each
    prefills: list[tuple[Sequence, int]] = field(default_factory=list)  # (sequence, tokens in this chunk)

    @property
    def empty(self) -> bool:
        return not self.decodes and not self.prefills


class Scheduler:
    def __init__(self, cache: EngineCache, max_num_seqs: int, max_snapshots: int, max_num_batched_tokens: int):
        spec = cache.spec
        self.cache = cache
        self.page_size = spec.page_size
        self.pages = PageAllocator(spec.num_pages)
        self.slots = SlotAllocator(spec.num_slots)
        self.max_num_seqs, self.max_snapshots = max_num_seqs, max_snapshots
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()  # need a slot: new snapshots, preempted sequences
        self.prefilling: list[Sequence] = []  # have a slot, still computing their tokens
        self.running: list[Sequence] = []  # decoding
        self.snapshots: list[Sequence] = []  # prefilled prompts holding state for samples still to fork
        self.groups: dict[tuple[int, ...], PrefillGroup] = {}
        self.num_preemptions = 0
        self.num_forks = 0

    # ---- counting -------------------------------------------------------------------------------
    def _active(self, snapshot: bool) -> int:
        """Slots held by generating sequences (snapshot=False) or by prompt snapshots (True)."""
        n = sum(1 for s in self.prefilling if s.is_snapshot == snapshot)
        return n + (len(self.snapshots) if snapshot else len(self.running))

    @staticmethod
    def _solo(seq: Sequence) -> bool:
        """A snapshot whose one remaining sample will take over its slot: a sequence in the making."""
        g = seq.group
        return seq.is_snapshot and g is not None and len(g.pending) <= 1 and not g.pins

    def _holders(self) -> list[int]:
        """[generating sequences, prompts held for several samples] holding slots. A one-sample snapshot
        counts as a generating sequence (its sample takes over its slot), so a burst of single-sample
        requests is prefilled up to the token budget per step, not max_snapshots prompts at a time."""
        solo = sum(1 for s in self.prefilling + self.snapshots if self._solo(s))
        return [self._active(False) + solo, self._active(True) - solo]

    def has_work(self) -> bool:
        return bool(self.waiting or self.prefilling or self.running or
                    any(g.pending for g in self.groups.values()))

    # ---- resources ------------------------------------------------------------------------------
    def _ensure_pages(self, seq: Sequence, upto: int) -> bool:
        """Give `seq` pages covering positions [0, upto); False (nothing allocated) if they don't fit."""
        need = -(-upto // self.page_size) - len(seq.pages)
        if need <= 0:
            return True
        if self.pages.num_free < need:
            return False
        seq.pages.extend(self.pages.allocate() for _ in range(need))
        return True

    def free(self, seq: Sequence) -> None:
        for p in seq.pages:
            self.pages.release(p)
        seq.pages = []
        if seq.slot is not None:
            self.slots.release(seq.slot)
            seq.slot = None
        for q in (self.running, self.prefilling, self.snapshots):
            if seq in q:
                q.remove(seq)
        if seq in self.waiting:
            self.waiting.remove(seq)

    def retire(self, seq: Sequence) -> None:
        """Stop scheduling `seq` but keep its pages and slot (a launched step still uses them)."""
        for q in (self.running, self.prefilling, self.snapshots):
            if seq in q:
                q.remove(seq)

    def preempt(self, seq: Sequence) -> None:
        self.free(seq)
        seq.num_computed = 0
        seq.status = Status.WAITING
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    # ---- forks from a prefilled prompt ------------------------------------------------------------
    def fork(self, group: PrefillGroup, make_child) -> list[Sequence]:
        """Fork as many pending samples as fit; `make_child(request, index)` builds the Sequence."""
        out = []
        snap = group.snapshot
        while group.pending:
            request, index = group.pending[0]
            if request.aborted:
                group.pending.popleft()
                continue
            if self._active(False) >= self.max_num_seqs:
                break
            child = make_child(request, index)
            child.num_computed = snap.num_computed
            if len(group.pending) == 1 and not group.pins:  # the last sample takes over the snapshot's slot/pages
                child.slot, child.pages = snap.slot, snap.pages
                snap.slot, snap.pages = None, []
                self.snapshots.remove(snap)
            else:
                if self.slots.num_free == 0:
                    break
                partial = snap.num_computed % self.page_size
                full = snap.num_computed // self.page_size
                if partial and self.pages.num_free == 0:
                    break
                child.slot = self.slots.allocate()
                self.cache.copy_slot(snap.slot, child.slot)
                for p in snap.pages[:full]:
                    self.pages.share(p)
                child.pages = list(snap.pages[:full])
                if partial:
                    p = self.pages.allocate()
                    self.cache.copy_page(snap.pages[full], p)
                    child.pages.append(p)
            group.pending.popleft()
            child.status = Status.RUNNING
            self.running.append(child)
            self.num_forks += 1
            out.append(child)
        if not group.pending and not group.pins:
            if snap.slot is not None:  # every sample was aborted: drop the snapshot
                self.free(snap)
            self.groups.pop(group.key, None)
        return out

    # ---- one step --------------------------------------------------------------------------------
    def schedule(self) -> ScheduledStep:
        step = ScheduledStep()
        budget = self.max_num_batched_tokens
        # 1. decodes, oldest first; preempt the youngest when pages run out
        for seq in sorted(self.running, key=lambda s: s.seq_id):
            if seq not in self.running:
                continue  # preempted below
            if budget <= 0:
                break
            while not self._ensure_pages(seq, seq.num_computed + 1):
                victims = [s for s in self.running if s is not seq and s not in step.decodes]
                if not victims:
                    victims = [seq]
                victim = max(victims, key=lambda s: s.seq_id)
                self.preempt(victim)
                if victim is seq:
                    break
            if seq in self.running:
                step.decodes.append(seq)
                budget -= 1
        # 2. prefill chunks: sequences that hold a slot first, then new ones (FIFO)
        candidates = list(self.prefilling) + list(self.waiting)
        holders, limits = self._holders(), (self.max_num_seqs, self.max_snapshots)
        for seq in candidates:
            if budget <= 0:
                break
            kind = int(seq.is_snapshot and not self._solo(seq))  # index into holders / limits
            if seq.slot is None and (holders[kind] >= limits[kind] or self.slots.num_free == 0):
                continue
            room = (len(seq.pages) + self.pages.num_free) * self.page_size - seq.num_computed
            chunk = min(budget, seq.num_tokens - seq.num_computed, room)
            if chunk <= 0 or not self._ensure_pages(seq, seq.num_computed + chunk):
                continue
            if seq.slot is None:
                try:
                    seq.slot = self.slots.allocate()
                except OutOfPages:
                    continue
                self.cache.zero_slot(seq.slot)
                self.waiting.remove(seq)
                self.prefilling.append(seq)
                seq.status = Status.RUNNING
                holders[kind] += 1
            step.prefills.append((seq, chunk))
            budget -= chunk
        return step

    def finish_prefill(self, seq: Sequence) -> None:
        """`seq` has computed all its tokens: it decodes next, or (a snapshot) waits for forks."""
        if seq in self.prefilling:
            self.prefilling.remove(seq)
            (self.snapshots if seq.is_snapshot else self.running).append(seq)
