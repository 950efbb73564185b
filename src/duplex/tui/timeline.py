"""One conversation as an indexable sequence backed by the local SQLite store.

The list of a conversation's keys (``(ts, n)``, 16 bytes a message) is held in
memory; the messages themselves are read from SQLite in blocks of
:data:`BLOCK` when the screen needs them and kept in a bounded cache. So opening a
conversation of 100,000 messages costs one index scan, and scrolling costs a few
primary-key lookups per screen, whatever the length.
"""

from __future__ import annotations

import array
import bisect
import collections

from duplex.client.local import LocalStore, StoredLine

__all__ = ["BLOCK", "CACHE_BLOCKS", "Timeline"]

BLOCK = 128
"""Messages read from SQLite at once (one ``IN`` query of primary keys)."""

CACHE_BLOCKS = 32
"""Blocks kept in memory (4,096 messages); the least recently used goes first."""


class Timeline:
    """The messages with one peer, oldest first, fetched lazily.

    Args:
        store: the client's local store.
        peer: the other side of the conversation.
    """

    def __init__(self, store: LocalStore, peer: str) -> None:
        self.store = store
        self.peer = peer
        self.ts: array.array[int] = array.array("q")
        self.ns: array.array[int] = array.array("q")
        self._blocks: collections.OrderedDict[int, list[StoredLine]] = collections.OrderedDict()
        self.reload()

    def reload(self) -> None:
        """Reads the keys again (after an import of older history)."""
        self.ts, self.ns = self.store.timeline_keys(self.peer)
        self._blocks.clear()

    def __len__(self) -> int:
        return len(self.ns)

    def key(self, index: int) -> tuple[int, int]:
        """Returns the ``(ts, n)`` key of message ``index``."""
        return (self.ts[index], self.ns[index])

    def __getitem__(self, index: int) -> StoredLine:
        """Returns message ``index`` (0 is the oldest), reading its block if needed.

        Raises:
            IndexError: no such message.
        """
        if not 0 <= index < len(self.ns):
            raise IndexError(index)
        number = index // BLOCK
        block = self._blocks.get(number)
        if block is None or len(block) <= index % BLOCK:
            first = number * BLOCK
            block = self.store.lines(list(self.ns[first : first + BLOCK]))
            self._blocks[number] = block
            while len(self._blocks) > CACHE_BLOCKS:
                self._blocks.popitem(last=False)
        else:
            self._blocks.move_to_end(number)
        line = block[index % BLOCK]
        if line.n != self.ns[index]:  # a row vanished under us: read it again next time
            self._blocks.pop(number, None)
            raise IndexError(index)
        return line

    def index_of(self, key: tuple[int, int]) -> int:
        """Returns the index of ``key``, or where it would go (the first later message)."""
        ts, n = key
        i = bisect.bisect_left(self.ts, ts)
        while i < len(self.ts) and self.ts[i] == ts and self.ns[i] < n:
            i += 1
        return i

    def find(self, key: tuple[int, int]) -> int | None:
        """Returns the index of the message with ``key``, or None."""
        i = self.index_of(key)
        if i < len(self.ns) and self.ts[i] == key[0] and self.ns[i] == key[1]:
            return i
        return None

    def add(self, line: StoredLine) -> int:
        """Adds a new message (usually at the end); returns its index."""
        existing = self.find(line.key)
        if existing is not None:
            self.update(line)
            return existing
        i = self.index_of(line.key)
        self.ts.insert(i, line.ts)
        self.ns.insert(i, line.n)
        if i == len(self.ns) - 1:
            number = i // BLOCK
            block = self._blocks.get(number)
            if block is not None and len(block) == i % BLOCK:
                block.append(line)
            else:
                self._blocks.pop(number, None)
        else:  # inserted in the middle: every later block shifted
            for number in [b for b in self._blocks if b >= i // BLOCK]:
                del self._blocks[number]
        return i

    def update(self, line: StoredLine) -> None:
        """Replaces the cached copy of ``line`` (its state or path changed)."""
        i = self.find(line.key)
        if i is None:
            return
        block = self._blocks.get(i // BLOCK)
        if block is not None and len(block) > i % BLOCK:
            block[i % BLOCK] = line

    @property
    def cached_blocks(self) -> int:
        """How many blocks are in memory (for tests and the benchmark)."""
        return len(self._blocks)
