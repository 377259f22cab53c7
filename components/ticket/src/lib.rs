//! The ticket component: `GET /api/tickets` (the caller's tickets, from Postgres once the
//! drain has recorded them), `GET /api/tickets/:code` (live, from Redis; owner or admin
//! only, and 404 for anyone else so a code's existence is never revealed) and
//! `DELETE /api/tickets/:code` (the owner returns it: return.lua).
//!
//! DESIGN.md names the claim component for the DELETE, but Spin routes by path only, so
//! the GET and DELETE of one path must live in one component: this one.

use flashclaim_spin as glue;

use flashclaim_core::cors::Caching;
use flashclaim_core::ids::{ActivityId, TicketRef};
use flashclaim_core::jwt::Principal;
use flashclaim_core::scripts::{self, Arg, RedisCommands, Reply, RETURN};
use flashclaim_core::ticket::{self, TicketRecord, TicketView};
use flashclaim_core::time::Millis;
use flashclaim_core::{ApiError, HttpResponse};
use spin_sdk::http::{Method, Request, Response};
use spin_sdk::pg4::ParameterValue;

/// At most this many tickets are listed, newest first.
const LIST_LIMIT: i64 = 200;

#[spin_sdk::http_component]
fn handle(req: Request) -> Response {
    glue::serve(&req, route)
}

fn route(req: &Request) -> Result<HttpResponse, ApiError> {
    let segments = glue::path_segments(req);
    match (req.method(), segments.as_slice()) {
        (Method::Get, ["api", "tickets"]) => list_tickets(&glue::principal(req)?),
        (Method::Get, ["api", "tickets", code]) => get_ticket(&glue::principal(req)?, code),
        (Method::Get, ["api", "tickets", code, "qr.svg"]) => qr_image(&glue::principal(req)?, code),
        (Method::Delete, ["api", "tickets", code]) => return_ticket(&glue::principal(req)?, code),
        (_, ["api", "tickets"] | ["api", "tickets", _] | ["api", "tickets", _, "qr.svg"]) => {
            Err(ApiError::MethodNotAllowed)
        }
        _ => Err(ApiError::NotFound),
    }
}

/// The ticket's QR payload drawn as SVG, for its owner only: anyone else (admins too, who
/// redeem by scanning, not by showing) gets the 404 of an unknown ticket. The image of a
/// code never changes, so the owner's browser may keep it.
fn qr_image(caller: &Principal, code: &str) -> Result<HttpResponse, ApiError> {
    let (ticket, record, pooled) = find_ticket(code)?;
    if record.user != caller.user.as_str() {
        return Err(ApiError::NotFound);
    }
    let secret = glue::var("ticket_secret")?;
    let view = TicketView::new(&ticket, &record, pooled, secret.as_bytes());
    let svg = flashclaim_core::qr::svg(&view.qr).ok_or_else(|| {
        eprintln!("flashclaim: ticket {ticket}: its QR payload fits no QR symbol");
        ApiError::Internal
    })?;
    let mut response = HttpResponse {
        status: 200,
        headers: vec![("content-type", "image/svg+xml".to_string())],
        body: svg.into_bytes(),
    };
    Caching::Private { max_age_secs: 3600 }.apply(&mut response);
    Ok(response)
}

/// A ticket live from Redis, whoever owns it, and whether its type hands out uploaded
/// codes (then its code is shown as uploaded); `NotFound` when there is none.
fn find_ticket(code: &str) -> Result<(TicketRef, TicketRecord, bool), ApiError> {
    let ticket = TicketRef::parse(code)?;
    let redis = glue::redis_for(ticket.activity, "ticket")?;
    let keys =
        glue::ticket_keys(&redis, &ticket).map_err(|e| glue::redis_unavailable("ticket", e))?;
    let reply = redis
        .execute(
            "HGET",
            &[Arg::from(keys.tickets()), Arg::from(ticket.code.as_str())],
        )
        .map_err(|e| glue::redis_unavailable("ticket", e))?;
    let record = reply
        .first()
        .and_then(Reply::as_text)
        .and_then(TicketRecord::parse)
        .ok_or(ApiError::NotFound)?;
    let kind = redis
        .execute(
            "HGET",
            &[
                Arg::from(keys.meta()),
                Arg::from(format!("{}:kind", record.ticket_type)),
            ],
        )
        .map_err(|e| glue::redis_unavailable("ticket", e))?;
    let pooled = kind.first().and_then(Reply::as_text) == Some("codes");
    Ok((ticket, record, pooled))
}

