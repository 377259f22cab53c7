//! The drain: decode a batch of claim-log entries taken by drain_read.lua, and shape them
//! into the column arrays the drain's idempotent Postgres statements take.
//!
//! Entries are applied in log order: a code returned to a pool and claimed again appears
//! as claim, return, claim, and the second ticket can only be inserted once the first one
//! is marked returned. So a batch becomes a sequence of [`Step`]s, each a run of claims
//! (one bulk insert) or a run of status changes (one bulk update).

use serde::Deserialize;

use crate::ids::ActivityId;
use crate::scripts::Reply;
use crate::ticket_type::{TypeKey, DEFAULT_TYPE};

/// Entries taken per activity per read.
pub const BATCH_SIZE: i64 = 2000;
/// Entries pending longer than this are assumed to belong to a run that died.
pub const RECLAIM_AFTER_MS: i64 = 30_000;

/// One log entry as the claim script wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum LogEvent {
    Claim {
        claim: String,
        activity: String,
        user: String,
        codes: Vec<String>,
        at: String,
        /// The ticket type; entries logged before ticket types have none: `default`.
        #[serde(default, rename = "type")]
        ticket_type: Option<String>,
        /// The client's address as stored (a keyed hash); absent or empty when unknown,
        /// and in entries logged before addresses were.
        #[serde(default, deserialize_with = "empty_as_none")]
        addr: Option<String>,
    },
    /// The owner gave the ticket back (return.lua).
    Return(TicketChange),
    /// An operator redeemed the ticket (redeem.lua).
    Redeem(TicketChange),
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct TicketChange {
    pub claim: String,
    pub activity: String,
    pub user: String,
    pub code: String,
    pub at: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    pub id: String,
    pub event: LogEvent,
}

/// A batch as read: entries to write, and ids of entries that cannot be understood
/// (acknowledged anyway, after being logged, so one bad entry cannot stop the drain).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Batch {
    pub entries: Vec<LogEntry>,
    pub malformed: Vec<(String, String)>,
}

impl Batch {
    pub fn decode(reply: &[Reply]) -> Batch {
        let mut batch = Batch::default();
        for pair in reply.chunks(2) {
            let (Some(id), Some(payload)) =
                (pair[0].as_text(), pair.get(1).and_then(Reply::as_text))
            else {
                continue;
            };
            match serde_json::from_str::<LogEvent>(payload) {
                Ok(event) if event.is_well_formed() => batch.entries.push(LogEntry {
                    id: id.to_string(),
                    event,
                }),
                _ => batch
                    .malformed
                    .push((id.to_string(), payload.chars().take(200).collect())),
            }
        }
        batch
    }

    /// Every id to acknowledge once the batch is committed.
    pub fn ids(&self) -> Vec<String> {
        self.entries
            .iter()
            .map(|e| e.id.clone())
            .chain(self.malformed.iter().map(|(id, _)| id.clone()))
            .collect()
    }

    /// The batch as runs to apply in order: claims inserted, then changes applied, ...
    pub fn steps(&self) -> Vec<Step> {
        let mut steps = Vec::new();
        let mut start = 0;
        while start < self.entries.len() {
            let is_claim = |e: &LogEntry| matches!(e.event, LogEvent::Claim { .. });
            let first_is_claim = is_claim(&self.entries[start]);
            let end = self.entries[start..]
                .iter()
                .position(|e| is_claim(e) != first_is_claim)
                .map_or(self.entries.len(), |n| start + n);
            let run = &self.entries[start..end];
            steps.push(if first_is_claim {
                Step::Insert(rows_of(run.iter()))
            } else {
                Step::Change(changes_of(run))
            });
            start = end;
        }
        steps
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Insert(Rows),
    Change(Changes),
}

/// Column arrays for the status update: the ticket (activity, code, claim) and its new
/// status with the time it changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    pub activities: Vec<i64>,
    pub codes: Vec<String>,
    pub claims: Vec<String>,
    pub statuses: Vec<String>,
    pub at_ms: Vec<i64>,
}

