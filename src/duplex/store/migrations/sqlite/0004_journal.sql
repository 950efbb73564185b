-- The journal: one row per group commit whose changes are not yet in the tables.
--
-- A group commit makes its batch durable as ONE row here (its new entries, delivered
-- marks, cursors and the new state of the mailboxes it touched, as a MessagePack
-- blob). Its entries go into `entries` a little later, once most of their messages
-- are acked, so that a message is written once with its delivery time instead of
-- inserted, updated and answered by a receipt in three transactions; about once a
-- second the mailboxes and cursors are written and the rows that made redundant are
-- deleted. A store opened after a crash applies what is left before it serves, so
-- outside a running store this table is empty. duplex/store/sqlite.py says why and
-- gives the figures.
CREATE TABLE journal (
    id  INTEGER PRIMARY KEY,
    ops BLOB NOT NULL
);
