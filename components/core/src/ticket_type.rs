//! Ticket types: the kinds of ticket one activity offers (seed 001's 票表, seed 002's seat
//! classes), each with its own stock, per-user limit, kind and optional window inside the
//! activity's. An activity created without types has one, [`DEFAULT_TYPE`].

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::activity::{Kind, MAX_PER_USER_LIMIT, MAX_STOCK};
use crate::error::ApiError;
use crate::time::Millis;

/// The key of the one type an activity created without types has.
pub const DEFAULT_TYPE: &str = "default";
pub const MAX_TYPES: usize = 20;

/// A ticket type's key: 1-32 characters of `[a-z0-9_-]`, stable for the activity's life.
/// The alphabet keeps keys safe inside Redis hash fields (`<key>:limit`, `user|key`) and
/// the comma list claim.lua reads.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct TypeKey(String);

impl TypeKey {
    pub fn parse(text: &str) -> Result<Self, ApiError> {
        let ok = (1..=32).contains(&text.len())
            && text
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !ok {
            return Err(ApiError::invalid(
                "a ticket type key is 1-32 characters of a-z 0-9 _ -",
            ));
        }
        Ok(TypeKey(text.to_string()))
    }

    pub fn default_type() -> Self {
        TypeKey(DEFAULT_TYPE.to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TypeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One ticket type, validated. A window bound of `None` is the activity's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TicketType {
    pub key: TypeKey,
    pub name: String,
    pub description: String,
    pub stock_total: i64,
    pub per_user_limit: i64,
    pub kind: Kind,
    pub starts_at: Option<Millis>,
    pub ends_at: Option<Millis>,
}

/// A type as a create or patch request writes it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TicketTypeBody {
    key: String,
    name: String,
    #[serde(default)]
    description: Option<String>,
    stock_total: i64,
    #[serde(default)]
    per_user_limit: Option<i64>,
    #[serde(default)]
    kind: Option<Kind>,
    #[serde(default)]
    starts_at: Option<String>,
    #[serde(default)]
    ends_at: Option<String>,
}

impl TicketType {
    /// The `ticket_types` of a create request, each checked on its own and against the
    /// activity's window `[starts_at, ends_at)`.
    pub fn parse_list(
        value: serde_json::Value,
        starts_at: Millis,
        ends_at: Millis,
    ) -> Result<Vec<TicketType>, ApiError> {
        let serde_json::Value::Array(items) = value else {
            return Err(ApiError::invalid("ticket_types must be an array"));
        };
        if !(1..=MAX_TYPES).contains(&items.len()) {
            return Err(ApiError::invalid(format!(
                "an activity offers 1-{MAX_TYPES} ticket types"
            )));
        }
        let mut types: Vec<TicketType> = Vec::with_capacity(items.len());
        for (i, item) in items.into_iter().enumerate() {
            let t = Self::parse_one(item, starts_at, ends_at)
                .map_err(|e| ApiError::invalid(format!("ticket_types[{i}]: {e}")))?;
            if types.iter().any(|other| other.key == t.key) {
                return Err(ApiError::invalid(format!(
                    "ticket_types[{i}]: the key `{}` is used twice",
                    t.key
                )));
            }
            types.push(t);
        }
        Ok(types)
    }

