//! Tickets: the record the claim script keeps per code, the view a client sees with its
//! verification data, and the return and redeem use cases.

use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;

use crate::error::ApiError;
use crate::ids::{ActivityId, TicketRef};
use crate::jwt::{b64url_decode, b64url_encode};
use crate::keys::ActivityKeys;
use crate::scripts::{Arg, Reply};
use crate::ticket_type::DEFAULT_TYPE;
use crate::time::Millis;

/// The QR payload's version tag: `FC1.<ticket code>.<verification>`.
const QR_PREFIX: &str = "FC1.";
/// Verification tags are the first 16 bytes of HMAC-SHA256: short enough for a small QR
/// code, far beyond guessing.
const TAG_LEN: usize = 16;

/// The verification tag of a ticket: HMAC-SHA256 over (code, activity, user) with
/// `ticket_secret`, so a ticket cannot be forged or moved to another user.
pub fn verification(secret: &[u8], ticket: &TicketRef, user: &str) -> String {
    b64url_encode(&tag(secret, ticket, user))
}

fn mac(secret: &[u8], ticket: &TicketRef, user: &str) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    // Length-prefixed fields, so no two different triples sign the same bytes.
    for field in [ticket.code.as_str(), &ticket.activity.to_string(), user] {
        mac.update(&(field.len() as u32).to_be_bytes());
        mac.update(field.as_bytes());
    }
    mac
}

fn tag(secret: &[u8], ticket: &TicketRef, user: &str) -> [u8; TAG_LEN] {
    let mut out = [0u8; TAG_LEN];
    out.copy_from_slice(&mac(secret, ticket, user).finalize().into_bytes()[..TAG_LEN]);
    out
}

/// What a QR code of the ticket carries.
pub fn qr_payload(secret: &[u8], ticket: &TicketRef, user: &str) -> String {
    format!("{QR_PREFIX}{ticket}.{}", verification(secret, ticket, user))
}

/// A redeem request: `{"qr": "<payload>"}` as scanned, or `{"verification": "<tag>"}`.
pub fn parse_redeem(body: &[u8]) -> Result<RedeemProof, ApiError> {
    let object = crate::http::json_object(body, 1024)?;
    crate::http::reject_unknown(&object, &["qr", "verification"])?;
    let field = |name: &str| -> Result<Option<String>, ApiError> {
        object
            .get(name)
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| ApiError::invalid(format!("{name} must be a string")))
            })
            .transpose()
    };
    match (field("qr")?, field("verification")?) {
        (Some(qr), None) => {
            let rest = qr
                .strip_prefix(QR_PREFIX)
                .ok_or_else(|| ApiError::invalid("qr is not a flashclaim ticket payload"))?;
            let (code, tag) = rest
                .rsplit_once('.')
                .ok_or_else(|| ApiError::invalid("qr is not a flashclaim ticket payload"))?;
            let ticket = TicketRef::parse(code)
                .map_err(|_| ApiError::invalid("qr names no valid ticket code"))?;
            Ok(RedeemProof {
                ticket: Some(ticket),
                tag: tag.to_string(),
            })
        }
        (None, Some(tag)) => Ok(RedeemProof { ticket: None, tag }),
        _ => Err(ApiError::invalid(
            "give exactly one of `qr` and `verification`",
        )),
    }
}

/// What the operator presented to redeem a ticket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedeemProof {
    /// The code in the QR payload, when one was scanned: it must be the ticket redeemed.
    pub ticket: Option<TicketRef>,
    pub tag: String,
}

impl RedeemProof {
    /// Checked in constant time against the tag computed for the ticket's real owner.
    pub fn check(&self, secret: &[u8], ticket: &TicketRef, owner: &str) -> Result<(), ApiError> {
        if self.ticket.as_ref().is_some_and(|t| t != ticket) {
            return Err(ApiError::VerificationFailed);
        }
        let presented = b64url_decode(&self.tag).ok_or(ApiError::VerificationFailed)?;
        mac(secret, ticket, owner)
            .verify_truncated_left(&presented)
            .ok()
            .filter(|_| presented.len() == TAG_LEN)
            .ok_or(ApiError::VerificationFailed)
    }
}

/// A ticket as the claim script records it in the activity's `tickets` hash:
/// `"user|claim_id|status|claimed_at_ms|type"` (records written before ticket types have no
/// type: theirs is `default`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TicketRecord {
    pub user: String,
    pub claim_id: String,
    pub status: String,
    pub claimed_at: Millis,
    pub ticket_type: String,
}

