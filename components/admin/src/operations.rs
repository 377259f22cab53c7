//! Operations on users and tickets during a campaign: the blacklist and redeeming.

use flashclaim_core::admin;
use flashclaim_core::ids::{ActivityId, TicketRef, UserId};
use flashclaim_core::keys::ACTIVITY_INDEX;
use flashclaim_core::scripts::{self, Arg, RedisCommands, Reply, REDEEM};
use flashclaim_core::ticket::{self, TicketRecord};
use flashclaim_core::{ApiError, HttpResponse};
use spin_sdk::http::Request;

use crate::glue::{self, SpinRedis};

/// `PUT /admin/blacklist/{user}` with an optional `{"reason": "..."}`: Postgres first, then
/// the deny set of every activity loaded in Redis. Repeating it is harmless.
pub fn blacklist(req: &Request, user: &str) -> Result<HttpResponse, ApiError> {
    let user = parse_user(user)?;
    let reason = admin::parse_blacklist_reason(req.body())?;
    glue::pg_open()?
        .execute(
            "INSERT INTO blacklist (user_id, reason) VALUES ($1, $2) \
             ON CONFLICT (user_id) DO UPDATE SET reason = EXCLUDED.reason",
            &[glue::str_param(user.as_str()), glue::str_param(&reason)],
        )
        .map_err(|e| glue::pg_internal("blacklist", e))?;
    let activities = apply_to_deny_sets("SADD", &user)?;
    Ok(HttpResponse::json(
        200,
        &serde_json::json!({ "user_id": user.as_str(), "blacklisted": true, "reason": reason, "activities": activities }),
    ))
}

pub fn unblacklist(user: &str) -> Result<HttpResponse, ApiError> {
    let user = parse_user(user)?;
    glue::pg_open()?
        .execute(
            "DELETE FROM blacklist WHERE user_id = $1",
            &[glue::str_param(user.as_str())],
        )
        .map_err(|e| glue::pg_internal("unblacklist", e))?;
    let activities = apply_to_deny_sets("SREM", &user)?;
    Ok(HttpResponse::json(
        200,
        &serde_json::json!({ "user_id": user.as_str(), "blacklisted": false, "activities": activities }),
    ))
}

fn parse_user(text: &str) -> Result<UserId, ApiError> {
    UserId::parse(text).ok_or_else(|| ApiError::invalid("a user id is 1-64 visible characters"))
}

/// Adds the user to (or removes them from) the deny set of every activity in the index of
/// every Redis endpoint; returns how many activities it touched.
fn apply_to_deny_sets(command: &str, user: &UserId) -> Result<usize, ApiError> {
    let unavailable = |e| glue::redis_unavailable("blacklist", e);
    let mut touched = 0;
    for address in glue::redis_shards()?.all() {
        let redis = SpinRedis::open(address).map_err(unavailable)?;
        let members = redis
            .execute("SMEMBERS", &[Arg::from(ACTIVITY_INDEX)])
            .map_err(unavailable)?;
        for id in members
            .iter()
            .filter_map(Reply::as_text)
            .filter_map(|t| ActivityId::parse(t).ok())
        {
            // Every stock bucket checks its own copy (flashclaim_core::buckets).
            for keys in glue::bucket_keys(&redis, id).map_err(unavailable)? {
                redis
                    .execute(command, &[Arg::from(keys.deny()), Arg::from(user.as_str())])
                    .map_err(unavailable)?;
            }
            touched += 1;
        }
        redis.confirm().map_err(unavailable)?;
    }
    Ok(touched)
}

/// `POST /admin/tickets/{code}/redeem` with the scanned QR payload (or the verification
/// tag): checked against the ticket's real owner, then marked used once by redeem.lua.
pub fn redeem(req: &Request, code: &str) -> Result<HttpResponse, ApiError> {
    let ticket = TicketRef::parse(code)?;
    let proof = ticket::parse_redeem(req.body())?;
    let secret = glue::var("ticket_secret")?;
    let redis = glue::redis_for(ticket.activity, "redeem")?;
    let keys =
        glue::ticket_keys(&redis, &ticket).map_err(|e| glue::redis_unavailable("redeem", e))?;
    let record = redis
        .execute(
            "HGET",
            &[Arg::from(keys.tickets()), Arg::from(ticket.code.as_str())],
        )
        .map_err(|e| glue::redis_unavailable("redeem", e))?
        .first()
        .and_then(Reply::as_text)
        .and_then(TicketRecord::parse)
        .ok_or(ApiError::NotFound)?;
    // A QR shown before a ticket_secret rotation still redeems (core::rotation).
    flashclaim_core::rotation::check_ticket(
        &proof,
        secret.as_bytes(),
        || glue::optional_var("ticket_secret_previous"),
        &ticket,
        &record.user,
    )?;
    let now = glue::now();
    let (keys, argv) = ticket::redeem_command(&ticket, &keys, now);
    let reply = redis
        .run_confirmed(&REDEEM, &keys, &argv, scripts::status_is_success)
        .map_err(|e| glue::redis_unavailable("redeem", e))?;
    ticket::decode_ticket_change(&reply)?;
    Ok(HttpResponse::json(
        200,
        &serde_json::json!({
            "code": ticket.to_string(),
            "activity_id": ticket.activity,
            "user_id": record.user,
            "claim_id": record.claim_id,
            "status": "redeemed",
            "redeemed_at": now,
        }),
    ))
}
