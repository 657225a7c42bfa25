-- Failed logins per (account, client) and per account over all clients (client '*'); see
-- src/throttle.rs. `account` is `user:<id>` for a known user, `name:<identifier>` else;
-- `client` an address (IPv6 by /64). Times are Unix milliseconds.
DROP TABLE login_failures;
CREATE TABLE login_throttle (
    account TEXT NOT NULL,
    client TEXT NOT NULL,
    failures BIGINT NOT NULL,
    blocked_until BIGINT NOT NULL,
    forget_at BIGINT NOT NULL,
    PRIMARY KEY (account, client)
);
CREATE INDEX login_throttle_forget_at ON login_throttle (forget_at);
