//! The claim component as Spin 4 runs it best: a WASIp3 component (spin-sdk 7) that Spin
//! reuses across requests, keeping its variables and its Redis connection between them.
//! `POST /api/activities/:id/claims`, with exactly the answers of the WASIp2 claim component
//! (components/claim), which hosts without WASIp3 run instead. (Passes are the activity
//! component's.)
//!
//! The hot path is one EVALSHA of claim.lua on a kept connection; every check and every
//! effect happens in the script. Refusals that would be the same for anyone (not started,
//! ended, sold out) are answered from what earlier replies taught the instance, for at
//! most `claim_cache_ms` (`flashclaim_core::claim_cache`).

use std::cell::RefCell;
use std::rc::Rc;

use flashclaim_core::buckets::{BucketedClaim, Buckets, Next};
use flashclaim_core::claim::{self, ClaimSettings, Unreported};
use flashclaim_core::claim_cache::{self, ClaimCache};
use flashclaim_core::ids::ActivityId;
use flashclaim_core::keys::ActivityKeys;
use flashclaim_core::scripts::{self, Arg};
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
    /// Refusals anyone would get, answered from what the instance's claims learned
    /// (`flashclaim_core::claim_cache`), for at most `claim_cache_ms`.
    static CACHE: RefCell<ClaimCache> = RefCell::new(ClaimCache::default());
    /// The stock buckets of the activities this instance claimed on, once a script said
    /// them (`flashclaim_core::buckets`; fixed once published): a claim goes home at once.
    static BUCKETS: RefCell<Buckets> = RefCell::new(Buckets::default());
    /// The settings, parsed once: Spin's variables do not change while an instance lives.
    static SETTINGS: RefCell<Option<Rc<(ClaimSettings, i64)>>> = const { RefCell::new(None) };
}

