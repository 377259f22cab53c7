//! The operator's use cases that are more than one statement: changing an activity,
//! reconciling Redis with Postgres, and the shapes of stats and blacklist requests.

use std::collections::HashMap;

use serde::Serialize;

use crate::activity::{Activity, NewActivity, Status, MAX_ACTIVITY_BODY};
use crate::error::ApiError;
use crate::http::{json_body, json_object, reject_unknown};
use crate::ticket::TicketRecord;
use crate::ticket_type::{fixed_fields_differ, TicketType, DEFAULT_TYPE};

/// Fields that describe an activity to people; they may change after publish. Everything
/// else decides who gets what, so it is fixed once claims can start. `ticket_types` may be
/// sent after publish too, but only its types' names and descriptions may change.
const DISPLAY_FIELDS: [&str; 4] = ["name", "description", "image_url", "ticket_types"];
const ALL_FIELDS: [&str; 11] = [
    "name",
    "description",
    "image_url",
    "starts_at",
    "ends_at",
    "stock_total",
    "per_user_limit",
    "kind",
    "require_pass",
    "ticket_types",
    "stock_buckets",
];

/// `PATCH /admin/activities/{id}`: the activity after the change, validated exactly like a
/// new one (the patch is laid over the current definition and parsed as a create request).
///
/// An activity with the one type `default` (created without types) is patched as it always
/// was: `stock_total`, `per_user_limit` and `kind` are its type's. `ticket_types` is the
/// whole new list; each entry is laid over the current type of the same key.
pub fn apply_patch(current: &Activity, body: &[u8]) -> Result<Activity, ApiError> {
    let mut patch = json_object(body, MAX_ACTIVITY_BODY)?;
    reject_unknown(&patch, &ALL_FIELDS)?;
    match current.status {
        Status::Closed => {
            return Err(ApiError::Conflict(
                "a closed activity cannot be changed".into(),
            ))
        }
        Status::Published => {
            if let Some(fixed) = patch.keys().find(|k| !DISPLAY_FIELDS.contains(&k.as_str())) {
                return Err(ApiError::Conflict(format!(
                    "`{fixed}` cannot change after publish; only name, description, image_url and the types' names and descriptions can"
                )));
            }
        }
        Status::Draft => {}
    }
    let mut merged = serde_json::json!({
        "name": current.name,
        "description": current.description,
        "image_url": current.image_url,
        "starts_at": current.starts_at,
        "ends_at": current.ends_at,
        "require_pass": current.require_pass,
        "stock_buckets": current.stock_buckets,
    });
    let single_default = match current.ticket_types.as_slice() {
        [only] if only.key.as_str() == DEFAULT_TYPE => Some(only),
        _ => None,
    };
    let new_types = patch.remove("ticket_types");
    match (single_default, new_types) {
        (Some(only), None) => {
            merged["stock_total"] = only.stock_total.into();
            merged["per_user_limit"] = only.per_user_limit.into();
            merged["kind"] = only.kind.as_str().into();
        }
        (_, new_types) => {
            if let Some(limit) = current.per_user_limit {
                merged["per_user_limit"] = limit.into();
            }
            merged["ticket_types"] = match new_types {
                None => current
                    .ticket_types
                    .iter()
                    .map(TicketType::to_body)
                    .collect(),
                Some(serde_json::Value::Array(entries)) => entries
                    .into_iter()
                    .map(|entry| lay_over_current(current, entry))
                    .collect(),
                Some(_) => return Err(ApiError::invalid("ticket_types must be an array")),
            };
        }
    }
    for (field, value) in patch {
        merged[field.as_str()] = value;
    }
    // null removes an optional field.
    if let Some(object) = merged.as_object_mut() {
        object.retain(|_, v| !v.is_null());
    }
    let parsed = NewActivity::parse(merged.to_string().as_bytes())?;
    let changed = parsed.into_activity(current.id, current.status);
    if current.status == Status::Published {
        same_types_apart_from_display(current, &changed)?;
    }
    Ok(changed)
}

