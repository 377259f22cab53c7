//! The auth component: `POST /api/users` (register) and `POST /api/sessions` (log in for a
//! JWT signed with `jwt_secret`). Passwords are stored as argon2id hashes; a wrong password
//! and an unknown user get the same answer after the same work.
//!
//! Both routes are limited per client address before any hash is computed (see
//! `flashclaim_core::throttle`): accounts created per address (counted in Postgres, where
//! the accounts are), and failed logins per username and per address with a growing
//! back-off (counted in Redis by lua/login.lua, so a refused guess costs one round trip).

use flashclaim_spin as glue;

use flashclaim_core::auth::{self, Registration};
use flashclaim_core::claim::RateLimit;
use flashclaim_core::client_addr;
use flashclaim_core::login::{self, Attempt, LoginSettings, UserRow};
use flashclaim_core::scripts::{Reply, LOGIN};
use flashclaim_core::throttle::{self, Count};
use flashclaim_core::{ApiError, HttpResponse};
use spin_sdk::http::{Method, Request, Response};
use spin_sdk::pg4::{self, ParameterValue};

use glue::SpinRedis;

#[spin_sdk::http_component]
fn handle(req: Request) -> Response {
    glue::serve(&req, route)
}

fn route(req: &Request) -> Result<HttpResponse, ApiError> {
    match (req.method(), glue::path_segments(req).as_slice()) {
        (Method::Post, ["api", "users"]) => {
            let answer = register(req);
            count_registration(&answer);
            answer
        }
        (Method::Post, ["api", "sessions"]) => log_in(req),
        (_, ["api", "users" | "sessions"]) => Err(ApiError::MethodNotAllowed),
        _ => Err(ApiError::NotFound),
    }
}

/// The variable's value, or its default when unset; a value that does not parse is a
/// deployment error, logged, and the default applies (never "no limit" by accident).
fn setting<T>(name: &str, default: T, parse: impl Fn(&str) -> Option<T>) -> T {
    match glue::optional_var(name) {
        None => default,
        Some(text) => parse(&text).unwrap_or_else(|| {
            eprintln!("flashclaim: variable `{name}` does not parse; using its default");
            default
        }),
    }
}

