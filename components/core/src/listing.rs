//! The operator's lists: every activity whatever its status (`GET /admin/activities`) and
//! the blacklist (`GET /admin/blacklist`), a page at a time, with their query strings
//! validated here. Cursors are opaque to clients: the last key of the previous page.

use crate::activity::{Status, DEFAULT_PAGE, MAX_PAGE};
use crate::error::ApiError;

/// `GET /admin/activities?status=<s>&cursor=<c>&limit=<n>`, newest (highest id) first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminActivityQuery {
    pub status: Option<Status>,
    /// Only ids below this one; 0 for the first page.
    pub before: i64,
    pub limit: i64,
}

impl AdminActivityQuery {
    pub fn parse(query: &str) -> Result<Self, ApiError> {
        let mut q = AdminActivityQuery {
            status: None,
            before: 0,
            limit: DEFAULT_PAGE,
        };
        for (name, value) in pairs(query) {
            match name {
                "status" => {
                    q.status = Some(Status::parse(value).ok_or_else(|| {
                        ApiError::invalid("status must be draft, published or closed")
                    })?)
                }
                "cursor" => {
                    q.before = value
                        .parse()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(bad_cursor)?
                }
                "limit" => q.limit = limit(value)?,
                other => return Err(unknown(other)),
            }
        }
        Ok(q)
    }
}

/// `GET /admin/blacklist?cursor=<c>&limit=<n>`, by user id. The cursor is the last user
/// id of the previous page in hex, so any user id travels in a query string unescaped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlacklistQuery {
    /// Only user ids after this one; empty for the first page.
    pub after: String,
    pub limit: i64,
}

impl BlacklistQuery {
    pub fn parse(query: &str) -> Result<Self, ApiError> {
        let mut q = BlacklistQuery {
            after: String::new(),
            limit: DEFAULT_PAGE,
        };
        for (name, value) in pairs(query) {
            match name {
                "cursor" => q.after = from_hex(value).ok_or_else(bad_cursor)?,
                "limit" => q.limit = limit(value)?,
                other => return Err(unknown(other)),
            }
        }
        Ok(q)
    }
}

/// The cursor of the page after one that ended with `user_id`.
pub fn blacklist_cursor(user_id: &str) -> String {
    user_id.bytes().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(text: &str) -> Option<String> {
    // A user id is at most 64 characters of up to 4 bytes each.
    if text.is_empty() || !text.len().is_multiple_of(2) || text.len() > 512 {
        return None;
    }
    let bytes = (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    String::from_utf8(bytes).ok()
}

fn pairs(query: &str) -> impl Iterator<Item = (&str, &str)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
}

fn limit(value: &str) -> Result<i64, ApiError> {
    value
        .parse()
        .ok()
        .filter(|n| (1..=MAX_PAGE).contains(n))
        .ok_or_else(|| ApiError::invalid(format!("limit must be between 1 and {MAX_PAGE}")))
}

fn bad_cursor() -> ApiError {
    ApiError::invalid("cursor is not one this API gave out")
}

fn unknown(name: &str) -> ApiError {
    ApiError::invalid(format!(
        "unknown query parameter `{}`",
        name.chars().take(40).collect::<String>()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_list_defaults_to_every_status_newest_first() {
        assert_eq!(
            AdminActivityQuery::parse("").unwrap(),
            AdminActivityQuery {
                status: None,
                before: 0,
                limit: DEFAULT_PAGE
            }
        );
        assert_eq!(
            AdminActivityQuery::parse("status=draft&cursor=42&limit=5").unwrap(),
            AdminActivityQuery {
                status: Some(Status::Draft),
                before: 42,
                limit: 5
            }
        );
    }

    #[test]
    fn a_bad_status_cursor_limit_or_parameter_is_a_400() {
        for bad in [
            "status=open",
            "status=",
            "status=DRAFT",
            "cursor=0",
            "cursor=-3",
            "cursor=x",
            "limit=0",
            "limit=101",
            "page=2",
        ] {
            assert_eq!(
                AdminActivityQuery::parse(bad).unwrap_err().code(),
                "invalid_request",
                "{bad}"
            );
        }
    }

    #[test]
    fn blacklist_cursors_round_trip_any_user_id() {
        for user in ["alice", "用户 1", "a&b=c%"] {
            let q = BlacklistQuery::parse(&format!("cursor={}", blacklist_cursor(user))).unwrap();
            assert_eq!(q.after, user);
        }
        assert_eq!(BlacklistQuery::parse("").unwrap().after, "");
        for bad in [
            "cursor=",
            "cursor=abc",
            "cursor=zz",
            "cursor=ff",
            "limit=1000",
            "x=1",
        ] {
            assert_eq!(
                BlacklistQuery::parse(bad).unwrap_err().code(),
                "invalid_request",
                "{bad}"
            );
        }
    }
}
