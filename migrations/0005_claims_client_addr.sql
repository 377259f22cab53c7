-- Which address each claim came from, as a keyed hash (see 0004): claim.lua logs it, the
-- drain writes it; the stats and the export show claims per address per activity, the
-- signal of a bot farm. NULL for claims made before, or when the host named no peer.
ALTER TABLE claims ADD COLUMN client_addr text;
CREATE INDEX claims_by_client_addr ON claims (activity_id, client_addr);