fn register(req: &Request) -> Result<HttpResponse, ApiError> {
    let registration = Registration::parse(req.body())?;
    let secret = glue::var("jwt_secret")?;
    let addr = client_addr::stored(glue::client_addr(req), secret.as_bytes());
    let limit = setting(
        "register_rate_limit",
        throttle::REGISTRATIONS_PER_ADDRESS,
        RateLimit::parse,
    );
    let pg = glue::pg_open()?;
    let now = glue::now().0;
    // Refused before the hash: a registration flood must not buy argon2 work.
    let (created, oldest) = registrations_from(&pg, &addr, limit, now)?;
    throttle::check_registration(limit, created, oldest, now)?;
    // After the limit: an address at its limit costs no call to the verifier.
    glue::human_check(req)?;
    let hash = auth::hash_password(&registration.password, glue::random_bytes::<16>())?;
    let id = auth::user_id(glue::random_bytes::<12>());
    if !insert_user(&pg, &id, &registration, &hash, &addr, limit, now)? {
        // Others from the same address took the last places while this one hashed.
        let (created, oldest) = registrations_from(&pg, &addr, limit, now)?;
        throttle::check_registration(limit, created.max(limit.attempts), oldest, now)?;
    }
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

/// Accounts created from `addr` inside the limit's window, and when the oldest was.
fn registrations_from(
    pg: &pg4::Connection,
    addr: &str,
    limit: RateLimit,
    now: i64,
) -> Result<(i64, Option<i64>), ApiError> {
    if limit.attempts == 0 {
        return Ok((0, None));
    }
    let rows = pg
        .query(
            "SELECT count(*), (extract(epoch FROM min(created_at)) * 1000)::int8 FROM users \
             WHERE created_addr = $1 AND created_at > to_timestamp(($2::int8 - $3::int8) / 1000.0)",
            &[
                glue::str_param(addr),
                ParameterValue::Int64(now),
                ParameterValue::Int64(limit.window_ms),
            ],
        )
        .map_err(|e| glue::pg_internal("count registrations", e))?;
    let row = rows.rows.first();
    let created = row.and_then(|r| glue::int(&r[0])).unwrap_or(0);
    Ok((created, row.and_then(|r| glue::int(&r[1]))))
}

/// Inserts the user unless the address has reached its limit meanwhile (then `false`).
/// Registrations from one address take a transaction-scoped advisory lock, so two cannot
/// both see the last free place: the count is read after the lock, by its own statement.
fn insert_user(
    pg: &pg4::Connection,
    id: &str,
    registration: &Registration,
    hash: &str,
    addr: &str,
    limit: RateLimit,
    now: i64,
) -> Result<bool, ApiError> {
    let nickname = registration
        .nickname
        .as_deref()
        .map_or(ParameterValue::DbNull, glue::str_param);
    let user = [
        glue::str_param(id),
        glue::str_param(&registration.username),
        glue::str_param(hash),
        nickname,
        glue::str_param(addr),
    ];
    let taken = |e: pg4::PgError| match glue::pg_constraint(&e) {
        Some("users_username_key") => ApiError::Conflict("the username is taken".into()),
        _ => glue::pg_internal("register", e),
    };
    if limit.attempts == 0 {
        pg.execute(
            "INSERT INTO users (id, username, password_hash, nickname, created_addr) \
             VALUES ($1, $2, $3, $4, $5)",
            &user,
        )
        .map_err(taken)?;
        return Ok(true);
    }
    let run = || -> Result<bool, ApiError> {
        pg.execute("BEGIN", &[])
            .map_err(|e| glue::pg_internal("register", e))?;
        pg.query(
            "SELECT pg_advisory_xact_lock(hashtext('register:' || $1))::text",
            &[glue::str_param(addr)],
        )
        .map_err(|e| glue::pg_internal("register", e))?;
        let mut params = user.to_vec();
        params.push(ParameterValue::Int64(now));
        params.push(ParameterValue::Int64(limit.window_ms));
        params.push(ParameterValue::Int64(limit.attempts));
        let inserted = pg
            .execute(
                "INSERT INTO users (id, username, password_hash, nickname, created_addr) \
                 SELECT $1, $2, $3, $4, $5 WHERE (SELECT count(*) FROM users \
                   WHERE created_addr = $5 \
                     AND created_at > to_timestamp(($6::int8 - $7::int8) / 1000.0)) < $8",
                &params,
            )
            .map_err(taken)?;
        pg.execute("COMMIT", &[])
            .map_err(|e| glue::pg_internal("register", e))?;
        Ok(inserted == 1)
    };
    run().inspect_err(|_| {
        let _ = pg.execute("ROLLBACK", &[]);
    })
}

fn log_in(req: &Request) -> Result<HttpResponse, ApiError> {
    // parse
    let settings = LoginSettings::from_variables(
        glue::var("jwt_secret")?,
        glue::optional_var("login_throttle_per_user").as_deref(),
        glue::optional_var("login_throttle_per_address").as_deref(),
        glue::optional_var("session_ttl_secs").as_deref(),
    );
    let attempt = login::prepare(req.body(), glue::client_addr(req), &settings)?;
    // The counters first, alone: a throttled guess costs one Redis round trip, no Postgres
    // connection and no argon2 work; an admitted one is counted as a failure already.
    let redis = counters()?;
    login::check(&count(&redis, &settings, &attempt, Count::Try)?)?;
    let pg = glue::pg_open()?;
    let rows = pg
        .query(
            login::USER_QUERY,
            &[glue::str_param(&attempt.credentials.username)],
        )
        .map_err(|e| glue::pg_internal("log in", e))?;
    let user = rows
        .rows
        .first()
        .map_or_else(UserRow::default, |r| UserRow {
            id: glue::text(&r[0]),
            password_hash: glue::text(&r[1]),
            role: glue::text(&r[2]),
        });
    // An unknown name was counted too, so neither answer nor counter tells who exists.
    let user = login::verify(&attempt, user).ok_or_else(login::refused)?;
    count(&redis, &settings, &attempt, Count::Clear)?;
    Ok(login::answer(&settings, &attempt, user, glue::now()))
}

/// The Redis holding the login counters: the first endpoint of `redis_address`.
/// One HINCRBY for `/metrics` after the answer is known (registration is rare beside a
/// claim, and already pays for a password hash). Best effort: a Redis that is down loses the
/// count, never the answer.
fn count_registration(answer: &Result<HttpResponse, ApiError>) {
    use flashclaim_core::metrics;
    use flashclaim_core::scripts::{Arg, RedisCommands};
    let field = format!("register:{}", metrics::registration_outcome(answer));
    let args = [
        Arg::from(metrics::GLOBAL_KEY),
        Arg::from(field),
        Arg::Int(1),
    ];
    // A failure was logged where it happened (redis_unavailable).
    let _ = counters().and_then(|redis| {
        redis
            .execute("HINCRBY", &args)
            .map_err(|e| glue::redis_unavailable("registration count", e))
    });
}

fn counters() -> Result<SpinRedis, ApiError> {
    let shards = glue::redis_shards()?;
    let first = shards.all().first().ok_or(ApiError::Internal)?;
    // Without the counters no guess can be refused cheaply: refuse the login (503) rather
    // than let a guessing run through unthrottled.
    SpinRedis::open(first).map_err(|e| glue::redis_unavailable("login counters", e))
}

/// One login.lua call, and its reply.
fn count(
    redis: &SpinRedis,
    settings: &LoginSettings,
    attempt: &Attempt,
    what: Count,
) -> Result<Vec<Reply>, ApiError> {
    redis
        .run(
            &LOGIN,
            &attempt.counter_keys,
            &login::counter_args(settings, what, glue::now()),
        )
        .map_err(|e| glue::redis_unavailable("login counters", e))
}
