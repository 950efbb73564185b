-- One index fewer on the hot path. Every stored message inserted a key into
-- entries_history (mailbox, peer, ts): a leaf per recipient in every group commit, a
-- third of the pages a commit wrote. History pages are read rarely (a new device
-- asks for a conversation's past; clients keep their own history), so they now walk
-- the mailbox backwards on the (mailbox, seq) index, newest first, and stop once the
-- page is full: fast for a conversation that is going on, a scan of the mailbox
-- since its last message for one long quiet. Measured with benchmarks/hub_relay.py
-- --rate 13500: p50 47-62 ms -> 32-38 ms, p99 98-118 ms -> 54-81 ms; WAL bytes per
-- relayed message 11.9 KB -> 7.5 KB.
DROP INDEX entries_history;
