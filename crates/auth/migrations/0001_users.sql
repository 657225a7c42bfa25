-- Accounts. `username_key` and `email_key` are the lowercased forms: uniqueness is
-- case-insensitive, while the names are shown as the user typed them.
CREATE TABLE users (
    id INTEGER PRIMARY KEY,
    username TEXT NOT NULL,
    email TEXT NOT NULL,
    username_key TEXT NOT NULL UNIQUE,
    email_key TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

-- Failed logins per account since the last success, within the current window (see
-- src/lockout.rs). `account` is `user:<id>` for a known user, `name:<identifier>` else.
CREATE TABLE login_failures (
    account TEXT PRIMARY KEY,
    failures BIGINT NOT NULL,
    window_start BIGINT NOT NULL
);
