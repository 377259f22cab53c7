//! Activities: the admin's create request, validated, and the public view served to clients.

use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::ids::ActivityId;
use crate::keys::{ActivityKeys, DRAIN_GROUP};
use crate::scripts::{Arg, Reply};
use crate::time::Millis;

pub const MAX_ACTIVITY_BODY: usize = 16 * 1024;
pub const MAX_STOCK: i64 = 10_000_000;
pub const MAX_PER_USER_LIMIT: i64 = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Counter,
    Codes,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Codes => "codes",
        }
    }

    pub fn parse(text: &str) -> Option<Kind> {
        match text {
            "counter" => Some(Kind::Counter),
            "codes" => Some(Kind::Codes),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Draft,
    Published,
    Closed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Draft => "draft",
            Status::Published => "published",
            Status::Closed => "closed",
        }
    }

    pub fn parse(text: &str) -> Option<Status> {
        match text {
            "draft" => Some(Status::Draft),
            "published" => Some(Status::Published),
            "closed" => Some(Status::Closed),
            _ => None,
        }
    }
}

/// `POST /admin/activities`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewActivity {
    pub name: String,
    pub description: String,
    pub image_url: Option<String>,
    pub starts_at: Millis,
    pub ends_at: Millis,
    pub stock_total: i64,
    pub per_user_limit: i64,
    pub kind: Kind,
    pub require_pass: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewActivityBody {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    image_url: Option<String>,
    starts_at: String,
    ends_at: String,
    stock_total: i64,
    #[serde(default)]
    per_user_limit: Option<i64>,
    #[serde(default)]
    kind: Option<Kind>,
    #[serde(default)]
    require_pass: Option<bool>,
}

impl NewActivity {
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let b: NewActivityBody = crate::http::json_body(body, MAX_ACTIVITY_BODY)?;
        let name = b.name.trim().to_string();
        if name.is_empty() || name.chars().count() > 200 {
            return Err(ApiError::invalid("name must be 1-200 characters"));
        }
        let description = b.description.unwrap_or_default();
        if description.chars().count() > 5000 {
            return Err(ApiError::invalid(
                "description must be at most 5000 characters",
            ));
        }
        if let Some(url) = &b.image_url {
            let ok = url.len() <= 2048
                && (url.starts_with("https://") || url.starts_with("http://"))
                && !url.chars().any(|c| c.is_whitespace() || c.is_control());
            if !ok {
                return Err(ApiError::invalid(
                    "image_url must be an http(s) URL of at most 2048 characters",
                ));
            }
        }
        let starts_at = Millis::parse_rfc3339(&b.starts_at)
            .map_err(|e| ApiError::invalid(format!("starts_at: {e}")))?;
        let ends_at = Millis::parse_rfc3339(&b.ends_at)
            .map_err(|e| ApiError::invalid(format!("ends_at: {e}")))?;
        if ends_at <= starts_at {
            return Err(ApiError::invalid("ends_at must be after starts_at"));
        }
        if !(0..=MAX_STOCK).contains(&b.stock_total) {
            return Err(ApiError::invalid(format!(
                "stock_total must be between 0 and {MAX_STOCK}"
            )));
        }
        let per_user_limit = b.per_user_limit.unwrap_or(1);
        if !(1..=MAX_PER_USER_LIMIT).contains(&per_user_limit) {
            return Err(ApiError::invalid(format!(
                "per_user_limit must be between 1 and {MAX_PER_USER_LIMIT}"
            )));
        }
        Ok(NewActivity {
            name,
            description,
            image_url: b.image_url,
            starts_at,
            ends_at,
            stock_total: b.stock_total,
            per_user_limit,
            kind: b.kind.unwrap_or(Kind::Counter),
            require_pass: b.require_pass.unwrap_or(false),
        })
    }
}

/// An activity as stored in Postgres (the source of truth for definitions).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Activity {
    pub id: ActivityId,
    pub name: String,
    pub description: String,
    pub image_url: Option<String>,
    pub starts_at: Millis,
    pub ends_at: Millis,
    pub status: Status,
    pub stock_total: i64,
    pub per_user_limit: i64,
    pub kind: Kind,
    pub require_pass: bool,
}

impl Activity {
    /// The public JSON, with `stock_left` filled in from Redis by the caller.
    pub fn view(&self, stock_left: i64) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        v["stock_left"] = stock_left.into();
        v
    }

    /// The publish script's KEYS and ARGV for this activity; `already_issued` is the count of
    /// live tickets Postgres holds (0 on a first publish).
    pub fn publish_command(&self, already_issued: i64) -> (Vec<String>, Vec<Arg>) {
        let k = ActivityKeys::new(self.id);
        let keys = vec![k.meta(), k.stock(), k.log(), k.view()];
        let argv = vec![
            Arg::Int(self.id.get()),
            Arg::Int(self.starts_at.0),
            Arg::Int(self.ends_at.0),
            Arg::Int(self.per_user_limit),
            Arg::from(self.kind.as_str()),
            Arg::Int(i64::from(self.require_pass)),
            Arg::Int(self.stock_total),
            Arg::from(self.status.as_str()),
            Arg::from(DRAIN_GROUP),
            Arg::Int((self.stock_total - already_issued).max(0)),
        ];
        (keys, argv)
    }
}

/// `{ loaded, stock_left }` from publish.lua.
pub fn decode_publish(reply: &[Reply]) -> Result<(bool, i64), ApiError> {
    match (
        reply.first().and_then(Reply::as_int),
        reply.get(1).and_then(Reply::as_int),
    ) {
        (Some(loaded), Some(stock_left)) => Ok((loaded == 1, stock_left)),
        _ => Err(ApiError::Internal),
    }
}