fn changes_of(entries: &[LogEntry]) -> Changes {
    let mut changes = Changes::default();
    for entry in entries {
        let (change, status) = match &entry.event {
            LogEvent::Return(c) => (c, "returned"),
            LogEvent::Redeem(c) => (c, "redeemed"),
            LogEvent::Claim { .. } => continue,
        };
        changes
            .activities
            .push(change.activity.parse().unwrap_or(0));
        changes.codes.push(change.code.clone());
        changes.claims.push(change.claim.clone());
        changes.statuses.push(status.to_string());
        changes.at_ms.push(change.at.parse().unwrap_or(0));
    }
    changes
}

fn empty_as_none<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<String>::deserialize(d)?.filter(|a| !a.is_empty()))
}

fn rows_of<'a>(entries: impl Iterator<Item = &'a LogEntry>) -> Rows {
    let mut rows = Rows::default();
    for entry in entries {
        let LogEvent::Claim {
            claim,
            activity,
            user,
            codes,
            at,
            ticket_type,
            addr,
        } = &entry.event
        else {
            continue;
        };
        let (activity, at) = (activity.parse().unwrap_or(0), at.parse().unwrap_or(0));
        let ticket_type = ticket_type.as_deref().unwrap_or(DEFAULT_TYPE);
        rows.claim_ids.push(claim.clone());
        rows.claim_activities.push(activity);
        rows.claim_users.push(user.clone());
        rows.claim_quantities.push(codes.len() as i64);
        rows.claim_at_ms.push(at);
        rows.claim_addrs.push(addr.clone().unwrap_or_default());
        for code in codes {
            rows.ticket_claims.push(claim.clone());
            rows.ticket_activities.push(activity);
            rows.ticket_codes.push(code.clone());
            rows.ticket_users.push(user.clone());
            rows.ticket_at_ms.push(at);
            rows.ticket_types.push(ticket_type.to_string());
        }
    }
    rows
}

impl LogEvent {
    fn is_well_formed(&self) -> bool {
        match self {
            LogEvent::Claim {
                claim,
                activity,
                user,
                codes,
                at,
                ticket_type,
                addr: _,
            } => {
                ticket_type
                    .as_deref()
                    .is_none_or(|t| TypeKey::parse(t).is_ok())
                    && !claim.is_empty()
                    && ActivityId::parse(activity).is_ok()
                    && !user.is_empty()
                    && !codes.is_empty()
                    && at.parse::<i64>().is_ok()
            }
            LogEvent::Return(c) | LogEvent::Redeem(c) => {
                !c.claim.is_empty()
                    && ActivityId::parse(&c.activity).is_ok()
                    && !c.code.is_empty()
                    && c.at.parse::<i64>().is_ok()
            }
        }
    }
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Rows {
    pub claim_ids: Vec<String>,
    pub claim_activities: Vec<i64>,
    pub claim_users: Vec<String>,
    pub claim_quantities: Vec<i64>,
    pub claim_at_ms: Vec<i64>,
    /// Stored client addresses, "" for unknown (written as NULL).
    pub claim_addrs: Vec<String>,
    pub ticket_claims: Vec<String>,
    pub ticket_activities: Vec<i64>,
    pub ticket_codes: Vec<String>,
    pub ticket_users: Vec<String>,
    pub ticket_at_ms: Vec<i64>,
    pub ticket_types: Vec<String>,
}

/// `{ acknowledged, entries_left }` from drain_ack.lua.
pub fn decode_ack(reply: &[Reply]) -> Option<(i64, i64)> {
    Some((reply.first()?.as_int()?, reply.get(1)?.as_int()?))
}

/// What one drain run did, reported by `POST /admin/drain` and logged by the cron run.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DrainReport {
    pub activities: usize,
    pub entries: usize,
    pub claims: usize,
    pub tickets: usize,
    pub malformed: usize,
    /// Entries still in the log when the run ended (not yet in Postgres).
    pub backlog: i64,
    /// Whether the run went on until every log it reached was empty; `false` when it
    /// stopped at its time bound ([`RUN_BOUND_MS`]) with `backlog` left for the next call.
    pub complete: bool,
    pub errors: Vec<String>,
}

