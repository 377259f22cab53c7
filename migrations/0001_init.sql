-- flashclaim's first schema. Part of the public contract: operators query these tables.
-- Never edit a released migration; add the next numbered file instead.

CREATE TABLE users (
    id            text PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 64),
    username      text NOT NULL UNIQUE,
    password_hash text NOT NULL,
    nickname      text,
    role          text NOT NULL DEFAULT 'user' CHECK (role IN ('user', 'admin')),
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE activities (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name           text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    description    text NOT NULL DEFAULT '',
    image_url      text,
    starts_at      timestamptz NOT NULL,
    ends_at        timestamptz NOT NULL,
    status         text NOT NULL DEFAULT 'draft' CHECK (status IN ('draft', 'published', 'closed')),
    stock_total    integer NOT NULL CHECK (stock_total >= 0),
    per_user_limit integer NOT NULL DEFAULT 1 CHECK (per_user_limit >= 1),
    kind           text NOT NULL DEFAULT 'counter' CHECK (kind IN ('counter', 'codes')),
    require_pass   boolean NOT NULL DEFAULT false,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    published_at   timestamptz,
    CHECK (ends_at > starts_at)
);

CREATE INDEX activities_listing ON activities (status, starts_at, id);

-- Uploaded code pools (kind = 'codes').
CREATE TABLE ticket_codes (
    activity_id bigint NOT NULL REFERENCES activities (id),
    code        text NOT NULL,
    uploaded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (activity_id, code)
);

-- One row per acknowledged claim; `id` is the claim id the client received.
-- The drain inserts with ON CONFLICT (id) DO NOTHING, so replaying a log entry is harmless.
CREATE TABLE claims (
    id          text PRIMARY KEY,
    activity_id bigint NOT NULL REFERENCES activities (id),
    user_id     text NOT NULL,
    quantity    integer NOT NULL CHECK (quantity >= 1),
    claimed_at  timestamptz NOT NULL,
    drained_at  timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX claims_by_activity ON claims (activity_id, claimed_at);

-- One row per issued ticket. (claim_id, code) identifies the issue and makes the drain
-- idempotent; a code is held by at most one live ticket of an activity.
CREATE TABLE tickets (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    claim_id    text NOT NULL REFERENCES claims (id),
    activity_id bigint NOT NULL REFERENCES activities (id),
    user_id     text NOT NULL,
    code        text NOT NULL,
    status      text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'returned', 'redeemed')),
    claimed_at  timestamptz NOT NULL,
    returned_at timestamptz,
    redeemed_at timestamptz,
    UNIQUE (claim_id, code)
);

CREATE UNIQUE INDEX tickets_live_code ON tickets (activity_id, code) WHERE status <> 'returned';
CREATE INDEX tickets_by_user ON tickets (user_id, claimed_at DESC);
