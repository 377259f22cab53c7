//! The activity component: `GET /api/activities` (published and upcoming, a page at a
//! time), `GET /api/activities/:id`, and the claim passes, `POST /api/activities/:id/passes`
//! (passes.rs).
//!
//! Views are served from Redis with the live stock in the same round trip (MGET of the
//! cached view and the stock). On a miss one reader rebuilds the view from Postgres under
//! a short lock while the others wait for it (no stampede onto Postgres), and it is cached
//! with a jittered TTL; unknown and unpublished ids are cached as "not found", so a flood
//! of random ids never reaches Postgres.

use flashclaim_spin as glue;

mod listing;
mod passes;

use flashclaim_core::activity::{self, Status, NOT_FOUND_MARKER, NOT_FOUND_TTL_MS};
use flashclaim_core::cors;
use flashclaim_core::ids::ActivityId;
use flashclaim_core::jwt::Principal;
use flashclaim_core::keys::ActivityKeys;
use flashclaim_core::scripts::{Arg, RedisCommands, Reply, STOCKS, VIEW};
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
        (Method::Get, ["api", "activities"]) => {
            listing::list(req.query()).map(|page| read(page, false))
        }
        (Method::Get, ["api", "activities", id]) => {
            let caller = caller(req);
            let for_caller = caller.is_some();
            let mut response = get_activity(id, caller).map(|view| read(view, for_caller))?;
            // Even the public answer: an edge must not hand it to a caller with a token.
            response.add_vary("Authorization");
            Ok(response)
        }
        (Method::Post, ["api", "activities", id, "passes"]) => passes::post(req, id),
        (
            _,
            ["api", "activities"] | ["api", "activities", _] | ["api", "activities", _, "passes"],
        ) => Err(ApiError::MethodNotAllowed),
        _ => Err(ApiError::NotFound),
    }
}

/// A read as it leaves: with the server's time (pages count down on it, not on the
/// device's clock, which is often minutes off), also as the `Date` header, and cacheable
/// by an edge unless it was made for the caller's token. Errors carry neither.
fn read(mut body: serde_json::Value, for_caller: bool) -> HttpResponse {
    let now = glue::now();
    body["server_time"] = now.rfc3339_millis().into();
    let mut response = HttpResponse::json(200, &body);
    response.headers.push(("date", now.http_date()));
    cors::activity_read(for_caller).apply(&mut response);
    response
}

/// The caller when a valid token is sent. The page is public: a missing or stale token
/// only leaves out `my_claimed`.
fn caller(req: &Request) -> Option<Principal> {
    req.header("authorization")?;
    glue::principal(req).ok()
}

fn get_activity(id: &str, caller: Option<Principal>) -> Result<serde_json::Value, ApiError> {
    let id = ActivityId::parse(id)?;
    let keys = ActivityKeys::new(id);
    let redis = glue::redis_for(id, "activity")?;
    let user = caller.as_ref().map(|c| c.user.as_str());
    let view = match cached(&redis, &keys, user)? {
        Some(view) => view,
        None => {
            let rebuilt = rebuild(&redis, id, &keys)?;
            // The rebuilt view, now cached, with the live stocks and what the caller holds.
            cached(&redis, &keys, user)?.unwrap_or(rebuilt)
        }
    };
    in_buckets(&redis, id, user, view).map_err(|e| glue::redis_unavailable("activity", e))
}

/// An activity of several stock buckets (`flashclaim_core::buckets`): view.lua read bucket
/// 0; the others' stocks are added (one stocks.lua per bucket: each is its own slot), and
/// what the caller holds is read from their home bucket.
fn in_buckets(
    redis: &SpinRedis,
    id: ActivityId,
    user: Option<&str>,
    mut view: serde_json::Value,
) -> Result<serde_json::Value, flashclaim_core::scripts::RedisFailure> {
    let n = view["stock_buckets"].as_i64().unwrap_or(1);
    if n <= 1 {
        return Ok(view);
    }
    let mut others = Vec::new();
    for b in 1..n {
        let key = ActivityKeys::in_bucket(id, b, n).stocks();
        let reply = redis.run(&STOCKS, &[key], &[])?;
        others.extend(activity::decode_stocks(&reply, 1).unwrap_or_default());
    }
    activity::add_bucket_stocks(&mut view, &others);
    let Some(user) = user.and_then(flashclaim_core::ids::UserId::parse) else {
        return Ok(view);
    };
    let home = flashclaim_core::buckets::home(&user, n);
    if home != 0 {
        let mut hmget = vec![
            Arg::from(ActivityKeys::in_bucket(id, home, n).claimed()),
            Arg::from(user.as_str()),
        ];
        for t in view["ticket_types"].as_array().into_iter().flatten() {
            let key = t["key"].as_str().unwrap_or_default();
            hmget.push(Arg::from(format!("{}|{key}", user.as_str())));
        }
        let held = redis.execute("HMGET", &hmget)?;
        activity::lay_held_over(&mut view, &held);
    }
    Ok(view)
}

