-- Fewer pages written per group commit (benchmarks/hub_relay.py: a commit of ~17
-- messages wrote ~100 pages, four of every five of them index leaves).
--
-- Receipts are unique by construction: one is appended only in the transaction that
-- turns its message's `delivered` from NULL into a time, and the store has one writer.
-- The index that enforced it again cost one leaf page per receipt.
DROP INDEX entries_receipt;

-- (msg_id, peer) rather than (peer, msg_id): message ids are UUIDv7, ordered by time,
-- so new keys land on the right edge of the index, one or two leaves for a whole
-- group commit, instead of one leaf per sender. The same pairs are unique, and the
-- duplicate lookup by (peer, msg_id) uses it as well.
DROP INDEX entries_msg_id;
CREATE UNIQUE INDEX entries_msg_id ON entries (msg_id, peer) WHERE kind = 'msg';
