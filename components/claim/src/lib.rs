//! The claim component: `POST /api/activities/:id/claims`.
//!
//! The hot path is exactly one Redis connection and one EVALSHA; every check and every
//! effect (stock, per-user count, tickets, claim log, idempotency) happens in claim.lua.

#[path = "../../shared/spin_glue.rs"]
mod glue;

use flashclaim_core::claim::{self, ClaimCommand, ClaimRequest, RateLimit};
use flashclaim_core::ids::{ActivityId, IdempotencyKey};
use flashclaim_core::scripts::CLAIM;
use flashclaim_core::{ApiError, HttpResponse};
use spin_sdk::http::{Method, Request, Response};

use glue::{random_bytes, SpinRedis};

#[spin_sdk::http_component]
fn handle(req: Request) -> Response {
    glue::respond_result(route(&req))
}

fn route(req: &Request) -> Result<HttpResponse, ApiError> {
    let segments = glue::path_segments(req);
    match (req.method(), segments.as_slice()) {
        (Method::Post, ["api", "activities", id, "claims"]) => post_claim(req, id),
        (_, ["api", "activities", _, "claims"]) => Err(ApiError::MethodNotAllowed),
        _ => Err(ApiError::NotFound),
    }
}

fn post_claim(req: &Request, id: &str) -> Result<HttpResponse, ApiError> {
    // parse
    let activity = ActivityId::parse(id)?;
    let principal = glue::principal(req)?;
    let request = ClaimRequest::parse(req.body())?;
    let idempotency = req
        .header("idempotency-key")
        .map(|h| {
            h.as_str()
                .ok_or_else(|| ApiError::invalid("Idempotency-Key must be ASCII"))
        })
        .transpose()?
        .map(IdempotencyKey::parse)
        .transpose()?;
    let rate = glue::optional_var("claim_rate_limit")
        .map(|v| {
            RateLimit::parse(&v).ok_or_else(|| {
                eprintln!(
                    "flashclaim: claim_rate_limit `{v}` is not `<attempts>/<window ms>` or `0`"
                );
                ApiError::Internal
            })
        })
        .transpose()?
        .unwrap_or_default();
    let prefixes: Vec<String> = (0..request.quantity)
        .map(|_| claim::code_prefix(random_bytes::<5>()))
        .collect();
    let command = ClaimCommand::new(
        activity,
        &principal.user,
        request,
        idempotency.as_ref(),
        glue::now(),
        &claim::claim_id(random_bytes::<16>()),
        &prefixes,
        rate,
    );

    // apply: one connection, one script
    let redis = SpinRedis::open(glue::redis_shards()?.for_activity(activity)).map_err(|e| {
        eprintln!("flashclaim: claim: {e}");
        ApiError::Unavailable("claims are unavailable right now; nothing was claimed")
    })?;
    let reply = redis
        .run(&CLAIM, &command.keys, &command.argv)
        .map_err(|e| {
            // The connection opened, so the script may have run before the failure.
            eprintln!("flashclaim: claim: {e}");
            ApiError::OutcomeUnknown
        })?;

    // encode
    let outcome = claim::decode(&reply).inspect_err(|e| {
        if *e == ApiError::Internal {
            eprintln!("flashclaim: claim script returned an unexpected reply: {reply:?}");
        }
    })?;
    Ok(claim::encode(activity, &outcome))
}
