//! The minimal WASIp3 claim, a benchmark fixture: the same work as the minimal WASIp2 claim
//! (tests/bench-fixtures/p2: claim.lua through flashclaim-core, one EVALSHA, EVAL on
//! NOSCRIPT, the user from `x-user-id`, no JWT), written the best way a WASIp3 component
//! can on Spin 4, which reuses its instance: flashclaim-spin3 keeps `redis_address` and an
//! idle Redis connection in the instance (`run_script`), holds backpressure while a request
//! runs (`OneAtATime`) and answers in one stream write with `content-length` (`respond`).
//!
//! - `GET /p3/hello`: a trivial answer in one write, the runtime's per-request ceiling
//!   (no backpressure: Spin may run 16 at once in an instance);
//! - `POST /p3/api/activities/:id/claims` with `x-user-id`: the claim.

use flashclaim_core::claim::{self, ClaimCommand, ClaimRequest, RateLimit};
use flashclaim_core::ids::{ActivityId, UserId};
use flashclaim_core::scripts::CLAIM;
use flashclaim_core::{ApiError, HttpResponse};
use flashclaim_spin3 as glue;
use spin_sdk::http::{Method, Request};
use spin_sdk::http_service;
use spin_sdk::wasip3::http::types::{ErrorCode, Response};

#[http_service]
async fn handle(req: Request) -> Result<Response, ErrorCode> {
    let path = req.uri().path().trim_matches('/').to_string();
    let segments: Vec<&str> = path.split('/').collect();
    let get = req.method() == Method::GET;
    let post = req.method() == Method::POST;
    let answer = match segments.as_slice() {
        ["p3", "hello"] if get => Ok(HttpResponse {
            status: 200,
            headers: vec![("content-type", "text/plain".into())],
            body: b"hello\n".to_vec(),
        }),
        ["p3", "api", "activities", id, "claims"] if post => {
            // Released once the response is built, on every path.
            let _one = glue::OneAtATime::enter();
            post_claim(&req, id).await
        }
        _ => Err(ApiError::NotFound),
    };
    Ok(glue::respond_result(answer))
}

async fn post_claim(req: &Request, id: &str) -> Result<HttpResponse, ApiError> {
    let activity = ActivityId::parse(id)?;
    let user = req
        .headers()
        .get("x-user-id")
        .and_then(|h| h.to_str().ok())
        .and_then(UserId::parse)
        .ok_or(ApiError::Unauthenticated("x-user-id is missing"))?;
    let address = glue::var("redis_address").await?;
    let random = glue::random_vec(21);
    let (id_bytes, code_bytes) = random.split_at(16);
    let claim_id = claim::claim_id(id_bytes.try_into().map_err(|_| ApiError::Internal)?);
    let prefix = claim::code_prefix(code_bytes.try_into().map_err(|_| ApiError::Internal)?);
    let command = ClaimCommand::new(
        activity,
        &user,
        ClaimRequest {
            quantity: 1,
            ticket_type: None,
        },
        None,
        glue::now(),
        &claim_id,
        &[prefix],
        RateLimit::OFF,
        RateLimit::OFF,
    );
    let reply = glue::run_script(&address, &CLAIM, &command.keys, &command.argv).await;
    claim::answer(activity, reply)
}