fn get_ticket(caller: &Principal, code: &str) -> Result<HttpResponse, ApiError> {
    let (ticket, record, pooled) = find_ticket(code)?;
    if record.user != caller.user.as_str() && !caller.is_admin() {
        return Err(ApiError::NotFound);
    }
    let secret = glue::var("ticket_secret")?;
    Ok(HttpResponse::json(
        200,
        &TicketView::new(&ticket, &record, pooled, secret.as_bytes()),
    ))
}

/// The owner gives a ticket back before the activity ends; anyone else gets 404.
fn return_ticket(caller: &Principal, code: &str) -> Result<HttpResponse, ApiError> {
    let ticket = TicketRef::parse(code)?;
    let unavailable = |e| glue::redis_unavailable("return ticket", e);
    let redis = glue::redis_for(ticket.activity, "return ticket")?;
    let bucket = glue::ticket_keys(&redis, &ticket).map_err(unavailable)?;
    let (keys, argv) = ticket::return_command(&ticket, &bucket, caller.user.as_str(), glue::now());
    let reply = redis
        .run_confirmed(&RETURN, &keys, &argv, scripts::status_is_success)
        .map_err(unavailable)?;
    let stock_left = ticket::decode_ticket_change(&reply)?.and_then(Reply::as_int);
    // return.lua: { 1, stock_left, type, kind }; stock_left is the type's.
    let ticket_type = reply.get(2).and_then(Reply::as_text);
    let pooled = reply.get(3).and_then(Reply::as_text) == Some("codes");
    Ok(HttpResponse::json(
        200,
        &serde_json::json!({
            "id": ticket.to_string(),
            "code": ticket.shown(pooled),
            "activity_id": ticket.activity,
            "ticket_type": ticket_type,
            "status": "returned",
            "stock_left": stock_left,
        }),
    ))
}

fn list_tickets(caller: &Principal) -> Result<HttpResponse, ApiError> {
    let secret = glue::var("ticket_secret")?;
    let pg = glue::pg_open()?;
    // One row of arrays, even for a user without tickets (glue::list_rows).
    let rows = pg
        .query(
            "SELECT array_agg(activity_id ORDER BY claimed_at DESC, id DESC), \
                    array_agg(code ORDER BY claimed_at DESC, id DESC), \
                    array_agg(claim_id ORDER BY claimed_at DESC, id DESC), \
                    array_agg(status ORDER BY claimed_at DESC, id DESC), \
                    array_agg((extract(epoch FROM claimed_at) * 1000)::int8 ORDER BY claimed_at DESC, id DESC), \
                    array_agg(ticket_type ORDER BY claimed_at DESC, id DESC), \
                    array_agg(pooled ORDER BY claimed_at DESC, id DESC) \
             FROM (SELECT t.*, (tt.kind = 'codes')::int4 AS pooled FROM tickets t \
                   JOIN ticket_types tt ON tt.activity_id = t.activity_id AND tt.key = t.ticket_type \
                   WHERE t.user_id = $1 \
                   ORDER BY t.claimed_at DESC, t.id DESC LIMIT $2) AS mine",
            &[glue::str_param(caller.user.as_str()), ParameterValue::Int64(LIST_LIMIT)],
        )
        .map_err(|e| glue::pg_internal("list tickets", e))?;
    let tickets: Vec<TicketView> = glue::list_rows(rows, "list tickets")?
        .iter()
        .filter_map(|r| {
            let ticket = TicketRef {
                activity: ActivityId::from_db(glue::int(&r[0])?),
                code: glue::text(&r[1])?,
            };
            let record = TicketRecord {
                user: caller.user.to_string(),
                claim_id: glue::text(&r[2])?,
                status: glue::text(&r[3])?,
                claimed_at: Millis(glue::int(&r[4])?),
                ticket_type: glue::text(&r[5])?,
            };
            let pooled = glue::boolean(&r[6])?;
            Some(TicketView::new(&ticket, &record, pooled, secret.as_bytes()))
        })
        .collect();
    Ok(HttpResponse::json(
        200,
        &serde_json::json!({ "tickets": tickets }),
    ))
}
