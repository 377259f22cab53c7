-- Ticket types (issue 10): an activity offers 1-20 kinds of ticket, each with its own stock,
-- per-user limit, kind and optional window inside the activity's (seed 001's 票表, seed
-- 002's seat classes). Every activity that existed before gets one type, `default`, holding
-- its stock, limit and kind, and every ticket and uploaded code points at it, so every
-- earlier request keeps its answer.

CREATE TABLE ticket_types (
    activity_id    bigint NOT NULL REFERENCES activities (id),
    key            text NOT NULL CHECK (key ~ '^[a-z0-9_-]{1,32}$'),
    -- The order the operator listed the types in; pages show them in this order.
    position       integer NOT NULL CHECK (position >= 0),
    name           text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    description    text NOT NULL DEFAULT '' CHECK (length(description) <= 2000),
    stock_total    integer NOT NULL CHECK (stock_total >= 0),
    per_user_limit integer NOT NULL DEFAULT 1 CHECK (per_user_limit >= 1),
    kind           text NOT NULL DEFAULT 'counter' CHECK (kind IN ('counter', 'codes')),
    -- NULL: the activity's own starts_at / ends_at.
    starts_at      timestamptz,
    ends_at        timestamptz,
    PRIMARY KEY (activity_id, key),
    CHECK (ends_at IS NULL OR starts_at IS NULL OR ends_at > starts_at)
);

INSERT INTO ticket_types (activity_id, key, position, name, stock_total, per_user_limit, kind)
SELECT id, 'default', 0, name, stock_total, per_user_limit, kind FROM activities;

-- Filled with `default` for every existing row. flashclaim names the type of every row it
-- writes; the default keeps other writers of activities without types working, and the
-- foreign key refuses a row of a type its activity does not have.
ALTER TABLE tickets ADD COLUMN ticket_type text NOT NULL DEFAULT 'default';
ALTER TABLE tickets ADD FOREIGN KEY (activity_id, ticket_type)
    REFERENCES ticket_types (activity_id, key);

ALTER TABLE ticket_codes ADD COLUMN ticket_type text NOT NULL DEFAULT 'default';
ALTER TABLE ticket_codes ADD FOREIGN KEY (activity_id, ticket_type)
    REFERENCES ticket_types (activity_id, key);

-- The activity row keeps its summary for readers of the old columns: stock_total is the
-- sum over the types, kind is theirs or `mixed`, and per_user_limit is the limit over all
-- types together, NULL when there is none beyond each type's own.
ALTER TABLE activities ALTER COLUMN per_user_limit DROP NOT NULL;
ALTER TABLE activities ALTER COLUMN per_user_limit DROP DEFAULT;
ALTER TABLE activities DROP CONSTRAINT activities_kind_check;
ALTER TABLE activities ADD CONSTRAINT activities_kind_check
    CHECK (kind IN ('counter', 'codes', 'mixed'));

CREATE INDEX tickets_by_activity_type ON tickets (activity_id, ticket_type);
