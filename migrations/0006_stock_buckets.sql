-- One hot activity spread over several Redis Cluster slots (issue 23,
-- flashclaim_core::buckets): how many buckets its stock is split into. Fixed once the
-- activity is published: every claim finds its user's home bucket by it.
ALTER TABLE activities ADD COLUMN stock_buckets int8 NOT NULL DEFAULT 1
  CHECK (stock_buckets BETWEEN 1 AND 16);
