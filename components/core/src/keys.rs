//! Redis key names. Every key of one activity carries the hash tag `{a:<id>}`, so a script
//! touching them stays in one slot (Redis Cluster, or a Cluster-aware proxy), and the
//! activity id alone picks the Redis endpoint when activities are sharded.

use crate::ids::{ActivityId, IdempotencyKey, UserId};

/// The set of activity ids with a claim log on one Redis endpoint (read by the drain).
pub const ACTIVITY_INDEX: &str = "fc:activities";
/// The consumer group through which drain runs take log entries.
pub const DRAIN_GROUP: &str = "drain";

/// A cached page of `GET /api/activities` (kept on the first endpoint).
pub fn list_page(after: i64, limit: i64) -> String {
    format!("fc:list:{after}:{limit}")
}

#[derive(Debug, Clone)]
pub struct ActivityKeys {
    prefix: String,
}

impl ActivityKeys {
    pub fn new(id: ActivityId) -> Self {
        ActivityKeys {
            prefix: format!("fc:{{a:{id}}}"),
        }
    }

    /// The keys of bucket `b` of an activity of `n` stock buckets (`crate::buckets`):
    /// bucket 0 is [`ActivityKeys::new`].
    pub fn in_bucket(id: ActivityId, b: i64, n: i64) -> Self {
        ActivityKeys {
            prefix: format!("fc:{{{}}}", crate::buckets::tag(id, b, n)),
        }
    }

    fn key(&self, suffix: &str) -> String {
        format!("{}:{suffix}", self.prefix)
    }

    pub fn meta(&self) -> String {
        self.key("meta")
    }
    /// Type -> tickets left (see lua/claim.lua).
    pub fn stocks(&self) -> String {
        self.key("stocks")
    }
    pub fn seq(&self) -> String {
        self.key("seq")
    }
    pub fn claimed(&self) -> String {
        self.key("claimed")
    }
    pub fn tickets(&self) -> String {
        self.key("tickets")
    }
    pub fn log(&self) -> String {
        self.key("log")
    }
    pub fn deny(&self) -> String {
        self.key("deny")
    }
    /// The code pools of the `codes` types, a queue per type (see lua/claim.lua).
    pub fn pools(&self) -> String {
        self.key("pools")
    }
    /// Cached public view (JSON) of the activity, or a negative-cache marker.
    pub fn view(&self) -> String {
        self.key("view")
    }
    pub fn idempotency(&self, user: &UserId, key: Option<&IdempotencyKey>) -> String {
        match key {
            Some(k) => self.key(&format!("idem:{user}:{}", k.as_str())),
            None => self.key("idem:-"),
        }
    }
    pub fn rate(&self, user: &UserId) -> String {
        self.key(&format!("rate:{user}"))
    }
    pub fn pass(&self, user: &UserId) -> String {
        self.key(&format!("pass:{user}"))
    }
    /// Claim passes handed out so far.
    pub fn passes(&self) -> String {
        self.key("passes")
    }
    /// The token bucket of one client address (stored form, "" when unknown) on this
    /// activity.
    pub fn client(&self, stored_addr: &str) -> String {
        match stored_addr {
            "" => self.key("client:unknown"),
            addr => self.key(&format!("client:{addr}")),
        }
    }
    /// Attempts on the whole activity in the current global rate window.
    pub fn flood(&self) -> String {
        self.key("flood")
    }
    /// The activity's counters for `/metrics` (`flashclaim_core::metrics`), moved by the
    /// scripts that already run: `answers:<outcome>:<type>`, `claimed:<type>`, ...
    pub fn metrics(&self) -> String {
        self.key("metrics")
    }
    /// A stock bucket's own state (lua/lend.lua, lua/claim.lua): `dry:<type>`, until when
    /// every bucket was seen without the type's stock; `out:<move>`, stock lent and not yet
    /// known credited; `in:<move>`, stock credited here.
    pub fn bucket(&self) -> String {
        self.key("bucket")
    }
    /// Held by the one reader rebuilding the cached view (stampede protection).
    pub fn view_lock(&self) -> String {
        self.key("view:lock")
    }
}

/// The Redis endpoints, one per shard; `redis_address` holds them comma-separated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisShards(Vec<String>);

impl RedisShards {
    /// Shards are separated by white space or `;`. A `redis-sentinel://` or
    /// `redis-cluster://` address is one shard (its sentinels or seed nodes are
    /// comma-separated, without spaces); plain `redis://`
    /// addresses may also be separated by commas, as they always were.
    pub fn parse(text: &str) -> Option<Self> {
        let mut list = Vec::new();
        for shard in text
            .split(|c: char| c == ';' || c.is_whitespace())
            .filter(|s| !s.is_empty())
        {
            if shard.starts_with(crate::topology::SENTINEL_SCHEME)
                || shard.starts_with(crate::cluster::CLUSTER_SCHEME)
            {
                list.push(shard.to_string());
            } else {
                list.extend(
                    shard
                        .split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_string),
                );
            }
        }
        (!list.is_empty()).then_some(RedisShards(list))
    }

    /// A stable choice: the same activity always lands on the same endpoint for a given
    /// list (a SplitMix64 mix of the id, so consecutive ids spread evenly).
    pub fn for_activity(&self, id: ActivityId) -> &str {
        let mut z = (id.get() as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        &self.0[(z % self.0.len() as u64) as usize]
    }

    pub fn all(&self) -> &[String] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_keys_of_an_activity_share_one_hash_tag() {
        let k = ActivityKeys::new(ActivityId::parse("42").unwrap());
        let user = UserId::parse("u1").unwrap();
        for key in [
            k.meta(),
            k.stocks(),
            k.pools(),
            k.log(),
            k.claimed(),
            k.metrics(),
            k.rate(&user),
            k.idempotency(&user, None),
        ] {
            assert!(key.starts_with("fc:{a:42}:"), "{key}");
        }
    }

    #[test]
    fn a_shard_is_chosen_stably_and_spread() {
        let shards = RedisShards::parse("redis://a, redis://b,redis://c").unwrap();
        let id = ActivityId::parse("7").unwrap();
        assert_eq!(shards.for_activity(id), shards.for_activity(id));
        let mut counts = std::collections::HashMap::new();
        for n in 1..=300 {
            *counts
                .entry(shards.for_activity(ActivityId::parse(&n.to_string()).unwrap()))
                .or_insert(0) += 1;
        }
        assert_eq!(counts.len(), 3);
        assert!(counts.values().all(|c| *c > 70), "{counts:?}");
        assert!(RedisShards::parse(" , ").is_none());
    }

    #[test]
    fn sentinel_groups_are_shards_separated_by_space_or_semicolon_beside_plain_lists() {
        let shards = RedisShards::parse(
            "redis-sentinel://s1:26379,s2:26379#a; redis-sentinel://s1:26379,s2:26379#b\n\
             redis://c:6379,redis://d:6379",
        )
        .unwrap();
        assert_eq!(
            shards.all(),
            [
                "redis-sentinel://s1:26379,s2:26379#a",
                "redis-sentinel://s1:26379,s2:26379#b",
                "redis://c:6379",
                "redis://d:6379"
            ]
        );
        assert_eq!(
            RedisShards::parse("redis-cluster://h:7000,h:7001,h:7002")
                .unwrap()
                .all(),
            ["redis-cluster://h:7000,h:7001,h:7002"]
        );
        assert_eq!(
            RedisShards::parse("redis://a:1,redis://b:2").unwrap().all(),
            ["redis://a:1", "redis://b:2"]
        );
    }
}
