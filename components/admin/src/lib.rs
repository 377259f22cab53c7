//! The admin component: everything under `/admin` (role `admin` in the JWT), except
//! `/admin/drain`, which the drain component serves.

#[path = "../../shared/spin_glue.rs"]
mod glue;

use flashclaim_core::activity::{self, Activity, NewActivity, Status};
use flashclaim_core::ids::ActivityId;
use flashclaim_core::keys::ACTIVITY_INDEX;
use flashclaim_core::scripts::{Arg, RedisCommands, PUBLISH};
use flashclaim_core::{ApiError, HttpResponse};
use spin_sdk::http::{Method, Request, Response};
use spin_sdk::pg4::ParameterValue;

#[spin_sdk::http_component]
fn handle(req: Request) -> Response {
    glue::respond_result(route(&req))
}

fn route(req: &Request) -> Result<HttpResponse, ApiError> {
    let segments = glue::path_segments(req);
    // Every admin route needs the role; check it before revealing what exists.
    glue::admin(req)?;
    match (req.method(), segments.as_slice()) {
        (Method::Post, ["admin", "activities"]) => create_activity(req),
        (Method::Post, ["admin", "activities", id, "publish"]) => publish_activity(id),
        (Method::Post, ["admin", "activities", id, "close"]) => close_activity(id),
        (_, ["admin", "activities"] | ["admin", "activities", _, "publish" | "close"]) => {
            Err(ApiError::MethodNotAllowed)
        }
        _ => Err(ApiError::NotFound),
    }
}

fn create_activity(req: &Request) -> Result<HttpResponse, ApiError> {
    let new = NewActivity::parse(req.body())?;
    let pg = glue::pg_open()?;
    let rows = pg
        .query(
            "INSERT INTO activities \
               (name, description, image_url, starts_at, ends_at, stock_total, per_user_limit, kind, require_pass) \
             VALUES ($1, $2, $3, to_timestamp($4::int8 / 1000.0), to_timestamp($5::int8 / 1000.0), \
                     $6::int8, $7::int8, $8, $9) \
             RETURNING id",
            &[
                glue::str_param(&new.name),
                glue::str_param(&new.description),
                new.image_url.as_deref().map_or(ParameterValue::DbNull, glue::str_param),
                ParameterValue::Int64(new.starts_at.0),
                ParameterValue::Int64(new.ends_at.0),
                ParameterValue::Int64(new.stock_total),
                ParameterValue::Int64(new.per_user_limit),
                glue::str_param(new.kind.as_str()),
                ParameterValue::Boolean(new.require_pass),
            ],
        )
        .map_err(|e| glue::pg_internal("create activity", e))?;
    let id = rows
        .rows
        .first()
        .and_then(|r| glue::int(&r[0]))
        .ok_or(ApiError::Internal)?;
    let created = Activity {
        id: ActivityId::from_db(id),
        name: new.name,
        description: new.description,
        image_url: new.image_url,
        starts_at: new.starts_at,
        ends_at: new.ends_at,
        status: Status::Draft,
        stock_total: new.stock_total,
        per_user_limit: new.per_user_limit,
        kind: new.kind,
        require_pass: new.require_pass,
    };
    let mut response = HttpResponse::json(201, &created.view(created.stock_total));
    response
        .headers
        .push(("location", format!("/api/activities/{id}")));
    Ok(response)
}

/// Postgres first (the source of truth), then Redis. Both steps are idempotent, so a
/// publish that failed half-way is completed by publishing again.
fn publish_activity(id: &str) -> Result<HttpResponse, ApiError> {
    let id = ActivityId::parse(id)?;
    let pg = glue::pg_open()?;
    let mut activity = glue::load_activity(&pg, id)?.ok_or(ApiError::NotFound)?;
    if activity.status == Status::Closed {
        return Err(ApiError::Conflict(
            "a closed activity cannot be published again".into(),
        ));
    }
    pg.execute(
        "UPDATE activities SET status = 'published', published_at = COALESCE(published_at, now()), \
         updated_at = now() WHERE id = $1 AND status IN ('draft', 'published')",
        &[ParameterValue::Int64(id.get())],
    )
    .map_err(|e| glue::pg_internal("publish activity", e))?;
    activity.status = Status::Published;
    let stock_left = load_into_redis(&activity)?;
    Ok(HttpResponse::json(200, &activity.view(stock_left)))
}

/// Closing is final: claims answer `ended` from then on. Postgres first, then Redis, both
/// idempotent; a draft that never reached Redis is closed in Postgres only.
fn close_activity(id: &str) -> Result<HttpResponse, ApiError> {
    let id = ActivityId::parse(id)?;
    let pg = glue::pg_open()?;
    let mut activity = glue::load_activity(&pg, id)?.ok_or(ApiError::NotFound)?;
    pg.execute(
        "UPDATE activities SET status = 'closed', updated_at = now() WHERE id = $1",
        &[ParameterValue::Int64(id.get())],
    )
    .map_err(|e| glue::pg_internal("close activity", e))?;
    let was_loaded = activity.status != Status::Draft;
    activity.status = Status::Closed;
    let stock_left = if was_loaded {
        load_into_redis(&activity)?
    } else {
        activity.stock_total
    };
    Ok(HttpResponse::json(200, &activity.view(stock_left)))
}

/// Loads the activity's settings (and, the first time, its stock) into Redis and indexes
/// it for the drain; returns the live stock.
fn load_into_redis(activity: &Activity) -> Result<i64, ApiError> {
    let redis = glue::redis_for(activity.id, "load activity")?;
    let (keys, argv) = activity.publish_command();
    let reply = redis
        .run(&PUBLISH, &keys, &argv)
        .map_err(|e| glue::redis_unavailable("load activity", e))?;
    let (_, stock_left) = activity::decode_publish(&reply)?;
    redis
        .execute(
            "SADD",
            &[Arg::from(ACTIVITY_INDEX), Arg::Int(activity.id.get())],
        )
        .map_err(|e| glue::redis_unavailable("load activity", e))?;
    Ok(stock_left)
}
