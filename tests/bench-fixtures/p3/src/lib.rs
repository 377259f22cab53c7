//! The minimal WASIp3 claim, a benchmark fixture: the same work as the minimal WASIp2 claim
//! (tests/bench-fixtures/p2: claim.lua through flashclaim-core, one EVALSHA, EVAL on
//! NOSCRIPT, the user from `x-user-id`, no JWT), written the best way a WASIp3 component
//! can on Spin 4, which reuses its instance: flashclaim-spin3 keeps `redis_address` and an
//! idle Redis connection in the instance (`run_script`), holds backpressure while a request
//! runs (`OneAtATime`) and answers in one stream write with `content-length` (`respond`).
//!
//! - `GET /p3/hello`: a trivial answer in one write, the runtime's per-request ceiling
//!   (no backpressure: Spin may run 16 at once in an instance);
//! - `POST /p3/api/activities/:id/claims` with `x-user-id`: the claim; with a signed
//!   `Authorization` instead, the same claim after the token and body are checked as
//!   flashclaim checks them (`claim::parse`);
//! - `POST /p3/steps/:step`: flashclaim's cached refusal built up a step at a time from the
//!   trivial answer (see [`Step`]), so that `make bench` can say what each step of it costs
//!   the runtime (BENCHMARKS.md, "Where a cached answer's time goes").

use flashclaim_core::claim::{self, ClaimCommand, ClaimRequest, ClaimSettings, RateLimit};
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
        ["p3", "hello"] if get => Ok(hello()),
        ["p3", "steps", step] if post => match Step::parse(step) {
            Some(step) => return Ok(steps(req, step).await),
            None => Err(ApiError::NotFound),
        },
        ["p3", "api", "activities", id, "claims"] if post => {
            // Released once the response is built, on every path.
            let _one = glue::OneAtATime::enter();
            let id = id.to_string();
            if req.headers().contains_key("authorization") {
                post_signed_claim(req, &id).await
            } else {
                post_claim(&req, &id).await
            }
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

/// The same claim from a signed press: the body read and the claim parsed (JWT HS256,
/// body, Idempotency-Key) by `flashclaim_core::claim::parse`, as flashclaim's claim does,
/// with settings kept by the instance; then the same one EVALSHA. What authentication adds
/// to the minimal claim, so that flashclaim's claim is also measured against a component
/// doing the same work and nothing else.
async fn post_signed_claim(mut req: Request, id: &str) -> Result<HttpResponse, ApiError> {
    thread_local! {
        static SETTINGS: std::rc::Rc<ClaimSettings> = std::rc::Rc::new(
            ClaimSettings::from_variables(BENCH_JWT_SECRET.into(), None, None)
                .expect("the bench's claim settings parse"),
        );
    }
    let settings = SETTINGS.with(std::rc::Rc::clone);
    let now = glue::now();
    let body = glue::body(&mut req, claim::MAX_CLAIM_BODY).await?;
    let header = |name| req.headers().get(name).map(|v| v.as_bytes());
    let authorization = header("authorization").and_then(|a| std::str::from_utf8(a).ok());
    let parsed = claim::parse(
        id,
        authorization,
        header("idempotency-key"),
        &body,
        &settings,
        now,
    )?;
    let address = glue::var("redis_address").await?;
    let command = parsed.command(None, &settings, now, glue::random_vec)?;
    let reply = glue::run_script(&address, &CLAIM, &command.keys, &command.argv).await;
    claim::answer(parsed.activity, reply)
}

fn hello() -> HttpResponse {
    HttpResponse {
        status: 200,
        headers: vec![("content-type", "text/plain".into())],
        body: b"hello\n".to_vec(),
    }
}

/// The tests' JWT secret (flashclaim-tests' `JWT_SECRET`), which the benchmark signs with.
const BENCH_JWT_SECRET: &str = "test-jwt-secret-0123456789";

/// How much of a cached refusal a `POST /p3/steps/:step` does; each step adds to the one
/// before it, and all but the last answer `hello`.
#[derive(Clone, Copy, PartialEq)]
enum Step {
    /// Nothing: the press answered at once, the request's own cost to the runtime.
    Press,
    /// Through `serve_admitting`, reading the headers and the client's address.
    Admitted,
    /// The body read as spin-sdk's `bytes()` reads it (flashclaim did before it read it
    /// through `glue::body`).
    BodySdk,
    /// The body read through `glue::body` instead.
    Body,
    /// The claim parsed: the JWT checked, the body and the Idempotency-Key read.
    Parsed,
    /// Answered `sold_out` as the claim cache answers it.
    Refused,
}

impl Step {
    fn parse(text: &str) -> Option<Step> {
        Some(match text {
            "press" => Step::Press,
            "admitted" => Step::Admitted,
            "body-sdk" => Step::BodySdk,
            "body" => Step::Body,
            "parsed" => Step::Parsed,
            "refused" => Step::Refused,
            _ => return None,
        })
    }
}

async fn steps(req: Request, step: Step) -> Response {
    if step == Step::Press {
        return glue::respond_result(Ok(hello()));
    }
    glue::serve_admitting(req, move |req: Request| async move {
        let now = glue::now();
        let header = |name| req.headers().get(name).map(|v| v.as_bytes().to_vec());
        let (authorization, idempotency) = (header("authorization"), header("idempotency-key"));
        let _client = glue::client_addr(&req).await;
        let body = match step {
            Step::Admitted => return Ok(hello()),
            Step::BodySdk => {
                use spin_sdk::http::body::IncomingBodyExt;
                let read = req.into_body().bytes().await;
                read.map_err(|_| ApiError::invalid("the body could not be read"))?;
                return Ok(hello());
            }
            _ => glue::body(&mut { req }, claim::MAX_CLAIM_BODY).await?,
        };
        if step == Step::Body {
            return Ok(hello());
        }
        let settings = ClaimSettings::from_variables(BENCH_JWT_SECRET.into(), None, None)
            .map_err(|_| ApiError::Internal)?;
        let authorization = authorization
            .as_deref()
            .and_then(|a| std::str::from_utf8(a).ok());
        claim::parse(
            "1",
            authorization,
            idempotency.as_deref(),
            &body,
            &settings,
            now,
        )?;
        match step {
            Step::Parsed => Ok(hello()),
            _ => Err(ApiError::SoldOut),
        }
    })
    .await
}
