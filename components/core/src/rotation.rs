//! Rotating `jwt_secret` and `ticket_secret` without logging everyone out or voiding the
//! tickets already handed out: during a rotation the deployment sets the new secret and
//! keeps the old one in `jwt_secret_previous` / `ticket_secret_previous`. Everything is
//! signed with the current secret; a token or a ticket's verification tag that the current
//! secret refuses is checked once more against the previous one. Once the old tokens have
//! expired (`session_ttl_secs`) and the old tickets are redeemed or their activities over,
//! the previous secret is removed (DEPLOY.md, "Rotating secrets").
//!
//! The previous secret is looked up only when the current one refuses (`previous` is a
//! closure), so a request with a current token costs what it always did.

use crate::error::ApiError;
use crate::ids::TicketRef;
use crate::jwt::{self, Principal};
use crate::ticket::RedeemProof;

/// An empty or blank previous secret means "no rotation in progress".
fn usable(previous: Option<String>) -> Option<String> {
    previous.filter(|s| !s.trim().is_empty())
}

/// `Authorization: Bearer <JWT>` signed with the current secret, or during a rotation with
/// the previous one. Refusals are the same single `401` as `jwt::authenticate`'s.
pub fn authenticate(
    authorization: Option<&str>,
    current: &[u8],
    previous: impl FnOnce() -> Option<String>,
    now_secs: i64,
) -> Result<Principal, ApiError> {
    jwt::authenticate(authorization, current, now_secs).or_else(
        |refused| match usable(previous()) {
            Some(old) => jwt::authenticate(authorization, old.as_bytes(), now_secs),
            None => Err(refused),
        },
    )
}

/// A redeem's proof, made with the current `ticket_secret` or during a rotation with the
/// previous one (a QR code shown before the rotation).
pub fn check_ticket(
    proof: &RedeemProof,
    current: &[u8],
    previous: impl FnOnce() -> Option<String>,
    ticket: &TicketRef,
    owner: &str,
) -> Result<(), ApiError> {
    proof
        .check(current, ticket, owner)
        .or_else(|refused| match usable(previous()) {
            Some(old) => proof.check(old.as_bytes(), ticket, owner),
            None => Err(refused),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::Claims;
    use crate::ticket::{parse_redeem, qr_payload};

    const NOW: i64 = 1_000_000;

    fn bearer(secret: &[u8]) -> String {
        let claims = Claims {
            sub: "alice".into(),
            exp: NOW + 600,
            nbf: None,
            iat: None,
            role: None,
        };
        format!("Bearer {}", jwt::sign(&claims, secret))
    }

    #[test]
    fn a_token_of_the_previous_secret_is_accepted_only_during_a_rotation() {
        let old = bearer(b"old-secret");
        let during = || Some("old-secret".to_string());
        let p = authenticate(Some(&old), b"new-secret", during, NOW).unwrap();
        assert_eq!(p.user.as_str(), "alice");
        for none in [None, Some(String::new()), Some("  ".into())] {
            assert!(matches!(
                authenticate(Some(&old), b"new-secret", || none.clone(), NOW),
                Err(ApiError::Unauthenticated(_))
            ));
        }
        // A token of neither secret, or no token, is refused either way.
        let other = bearer(b"someone-else");
        assert!(authenticate(Some(&other), b"new-secret", during, NOW).is_err());
        assert!(authenticate(None, b"new-secret", during, NOW).is_err());
    }

    #[test]
    fn the_previous_secret_is_not_even_read_for_a_current_token() {
        let new = bearer(b"new-secret");
        let p = authenticate(
            Some(&new),
            b"new-secret",
            || panic!("looked up the previous secret"),
            NOW,
        );
        assert!(p.is_ok());
    }

    #[test]
    fn a_ticket_signed_before_the_rotation_is_redeemed_during_it() {
        let ticket = TicketRef::parse("42-ABCDEFGH").unwrap();
        let body = serde_json::json!({ "qr": qr_payload(b"old-t", &ticket, "alice") });
        let proof = parse_redeem(body.to_string().as_bytes()).unwrap();
        let during = || Some("old-t".to_string());
        assert_eq!(
            check_ticket(&proof, b"new-t", during, &ticket, "alice"),
            Ok(())
        );
        assert!(check_ticket(&proof, b"new-t", || None, &ticket, "alice").is_err());
        // Still bound to its owner under the previous secret.
        assert!(check_ticket(&proof, b"new-t", during, &ticket, "mallory").is_err());
        let fresh = serde_json::json!({ "qr": qr_payload(b"new-t", &ticket, "alice") });
        let fresh = parse_redeem(fresh.to_string().as_bytes()).unwrap();
        assert_eq!(
            check_ticket(&fresh, b"new-t", || panic!("read"), &ticket, "alice"),
            Ok(())
        );
    }
}
