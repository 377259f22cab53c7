//! The guard against a changed Redis endpoint list.
//!
//! `redis_address` lists the shards, and an activity's id picks one by a stable hash over
//! that list (`keys::RedisShards`). Change the list (add, remove or reorder an endpoint)
//! and most activities map to another shard than the one holding their stock, tickets and
//! claim log: claims would answer `404`, and publishing again would load a second copy of
//! the stock there. So every shard carries a marker, `fc:shard` = `"<index>/<count>"`,
//! written when the first activity is published, and a shard that answers "no such
//! activity" is asked for it:
//!
//! - the marker matches the list: the activity really is unknown here (`404`);
//! - it names another place in another list: the list changed; refuse (`503`, logged);
//! - it is missing while another shard has one: this shard lost its data, or was added
//!   without the procedure in DEPLOY.md; refuse (`503`, logged) until its activities are
//!   published again.
//!
//! Only that rare answer pays for the check: a claim that finds its activity costs what it
//! always did, one round trip.

use crate::ids::ActivityId;
use crate::keys::RedisShards;
use crate::ApiError;

/// The key holding a shard's marker, on every endpoint.
pub const MARKER: &str = "fc:shard";

/// The marker shard `index` of a list of `count` endpoints carries.
pub fn marker(index: usize, count: usize) -> String {
    format!("{index}/{count}")
}

/// Which shard of `shards` holds `activity`, as a position in the list.
pub fn index_for(shards: &RedisShards, activity: ActivityId) -> usize {
    let address = shards.for_activity(activity);
    shards.all().iter().position(|a| a == address).unwrap_or(0)
}

/// A shard as logs and `/healthz` name it: its position and `host:port` (with the database
/// path, if any), never the credentials an address may carry.
pub fn label(shards: &RedisShards, index: usize) -> String {
    let address = shards.all().get(index).map(String::as_str).unwrap_or("");
    let without_scheme = address.split_once("://").map_or(address, |(_, rest)| rest);
    let host = without_scheme
        .rsplit_once('@')
        .map_or(without_scheme, |(_, host)| host);
    format!("shard {index} ({host})")
}

/// What a shard's own marker says, read after it answered "no such activity".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Marker {
    /// Set up as this place in this list.
    Matches,
    /// Set up as another place, or in a list of another length: the list changed.
    Differs(String),
    /// No marker: a fresh deployment, or a shard that lost its data.
    Missing,
}

pub fn read_marker(value: Option<&str>, index: usize, count: usize) -> Marker {
    match value {
        None => Marker::Missing,
        Some(v) if v == marker(index, count) => Marker::Matches,
        Some(v) => Marker::Differs(v.to_string()),
    }
}

/// The answer to "activity not found on its shard", with the log line when it is a refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The activity is unknown (or not published): `404` as always.
    NotFound,
    /// The shard cannot be trusted to know: `503`, nothing changed, and this is logged.
    Refuse(String),
}

impl Verdict {
    pub fn into_error(self) -> ApiError {
        match self {
            Verdict::NotFound => ApiError::NotFound,
            Verdict::Refuse(log) => {
                eprintln!("flashclaim: {log}");
                ApiError::Unavailable(
                    "this activity's data store is not serving it right now; nothing was changed",
                )
            }
        }
    }
}

/// The verdict from the shard's own marker; `None` when it depends on the others' markers
/// (read them and call [`judge_missing`]).
pub fn judge(shards: &RedisShards, activity: ActivityId, own: Option<&str>) -> Option<Verdict> {
    let count = shards.all().len();
    let index = index_for(shards, activity);
    match read_marker(own, index, count) {
        Marker::Matches => Some(Verdict::NotFound),
        Marker::Missing if count == 1 => Some(Verdict::NotFound),
        Marker::Missing => None,
        Marker::Differs(was) => Some(Verdict::Refuse(format!(
            "redis_address changed: activity {activity} maps to {} of {count}, but that \
             endpoint was set up as {was} (index/count); refusing to serve its activities \
             until the list is restored or its activities are moved (DEPLOY.md, \
             \"Adding a Redis shard\")",
            label(shards, index)
        ))),
    }
}

/// The verdict for a shard without a marker, from whether any other shard has one.
pub fn judge_missing(shards: &RedisShards, activity: ActivityId, others_marked: bool) -> Verdict {
    if !others_marked {
        // No shard has ever had an activity published: nothing can be missing.
        return Verdict::NotFound;
    }
    let index = index_for(shards, activity);
    Verdict::Refuse(format!(
        "activity {activity} maps to {}, which holds no flashclaim data while the other \
         shards do: it lost its data or was added to redis_address; publish its activities \
         again (DEPLOY.md, \"Redis primary lost\")",
        label(shards, index)
    ))
}

