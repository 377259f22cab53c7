//! The operator's use cases that are more than one statement: changing an activity,
//! reconciling Redis with Postgres, and the shapes of stats and blacklist requests.

use std::collections::HashMap;

use serde::Serialize;

use crate::activity::{Activity, NewActivity, Status, MAX_ACTIVITY_BODY};
use crate::error::ApiError;
use crate::http::{json_body, json_object, reject_unknown};
use crate::ticket::TicketRecord;

/// Fields that describe an activity to people; they may change after publish. Everything
/// else decides who gets what, so it is fixed once claims can start.
const DISPLAY_FIELDS: [&str; 3] = ["name", "description", "image_url"];
const ALL_FIELDS: [&str; 9] = [
    "name",
    "description",
    "image_url",
    "starts_at",
    "ends_at",
    "stock_total",
    "per_user_limit",
    "kind",
    "require_pass",
];

/// `PATCH /admin/activities/{id}`: the activity after the change, validated exactly like a
/// new one (the patch is laid over the current definition and parsed as a create request).
pub fn apply_patch(current: &Activity, body: &[u8]) -> Result<Activity, ApiError> {
    let patch = json_object(body, MAX_ACTIVITY_BODY)?;
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
                    "`{fixed}` cannot change after publish; only name, description and image_url can"
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
        "stock_total": current.stock_total,
        "per_user_limit": current.per_user_limit,
        "kind": current.kind,
        "require_pass": current.require_pass,
    });
    for (field, value) in patch {
        merged[field.as_str()] = value;
    }
    if merged["image_url"].is_null() {
        merged.as_object_mut().map(|m| m.remove("image_url"));
    }
    let parsed = NewActivity::parse(merged.to_string().as_bytes())?;
    Ok(Activity {
        id: current.id,
        name: parsed.name,
        description: parsed.description,
        image_url: parsed.image_url,
        starts_at: parsed.starts_at,
        ends_at: parsed.ends_at,
        status: current.status,
        stock_total: parsed.stock_total,
        per_user_limit: parsed.per_user_limit,
        kind: parsed.kind,
        require_pass: parsed.require_pass,
    })
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
}

/// Compares the activity's tickets hash and stock in Redis with its ticket rows.
pub fn reconcile(
    stock_total: i64,
    stock_left: i64,
    backlog: i64,
    redis_tickets: &[(String, TicketRecord)],
    postgres_tickets: &[StoredTicket],
) -> Reconciliation {
    let tickets_out = redis_tickets
        .iter()
        .filter(|(_, r)| r.status != "returned")
        .count() as i64;
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
            stock_total: 10,
            per_user_limit: 1,
            kind: Kind::Counter,
            require_pass: false,
        }
    }

    #[test]
    fn a_draft_can_change_anything_and_is_validated_as_a_whole() {
        let a = apply_patch(&draft(), br#"{"stock_total":50,"image_url":null}"#).unwrap();
        assert_eq!((a.stock_total, a.image_url), (50, None));
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

    fn record(claim: &str, status: &str) -> TicketRecord {
        TicketRecord {
            user: "u".into(),
            claim_id: claim.into(),
            status: status.into(),
            claimed_at: Millis(0),
        }
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
        let r = reconcile(5, 3, 0, &redis, &pg);
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
        let r = reconcile(5, 5, 0, &redis, &pg);
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
    fn tickets_still_in_the_log_are_not_drift() {
        let redis = vec![("A".to_string(), record("c1", "active"))];
        let r = reconcile(5, 4, 1, &redis, &[]);
        assert!(r.ok, "{r:?}");
        assert_eq!(r.missing_in_postgres, vec!["A"]);
        assert!(!reconcile(5, 4, 0, &redis, &[]).ok);
    }
}