#[http_service]
async fn handle(req: Request) -> Result<Response, ErrorCode> {
    Ok(glue::serve_admitting(req, route).await)
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

/// The claim settings and `claim_cache_ms`, shared by the instance's requests.
async fn settings() -> Result<Rc<(ClaimSettings, i64)>, ApiError> {
    if let Some(known) = SETTINGS.with_borrow(Clone::clone) {
        return Ok(known);
    }
    let per_address = glue::optional_var("claim_rate_limit_per_address").await;
    let cache_ms = glue::optional_var("claim_cache_ms").await;
    let settings = ClaimSettings::from_variables(
        glue::var("jwt_secret").await?,
        glue::optional_var("claim_rate_limit").await.as_deref(),
        glue::optional_var("claim_global_rate_limit")
            .await
            .as_deref(),
    )
    .and_then(|s| s.with_per_address(per_address.as_deref()))
    .and_then(|s| Ok((s, claim_cache::bound_from(cache_ms.as_deref())?)))
    .map_err(|e| {
        eprintln!("flashclaim: {e}");
        ApiError::Internal
    })?;
    let settings = Rc::new((
        settings
            .0
            .with_previous_jwt_secret(glue::optional_var("jwt_secret_previous").await),
        settings.1,
    ));
    SETTINGS.with_borrow_mut(|s| *s = Some(settings.clone()));
    Ok(settings)
}

async fn post_claim(mut req: Request, id: &str) -> Result<HttpResponse, ApiError> {
    let now = glue::now();
    // An instance that knows nothing of the sale, or knows it open with stock in every
    // type, sends every claim of it to Redis: it holds itself from the start (see below),
    // not only from the script on, so that no other request is admitted beside this one
    // meanwhile to open a Redis connection of its own (measured: 31 connections opened per
    // 1,000 claims at c=64 without this, 13 with it; BENCHMARKS.md, "The storm").
    let known_bound = SETTINGS.with_borrow(|s| s.as_ref().map(|s| s.1));
    let _early = match (ActivityId::parse(id), known_bound) {
        (Ok(a), Some(ms)) if CACHE.with_borrow(|c| c.might_answer(a, now, ms)) => None,
        _ => Some(glue::OneAtATime::enter()),
    };

    // parse
    let known = settings().await?;
    let (settings, cache_ms) = (&known.0, known.1);
    let body = glue::body(&mut req, claim::MAX_CLAIM_BODY).await?;
    let authorization = header(&req, "authorization").and_then(|h| std::str::from_utf8(h).ok());
    let idempotency = header(&req, "idempotency-key");
    let parsed = claim::parse(id, authorization, idempotency, &body, settings, now)?;
    let activity = parsed.activity;

    // A refusal anyone would get, from what this instance learned: no Redis.
    if let Some(answer) = from_cache(activity, parsed.ask(), now, cache_ms) {
        return answer;
    }
    // Redis from here: the instance takes no other request until this one has answered
    // (see `glue::OneAtATime`); answers from the cache above never wait on anything. Every
    // request to Redis holds it, learning ones too: unheld, the requests Spin sent meanwhile
    // piled into an instance whose learners hung on a frozen primary it still knew, and hung
    // with them past 30 s (tests/sentinel.rs, SIGSTOP), where held ones go to fresh
    // instances that ask the sentinels again.
    let _one = glue::OneAtATime::enter();
    let shards = glue::redis_shards().await?;
    // A snapshot past its bound that would answer: one HGET of the activity's generation
    // renews it when nothing changed, instead of the whole script.
    if let Some(held) = CACHE.with_borrow(|c| c.to_confirm(activity, parsed.ask(), now, cache_ms))
        && let Some(found) = generation(shards.for_activity(activity), activity).await
        && CACHE.with_borrow_mut(|c| c.confirm(activity, held, found, now))
        && let Some(answer) = from_cache(activity, parsed.ask(), now, cache_ms)
    {
        return answer;
    }
    let learning = CACHE.with_borrow(|c| c.wants_snapshot(activity, now, cache_ms));
    // Only a claim that reaches the script needs to know who asks (its per-address limit).
    let client = glue::client_addr(&req).await;
    let command = parsed.command(client, settings, now, glue::random_vec)?;

    // apply: one script on the connection this instance keeps for the activity's shard
    let taken = UNREPORTED.with_borrow_mut(|u| u.take(activity));
    let mut command = command.with_unreported(taken);
    if learning {
        command = command.with_snapshot(CACHE.with_borrow(|c| c.snapshot_args(activity)));
    }
    let known = BUCKETS.with_borrow(|b| b.get(activity));
    let mut steps = BucketedClaim::start(command, now, known);
    let reply = loop {
        let call = steps.call();
        let reply = glue::run_confirmed(
            shards.for_activity(activity),
            call.script,
            call.keys,
            call.argv,
            scripts::status_is_success,
        )
        .await;
        if let Next::Done(reply) = steps.next(reply) {
            break reply;
        }
    };
    if let Some(n) = steps.buckets() {
        BUCKETS.with_borrow_mut(|b| b.remember(activity, n));
    }
    let reply = reply
        .map(|reply| CACHE.with_borrow_mut(|c| c.learn(activity, reply, now)))
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

/// The answer a fresh snapshot gives anyone asking `ask`, counted for `/metrics`.
fn from_cache(
    activity: ActivityId,
    ask: claim_cache::Ask<'_>,
    now: flashclaim_core::time::Millis,
    cache_ms: i64,
) -> Option<Result<HttpResponse, ApiError>> {
    let reply = CACHE.with_borrow_mut(|c| c.answer(activity, ask, now, cache_ms))?;
    if CACHE.with_borrow_mut(|c| c.schedule_tally(activity)) {
        // After the answer, on its own: the instance stays until it has counted.
        spin_sdk::wasip3::spawn(count_cached(activity));
    }
    Some(claim::answer(activity, Ok(reply)))
}

/// The activity's generation (meta `gen`, see `ClaimCache::to_confirm`); `None` when Redis
/// did not say (unreachable, or the activity is gone): the script then runs and answers
/// truthfully.
async fn generation(address: &str, activity: ActivityId) -> Option<i64> {
    let meta = ActivityKeys::new(activity).meta();
    let args = [Arg::from(meta), Arg::from("gen")];
    let reply = glue::execute_on_key(address, "HGET", &args).await.ok()?;
    reply.first()?.as_text()?.parse().ok()
}

/// Adds the answers given from the cache to the activity's counters, a batch at a time:
/// those given in the [`claim_cache::TALLY_AFTER_MS`] after the batch's first
/// (`ClaimCache::take_tally`). Best effort: a batch Redis refuses is lost, never doubled.
async fn count_cached(activity: ActivityId) {
    let wait = std::time::Duration::from_millis(claim_cache::TALLY_AFTER_MS);
    spin_sdk::wasip3::clocks::monotonic_clock::wait_for(wait.as_nanos() as u64).await;
    let Some(counts) = CACHE.with_borrow_mut(|c| c.take_tally(activity)) else {
        return;
    };
    let Ok(shards) = glue::redis_shards().await else {
        return;
    };
    let key = ActivityKeys::new(activity).metrics();
    // On the activity's own node: on a cluster, a batch sent anywhere else is refused.
    let address = shards.for_activity(activity);
    for (field, n) in counts {
        let args = [
            Arg::from(key.as_str()),
            Arg::from(field.as_str()),
            Arg::Int(n),
        ];
        if let Err(e) = glue::execute_on_key(address, "HINCRBY", &args).await {
            return eprintln!("flashclaim: counting cached answers: {e}");
        }
    }
}
