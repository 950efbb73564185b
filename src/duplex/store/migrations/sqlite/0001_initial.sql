-- duplex store, SQLite, version 1: accounts, tokens, contacts, mailboxes.
--
-- Applied once by duplex.store.migrate inside one transaction, which also records
-- the version in schema_version. Never edit a released migration: add 0002_*.sql.

-- Small facts about the database itself. 'store_id' names this database (the
-- high-water-mark file beside it records which database it belongs to); 'commits'
-- counts write transactions, the figure the high-water mark is compared with.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value
) WITHOUT ROWID;

INSERT INTO meta (key, value) VALUES ('store_id', lower(hex(randomblob(16))));
INSERT INTO meta (key, value) VALUES ('commits', 0);

CREATE TABLE users (
    name          TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    created       INTEGER NOT NULL
) WITHOUT ROWID;

-- Only the hash of a session token is kept: a stolen database file yields no token.
CREATE TABLE tokens (
    token_hash BLOB PRIMARY KEY,
    user       TEXT NOT NULL REFERENCES users (name) ON DELETE CASCADE,
    device     TEXT NOT NULL,
    expires    INTEGER NOT NULL
) WITHOUT ROWID;

CREATE INDEX tokens_by_user ON tokens (user);

CREATE TABLE contacts (
    owner   TEXT NOT NULL REFERENCES users (name) ON DELETE CASCADE,
    contact TEXT NOT NULL REFERENCES users (name) ON DELETE CASCADE,
    PRIMARY KEY (owner, contact)
) WITHOUT ROWID;

-- watchers(): who has this user as a contact.
CREATE INDEX contacts_by_contact ON contacts (contact, owner);

-- One row per mailbox, kept apart from users so that a message to a name without an
-- account still gets a mailbox (the hub decides who may be written to, not the
-- store), and so that the hot row updated by every write is not the account row.
--   last_seq   the highest sequence number given out: the next entry gets last_seq + 1,
--              in the same transaction that inserts it, so sequences have no gaps;
--   acked_seq  the highest sequence any device of the user has acked: every message
--              at or below it is delivered;
--   messages, delivered  counts for stats(), kept here rather than counted.
CREATE TABLE mailboxes (
    mailbox   TEXT PRIMARY KEY,
    last_seq  INTEGER NOT NULL DEFAULT 0,
    acked_seq INTEGER NOT NULL DEFAULT 0,
    messages  INTEGER NOT NULL DEFAULT 0,
    delivered INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

-- The entries of every mailbox. A rowid table rather than WITHOUT ROWID because a
-- body may be up to a frame (1 MiB), and SQLite's clustered tables are meant for
-- small rows.
--   kind 'msg':     a message to `mailbox` from `peer`; `delivered` is when the
--                   recipient acked it (ms), NULL before;
--   kind 'receipt': the message `msg_id` that `mailbox` sent to `peer` was delivered.
CREATE TABLE entries (
    id        INTEGER PRIMARY KEY,
    mailbox   TEXT NOT NULL,
    seq       INTEGER NOT NULL,
    kind      TEXT NOT NULL CHECK (kind IN ('msg', 'receipt')),
    peer      TEXT NOT NULL,
    msg_id    BLOB NOT NULL CHECK (length(msg_id) = 16),
    body      TEXT NOT NULL,
    ts        INTEGER NOT NULL,
    delivered INTEGER,
    UNIQUE (mailbox, seq)
);

-- Idempotent sends: (sender, msg_id) is stored once.
CREATE UNIQUE INDEX entries_msg_id ON entries (peer, msg_id) WHERE kind = 'msg';
-- One receipt per message, whatever happens to the acks.
CREATE UNIQUE INDEX entries_receipt ON entries (mailbox, msg_id) WHERE kind = 'receipt';
-- history(): the messages of one conversation direction by time.
CREATE INDEX entries_history ON entries (mailbox, peer, ts) WHERE kind = 'msg';

-- The last sequence each device acked (a device that lost its state can resume here).
CREATE TABLE cursors (
    mailbox TEXT NOT NULL,
    device  TEXT NOT NULL,
    seq     INTEGER NOT NULL,
    ts      INTEGER NOT NULL,
    PRIMARY KEY (mailbox, device)
) WITHOUT ROWID;
