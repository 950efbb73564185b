-- Small facts about the database itself, as in SQLite's meta. 'store_id' names this
-- store: mailbox sequence numbers count within one store, and a device says which
-- store the last sequence it holds is from (Login.store), so that a hub whose store
-- is another one (a new database, another cluster) sends it the mailbox from its
-- start instead of skipping the first N entries.

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

INSERT INTO meta (key, value) VALUES ('store_id', replace(gen_random_uuid()::text, '-', ''));