/// How long one drain run may keep taking batches. A scheduler that calls once a minute
/// (a Kubernetes CronJob, `spin aka cron`) gets everything drained in one call when it fits,
/// and an answer well inside a host's request limit (Akamai Functions: 30 s) when it does
/// not: the last batch started before the bound still finishes and is acknowledged.
pub const RUN_BOUND_MS: i64 = 20_000;

/// Whether a run that started at `started_ms` may take another batch at `now_ms`, given
/// its bound (`drain_run_bound_ms` when set, else [`RUN_BOUND_MS`]).
pub fn may_take_another_batch(started_ms: i64, now_ms: i64, bound_ms: i64) -> bool {
    now_ms - started_ms < bound_ms
}

/// The time a stream entry was added: Redis stream ids are `<ms>-<seq>`.
pub fn entry_millis(id: &str) -> Option<i64> {
    id.split_once('-')?.0.parse().ok()
}

/// `GET /healthz`: whether the stores answer, and how far the drain is behind.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Health {
    pub redis: bool,
    pub postgres: bool,
    /// The Redis shards that did not answer, named by `shards::label` (no credentials).
    pub redis_down: Vec<String>,
    /// Claim-log entries not yet in Postgres, over every activity and endpoint.
    pub backlog: i64,
    /// Age of the oldest entry not yet in Postgres; `None` when the log is empty.
    pub oldest_entry_age_ms: Option<i64>,
    /// Each Sentinel-managed shard: the primary its sentinels name now, and its replicas;
    /// for a cluster shard, each primary of its slot map and its replicas.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub redis_groups: Vec<GroupHealth>,
}

/// One Sentinel group (or one primary of a cluster) in `/healthz`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GroupHealth {
    /// The shard as `shards::label` names it (no credentials).
    pub shard: String,
    /// `host:port` of the node the sentinels name as primary (or the cluster's primary).
    pub primary: String,
    #[serde(flatten)]
    pub replication: crate::topology::Replication,
}