/// A patch's type entry over the current type of the same key (when there is one), so an
/// entry may name only what changes.
fn lay_over_current(current: &Activity, entry: serde_json::Value) -> serde_json::Value {
    let base = entry
        .get("key")
        .and_then(serde_json::Value::as_str)
        .and_then(|key| current.ticket_type(key));
    match (base, entry) {
        (Some(base), serde_json::Value::Object(fields)) => {
            let mut merged = base.to_body();
            for (field, value) in fields {
                merged[field.as_str()] = value;
            }
            if let Some(object) = merged.as_object_mut() {
                object.retain(|_, v| !v.is_null());
            }
            merged
        }
        (_, entry) => entry,
    }
}

/// After publish the types stay the same list with the same stock, limits, kinds and
/// windows; only names and descriptions may change.
fn same_types_apart_from_display(current: &Activity, changed: &Activity) -> Result<(), ApiError> {
    let keys = |a: &Activity| {
        a.ticket_types
            .iter()
            .map(|t| t.key.clone())
            .collect::<Vec<_>>()
    };
    if keys(current) != keys(changed) {
        return Err(ApiError::Conflict(
            "ticket types cannot be added, removed or reordered after publish".into(),
        ));
    }
    for (before, after) in current.ticket_types.iter().zip(&changed.ticket_types) {
        if let Some(field) = fixed_fields_differ(before, after) {
            return Err(ApiError::Conflict(format!(
                "`{field}` of ticket type `{}` cannot change after publish",
                before.key
            )));
        }
    }
    Ok(())
}

/// `PUT /admin/blacklist/{user}`'s optional body `{"reason": "..."}`.
pub fn parse_blacklist_reason(body: &[u8]) -> Result<String, ApiError> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        #[serde(default)]
        reason: String,
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(String::new());
    }
    let b: Body = json_body(body, 2048)?;
    if b.reason.chars().count() > 500 {
        return Err(ApiError::invalid("reason must be at most 500 characters"));
    }
    Ok(b.reason)
}

/// A ticket as Postgres has it, for reconciling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredTicket {
    pub code: String,
    pub claim_id: String,
    pub status: String,
}

/// `GET /admin/activities/{id}/reconcile`: Redis's live state against Postgres's rows.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Reconciliation {
    pub ok: bool,
    pub stock_total: i64,
    pub stock_left: i64,
    /// Tickets Redis holds as given out (active or redeemed).
    pub tickets_out: i64,
    /// stock_total - stock_left - tickets_out: 0 unless stock was lost or created.
    pub stock_drift: i64,
    /// Log entries not yet drained; tickets they carry are expected to be missing.
    pub backlog: i64,
    pub missing_in_postgres: Vec<String>,
    pub missing_in_redis: Vec<String>,
    /// `code: redis status / postgres status`.
    pub status_mismatch: Vec<String>,
    /// The stock counts per ticket type.
    pub ticket_types: Vec<TypeReconciliation>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct TypeReconciliation {
    pub key: String,
    pub stock_total: i64,
    pub stock_left: i64,
    pub tickets_out: i64,
    pub stock_drift: i64,
}

/// One type's stock: its key, total, and what Redis has left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeStock {
    pub key: String,
    pub stock_total: i64,
    pub stock_left: i64,
}

