//! The drain token: a shared secret a scheduler presents to run the drain, and nothing else.
//!
//! Schedulers differ in what they can send. A Kubernetes CronJob or a ticker sends a header
//! (`Authorization: Bearer <token>`); Akamai's `spin aka cron` can only name a path and
//! query, so the token may also come as `?token=`. An operator's JWT still runs the drain; a
//! drain token on any other admin route is refused with `403` (it is a known credential,
//! just not one for that route). An empty `drain_token` turns the token off.

use sha2::{Digest, Sha256};

/// What a request presents as a drain token: the bearer credential, else the `token`
/// query parameter (percent-decoding is not needed: tokens are `[A-Za-z0-9._~-]`, which
/// DEPLOY.md asks for, and anything else simply does not match).
pub fn presented<'a>(authorization: Option<&'a str>, query: &'a str) -> Option<&'a str> {
    let bearer = authorization.and_then(|h| {
        let (scheme, rest) = h.trim().split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
    });
    bearer.filter(|t| !t.is_empty()).or_else(|| {
        query
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .find(|(k, _)| *k == "token")
            .map(|(_, v)| v)
            .filter(|v| !v.is_empty())
    })
}

/// Whether `presented` is the configured token (or, during a rotation, the previous one).
/// Compared in constant time over fixed-length digests, so neither the content nor the
/// length of the configured token leaks through timing. An empty configured token matches
/// nothing.
pub fn matches(presented: &str, current: Option<&str>, previous: Option<&str>) -> bool {
    let digest = |t: &str| Sha256::digest(t.as_bytes());
    let given = digest(presented);
    // Both are compared whatever the first gives, so a rotation shows no timing either.
    [current, previous]
        .into_iter()
        .map(|configured| match configured.map(str::trim) {
            Some(c) if !c.is_empty() => constant_time_eq(&given, &digest(c)),
            _ => false,
        })
        .fold(false, |any, m| any | m)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bearer_header_is_what_is_presented() {
        assert_eq!(presented(Some("Bearer abc"), ""), Some("abc"));
        assert_eq!(presented(Some("bearer  abc "), ""), Some("abc"));
    }

    #[test]
    fn a_token_query_parameter_is_presented_when_no_bearer_is() {
        assert_eq!(presented(None, "a=1&token=xyz"), Some("xyz"));
        assert_eq!(presented(Some("Basic dXNlcg=="), "token=xyz"), Some("xyz"));
        assert_eq!(presented(None, "tokens=xyz&xtoken=1"), None);
        assert_eq!(presented(None, "token="), None);
        assert_eq!(presented(None, ""), None);
    }

    #[test]
    fn the_configured_token_matches_and_nothing_else_does() {
        assert!(matches("s3cret-token", Some("s3cret-token"), None));
        assert!(!matches("s3cret-tokem", Some("s3cret-token"), None));
        assert!(!matches("s3cret", Some("s3cret-token"), None));
        assert!(!matches("", Some("s3cret-token"), None));
    }

    #[test]
    fn an_empty_configured_token_turns_the_token_off() {
        assert!(!matches("", Some(""), None));
        assert!(!matches("", None, None));
        assert!(!matches(" ", Some("  "), Some("")));
    }

    #[test]
    fn during_a_rotation_the_previous_token_matches_too() {
        assert!(matches("old", Some("new"), Some("old")));
        assert!(matches("new", Some("new"), Some("old")));
        assert!(!matches("other", Some("new"), Some("old")));
    }
}
