"""Slot numbers: handed out lowest-free-first, never one that a live sandbox holds.

The allocator keeps no file of its own: the sandbox records are the truth.
At startup the daemon builds it from the slots its live sandbox records
name, so a restarted daemon can never hand out a slot still in use.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable

from wrennd.network.errors import SlotError, SlotsExhausted


class SlotAllocator:
    def __init__(self, capacity: int, live: Iterable[int] = ()) -> None:
        if capacity < 1:
            raise ValueError(f"slot capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self._used: set[int] = set()
        for slot in live:
            if isinstance(slot, bool) or not isinstance(slot, int) or not 1 <= slot <= capacity:
                raise SlotError(f"live slot {slot!r} is outside 1..{capacity}")
            if slot in self._used:
                raise SlotError(f"live slot {slot} is claimed by two sandboxes")
            self._used.add(slot)
        # Free slots below the high-water mark, in a heap; above it all are free.
        self._high = max(self._used, default=0)
        self._free = [s for s in range(1, self._high) if s not in self._used]
        heapq.heapify(self._free)

    @property
    def in_use(self) -> frozenset[int]:
        return frozenset(self._used)

    def __len__(self) -> int:
        return len(self._used)

    def allocate(self) -> int:
        """The lowest free slot; SlotsExhausted when all ``capacity`` are taken."""
        if self._free:
            slot = heapq.heappop(self._free)
        elif self._high < self.capacity:
            self._high += 1
            slot = self._high
        else:
            raise SlotsExhausted(self.capacity)
        self._used.add(slot)
        return slot

    def release(self, slot: int) -> None:
        if slot not in self._used:
            raise SlotError(f"slot {slot!r} is not allocated")
        self._used.remove(slot)
        heapq.heappush(self._free, slot)
