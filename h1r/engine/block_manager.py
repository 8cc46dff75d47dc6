"""Bookkeeping for the two kinds of cache memory: K/V pages (ref-counted, shared between the samples
of one prompt) and Mamba state slots (one per live sequence)."""

from __future__ import annotations

from collections import deque


class OutOfPages(Exception):
    pass


class PageAllocator:
    def __init__(self, num_pages: int):
        self.num_pages = num_pages
        self._free = deque(range(num_pages))
        self._refs = [0] * num_pages

    @property
    def num_free(self) -> int:
        return len(self._free)

    def allocate(self) -> int:
        if not self._free:
            raise OutOfPages
        p = self._free.popleft()
        self._refs[p] = 1
        return p

    def share(self, page: int) -> None:
        assert self._refs[page] > 0, f"sharing free page {page}"
        self._refs[page] += 1

    def release(self, page: int) -> None:
        assert self._refs[page] > 0, f"double free of page {page}"
        self._refs[page] -= 1
        if self._refs[page] == 0:
            self._free.append(page)

    def refcount(self, page: int) -> int:
        return self._refs[page]


class SlotAllocator:
    def __init__(self, num_slots: int):
        self.num_slots = num_slots
        self._free = deque(range(num_slots))
        self._used: set[int] = set()

    @property
    def num_free(self) -> int:
        return len(self._free)

    def allocate(self) -> int:
        if not self._free:
            raise OutOfPages
        s = self._free.popleft()
        self._used.add(s)
        return s

    def release(self, slot: int) -> None:
        assert slot in self._used, f"double free of slot {slot}"
        self._used.remove(slot)
        self._free.append(slot)
