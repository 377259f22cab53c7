-- Abuse resistance (issue 13). Client addresses are stored as keyed hashes
-- (ClientAddr::hashed: HMAC-SHA256 of the IPv4 address or IPv6 /64 under a server secret),
-- never raw: an operator needs to group requests by address to find a bot farm, not to
-- read anyone's address, and a leaked table then gives away nothing.

-- Where an account was created from: the per-address registration limit counts these,
-- and operators see accounts per address.
ALTER TABLE users ADD COLUMN created_addr text;
CREATE INDEX users_by_created_addr ON users (created_addr, created_at);

-- Failed logins are counted in Redis (lua/login.lua), not here: a refused guess must not
-- cost a Postgres connection.
