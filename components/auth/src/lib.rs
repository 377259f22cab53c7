//! The auth component: `POST /api/users` (register) and `POST /api/sessions` (log in for a
//! JWT signed with `jwt_secret`). Passwords are stored as argon2id hashes; a wrong password
//! and an unknown user get the same answer after the same work.

use flashclaim_spin as glue;

use flashclaim_core::auth::{self, Credentials, Registration, BAD_CREDENTIALS};
use flashclaim_core::{ApiError, HttpResponse};
use spin_sdk::http::{Method, Request, Response};
use spin_sdk::pg4::ParameterValue;

#[spin_sdk::http_component]
fn handle(req: Request) -> Response {
    glue::serve(&req, route)
}

fn route(req: &Request) -> Result<HttpResponse, ApiError> {
    match (req.method(), glue::path_segments(req).as_slice()) {
        (Method::Post, ["api", "users"]) => register(req),
        (Method::Post, ["api", "sessions"]) => log_in(req),
        (_, ["api", "users" | "sessions"]) => Err(ApiError::MethodNotAllowed),
        _ => Err(ApiError::NotFound),
    }
}

fn register(req: &Request) -> Result<HttpResponse, ApiError> {
    let registration = Registration::parse(req.body())?;
    let hash = auth::hash_password(&registration.password, glue::random_bytes::<16>())?;
    let id = auth::user_id(glue::random_bytes::<12>());
    let pg = glue::pg_open()?;
    pg.execute(
        "INSERT INTO users (id, username, password_hash, nickname) VALUES ($1, $2, $3, $4)",
        &[
            glue::str_param(&id),
            glue::str_param(&registration.username),
            glue::str_param(&hash),
            registration
                .nickname
                .as_deref()
                .map_or(ParameterValue::DbNull, glue::str_param),
        ],
    )
    .map_err(|e| match glue::pg_constraint(&e) {
        Some("users_username_key") => ApiError::Conflict("the username is taken".into()),
        _ => glue::pg_internal("register", e),
    })?;
    let mut response = HttpResponse::json(
        201,
        &serde_json::json!({
            "id": id,
            "username": registration.username,
            "nickname": registration.nickname,
        }),
    );
    response.headers.push(("location", "/api/sessions".into()));
    Ok(response)
}

fn log_in(req: &Request) -> Result<HttpResponse, ApiError> {
    let credentials = Credentials::parse(req.body())?;
    let secret = glue::var("jwt_secret")?;
    let pg = glue::pg_open()?;
    // One row whatever the name (spin#3671: a query with no row never returns on Spin
    // 4.0.x): an unknown user is a row of NULLs.
    let rows = pg
        .query(
            "SELECT users.id, users.password_hash, users.role FROM (VALUES (1)) AS one(x) \
             LEFT JOIN users ON users.username = $1",
            &[glue::str_param(&credentials.username)],
        )
        .map_err(|e| glue::pg_internal("log in", e))?;
    let user = rows
        .rows
        .first()
        .and_then(|r| Some((glue::text(&r[0])?, glue::text(&r[1])?, glue::text(&r[2])?)));
    if !auth::verify_password(&credentials.password, user.as_ref().map(|u| u.1.as_str())) {
        return Err(BAD_CREDENTIALS);
    }
    let (id, _, role) = user.ok_or(BAD_CREDENTIALS)?;
    let ttl = glue::optional_var("session_ttl_secs")
        .and_then(|v| v.parse::<i64>().ok())
        .filter(|t| *t > 0)
        .unwrap_or(auth::SESSION_TTL_SECS);
    let (token, expires_at) = auth::session_token(&id, &role, glue::now(), ttl, secret.as_bytes());
    Ok(HttpResponse::json(
        200,
        &serde_json::json!({
            "token": token,
            "token_type": "Bearer",
            "expires_at": expires_at,
            "user": { "id": id, "username": credentials.username, "role": role },
        }),
    ))
}
