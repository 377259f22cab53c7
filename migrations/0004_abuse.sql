-- Abuse resistance (issue 13). Client addresses are stored as keyed hashes
-- (ClientAddr::hashed: HMAC-SHA256 of the IPv4 address or IPv6 /64 under a server secret),
-- never raw: an operator needs to group requests by address to find a bot farm, not to
-- read anyone's address, and a leaked table then gives away nothing.

-- Where an account was created from: the per-address registration limit counts these,
-- and operators see accounts per address.
ALTER TABLE users ADD COLUMN created_addr text;
CREATE INDEX users_by_created_addr ON users (created_addr, created_at);

-- Failed logins per key ('user:<username>' or 'addr:<hashed address>'): the login
-- throttle reads them before hashing a password. `last_failed_ms` is the auth component's
-- clock, the same clock that reads it back.
CREATE TABLE login_failures (
    key            text PRIMARY KEY,
    failures       integer NOT NULL CHECK (failures >= 1),
    last_failed_ms bigint NOT NULL
);
CREATE INDEX login_failures_by_age ON login_failures (last_failed_ms);