/// Compares the activity's tickets hash and stocks in Redis with its ticket rows.
pub fn reconcile(
    types: &[TypeStock],
    backlog: i64,
    redis_tickets: &[(String, TicketRecord)],
    postgres_tickets: &[StoredTicket],
) -> Reconciliation {
    let out = |key: Option<&str>| {
        redis_tickets
            .iter()
            .filter(|(_, r)| r.status != "returned")
            .filter(|(_, r)| key.is_none_or(|k| r.ticket_type == k))
            .count() as i64
    };
    let tickets_out = out(None);
    let per_type: Vec<TypeReconciliation> = types
        .iter()
        .map(|t| {
            let tickets_out = out(Some(&t.key));
            TypeReconciliation {
                key: t.key.clone(),
                stock_total: t.stock_total,
                stock_left: t.stock_left,
                tickets_out,
                stock_drift: t.stock_total - t.stock_left - tickets_out,
            }
        })
        .collect();
    let stock_total = types.iter().map(|t| t.stock_total).sum();
    let stock_left = types.iter().map(|t| t.stock_left).sum();
    // A code returned and claimed again has several rows; the newest claim's is the live one.
    let mut stored: HashMap<(&str, &str), &str> = HashMap::new();
    for t in postgres_tickets {
        stored.insert((t.code.as_str(), t.claim_id.as_str()), t.status.as_str());
    }
    let live: HashMap<&str, &TicketRecord> = redis_tickets
        .iter()
        .map(|(code, r)| (code.as_str(), r))
        .collect();
    let mut report = Reconciliation {
        stock_total,
        stock_left,
        tickets_out,
        stock_drift: stock_total - stock_left - tickets_out,
        backlog,
        ticket_types: per_type,
        ..Default::default()
    };
    for (code, record) in redis_tickets {
        match stored.get(&(code.as_str(), record.claim_id.as_str())) {
            None => report.missing_in_postgres.push(code.clone()),
            Some(status) if *status != record.status => report
                .status_mismatch
                .push(format!("{code}: {} / {status}", record.status)),
            Some(_) => {}
        }
    }
    for t in postgres_tickets {
        // Rows of earlier holders of a re-issued code are history (returned), not drift.
        match live.get(t.code.as_str()) {
            Some(r) if r.claim_id == t.claim_id || t.status == "returned" => {}
            _ => report.missing_in_redis.push(t.code.clone()),
        }
    }
    for list in [
        &mut report.missing_in_postgres,
        &mut report.missing_in_redis,
        &mut report.status_mismatch,
    ] {
        list.sort();
    }
    // With entries still in the log, Postgres may lag; only what the log cannot explain
    // is drift.
    let lag_explains =
        backlog > 0 && report.status_mismatch.is_empty() && report.missing_in_redis.is_empty();
    report.ok = report.stock_drift == 0
        && report.ticket_types.iter().all(|t| t.stock_drift == 0)
        && report.missing_in_redis.is_empty()
        && report.status_mismatch.is_empty()
        && (report.missing_in_postgres.is_empty() || lag_explains);
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::activity::Kind;
    use crate::ids::ActivityId;
    use crate::time::Millis;

    fn draft() -> Activity {
        Activity {
            id: ActivityId::parse("4").unwrap(),
            name: "n".into(),
            description: String::new(),
            image_url: Some("https://x/y.png".into()),
            starts_at: Millis(1_800_000_000_000),
            ends_at: Millis(1_800_000_360_000),
            status: Status::Draft,
            per_user_limit: Some(1),
            require_pass: false,
            ticket_types: vec![TicketType::default_for("n", 10, 1, Kind::Counter)],
            stock_buckets: 1,
        }
    }

    #[test]
    fn a_draft_can_change_anything_and_is_validated_as_a_whole() {
        let a = apply_patch(&draft(), br#"{"stock_total":50,"image_url":null}"#).unwrap();
        assert_eq!((a.stock_total(), a.image_url), (50, None));
        assert_eq!(a.ticket_types[0].key.as_str(), "default");
        let e = apply_patch(&draft(), br#"{"ends_at":"2020-01-01T00:00:00Z"}"#).unwrap_err();
        assert_eq!(e.code(), "invalid_request");
        assert_eq!(
            apply_patch(&draft(), br#"{"id":9}"#).unwrap_err().code(),
            "invalid_request"
        );
    }

    #[test]
    fn a_published_activity_changes_only_its_display_fields() {
        let published = Activity {
            status: Status::Published,
            ..draft()
        };
        let a = apply_patch(&published, br#"{"name":"New name"}"#).unwrap();
        assert_eq!((a.name.as_str(), a.status), ("New name", Status::Published));
        let e = apply_patch(&published, br#"{"stock_total":99}"#).unwrap_err();
        assert_eq!((e.status(), e.code()), (409, "conflict"));
        let closed = Activity {
            status: Status::Closed,
            ..draft()
        };
        assert_eq!(
            apply_patch(&closed, br#"{"name":"x"}"#)
                .unwrap_err()
                .status(),
            409
        );
    }

    fn typed_draft() -> Activity {
        let body = br#"{"name":"Show","starts_at":"2027-01-15T08:00:00Z","ends_at":"2027-01-15T08:06:00Z","ticket_types":[{"key":"vip","name":"VIP","stock_total":10,"per_user_limit":2},{"key":"std","name":"Standard","stock_total":100}]}"#;
        NewActivity::parse(body)
            .unwrap()
            .into_activity(ActivityId::from_db(4), Status::Draft)
    }

    #[test]
    fn a_drafts_types_are_replaced_each_entry_laid_over_its_current_type() {
        let a = apply_patch(
            &typed_draft(),
            br#"{"per_user_limit":3,"ticket_types":[{"key":"std","stock_total":200},{"key":"kid","name":"Kids","stock_total":5}]}"#,
        )
        .unwrap();
        let keys: Vec<&str> = a.ticket_types.iter().map(|t| t.key.as_str()).collect();
        assert_eq!(keys, ["std", "kid"], "vip left out is removed");
        assert_eq!(
            (
                a.ticket_types[0].name.as_str(),
                a.ticket_types[0].stock_total
            ),
            ("Standard", 200)
        );
        assert_eq!(a.per_user_limit, Some(3));
        let a = apply_patch(&a, br#"{"per_user_limit":null}"#).unwrap();
        assert_eq!(a.per_user_limit, None);
        for bad in [
            &br#"{"stock_total":5}"#[..],
            br#"{"ticket_types":[]}"#,
            br#"{"ticket_types":{"key":"x"}}"#,
            br#"{"ticket_types":[{"key":"new"}]}"#,
        ] {
            assert_eq!(
                apply_patch(&typed_draft(), bad).unwrap_err().code(),
                "invalid_request",
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn a_published_activitys_types_change_only_their_names_and_descriptions() {
        let published = Activity {
            status: Status::Published,
            ..typed_draft()
        };
        let a = apply_patch(
            &published,
            br#"{"ticket_types":[{"key":"vip","name":"Gold","description":"front rows"},{"key":"std","stock_total":100}]}"#,
        )
        .unwrap();
        assert_eq!(
            (
                a.ticket_types[0].name.as_str(),
                a.ticket_types[0].description.as_str()
            ),
            ("Gold", "front rows")
        );
        for (bad, says) in [
            (
                &br#"{"ticket_types":[{"key":"vip","stock_total":11},{"key":"std"}]}"#[..],
                "`stock_total` of ticket type `vip`",
            ),
            (
                br#"{"ticket_types":[{"key":"vip"}]}"#,
                "added, removed or reordered",
            ),
            (
                br#"{"ticket_types":[{"key":"std"},{"key":"vip"}]}"#,
                "added, removed or reordered",
            ),
            (
                br#"{"ticket_types":[{"key":"vip","per_user_limit":1},{"key":"std"}]}"#,
                "`per_user_limit`",
            ),
            (br#"{"per_user_limit":5}"#, "`per_user_limit` cannot change"),
        ] {
            let e = apply_patch(&published, bad).unwrap_err();
            assert_eq!(e.code(), "conflict", "{}", String::from_utf8_lossy(bad));
            assert!(e.to_string().contains(says), "{e}");
        }
    }

    fn record(claim: &str, status: &str) -> TicketRecord {
        TicketRecord {
            user: "u".into(),
            claim_id: claim.into(),
            status: status.into(),
            claimed_at: Millis(0),
            ticket_type: "default".into(),
        }
    }

    fn one_stock(total: i64, left: i64) -> Vec<TypeStock> {
        vec![TypeStock {
            key: "default".into(),
            stock_total: total,
            stock_left: left,
        }]
    }

    fn stored(code: &str, claim: &str, status: &str) -> StoredTicket {
        StoredTicket {
            code: code.into(),
            claim_id: claim.into(),
            status: status.into(),
        }
    }

    #[test]
    fn matching_stores_reconcile_including_a_reissued_code() {
        let redis = vec![
            ("A".to_string(), record("c1", "active")),
            ("B".to_string(), record("c3", "redeemed")),
        ];
        let pg = vec![
            stored("A", "c1", "active"),
            stored("B", "c2", "returned"),
            stored("B", "c3", "redeemed"),
        ];
        let r = reconcile(&one_stock(5, 3), 0, &redis, &pg);
        assert!(r.ok, "{r:?}");
        assert_eq!((r.tickets_out, r.stock_drift), (2, 0));
    }

    #[test]
    fn drift_is_reported_with_the_codes_involved() {
        let redis = vec![
            ("A".to_string(), record("c1", "active")),
            ("B".to_string(), record("c2", "returned")),
        ];
        let pg = vec![stored("B", "c2", "active"), stored("Z", "c9", "active")];
        let r = reconcile(&one_stock(5, 5), 0, &redis, &pg);
        assert!(!r.ok);
        assert_eq!(r.stock_drift, -1);
        assert_eq!(r.missing_in_postgres, vec!["A"]);
        assert_eq!(r.missing_in_redis, vec!["Z"]);
        assert_eq!(r.status_mismatch, vec!["B: returned / active"]);
    }

    #[test]
    fn a_blacklist_reason_is_optional_and_bounded() {
        assert_eq!(parse_blacklist_reason(b"").unwrap(), "");
        assert_eq!(
            parse_blacklist_reason(br#"{"reason":"bot"}"#).unwrap(),
            "bot"
        );
        let long = format!(r#"{{"reason":"{}"}}"#, "x".repeat(501));
        for body in [long.as_str(), r#"{"why":"x"}"#, "[1]", "nope"] {
            assert_eq!(
                parse_blacklist_reason(body.as_bytes()).unwrap_err().code(),
                "invalid_request"
            );
        }
    }

    #[test]
    fn drift_is_counted_per_type() {
        let mut vip = record("c1", "active");
        vip.ticket_type = "vip".into();
        let redis = vec![
            ("A".to_string(), vip),
            ("B".to_string(), record("c2", "active")),
        ];
        let pg = vec![stored("A", "c1", "active"), stored("B", "c2", "active")];
        let types = [
            TypeStock {
                key: "vip".into(),
                stock_total: 2,
                stock_left: 1,
            },
            // One ticket out, but no stock taken: drift in this type alone.
            TypeStock {
                key: "default".into(),
                stock_total: 3,
                stock_left: 3,
            },
        ];
        let r = reconcile(&types, 0, &redis, &pg);
        assert!(!r.ok);
        let drifts: Vec<(&str, i64, i64)> = r
            .ticket_types
            .iter()
            .map(|t| (t.key.as_str(), t.tickets_out, t.stock_drift))
            .collect();
        assert_eq!(drifts, [("vip", 1, 0), ("default", 1, -1)]);
    }

    #[test]
    fn tickets_still_in_the_log_are_not_drift() {
        let redis = vec![("A".to_string(), record("c1", "active"))];
        let r = reconcile(&one_stock(5, 4), 1, &redis, &[]);
        assert!(r.ok, "{r:?}");
        assert_eq!(r.missing_in_postgres, vec!["A"]);
        assert!(!reconcile(&one_stock(5, 4), 0, &redis, &[]).ok);
    }
}
