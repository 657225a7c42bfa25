-- The key-value items on PostgreSQL (schema `data`). `value` and `metadata` are JSON text;
-- `version` starts at 1 and grows by one with every update; times are Unix milliseconds.
-- Keys compare byte-wise (`COLLATE "C"`, as SQLite's BINARY), which is what prefix ranges
-- and cursors rely on.
CREATE TABLE items (
    key TEXT COLLATE "C" PRIMARY KEY,
    value TEXT NOT NULL,
    metadata TEXT NOT NULL,
    version BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
