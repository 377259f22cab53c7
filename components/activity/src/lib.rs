//! The activity component: `GET /api/activities/:id`.
//!
//! Views are served from Redis with the live stock in the same round trip (MGET of the
//! cached view and the stock). On a miss the view is rebuilt from Postgres and cached with
//! a jittered TTL; unknown and unpublished ids are cached as "not found", so a flood of
//! random ids never reaches Postgres.

#[path = "../../shared/spin_glue.rs"]
mod glue;

use flashclaim_core::activity::{self, Status, NOT_FOUND_MARKER, NOT_FOUND_TTL_MS};
use flashclaim_core::ids::ActivityId;
use flashclaim_core::keys::ActivityKeys;
use flashclaim_core::scripts::{Arg, RedisCommands, Reply};
use flashclaim_core::{ApiError, HttpResponse};
use spin_sdk::http::{Method, Request, Response};

use glue::SpinRedis;

#[spin_sdk::http_component]
fn handle(req: Request) -> Response {
    glue::respond_result(route(&req))
}

fn route(req: &Request) -> Result<HttpResponse, ApiError> {
    let segments = glue::path_segments(req);
    match (req.method(), segments.as_slice()) {
        (Method::Get, ["api", "activities", id]) => get_activity(id),
        (_, ["api", "activities", _]) => Err(ApiError::MethodNotAllowed),
        _ => Err(ApiError::NotFound),
    }
}

fn get_activity(id: &str) -> Result<HttpResponse, ApiError> {
    let id = ActivityId::parse(id)?;
    let keys = ActivityKeys::new(id);
    let redis = glue::redis_for(id, "activity")?;
    let cached = redis
        .execute("MGET", &[Arg::from(keys.view()), Arg::from(keys.stock())])
        .map_err(|e| glue::redis_unavailable("activity", e))?;
    let stock = cached.get(1).and_then(Reply::as_int);
    match cached.first().and_then(Reply::as_text) {
        Some(NOT_FOUND_MARKER) => Err(ApiError::NotFound),
        Some(view) => {
            let mut view: serde_json::Value =
                serde_json::from_str(view).map_err(|_| ApiError::Internal)?;
            if let Some(stock) = stock {
                view["stock_left"] = stock.into();
            }
            Ok(HttpResponse::json(200, &view))
        }
        None => rebuild(&redis, id, &keys, stock),
    }
}

/// Cache-aside: read Postgres once, cache the view (or the absence of one).
fn rebuild(
    redis: &SpinRedis,
    id: ActivityId,
    keys: &ActivityKeys,
    stock: Option<i64>,
) -> Result<HttpResponse, ApiError> {
    let found = glue::load_activity(&glue::pg_open()?, id)?.filter(|a| a.status != Status::Draft);
    let Some(activity) = found else {
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
    let view = activity.view(stock.unwrap_or(activity.stock_total));
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
    Ok(HttpResponse::json(200, &view))
}