impl Health {
    pub fn to_response(&self) -> crate::HttpResponse {
        let healthy = self.redis && self.postgres;
        let mut body = serde_json::to_value(self).unwrap_or_default();
        body["status"] = if healthy { "ok" } else { "degraded" }.into();
        crate::HttpResponse::json(if healthy { 200 } else { 503 }, &body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Reply {
        Reply::Bytes(s.as_bytes().to_vec())
    }

    #[test]
    fn a_run_takes_batches_until_its_time_bound_and_then_stops() {
        assert!(may_take_another_batch(1_000, 1_000, RUN_BOUND_MS));
        assert!(may_take_another_batch(
            1_000,
            1_000 + RUN_BOUND_MS - 1,
            RUN_BOUND_MS
        ));
        assert!(!may_take_another_batch(
            1_000,
            1_000 + RUN_BOUND_MS,
            RUN_BOUND_MS
        ));
    }

    #[test]
    fn a_batch_decodes_pairs_of_id_and_payload() {
        let reply = [
            b("1-0"),
            b(
                r#"{"t":"claim","claim":"c1","activity":"5","user":"u1","codes":["A-1","B-2"],"at":"1000"}"#,
            ),
            b("2-0"),
            b(
                r#"{"t":"claim","claim":"c2","activity":"5","user":"u2","codes":["C-3"],"at":"2000","type":"vip"}"#,
            ),
        ];
        let batch = Batch::decode(&reply);
        assert_eq!(batch.entries.len(), 2);
        assert_eq!(batch.ids(), vec!["1-0", "2-0"]);
        let steps = batch.steps();
        let [Step::Insert(rows)] = steps.as_slice() else {
            panic!("one run of claims is one insert: {steps:?}")
        };
        assert_eq!(rows.claim_ids, vec!["c1", "c2"]);
        assert_eq!(rows.claim_quantities, vec![2, 1]);
        assert_eq!(rows.ticket_codes, vec!["A-1", "B-2", "C-3"]);
        assert_eq!(rows.ticket_users, vec!["u1", "u1", "u2"]);
        assert_eq!(rows.ticket_at_ms, vec![1000, 1000, 2000]);
        assert_eq!(
            rows.ticket_types,
            vec!["default", "default", "vip"],
            "an entry logged before ticket types is of the type `default`"
        );
    }

    #[test]
    fn malformed_entries_are_set_aside_but_still_acknowledged() {
        let reply = [
            b("1-0"),
            b("not json"),
            b("2-0"),
            b(r#"{"t":"claim","claim":"c","activity":"x","user":"u","codes":["A"],"at":"1"}"#),
        ];
        let batch = Batch::decode(&reply);
        assert!(batch.entries.is_empty());
        assert_eq!(batch.malformed.len(), 2);
        assert_eq!(batch.ids(), vec!["1-0", "2-0"]);
    }

    #[test]
    fn health_is_503_when_a_store_is_down_and_reads_entry_ages() {
        let h = Health {
            redis: true,
            postgres: false,
            redis_down: vec![],
            backlog: 3,
            oldest_entry_age_ms: Some(10),
            redis_groups: vec![],
        };
        let r = h.to_response();
        assert_eq!(r.status, 503);
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(
            (v["status"].as_str(), v["backlog"].as_i64()),
            (Some("degraded"), Some(3))
        );
        assert_eq!(
            Health {
                postgres: true,
                ..h
            }
            .to_response()
            .status,
            200
        );
        assert_eq!(entry_millis("1700000000123-4"), Some(1_700_000_000_123));
        assert_eq!(entry_millis("junk"), None);
    }

    #[test]
    fn a_code_returned_and_claimed_again_is_applied_in_log_order() {
        let reply = [
            b("1-0"),
            b(r#"{"t":"claim","claim":"c1","activity":"5","user":"u1","codes":["X"],"at":"1"}"#),
            b("2-0"),
            b(r#"{"t":"claim","claim":"c2","activity":"5","user":"u2","codes":["Y"],"at":"2"}"#),
            b("3-0"),
            b(r#"{"t":"return","claim":"c1","activity":"5","user":"u1","code":"X","at":"3"}"#),
            b("4-0"),
            b(r#"{"t":"redeem","claim":"c2","activity":"5","user":"u2","code":"Y","at":"4"}"#),
            b("5-0"),
            b(r#"{"t":"claim","claim":"c3","activity":"5","user":"u3","codes":["X"],"at":"5"}"#),
        ];
        let batch = Batch::decode(&reply);
        assert!(batch.malformed.is_empty());
        let steps = batch.steps();
        assert_eq!(steps.len(), 3);
        let Step::Insert(first) = &steps[0] else {
            panic!("{steps:?}")
        };
        assert_eq!(first.claim_ids, vec!["c1", "c2"]);
        let Step::Change(changes) = &steps[1] else {
            panic!("{steps:?}")
        };
        assert_eq!(changes.statuses, vec!["returned", "redeemed"]);
        assert_eq!(changes.codes, vec!["X", "Y"]);
        assert_eq!(changes.claims, vec!["c1", "c2"]);
        assert_eq!(changes.at_ms, vec![3, 4]);
        let Step::Insert(last) = &steps[2] else {
            panic!("{steps:?}")
        };
        assert_eq!(last.ticket_codes, vec!["X"]);
        let claims: Vec<&String> = steps
            .iter()
            .filter_map(|s| match s {
                Step::Insert(rows) => Some(&rows.claim_ids),
                Step::Change(_) => None,
            })
            .flatten()
            .collect();
        assert_eq!(claims, vec!["c1", "c2", "c3"]);
    }

    #[test]
    fn an_empty_reply_is_an_empty_batch() {
        assert_eq!(Batch::decode(&[]), Batch::default());
        assert_eq!(decode_ack(&[Reply::Int(3), Reply::Int(0)]), Some((3, 0)));
    }
}
