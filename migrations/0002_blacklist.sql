-- Users refused by every activity's claim script (403 forbidden). Postgres is the source
-- of truth; the admin component copies it into each activity's Redis deny set on publish
-- and on every change.
CREATE TABLE blacklist (
    user_id    text PRIMARY KEY CHECK (length(user_id) BETWEEN 1 AND 64),
    reason     text NOT NULL DEFAULT '' CHECK (length(reason) <= 500),
    created_at timestamptz NOT NULL DEFAULT now()
);

-- The export pages through an activity's tickets in id order.
CREATE INDEX tickets_by_activity ON tickets (activity_id, id);
