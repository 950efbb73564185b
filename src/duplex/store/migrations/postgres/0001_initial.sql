-- duplex store, PostgreSQL, version 1: the same tables and meaning as
-- ../sqlite/0001_initial.sql (read the comments there).
--
-- Applied once by duplex.store.postgres inside one transaction, under an advisory
-- lock, which also records the version in schema_version. Never edit a released
-- migration: add 0002_*.sql.

CREATE TABLE users (
    name          TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    created       BIGINT NOT NULL
);

CREATE TABLE tokens (
    token_hash BYTEA PRIMARY KEY,
    username   TEXT NOT NULL REFERENCES users (name) ON DELETE CASCADE,
    device     TEXT NOT NULL,
    expires    BIGINT NOT NULL
);

CREATE INDEX tokens_by_user ON tokens (username);

CREATE TABLE contacts (
    owner   TEXT NOT NULL REFERENCES users (name) ON DELETE CASCADE,
    contact TEXT NOT NULL REFERENCES users (name) ON DELETE CASCADE,
    PRIMARY KEY (owner, contact)
);

CREATE INDEX contacts_by_contact ON contacts (contact, owner);

-- The row lock on a mailbox (SELECT ... FOR UPDATE in the writing transaction)
-- serialises the hub nodes that append to it, which is what keeps its sequence
-- without gaps across a cluster.
CREATE TABLE mailboxes (
    mailbox   TEXT PRIMARY KEY,
    last_seq  BIGINT NOT NULL DEFAULT 0,
    acked_seq BIGINT NOT NULL DEFAULT 0,
    messages  BIGINT NOT NULL DEFAULT 0,
    delivered BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE entries (
    id        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    mailbox   TEXT NOT NULL,
    seq       BIGINT NOT NULL,
    kind      TEXT NOT NULL CHECK (kind IN ('msg', 'receipt')),
    peer      TEXT NOT NULL,
    msg_id    BYTEA NOT NULL CHECK (length(msg_id) = 16),
    body      TEXT NOT NULL,
    ts        BIGINT NOT NULL,
    delivered BIGINT,
    UNIQUE (mailbox, seq)
);

CREATE UNIQUE INDEX entries_msg_id ON entries (peer, msg_id) WHERE kind = 'msg';
CREATE UNIQUE INDEX entries_receipt ON entries (mailbox, msg_id) WHERE kind = 'receipt';
CREATE INDEX entries_history ON entries (mailbox, peer, ts) WHERE kind = 'msg';

CREATE TABLE cursors (
    mailbox TEXT NOT NULL,
    device  TEXT NOT NULL,
    seq     BIGINT NOT NULL,
    ts      BIGINT NOT NULL,
    PRIMARY KEY (mailbox, device)
);