    fn parse_one(
        value: serde_json::Value,
        starts_at: Millis,
        ends_at: Millis,
    ) -> Result<TicketType, ApiError> {
        let b: TicketTypeBody =
            serde_json::from_value(value).map_err(|e| ApiError::invalid(e.to_string()))?;
        let key = TypeKey::parse(&b.key)?;
        let name = b.name.trim().to_string();
        if name.is_empty() || name.chars().count() > 200 {
            return Err(ApiError::invalid("name must be 1-200 characters"));
        }
        let description = b.description.unwrap_or_default();
        if description.chars().count() > 2000 {
            return Err(ApiError::invalid(
                "description must be at most 2000 characters",
            ));
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
        let instant = |name: &str, text: Option<String>| {
            text.map(|t| {
                Millis::parse_rfc3339(&t).map_err(|e| ApiError::invalid(format!("{name}: {e}")))
            })
            .transpose()
        };
        let t = TicketType {
            key,
            name,
            description,
            stock_total: b.stock_total,
            per_user_limit,
            kind: b.kind.unwrap_or(Kind::Counter),
            starts_at: instant("starts_at", b.starts_at)?,
            ends_at: instant("ends_at", b.ends_at)?,
        };
        let (opens, closes) = t.window(starts_at, ends_at);
        if opens < starts_at || closes > ends_at {
            return Err(ApiError::invalid(
                "the type's window must lie inside the activity's",
            ));
        }
        if closes <= opens {
            return Err(ApiError::invalid("ends_at must be after starts_at"));
        }
        Ok(t)
    }

    /// The one type of an activity created without types.
    pub fn default_for(name: &str, stock_total: i64, per_user_limit: i64, kind: Kind) -> Self {
        TicketType {
            key: TypeKey::default_type(),
            name: name.to_string(),
            description: String::new(),
            stock_total,
            per_user_limit,
            kind,
            starts_at: None,
            ends_at: None,
        }
    }

    /// When the type opens and closes, given the activity's window.
    pub fn window(&self, starts_at: Millis, ends_at: Millis) -> (Millis, Millis) {
        (
            self.starts_at.unwrap_or(starts_at),
            self.ends_at.unwrap_or(ends_at),
        )
    }

    /// The type as a request writes it: what a patch is laid over.
    pub fn to_body(&self) -> serde_json::Value {
        serde_json::json!({
            "key": self.key,
            "name": self.name,
            "description": self.description,
            "stock_total": self.stock_total,
            "per_user_limit": self.per_user_limit,
            "kind": self.kind,
            "starts_at": self.starts_at,
            "ends_at": self.ends_at,
        })
    }

    /// The public view; the live `stock_left` is filled in by the caller.
    pub fn view(&self, stock_left: i64) -> serde_json::Value {
        let mut v = self.to_body();
        v["stock_left"] = stock_left.into();
        v
    }

    /// The types of one activity as Postgres aggregates them into one JSON text (see the
    /// Spin glue's `TYPES_JSON`): window bounds as epoch milliseconds or null.
    pub fn list_from_db(json: &str) -> Option<Vec<TicketType>> {
        #[derive(Deserialize)]
        struct Row {
            key: String,
            name: String,
            description: String,
            stock_total: i64,
            per_user_limit: i64,
            kind: String,
            starts_at: Option<i64>,
            ends_at: Option<i64>,
        }
        let rows: Vec<Row> = serde_json::from_str(json).ok()?;
        rows.into_iter()
            .map(|r| {
                Some(TicketType {
                    key: TypeKey::parse(&r.key).ok()?,
                    name: r.name,
                    description: r.description,
                    stock_total: r.stock_total,
                    per_user_limit: r.per_user_limit,
                    kind: Kind::parse(&r.kind)?,
                    starts_at: r.starts_at.map(Millis),
                    ends_at: r.ends_at.map(Millis),
                })
            })
            .collect()
    }
}

/// The fields of a type that decide who gets what: fixed once the activity is published.
pub fn fixed_fields_differ(a: &TicketType, b: &TicketType) -> Option<&'static str> {
    if a.stock_total != b.stock_total {
        Some("stock_total")
    } else if a.per_user_limit != b.per_user_limit {
        Some("per_user_limit")
    } else if a.kind != b.kind {
        Some("kind")
    } else if a.starts_at != b.starts_at {
        Some("starts_at")
    } else if a.ends_at != b.ends_at {
        Some("ends_at")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const START: Millis = Millis(1_800_000_000_000);
    const END: Millis = Millis(1_800_000_360_000);

    fn parse(json: &str) -> Result<Vec<TicketType>, ApiError> {
        TicketType::parse_list(serde_json::from_str(json).unwrap(), START, END)
    }

    #[test]
    fn keys_are_short_lowercase_words() {
        for good in ["vip", "a", "seat_2-b", &"k".repeat(32)] {
            assert!(TypeKey::parse(good).is_ok(), "{good}");
        }
        for bad in ["", "VIP", "a b", "a|b", "a,b", "a:b", "é", &"k".repeat(33)] {
            assert_eq!(
                TypeKey::parse(bad).unwrap_err().code(),
                "invalid_request",
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_type_defaults_to_one_per_user_a_counter_and_the_activitys_window() {
        let t = &parse(r#"[{"key":"vip","name":"VIP","stock_total":5}]"#).unwrap()[0];
        assert_eq!((t.per_user_limit, t.kind), (1, Kind::Counter));
        assert_eq!(t.window(START, END), (START, END));
        assert_eq!(t.description, "");
    }

    #[test]
    fn a_window_inside_the_activitys_is_kept() {
        let t = &parse(
            r#"[{"key":"am","name":"Morning","stock_total":5,"starts_at":"2027-01-15T08:00:00Z","ends_at":null}]"#,
        )
        .unwrap()[0];
        assert_eq!(t.starts_at, Some(Millis(1_800_000_000_000)));
        assert_eq!(t.ends_at, None);
    }

    #[test]
    fn bad_lists_and_types_are_invalid_and_say_which_entry() {
        for json in [
            "[]",
            "{}",
            r#"[{"key":"a","name":"A","stock_total":1},{"key":"a","name":"B","stock_total":1}]"#,
            r#"[{"key":"A","name":"A","stock_total":1}]"#,
            r#"[{"key":"a","name":"","stock_total":1}]"#,
            r#"[{"key":"a","name":"A","stock_total":-1}]"#,
            r#"[{"key":"a","name":"A","stock_total":1,"per_user_limit":0}]"#,
            r#"[{"key":"a","name":"A","stock_total":1,"kind":"lottery"}]"#,
            r#"[{"key":"a","name":"A","stock_total":1,"extra":1}]"#,
            r#"[{"key":"a","name":"A","stock_total":1,"starts_at":"2020-01-01T00:00:00Z"}]"#,
            r#"[{"key":"a","name":"A","stock_total":1,"ends_at":"2099-01-01T00:00:00Z"}]"#,
            r#"[{"key":"a","name":"A","stock_total":1,"starts_at":"2027-01-15T08:03:00Z","ends_at":"2027-01-15T08:02:00Z"}]"#,
        ] {
            assert_eq!(parse(json).unwrap_err().code(), "invalid_request", "{json}");
        }
        let many: Vec<String> = (0..21)
            .map(|i| format!(r#"{{"key":"t{i}","name":"T","stock_total":1}}"#))
            .collect();
        assert!(parse(&format!("[{}]", many.join(","))).is_err());
        let e = parse(
            r#"[{"key":"a","name":"A","stock_total":1},{"key":"B","name":"B","stock_total":1}]"#,
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("ticket_types[1]:"), "{e}");
    }

    #[test]
    fn types_read_back_from_postgres_json() {
        let types = TicketType::list_from_db(
            r#"[{"key":"default","name":"n","description":"","stock_total":3,"per_user_limit":2,"kind":"codes","starts_at":null,"ends_at":1000}]"#,
        )
        .unwrap();
        assert_eq!(types[0].kind, Kind::Codes);
        assert_eq!(types[0].ends_at, Some(Millis(1000)));
        assert!(TicketType::list_from_db(r#"[{"key":"BAD"}]"#).is_none());
        assert_eq!(TicketType::list_from_db("[]"), Some(Vec::new()));
    }
}
