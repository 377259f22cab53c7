//! Tickets: the record the claim script keeps per code, and the view a client sees.

use serde::Serialize;

use crate::ids::{ActivityId, TicketRef};
use crate::time::Millis;

/// A ticket as the claim script records it in the activity's `tickets` hash:
/// `"user|claim_id|status|claimed_at_ms"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TicketRecord {
    pub user: String,
    pub claim_id: String,
    pub status: String,
    pub claimed_at: Millis,
}

impl TicketRecord {
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.split('|');
        let record = TicketRecord {
            user: parts.next()?.to_string(),
            claim_id: parts.next()?.to_string(),
            status: parts.next()?.to_string(),
            claimed_at: Millis(parts.next()?.parse().ok()?),
        };
        parts.next().is_none().then_some(record)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TicketView {
    pub code: String,
    pub activity_id: ActivityId,
    pub claim_id: String,
    pub status: String,
    pub claimed_at: Millis,
}

impl TicketView {
    pub fn new(ticket: &TicketRef, record: &TicketRecord) -> Self {
        TicketView {
            code: ticket.to_string(),
            activity_id: ticket.activity,
            claim_id: record.claim_id.clone(),
            status: record.status.clone(),
            claimed_at: record.claimed_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_record_round_trips_from_the_script_format() {
        let r = TicketRecord::parse("u1|c1|active|1500").unwrap();
        assert_eq!(
            (r.user.as_str(), r.status.as_str(), r.claimed_at),
            ("u1", "active", Millis(1500))
        );
        assert!(TicketRecord::parse("u1|c1|active").is_none());
        assert!(TicketRecord::parse("u1|c1|active|x").is_none());
        assert!(TicketRecord::parse("u1|c1|active|1|extra").is_none());
    }

    #[test]
    fn the_view_shows_the_full_code() {
        let t = TicketRef::parse("9-AB-1").unwrap();
        let r = TicketRecord::parse("u|c|active|0").unwrap();
        let v = serde_json::to_value(TicketView::new(&t, &r)).unwrap();
        assert_eq!(v["code"], "9-AB-1");
        assert_eq!(v["claimed_at"], "1970-01-01T00:00:00Z");
    }
}
