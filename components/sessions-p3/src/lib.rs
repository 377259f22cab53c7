//! `POST /api/sessions` as Spin 4 runs it best: a WASIp3 component (spin-sdk 7) that Spin
//! reuses across requests and that keeps its Redis connection between them, with exactly
//! the answers of the WASIp2 auth component (components/auth), which hosts without WASIp3
//! run instead.
//!
//! Why a component of its own: a guessing run is refused from its counters before any
//! password is hashed (flashclaim_core::login), so what a refused guess costs is the
//! request itself. As a WASIp2 request that is a fresh instance and a fresh Redis
//! connection, about what a WASIp2 claim costs; a login flood beside a claim storm then
//! takes the storm's CPU. Here it is one EVALSHA on a kept connection, and the refusal is
//! held for a second (`login::REFUSAL_HOLD_MS`) without holding the instance, so a run
//! of guesses gets at most one refusal a second per connection it opens.

use flashclaim_core::login::{self, Attempt, LoginSettings, UserRow};
use flashclaim_core::scripts::{LOGIN, Reply};
use flashclaim_core::throttle::Count;
use flashclaim_core::{ApiError, HttpResponse};
use flashclaim_spin3 as glue;
use spin_sdk::http::{Method, Request};
use spin_sdk::http_service;
use spin_sdk::pg;
use spin_sdk::wasip3::http::types::{ErrorCode, Response};

#[http_service]
async fn handle(req: Request) -> Result<Response, ErrorCode> {
    // One request at a time per instance (an argon2 hash holds its only thread for ~60 ms,
    // and no other request should wait on it); a guess refused by the throttle is answered
    // after a hold, the instance free meanwhile.
    Ok(glue::serve(req, route, login::refusal_hold).await)
}

async fn route(req: Request) -> Result<HttpResponse, ApiError> {
    let post = req.method() == Method::POST;
    match (post, req.uri().path().trim_matches('/')) {
        (true, "api/sessions") => log_in(req).await,
        (false, "api/sessions") => Err(ApiError::MethodNotAllowed),
        _ => Err(ApiError::NotFound),
    }
}

async fn log_in(mut req: Request) -> Result<HttpResponse, ApiError> {
    // parse
    let settings = LoginSettings::from_variables(
        glue::var("jwt_secret").await?,
        glue::optional_var("login_throttle_per_user")
            .await
            .as_deref(),
        glue::optional_var("login_throttle_per_address")
            .await
            .as_deref(),
        glue::optional_var("session_ttl_secs").await.as_deref(),
    );
    let body = glue::body(&mut req, flashclaim_core::auth::MAX_AUTH_BODY).await?;
    let client = glue::client_addr(&req).await;
    let attempt = login::prepare(&body, client, &settings)?;

    // apply: the counters first, alone (a throttled guess ends here; an admitted one is
    // counted as a failure before its hash), then the user, the hash, and a success given
    // back
    login::check(&count(&settings, &attempt, Count::Try).await?)?;
    let user = user_row(&attempt.credentials.username).await?;
    // An unknown name was counted too, so neither answer nor counter tells who exists.
    let user = login::verify(&attempt, user).ok_or_else(login::refused)?;
    count(&settings, &attempt, Count::Clear).await?;

    // encode
    Ok(login::answer(&settings, &attempt, user, glue::now()))
}

/// One login.lua call on the first endpoint of `redis_address` (the counters belong to no
/// activity), on a connection this instance keeps. Without the counters no guess can be
/// refused cheaply: the login is refused (503) rather than let through unthrottled.
async fn count(
    settings: &LoginSettings,
    attempt: &Attempt,
    what: Count,
) -> Result<Vec<Reply>, ApiError> {
    let shards = glue::redis_shards().await?;
    let first = shards.all().first().ok_or(ApiError::Internal)?;
    glue::run_script(
        first,
        &LOGIN,
        &attempt.counter_keys,
        &login::counter_args(settings, what, glue::now()),
    )
    .await
    .map_err(|e| glue::redis_unavailable("login counters", e))
}

/// The user named in the attempt ([`login::USER_QUERY`]: always one row). A connection per
/// login that got past the counters: those are rare, and each pays an argon2 hash anyway.
async fn user_row(username: &str) -> Result<UserRow, ApiError> {
    let address = glue::var("pg_address").await?;
    let db = pg::Connection::open(address).await.map_err(|e| {
        eprintln!("flashclaim: postgres unreachable: {}", pg_error_text(&e));
        ApiError::Unavailable("the database is temporarily unavailable")
    })?;
    let failed = |e: pg::Error| {
        eprintln!("flashclaim: log in: {}", pg_error_text(&e));
        ApiError::Internal
    };
    let rows = db
        .query(
            login::USER_QUERY,
            [pg::ParameterValue::Str(username.into())],
        )
        .await
        .map_err(failed)?
        .collect()
        .await
        .map_err(failed)?;
    let text = |row: &pg::Row, column: &str| row.get::<Option<String>>(column).flatten();
    Ok(rows.first().map_or_else(UserRow::default, |r| UserRow {
        id: text(r, "id"),
        password_hash: text(r, "password_hash"),
        role: text(r, "role"),
    }))
}

/// A Postgres error for the log: the server's message, never the connection string.
fn pg_error_text(e: &pg::Error) -> String {
    match e {
        pg::Error::PgError(pg::PgError::QueryFailed(pg::QueryError::DbError(db))) => {
            format!("{} ({})", db.message, db.code)
        }
        pg::Error::PgError(pg::PgError::QueryFailed(pg::QueryError::Text(t))) => {
            t.chars().take(300).collect()
        }
        pg::Error::PgError(pg::PgError::ConnectionFailed(_)) => "connection failed".into(),
        other => format!("{other:?}").chars().take(300).collect(),
    }
}
