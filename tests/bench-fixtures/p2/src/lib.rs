//! The minimal WASIp2 claim, a benchmark fixture: the least a WASIp2 component can do for
//! flashclaim's claim. The same claim.lua, keys and arguments through flashclaim-core
//! (`ClaimCommand::new`, `claim::decode` / `claim::encode`), one EVALSHA (EVAL on
//! NOSCRIPT), but no JWT: the user comes from an `x-user-id` header. Spin creates a fresh
//! instance for every WASIp2 request, so the `redis_address` look-up and the Redis
//! connection are paid on every request; nothing else is done.
//!
//! - `GET /p2/hello`: a trivial answer, the runtime's per-request ceiling;
//! - `POST /p2/api/activities/:id/claims` with `x-user-id`: the claim.

use flashclaim_core::claim::{self, ClaimCommand, ClaimRequest, RateLimit};
use flashclaim_core::ids::{ActivityId, UserId};
use flashclaim_core::scripts::CLAIM;
use flashclaim_core::{ApiError, HttpResponse};
use spin_sdk::http::{Method, Request, Response};

#[spin_sdk::http_component]
fn handle(req: Request) -> Response {
    let path = req.path().trim_matches('/').to_string();
    let segments: Vec<&str> = path.split('/').collect();
    let answer = match (req.method(), segments.as_slice()) {
        (Method::Get, ["p2", "hello"]) => {
            return Response::builder()
                .status(200)
                .header("content-type", "text/plain")
                .body("hello\n")
                .build();
        }
        (Method::Post, ["p2", "api", "activities", id, "claims"]) => post_claim(&req, id),
        _ => Err(ApiError::NotFound),
    };
    let r = answer.unwrap_or_else(|e| e.to_response());
    let mut builder = Response::builder();
    builder.status(r.status);
    for (name, value) in r.headers {
        builder.header(name, value);
    }
    builder.body(r.body).build()
}

fn post_claim(req: &Request, id: &str) -> Result<HttpResponse, ApiError> {
    let activity = ActivityId::parse(id)?;
    let user = req
        .header("x-user-id")
        .and_then(|h| h.as_str())
        .and_then(UserId::parse)
        .ok_or(ApiError::Unauthenticated("x-user-id is missing"))?;
    let address = spin_sdk::variables::get("redis_address").map_err(|_| ApiError::Internal)?;
    let random = wasi::random::random::get_random_bytes(21);
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
        flashclaim_spin::now(),
        &claim_id,
        &[prefix],
        RateLimit::OFF,
        RateLimit::OFF,
    );
    let reply = flashclaim_spin::SpinRedis::open(&address)
        .and_then(|redis| redis.run(&CLAIM, &command.keys, &command.argv));
    claim::answer(activity, reply)
}
