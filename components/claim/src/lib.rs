//! The claim component: `POST /api/activities/:id/claims`, and nothing else (the passes of
//! anti-bot activities are the activity component's: this instance stays small).
//!
//! The hot path is exactly one Redis connection and one EVALSHA; every check and every
//! effect (stock, per-user and global rate, tickets, claim log, idempotency) happens in
//! claim.lua. An activity of several stock buckets takes one more script for most users
//! (bucket 0 names the home bucket: this instance keeps nothing to remember it by), and a
//! few more when the home runs short (`flashclaim_core::buckets`).

use flashclaim_spin as glue;

use flashclaim_core::buckets::{BucketedClaim, Next};
use flashclaim_core::claim::{self, ClaimSettings};
use flashclaim_core::scripts;
use flashclaim_core::{ApiError, HttpResponse};
use spin_sdk::http::{Method, Request, Response};

use glue::SpinRedis;

#[spin_sdk::http_component]
fn handle(req: Request) -> Response {
    glue::serve(&req, route)
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
    let settings = settings()?;
    let client = glue::client_addr(req);
    let prepare = |settings: &ClaimSettings| {
        claim::prepare(
            id,
            req.header("authorization").and_then(|h| h.as_str()),
            req.header("idempotency-key").map(|h| h.as_bytes()),
            req.body(),
            client,
            settings,
            glue::now(),
            glue::random_vec,
        )
    };
    // `jwt_secret_previous` is looked up (a host call) only for a token the current secret
    // refuses: during a rotation, not on every claim.
    let (activity, command) = match prepare(&settings) {
        Err(ApiError::Unauthenticated(reason)) => match glue::optional_var("jwt_secret_previous") {
            Some(previous) => prepare(&settings.with_previous_jwt_secret(Some(previous)))?,
            None => return Err(ApiError::Unauthenticated(reason)),
        },
        prepared => prepared?,
    };

    // apply: one connection, one script (more only for stock buckets)
    let shards = glue::redis_shards()?;
    let reply = SpinRedis::open(shards.for_activity(activity))
        .and_then(|redis| {
            let mut steps = BucketedClaim::start(command, glue::now(), None);
            loop {
                let call = steps.call();
                let reply = redis.run_confirmed(
                    call.script,
                    call.keys,
                    call.argv,
                    scripts::status_is_success,
                );
                if let Next::Done(reply) = steps.next(reply) {
                    return reply;
                }
            }
        })
        .inspect_err(|e| eprintln!("flashclaim: claim: {e}"));

    // encode
    match claim::answer(activity, reply) {
        // The rare answer that may mean the wrong shard (flashclaim_core::shards).
        Err(ApiError::NotFound) => Err(glue::not_found_on_shard(&shards, activity)),
        answer => answer.inspect_err(|e| {
            if *e == ApiError::Internal {
                eprintln!("flashclaim: claim script returned an unexpected reply");
            }
        }),
    }
}

fn settings() -> Result<ClaimSettings, ApiError> {
    ClaimSettings::from_variables(
        glue::var("jwt_secret")?,
        glue::optional_var("claim_rate_limit").as_deref(),
        glue::optional_var("claim_global_rate_limit").as_deref(),
    )
    .and_then(|s| s.with_per_address(glue::optional_var("claim_rate_limit_per_address").as_deref()))
    .map_err(|e| {
        eprintln!("flashclaim: {e}");
        ApiError::Internal
    })
}
