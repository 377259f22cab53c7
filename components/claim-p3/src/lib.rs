//! The claim component as Spin 4 runs it best: a WASIp3 component (spin-sdk 7) that Spin
//! reuses across requests, keeping its variables and its Redis connection between them.
//! `POST /api/activities/:id/claims`, with exactly the answers of the WASIp2 claim component
//! (components/claim), which hosts without WASIp3 run instead. (Passes are the activity
//! component's.)
//!
//! The hot path is one EVALSHA of claim.lua on a kept connection; every check and every
//! effect happens in the script.

use std::cell::RefCell;

use flashclaim_core::claim::{self, ClaimSettings, Unreported};
use flashclaim_core::scripts::{self, CLAIM};
use flashclaim_core::{ApiError, HttpResponse};
use flashclaim_spin3 as glue;
use spin_sdk::http::{Method, Request};
use spin_sdk::http_service;
use spin_sdk::wasip3::http::types::{ErrorCode, Response};

thread_local! {
    /// Answers this instance gave without Redis, reported with the activity's next claim
    /// that reaches it (`flashclaim_core::claim::Unreported`). One thread: requests of a
    /// reused instance interleave only at awaits, and no borrow is held across one.
    static UNREPORTED: RefCell<Unreported> = RefCell::new(Unreported::default());
}

#[http_service]
async fn handle(req: Request) -> Result<Response, ErrorCode> {
    Ok(glue::serve(req, route, |_| None).await)
}

async fn route(req: Request) -> Result<HttpResponse, ApiError> {
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let post = req.method() == Method::POST;
    match (post, segments.as_slice()) {
        (true, ["api", "activities", id, "claims"]) => post_claim(req, id).await,
        (false, ["api", "activities", _, "claims"]) => Err(ApiError::MethodNotAllowed),
        _ => Err(ApiError::NotFound),
    }
}

fn header<'r>(req: &'r Request, name: &str) -> Option<&'r [u8]> {
    req.headers().get(name).map(|v| v.as_bytes())
}

async fn settings() -> Result<ClaimSettings, ApiError> {
    // Read per request from the instance's cached variables: no host call.
    let per_address = glue::optional_var("claim_rate_limit_per_address").await;
    ClaimSettings::from_variables(
        glue::var("jwt_secret").await?,
        glue::optional_var("claim_rate_limit").await.as_deref(),
        glue::optional_var("claim_global_rate_limit")
            .await
            .as_deref(),
    )
    .and_then(|s| s.with_per_address(per_address.as_deref()))
    .map_err(|e| {
        eprintln!("flashclaim: {e}");
        ApiError::Internal
    })
}

async fn post_claim(req: Request, id: &str) -> Result<HttpResponse, ApiError> {
    // parse
    let settings = settings().await?;
    let authorization = header(&req, "authorization").and_then(|h| std::str::from_utf8(h).ok());
    let authorization = authorization.map(str::to_string);
    let idempotency = header(&req, "idempotency-key").map(<[u8]>::to_vec);
    let client = glue::client_addr(&req).await;
    let body = glue::body(req).await?;
    let settings =
        settings.with_previous_jwt_secret(glue::optional_var("jwt_secret_previous").await);
    let (activity, command) = claim::prepare(
        id,
        authorization.as_deref(),
        idempotency.as_deref(),
        &body,
        client,
        &settings,
        glue::now(),
        glue::random_vec,
    )?;

    // apply: one script on the connection this instance keeps for the activity's shard
    let shards = glue::redis_shards().await?;
    let taken = UNREPORTED.with_borrow_mut(|u| u.take(activity));
    let command = command.with_unreported(taken);
    let reply = glue::run_confirmed(
        shards.for_activity(activity),
        &CLAIM,
        &command.keys,
        &command.argv,
        scripts::status_is_success,
    )
    .await
    .inspect_err(|e| eprintln!("flashclaim: claim: {e}"));
    UNREPORTED.with_borrow_mut(|u| u.settle(activity, taken, reply.as_ref().err()));

    // encode
    match claim::answer(activity, reply) {
        // The rare answer that may mean the wrong shard (flashclaim_core::shards).
        Err(ApiError::NotFound) => Err(glue::not_found_on_shard(&shards, activity).await),
        answer => answer.inspect_err(|e| {
            if *e == ApiError::Internal {
                eprintln!("flashclaim: claim script returned an unexpected reply");
            }
        }),
    }
}
