//! `POST /api/sessions` as pure steps, shared by the WASIp2 auth component and the WASIp3
//! sessions component: each runs `prepare → counters (Redis) → check → user (Postgres) →
//! verify → count → answer`, and only its own glue does the I/O in between.
//!
//! The order is the point: the counters are read before Postgres is opened and before any
//! password is hashed, so a throttled guess costs one Redis round trip.

use crate::auth::{self, Credentials, BAD_CREDENTIALS};
use crate::client_addr::{self, ClientAddr};
use crate::error::ApiError;
use crate::http::HttpResponse;
use crate::scripts::{Arg, Reply};
use crate::throttle::{self, Count, LoginThrottle};
use crate::time::Millis;

/// How long a component that can wait without holding a thread (the WASIp3 build) holds
/// a guess refused by the throttle before answering it. A guessing run is bounded by its
/// connections, not by our CPU: each connection gets at most one refused guess a second,
/// and a held request costs a timer, not CPU. A person who mistyped five times waits one
/// second more for an answer that says to wait anyway.
pub const REFUSAL_HOLD_MS: u64 = 1_000;

/// How long to hold an answer before sending it: [`REFUSAL_HOLD_MS`] for a refusal by the
/// throttle, nothing for any other answer.
pub fn refusal_hold(result: &Result<HttpResponse, ApiError>) -> Option<std::time::Duration> {
    matches!(result, Err(ApiError::RateLimited { .. }))
        .then(|| std::time::Duration::from_millis(REFUSAL_HOLD_MS))
}

/// The variables a login reads.
#[derive(Debug, Clone)]
pub struct LoginSettings {
    pub jwt_secret: String,
    pub per_user: LoginThrottle,
    pub per_address: LoginThrottle,
    pub session_ttl_secs: i64,
}

impl LoginSettings {
    /// From the variables' texts (`None`: unset). A value that does not parse is a
    /// deployment error: logged, and the default applies (never "no limit" by accident).
    pub fn from_variables(
        jwt_secret: String,
        per_user: Option<&str>,
        per_address: Option<&str>,
        session_ttl_secs: Option<&str>,
    ) -> LoginSettings {
        let throttle = |name: &str, text: Option<&str>, default: LoginThrottle| {
            text.map_or(default, |t| {
                LoginThrottle::parse(t, default).unwrap_or_else(|| {
                    eprintln!("flashclaim: variable `{name}` does not parse; using its default");
                    default
                })
            })
        };
        LoginSettings {
            jwt_secret,
            per_user: throttle("login_throttle_per_user", per_user, LoginThrottle::PER_USER),
            per_address: throttle(
                "login_throttle_per_address",
                per_address,
                LoginThrottle::PER_ADDRESS,
            ),
            session_ttl_secs: session_ttl_secs
                .and_then(|v| v.trim().parse::<i64>().ok())
                .filter(|t| *t > 0)
                .unwrap_or(auth::SESSION_TTL_SECS),
        }
    }
}

/// A parsed login attempt and the counters it is judged by (login.lua's KEYS).
#[derive(Debug, Clone)]
pub struct Attempt {
    pub credentials: Credentials,
    pub counter_keys: Vec<String>,
}

/// The user row the statement [`USER_QUERY`] returns; all `None` for an unknown name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserRow {
    pub id: Option<String>,
    pub password_hash: Option<String>,
    pub role: Option<String>,
}

/// One row whatever the name (spin#3671: a query with no row never returns on Spin 4.0.x):
/// an unknown user is a row of NULLs. `$1`: the normalised username.
pub const USER_QUERY: &str = "SELECT users.id, users.password_hash, users.role \
     FROM (VALUES (1)) AS one(x) LEFT JOIN users ON users.username = $1";

/// parse: the body and who is asking.
pub fn prepare(
    body: &[u8],
    client: Option<ClientAddr>,
    settings: &LoginSettings,
) -> Result<Attempt, ApiError> {
    let credentials = Credentials::parse(body)?;
    let addr = client_addr::stored(client, settings.jwt_secret.as_bytes());
    let counter_keys = throttle::login_keys(&credentials.username, &addr);
    Ok(Attempt {
        credentials,
        counter_keys,
    })
}

/// login.lua's ARGV for `count` at `now`.
pub fn counter_args(settings: &LoginSettings, count: Count, now: Millis) -> Vec<Arg> {
    throttle::login_args(count, now.0, settings.per_user, settings.per_address)
}

/// Admitted (and already counted as a failure), or refused with 429 and Retry-After,
/// judged on login.lua's "try" reply.
pub fn check(counters: &[Reply]) -> Result<(), ApiError> {
    throttle::decode_try(counters).unwrap_or_else(|| {
        eprintln!("flashclaim: login.lua returned an unexpected reply");
        Err(ApiError::Internal)
    })
}