/// Before publishing: for each shard, its marker as read (`Err` when the shard did not
/// answer), gives the shards whose marker must be written, or the refusal when a marker
/// shows the list changed. Unreachable shards are skipped (they get theirs on a later
/// publish); the publish itself fails if its own shard is one of them.
pub fn markers_to_write(found: &[Result<Option<String>, ()>]) -> Result<Vec<usize>, ApiError> {
    let count = found.len();
    let mut missing = Vec::new();
    for (index, value) in found.iter().enumerate() {
        match value {
            Ok(None) => missing.push(index),
            Ok(Some(v)) if *v == marker(index, count) => {}
            Ok(Some(v)) => {
                eprintln!(
                    "flashclaim: publish refused: redis_address lists {count} endpoints and \
                     endpoint {index} was set up as {v} (index/count); see DEPLOY.md, \
                     \"Adding a Redis shard\""
                );
                return Err(ApiError::Conflict(format!(
                    "the Redis endpoint list changed (endpoint {index} was set up as {v}, \
                     it is now {index}/{count}); publishing would load activities onto the \
                     wrong shard (see DEPLOY.md, \"Adding a Redis shard\")"
                )));
            }
            Err(()) => {}
        }
    }
    Ok(missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three() -> RedisShards {
        RedisShards::parse("redis://a:1,redis://:s3cret@b:2/4,redis://c:3").unwrap()
    }

    fn on(shards: &RedisShards, index: usize) -> ActivityId {
        (1..1000)
            .map(|n| ActivityId::parse(&n.to_string()).unwrap())
            .find(|id| index_for(shards, *id) == index)
            .unwrap()
    }

    #[test]
    fn a_label_never_shows_credentials() {
        let shards = three();
        assert_eq!(label(&shards, 1), "shard 1 (b:2/4)");
        assert_eq!(label(&shards, 0), "shard 0 (a:1)");
        assert!(!label(&shards, 1).contains("s3cret"));
    }

    #[test]
    fn index_follows_the_stable_choice() {
        let shards = three();
        for n in 1..50 {
            let id = ActivityId::parse(&n.to_string()).unwrap();
            assert_eq!(
                shards.all()[index_for(&shards, id)],
                shards.for_activity(id)
            );
        }
    }

    #[test]
    fn a_matching_marker_means_the_activity_is_unknown() {
        let shards = three();
        let id = on(&shards, 2);
        assert_eq!(judge(&shards, id, Some("2/3")), Some(Verdict::NotFound));
    }

    #[test]
    fn a_marker_from_another_list_refuses_with_a_log_line() {
        let shards = three();
        let id = on(&shards, 0);
        // The old single Redis, now listed first of three.
        let Some(Verdict::Refuse(log)) = judge(&shards, id, Some("0/1")) else {
            panic!("not refused");
        };
        assert!(log.contains("redis_address changed"), "{log}");
        assert!(log.contains("shard 0 (a:1)"), "{log}");
        // Reordered: the endpoint was second.
        assert!(matches!(
            judge(&shards, id, Some("1/3")),
            Some(Verdict::Refuse(_))
        ));
        assert_eq!(Verdict::Refuse(log).into_error().to_response().status, 503);
    }

    #[test]
    fn a_missing_marker_is_refused_only_when_other_shards_have_one() {
        let shards = three();
        let id = on(&shards, 1);
        assert_eq!(judge(&shards, id, None), None);
        assert_eq!(judge_missing(&shards, id, false), Verdict::NotFound);
        let Verdict::Refuse(log) = judge_missing(&shards, id, true) else {
            panic!("not refused");
        };
        assert!(
            log.contains("shard 1 (b:2/4)") && log.contains("publish"),
            "{log}"
        );
        assert!(!log.contains("s3cret"));
    }

    #[test]
    fn a_single_endpoint_without_a_marker_answers_not_found() {
        let one = RedisShards::parse("redis://a:1").unwrap();
        let id = ActivityId::parse("5").unwrap();
        assert_eq!(judge(&one, id, None), Some(Verdict::NotFound));
        assert_eq!(judge(&one, id, Some("0/1")), Some(Verdict::NotFound));
    }

    #[test]
    fn publish_writes_missing_markers_and_refuses_a_changed_list() {
        let found = [Ok(Some("0/3".to_string())), Ok(None), Err(())];
        assert_eq!(markers_to_write(&found).unwrap(), vec![1]);
        let changed = [Ok(Some("0/2".to_string())), Ok(None), Ok(None)];
        assert!(matches!(
            markers_to_write(&changed),
            Err(ApiError::Conflict(_))
        ));
        assert_eq!(markers_to_write(&[Ok(None)]).unwrap(), vec![0]);
    }
}
