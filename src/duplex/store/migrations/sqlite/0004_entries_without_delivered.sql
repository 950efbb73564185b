-- Delivery is a fact about a mailbox, not about each entry: every message at or below
-- mailboxes.acked_seq is delivered and none above it is (an invariant the store has
-- always kept), and the time it was delivered is the ts of its receipt. Writing it
-- into each message's row as well cost an UPDATE per message acked after its row was
-- written, or a lookup per row when the journal is applied (duplex/store/sqlite.py).
ALTER TABLE entries DROP COLUMN delivered;
