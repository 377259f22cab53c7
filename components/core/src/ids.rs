//! Validated identifiers, parsed once at the edge so the rest of the code cannot hold a bad one.

use std::fmt;

use crate::error::ApiError;

/// A server-assigned activity id: a positive integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct ActivityId(i64);

impl ActivityId {
    /// Digits only, no sign, no leading zeros, at most 15 digits (safe in JSON numbers).
    pub fn parse(text: &str) -> Result<Self, ApiError> {
        let ok = !text.is_empty()
            && text.len() <= 15
            && text.bytes().all(|b| b.is_ascii_digit())
            && !text.starts_with('0');
        if !ok {
            return Err(ApiError::NotFound);
        }
        text.parse().map(ActivityId).map_err(|_| ApiError::NotFound)
    }

    pub fn from_db(id: i64) -> Self {
        ActivityId(id)
    }

    pub fn get(self) -> i64 {
        self.0
    }
}

impl fmt::Display for ActivityId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A user id: the JWT `sub`, 1–64 printable ASCII characters without spaces. Restricting
/// the alphabet keeps ids safe inside Redis keys, log entries and CSV exports.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct UserId(String);

impl UserId {
    pub fn parse(text: &str) -> Option<Self> {
        let ok = (1..=64).contains(&text.len())
            && text
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'|' && b != b'"' && b != b'\\');
        ok.then(|| UserId(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A ticket code as users see it: `<activity id>-<code>`, so the owning activity (and its
/// Redis shard) is known from the code alone. The code part is 1–64 characters of
/// `[A-Za-z0-9_-]` (uploaded pools may use their own codes).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TicketRef {
    pub activity: ActivityId,
    pub code: String,
}

impl TicketRef {
    pub fn parse(text: &str) -> Result<Self, ApiError> {
        let (activity, code) = text.split_once('-').ok_or(ApiError::NotFound)?;
        let activity = ActivityId::parse(activity)?;
        if !is_code(code) {
            return Err(ApiError::NotFound);
        }
        Ok(TicketRef {
            activity,
            code: code.to_string(),
        })
    }
}

impl TicketRef {
    /// The code as its holder reads, copies and redeems it elsewhere: an uploaded pool code
    /// exactly as uploaded (a partner's till knows nothing of activity ids), a generated
    /// code with its activity (`<activity id>-<code>`, as it always was). The route id is
    /// always the latter (`Display`).
    pub fn shown(&self, pooled: bool) -> String {
        if pooled {
            self.code.clone()
        } else {
            self.to_string()
        }
    }
}

impl fmt::Display for TicketRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.activity, self.code)
    }
}

/// Whether `code` is acceptable as the code part of a ticket.
pub fn is_code(code: &str) -> bool {
    (1..=64).contains(&code.len())
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A client's `Idempotency-Key`: 1–128 visible ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn parse(text: &str) -> Result<Self, ApiError> {
        let ok = (1..=128).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_graphic());
        if !ok {
            return Err(ApiError::invalid(
                "Idempotency-Key must be 1-128 visible ASCII characters",
            ));
        }
        Ok(IdempotencyKey(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activity_ids_are_plain_positive_integers() {
        assert_eq!(ActivityId::parse("42").unwrap().get(), 42);
        for bad in [
            "",
            "0",
            "042",
            "-1",
            "+1",
            "1e3",
            "abc",
            "9999999999999999",
            " 1",
            "٤٢",
        ] {
            assert_eq!(ActivityId::parse(bad), Err(ApiError::NotFound), "{bad:?}");
        }
    }

    #[test]
    fn user_ids_are_short_visible_ascii() {
        assert!(UserId::parse("u-1@example").is_some());
        assert!(UserId::parse(&"a".repeat(64)).is_some());
        for bad in ["", " ", "a b", "a|b", "a\"b", "é", &"a".repeat(65)] {
            assert!(UserId::parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn ticket_refs_carry_their_activity() {
        let t = TicketRef::parse("42-AB12-7").unwrap();
        assert_eq!(t.activity.get(), 42);
        assert_eq!(t.code, "AB12-7");
        assert_eq!(t.to_string(), "42-AB12-7");
        assert_eq!(t.shown(false), "42-AB12-7");
        assert_eq!(t.shown(true), "AB12-7", "a pool code is shown as uploaded");
        for bad in ["", "42", "42-", "x-1", "0-1", "42-a b", "42-'; DROP"] {
            assert!(TicketRef::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn idempotency_keys_are_bounded() {
        assert!(IdempotencyKey::parse("retry-1").is_ok());
        assert!(IdempotencyKey::parse("").is_err());
        assert!(IdempotencyKey::parse(&"k".repeat(129)).is_err());
        assert!(IdempotencyKey::parse("has space").is_err());
    }
}
