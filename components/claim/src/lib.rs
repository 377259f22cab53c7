//! The claim component: `POST /api/activities/:id/claims`, and the claim passes of
//! anti-bot activities, `POST /api/activities/:id/passes`.
//!
//! The hot path is exactly one Redis connection and one EVALSHA; every check and every
//! effect (stock, per-user and global rate, tickets, claim log, idempotency) happens in
//! claim.lua.

use flashclaim_spin as glue;

use flashclaim_core::claim::{self, ClaimCommand, ClaimRequest, RateLimit};
use flashclaim_core::ids::{ActivityId, IdempotencyKey};
use flashclaim_core::scripts::{CLAIM, PASS};
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
        (Method::Post, ["api", "activities", id, "passes"]) => post_pass(req, id),
        (_, ["api", "activities", _, "claims" | "passes"]) => Err(ApiError::MethodNotAllowed),
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
    let rate = rate_limit("claim_rate_limit")?.unwrap_or_default();
    let global_rate = rate_limit("claim_global_rate_limit")?.unwrap_or(RateLimit::OFF);
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
        global_rate,
    );

    // apply: one connection, one script
    let redis = SpinRedis::open(glue::redis_shards()?.for_activity(activity)).map_err(|e| {
        eprintln!("flashclaim: claim: {e}");
        ApiError::Unavailable("claims are unavailable right now; nothing was claimed")
    })?;
    let reply = redis
        .run(&CLAIM, &command.keys, &command.argv)
        .map_err(|e| {
            eprintln!("flashclaim: claim: {e}");
            if e.proves_nothing_ran() {
                ApiError::Unavailable("claims are unavailable right now; nothing was claimed")
            } else {
                // The command was sent, so the script may have run before the failure.
                ApiError::OutcomeUnknown
            }
        })?;

    // encode
    let outcome = claim::decode(&reply).inspect_err(|e| {
        if *e == ApiError::Internal {
            eprintln!("flashclaim: claim script returned an unexpected reply: {reply:?}");
        }
    })?;
    Ok(claim::encode(activity, &outcome))
}

/// A rate-limit variable; a malformed one is a deployment error, said in the log.
fn rate_limit(variable: &str) -> Result<Option<RateLimit>, ApiError> {
    glue::optional_var(variable)
        .map(|v| {
            RateLimit::parse(&v).ok_or_else(|| {
                eprintln!("flashclaim: {variable} `{v}` is not `<attempts>/<window ms>` or `0`");
                ApiError::Internal
            })
        })
        .transpose()
}

/// One pass per user, at most stock x `claim_pass_factor` per activity (pass.lua).
fn post_pass(req: &Request, id: &str) -> Result<HttpResponse, ApiError> {
    let activity = ActivityId::parse(id)?;
    let principal = glue::principal(req)?;
    let factor = glue::optional_var("claim_pass_factor")
        .and_then(|v| v.parse::<i64>().ok())
        .filter(|f| *f >= 1)
        .unwrap_or(claim::PASS_FACTOR);
    let (keys, argv) = claim::pass_command(activity, &principal.user, glue::now(), factor);
    let reply = glue::redis_for(activity, "pass")?
        .run(&PASS, &keys, &argv)
        .map_err(|e| glue::redis_unavailable("pass", e))?;
    claim::decode_pass(activity, &reply)
}
