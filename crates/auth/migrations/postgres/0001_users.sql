-- Accounts on PostgreSQL (schema `auth`). `username_key` and `email_key` are the lowercased
-- forms: uniqueness is case-insensitive, while the names are shown as the user typed them.
CREATE TABLE users (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    username TEXT NOT NULL,
    email TEXT NOT NULL,
    username_key TEXT NOT NULL UNIQUE,
    email_key TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

-- Failed logins per (account, client) and per account over all clients (client '*'); see
-- src/throttle.rs. Times are Unix milliseconds.
CREATE TABLE login_throttle (
    account TEXT NOT NULL,
    client TEXT NOT NULL,
    failures BIGINT NOT NULL,
    blocked_until BIGINT NOT NULL,
    forget_at BIGINT NOT NULL,
    PRIMARY KEY (account, client)
);
CREATE INDEX login_throttle_forget_at ON login_throttle (forget_at);