/// Activities per page of `GET /api/activities`, unless `limit` says otherwise.
pub const DEFAULT_PAGE: i64 = 20;
pub const MAX_PAGE: i64 = 100;
/// Cached listing pages live briefly: a new activity shows up within this time.
pub const LIST_TTL_MS: i64 = 2_000;

/// `GET /api/activities?cursor=<c>&limit=<n>`: the cursor is the `next_cursor` of the
/// previous page (opaque to clients; it is the last id seen).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListQuery {
    pub after: i64,
    pub limit: i64,
}

impl ListQuery {
    pub fn parse(query: &str) -> Result<Self, ApiError> {
        let mut q = ListQuery {
            after: 0,
            limit: DEFAULT_PAGE,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            match name {
                "cursor" => {
                    q.after =
                        value.parse().ok().filter(|n| *n >= 0).ok_or_else(|| {
                            ApiError::invalid("cursor is not one this API gave out")
                        })?
                }
                "limit" => {
                    q.limit = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=MAX_PAGE).contains(n))
                        .ok_or_else(|| {
                            ApiError::invalid(format!("limit must be between 1 and {MAX_PAGE}"))
                        })?
                }
                other => {
                    return Err(ApiError::invalid(format!(
                        "unknown query parameter `{}`",
                        other.chars().take(40).collect::<String>()
                    )))
                }
            }
        }
        Ok(q)
    }
}

/// What the activity cache holds for an id Postgres does not know, so a flood of random
/// ids is answered from Redis.
pub const NOT_FOUND_MARKER: &str = "-";
/// Cached views live this long, plus up to [`VIEW_TTL_JITTER_MS`], so entries written
/// together do not expire together.
pub const VIEW_TTL_MS: i64 = 60_000;
pub const VIEW_TTL_JITTER_MS: i64 = 15_000;
pub const NOT_FOUND_TTL_MS: i64 = 30_000;

/// Time-to-live for a cached view, spread by a random value.
pub fn view_ttl_ms(random: u32) -> i64 {
    VIEW_TTL_MS + i64::from(random) % VIEW_TTL_JITTER_MS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(extra: &str) -> Vec<u8> {
        format!(
            r#"{{"name":"Free ride","starts_at":"2026-01-01T00:00:00Z","ends_at":"2026-01-02T00:00:00Z","stock_total":1000{extra}}}"#
        )
        .into_bytes()
    }

    #[test]
    fn defaults_are_one_per_user_and_a_counter() {
        let a = NewActivity::parse(&body("")).unwrap();
        assert_eq!(
            (a.per_user_limit, a.kind, a.require_pass),
            (1, Kind::Counter, false)
        );
        assert_eq!(a.description, "");
    }

    #[test]
    fn activity_is_refused_when_it_ends_before_it_starts() {
        let b = br#"{"name":"x","starts_at":"2026-01-02T00:00:00Z","ends_at":"2026-01-01T00:00:00Z","stock_total":1}"#;
        assert_eq!(NewActivity::parse(b).unwrap_err().code(), "invalid_request");
    }

    #[test]
    fn wrong_types_and_out_of_range_values_are_invalid() {
        for extra in [
            r#","per_user_limit":0"#,
            r#","per_user_limit":"2""#,
            r#","kind":"lottery""#,
            r#","require_pass":"yes""#,
            r#","image_url":"javascript:alert(1)""#,
            r#","unknown":1"#,
        ] {
            assert!(NewActivity::parse(&body(extra)).is_err(), "{extra}");
        }
        assert!(NewActivity::parse(br#"{"name":"","starts_at":"2026-01-01T00:00:00Z","ends_at":"2026-01-02T00:00:00Z","stock_total":1}"#).is_err());
        assert!(NewActivity::parse(br#"{"name":"x","starts_at":"2026-01-01T00:00:00Z","ends_at":"2026-01-02T00:00:00Z","stock_total":-1}"#).is_err());
        assert!(NewActivity::parse(b"[]").is_err());
        assert!(NewActivity::parse(&vec![b' '; MAX_ACTIVITY_BODY + 1]).is_err());
    }

    #[test]
    fn the_view_has_rfc3339_times_and_live_stock() {
        let a = Activity {
            id: ActivityId::parse("3").unwrap(),
            name: "n".into(),
            description: String::new(),
            image_url: None,
            starts_at: Millis(0),
            ends_at: Millis(1000),
            status: Status::Published,
            stock_total: 10,
            per_user_limit: 1,
            kind: Kind::Counter,
            require_pass: false,
        };
        let v = a.view(7);
        assert_eq!(v["starts_at"], "1970-01-01T00:00:00Z");
        assert_eq!(v["status"], "published");
        assert_eq!(v["stock_left"], 7);
        assert_eq!(v["id"], 3);
    }

    #[test]
    fn list_queries_default_and_bound_the_page() {
        assert_eq!(
            ListQuery::parse("").unwrap(),
            ListQuery {
                after: 0,
                limit: DEFAULT_PAGE
            }
        );
        assert_eq!(
            ListQuery::parse("cursor=42&limit=5").unwrap(),
            ListQuery {
                after: 42,
                limit: 5
            }
        );
        for bad in [
            "limit=0",
            "limit=101",
            "limit=x",
            "cursor=-1",
            "cursor=",
            "page=2",
        ] {
            assert_eq!(
                ListQuery::parse(bad).unwrap_err().code(),
                "invalid_request",
                "{bad}"
            );
        }
    }

    #[test]
    fn view_ttls_are_spread() {
        assert_eq!(view_ttl_ms(0), VIEW_TTL_MS);
        assert!(view_ttl_ms(u32::MAX) < VIEW_TTL_MS + VIEW_TTL_JITTER_MS);
    }
}