/// The cached view with each type's live stock and, for a caller, what they hold (one
/// round trip: view.lua); `None` on a miss, `NotFound` for a cached absence.
fn cached(
    redis: &SpinRedis,
    keys: &ActivityKeys,
    user: Option<&str>,
) -> Result<Option<serde_json::Value>, ApiError> {
    let reply = redis
        .run(
            &VIEW,
            &[keys.view(), keys.stocks(), keys.claimed()],
            &[Arg::from(user.unwrap_or(""))],
        )
        .map_err(|e| glue::redis_unavailable("activity", e))?;
    activity::live_view(&reply, user.is_some())
}

/// How long the rebuilding reader may hold the lock, and how the others wait for it.
const REBUILD_LOCK_MS: i64 = 3000;
const WAIT_STEP_MS: u64 = 20;
const WAIT_STEPS: u32 = 150;

/// Cache-aside with one rebuild at a time: whoever takes the lock reads Postgres; everyone
/// else polls the cache until the view (or the not-found marker) appears.
fn rebuild(
    redis: &SpinRedis,
    id: ActivityId,
    keys: &ActivityKeys,
) -> Result<serde_json::Value, ApiError> {
    let unavailable = |e| glue::redis_unavailable("activity", e);
    let lock = redis
        .execute(
            "SET",
            &[
                Arg::from(keys.view_lock()),
                Arg::from("1"),
                Arg::from("NX"),
                Arg::from("PX"),
                Arg::Int(REBUILD_LOCK_MS),
            ],
        )
        .map_err(unavailable)?;
    if lock.first().and_then(Reply::as_text) != Some("OK") {
        for _ in 0..WAIT_STEPS {
            std::thread::sleep(std::time::Duration::from_millis(WAIT_STEP_MS));
            if let Some(view) = cached(redis, keys, None)? {
                return Ok(view);
            }
        }
        return Err(ApiError::Unavailable(
            "the activity is being loaded; try again shortly",
        ));
    }
    // The previous holder may have filled the cache between our miss and our lock.
    if let Some(view) = cached(redis, keys, None)? {
        let _ = redis.execute("DEL", &[Arg::from(keys.view_lock())]);
        return Ok(view);
    }
    let loaded = glue::load_activity(&glue::pg_open()?, id);
    let result = store_view(redis, keys, loaded);
    let _ = redis.execute("DEL", &[Arg::from(keys.view_lock())]);
    result
}

fn store_view(
    redis: &SpinRedis,
    keys: &ActivityKeys,
    loaded: Result<Option<activity::Activity>, ApiError>,
) -> Result<serde_json::Value, ApiError> {
    let Some(activity) = loaded?.filter(|a| a.status != Status::Draft) else {
        let _ = redis.execute(
            "SET",
            &[
                Arg::from(keys.view()),
                Arg::from(NOT_FOUND_MARKER),
                Arg::from("PX"),
                Arg::Int(NOT_FOUND_TTL_MS),
            ],
        );
        return Err(ApiError::NotFound);
    };
    // Cached with the whole stock: readers lay the live stocks over it (view.lua).
    let view = activity.view();
    let jitter = u32::from_le_bytes(glue::random_bytes::<4>());
    let _ = redis.execute(
        "SET",
        &[
            Arg::from(keys.view()),
            Arg::from(view.to_string()),
            Arg::from("PX"),
            Arg::Int(activity::view_ttl_ms(jitter)),
        ],
    );
    Ok(view)
}