/// The user if the password is theirs. The hash is computed for an unknown name too, so
/// both failures take the same time. On `None` there is nothing more to count: "try"
/// counted the failure before the hash.
pub fn verify(attempt: &Attempt, user: UserRow) -> Option<(String, String)> {
    let ok = auth::verify_password(&attempt.credentials.password, user.password_hash.as_deref());
    match (ok, user.id, user.role) {
        (true, Some(id), Some(role)) => Some((id, role)),
        _ => None,
    }
}

/// The failure answer, after the failure was counted.
pub fn refused() -> ApiError {
    BAD_CREDENTIALS
}

/// encode: the session for a verified user.
pub fn answer(
    settings: &LoginSettings,
    attempt: &Attempt,
    (id, role): (String, String),
    now: Millis,
) -> HttpResponse {
    let (token, expires_at) = auth::session_token(
        &id,
        &role,
        now,
        settings.session_ttl_secs,
        settings.jwt_secret.as_bytes(),
    );
    HttpResponse::json(
        200,
        &serde_json::json!({
            "token": token,
            "token_type": "Bearer",
            "expires_at": expires_at,
            "user": { "id": id, "username": attempt.credentials.username, "role": role },
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> LoginSettings {
        LoginSettings::from_variables("s3cret".into(), None, None, None)
    }

    #[test]
    fn unset_or_unparsable_throttle_variables_keep_the_defaults() {
        let s = LoginSettings::from_variables("k".into(), Some("many"), None, Some("-5"));
        assert_eq!(s.per_user, LoginThrottle::PER_USER);
        assert_eq!(s.per_address, LoginThrottle::PER_ADDRESS);
        assert_eq!(s.session_ttl_secs, auth::SESSION_TTL_SECS);
        let off = LoginSettings::from_variables("k".into(), Some("0"), Some("3"), Some("60"));
        assert_eq!(off.per_user.free_failures, 0);
        assert_eq!(off.per_address.free_failures, 3);
        assert_eq!(off.session_ttl_secs, 60);
    }

    #[test]
    fn an_attempt_is_counted_under_its_normalised_username_and_hashed_address() {
        let addr = ClientAddr::of("203.0.113.9".parse().unwrap());
        let a = prepare(
            br#"{"username":" Alice ","password":"whatever1"}"#,
            Some(addr),
            &settings(),
        )
        .unwrap();
        assert_eq!(a.counter_keys[0], "fc:login:{fc:metrics}:user:alice");
        assert!(a.counter_keys[1].starts_with("fc:login:{fc:metrics}:addr:"));
        assert!(!a.counter_keys[1].contains("203.0.113"));
    }

    #[test]
    fn the_scripts_refusal_is_a_429_and_a_reply_of_another_shape_an_internal_error() {
        assert_eq!(check(&[Reply::Int(1), Reply::Int(0)]), Ok(()));
        assert!(matches!(
            check(&[Reply::Int(0), Reply::Int(900)]),
            Err(ApiError::RateLimited {
                retry_after_secs: 1
            })
        ));
        assert_eq!(check(&[Reply::Nil]), Err(ApiError::Internal));
    }

    #[test]
    fn only_a_refusal_by_the_throttle_is_held() {
        let hold = std::time::Duration::from_millis(REFUSAL_HOLD_MS);
        let limited = Err(ApiError::RateLimited {
            retry_after_secs: 3,
        });
        assert_eq!(refusal_hold(&limited), Some(hold));
        assert_eq!(refusal_hold(&Err(BAD_CREDENTIALS)), None);
        assert_eq!(refusal_hold(&Ok(HttpResponse::json(200, &"ok"))), None);
    }

    #[test]
    fn an_unknown_user_and_a_wrong_password_both_fail_verification() {
        let a = prepare(
            br#"{"username":"bob","password":"not the one"}"#,
            None,
            &settings(),
        )
        .unwrap();
        assert_eq!(verify(&a, UserRow::default()), None);
        let hash = auth::hash_password("the right one", [7; 16]).unwrap();
        let row = UserRow {
            id: Some("u1".into()),
            password_hash: Some(hash.clone()),
            role: Some("user".into()),
        };
        assert_eq!(verify(&a, row), None);
        let b = prepare(
            br#"{"username":"bob","password":"the right one"}"#,
            None,
            &settings(),
        )
        .unwrap();
        let row = UserRow {
            id: Some("u1".into()),
            password_hash: Some(hash),
            role: Some("user".into()),
        };
        assert_eq!(verify(&b, row), Some(("u1".into(), "user".into())));
    }
}