impl TicketRecord {
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.split('|');
        let record = TicketRecord {
            user: parts.next()?.to_string(),
            claim_id: parts.next()?.to_string(),
            status: parts.next()?.to_string(),
            claimed_at: Millis(parts.next()?.parse().ok()?),
            ticket_type: parts.next().unwrap_or(DEFAULT_TYPE).to_string(),
        };
        parts.next().is_none().then_some(record)
    }

    /// The record as the scripts write it (what a reload from Postgres restores).
    pub fn to_text(&self) -> String {
        format!(
            "{}|{}|{}|{}|{}",
            self.user, self.claim_id, self.status, self.claimed_at.0, self.ticket_type
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TicketView {
    /// The route id: `<activity id>-<code part>`.
    pub id: String,
    /// As the holder shows it: an uploaded pool code exactly as uploaded.
    pub code: String,
    pub activity_id: ActivityId,
    pub ticket_type: String,
    pub claim_id: String,
    pub status: String,
    pub claimed_at: Millis,
    /// HMAC tag over (code, activity, user); checked again on redeem.
    pub verification: String,
    /// Compact payload for a QR code: `FC1.<code>.<verification>`.
    pub qr: String,
}

impl TicketView {
    /// `pooled`: the ticket's type hands out uploaded codes.
    pub fn new(ticket: &TicketRef, record: &TicketRecord, pooled: bool, secret: &[u8]) -> Self {
        TicketView {
            id: ticket.to_string(),
            code: ticket.shown(pooled),
            activity_id: ticket.activity,
            ticket_type: record.ticket_type.clone(),
            claim_id: record.claim_id.clone(),
            status: record.status.clone(),
            claimed_at: record.claimed_at,
            verification: verification(secret, ticket, &record.user),
            qr: qr_payload(secret, ticket, &record.user),
        }
    }
}

/// return.lua's KEYS and ARGV, in the stock bucket `k` holding the ticket
/// (`crate::buckets::code_bucket`; `ActivityKeys::new` for most activities).
pub fn return_command(
    ticket: &TicketRef,
    k: &ActivityKeys,
    user: &str,
    now: Millis,
) -> (Vec<String>, Vec<Arg>) {
    (
        vec![
            k.meta(),
            k.stocks(),
            k.claimed(),
            k.tickets(),
            k.log(),
            k.pools(),
            k.metrics(),
        ],
        vec![
            Arg::from(ticket.code.as_str()),
            Arg::from(user),
            Arg::Int(now.0),
        ],
    )
}

/// redeem.lua's KEYS and ARGV, in the stock bucket `k` holding the ticket.
pub fn redeem_command(
    ticket: &TicketRef,
    k: &ActivityKeys,
    now: Millis,
) -> (Vec<String>, Vec<Arg>) {
    (
        vec![k.tickets(), k.log(), k.metrics()],
        vec![
            Arg::from(ticket.code.as_str()),
            Arg::Int(ticket.activity.get()),
            Arg::Int(now.0),
        ],
    )
}

/// The return and redeem scripts' replies: `{1, ...}` on success, the shared negative
/// codes otherwise. Returns the first value after the status on success.
pub fn decode_ticket_change(reply: &[Reply]) -> Result<Option<&Reply>, ApiError> {
    match reply.first().and_then(Reply::as_int) {
        Some(1) => Ok(reply.get(1)),
        Some(-1) => Err(ApiError::NotFound),
        Some(-4) => Err(ApiError::Ended),
        Some(-12) => Err(ApiError::Conflict(format!(
            "the ticket is {}",
            reply
                .get(1)
                .and_then(Reply::as_text)
                .unwrap_or("not active")
        ))),
        _ => Err(ApiError::Internal),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_record_round_trips_from_the_script_format() {
        let r = TicketRecord::parse("u1|c1|active|1500|vip").unwrap();
        assert_eq!(
            (
                r.user.as_str(),
                r.status.as_str(),
                r.claimed_at,
                r.ticket_type.as_str()
            ),
            ("u1", "active", Millis(1500), "vip")
        );
        assert_eq!(r.to_text(), "u1|c1|active|1500|vip");
        let before_types = TicketRecord::parse("u1|c1|active|1500").unwrap();
        assert_eq!(before_types.ticket_type, "default");
        assert!(TicketRecord::parse("u1|c1|active|x|vip").is_none());
        assert!(TicketRecord::parse("u1|c1|active|1|vip|extra").is_none());
    }

    #[test]
    fn the_view_shows_the_full_code() {
        let t = TicketRef::parse("9-AB-1").unwrap();
        let r = TicketRecord::parse("u|c|active|0|default").unwrap();
        let v = serde_json::to_value(TicketView::new(&t, &r, false, b"s")).unwrap();
        assert_eq!(
            (v["id"].as_str(), v["code"].as_str()),
            (Some("9-AB-1"), Some("9-AB-1"))
        );
        assert_eq!(v["ticket_type"], "default");
        let pooled = serde_json::to_value(TicketView::new(&t, &r, true, b"s")).unwrap();
        assert_eq!(
            (pooled["id"].as_str(), pooled["code"].as_str()),
            (Some("9-AB-1"), Some("AB-1"))
        );
        assert_eq!(v["claimed_at"], "1970-01-01T00:00:00Z");
        assert!(v["qr"].as_str().unwrap().starts_with("FC1.9-AB-1."));
    }

    fn ticket() -> TicketRef {
        TicketRef::parse("9-AB-1").unwrap()
    }

    #[test]
    fn a_scanned_qr_payload_redeems_its_own_ticket() {
        let qr = qr_payload(b"secret", &ticket(), "alice");
        let body = serde_json::json!({ "qr": qr }).to_string();
        let proof = parse_redeem(body.as_bytes()).unwrap();
        assert_eq!(proof.check(b"secret", &ticket(), "alice"), Ok(()));
    }

    #[test]
    fn verification_fails_for_another_user_secret_or_ticket() {
        let tag = verification(b"secret", &ticket(), "alice");
        let proof = RedeemProof { ticket: None, tag };
        assert_eq!(proof.check(b"secret", &ticket(), "alice"), Ok(()));
        let refused = Err(ApiError::VerificationFailed);
        assert_eq!(proof.check(b"secret", &ticket(), "mallory"), refused);
        assert_eq!(proof.check(b"other", &ticket(), "alice"), refused);
        let other = TicketRef::parse("9-AB-2").unwrap();
        assert_eq!(proof.check(b"secret", &other, "alice"), refused);
        let qr = qr_payload(b"secret", &other, "alice");
        let moved = parse_redeem(serde_json::json!({ "qr": qr }).to_string().as_bytes()).unwrap();
        assert_eq!(moved.check(b"secret", &ticket(), "alice"), refused);
    }

    #[test]
    fn a_truncated_or_garbled_tag_is_refused() {
        let tag = verification(b"secret", &ticket(), "alice");
        for bad in [&tag[..4], "", "!!!!", &format!("{tag}AA")] {
            let proof = RedeemProof {
                ticket: None,
                tag: bad.to_string(),
            };
            assert!(proof.check(b"secret", &ticket(), "alice").is_err(), "{bad}");
        }
    }

    #[test]
    fn redeem_bodies_need_exactly_one_proof() {
        for body in [
            "{}",
            r#"{"qr":"x","verification":"y"}"#,
            r#"{"qr":"FC1.nonsense"}"#,
            r#"{"qr":1}"#,
            r#"{"extra":"x"}"#,
            "[]",
            "not json",
        ] {
            assert_eq!(
                parse_redeem(body.as_bytes()).unwrap_err().code(),
                "invalid_request",
                "{body}"
            );
        }
    }

    #[test]
    fn ticket_changes_map_every_script_code() {
        assert!(decode_ticket_change(&[Reply::Int(1), Reply::Int(5)]).is_ok());
        assert_eq!(
            decode_ticket_change(&[Reply::Int(-1)]),
            Err(ApiError::NotFound)
        );
        assert_eq!(
            decode_ticket_change(&[Reply::Int(-4)]),
            Err(ApiError::Ended)
        );
        let e = decode_ticket_change(&[Reply::Int(-12), Reply::Bytes(b"redeemed".to_vec())])
            .unwrap_err();
        assert_eq!(
            (e.status(), e.to_string()),
            (409, "the ticket is redeemed".into())
        );
        assert_eq!(decode_ticket_change(&[]), Err(ApiError::Internal));
    }
}
