//! Registering users and logging them in: request parsing, argon2id password hashes and
//! the session token. Wrong password and unknown user are one error, so a caller cannot
//! probe which usernames exist.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use serde::Deserialize;

use crate::error::ApiError;
use crate::http::json_body;
use crate::jwt::{self, Claims};
use crate::time::Millis;

pub const MAX_AUTH_BODY: usize = 4096;
pub const MIN_PASSWORD_CHARS: usize = 8;
pub const MAX_PASSWORD_CHARS: usize = 128;
/// How long a session token is valid unless `session_ttl_secs` says otherwise.
pub const SESSION_TTL_SECS: i64 = 24 * 3600;

pub const BAD_CREDENTIALS: ApiError = ApiError::Unauthenticated("wrong username or password");

/// `POST /api/users`, validated. Usernames are compared case-insensitively and stored
/// lower-cased, so `Alice` and `alice` are one account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub username: String,
    pub password: String,
    pub nickname: Option<String>,
}

/// `POST /api/sessions`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistrationBody {
    username: String,
    password: String,
    #[serde(default)]
    nickname: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialsBody {
    username: String,
    password: String,
}

/// 3-32 characters of a-z 0-9 _ . - (after lower-casing).
pub fn normalize_username(text: &str) -> Option<String> {
    let name = text.trim().to_ascii_lowercase();
    let ok = (3..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b));
    ok.then_some(name)
}

impl Registration {
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let b: RegistrationBody = json_body(body, MAX_AUTH_BODY)?;
        let username = normalize_username(&b.username).ok_or_else(|| {
            ApiError::invalid("username must be 3-32 characters of a-z 0-9 _ . -")
        })?;
        let chars = b.password.chars().count();
        if !(MIN_PASSWORD_CHARS..=MAX_PASSWORD_CHARS).contains(&chars) {
            return Err(ApiError::invalid(format!(
                "password must be {MIN_PASSWORD_CHARS}-{MAX_PASSWORD_CHARS} characters"
            )));
        }
        let nickname = b.nickname.map(|n| n.trim().to_string());
        if let Some(n) = &nickname {
            if n.is_empty() || n.chars().count() > 64 || n.chars().any(char::is_control) {
                return Err(ApiError::invalid(
                    "nickname must be 1-64 characters without control characters",
                ));
            }
        }
        Ok(Registration {
            username,
            password: b.password,
            nickname,
        })
    }
}

impl Credentials {
    /// A malformed body is a 400; a well-formed one naming no valid account is the same
    /// 401 as a wrong password.
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let b: CredentialsBody = json_body(body, MAX_AUTH_BODY)?;
        Ok(Credentials {
            username: b.username.trim().to_ascii_lowercase(),
            password: b.password,
        })
    }
}

/// An argon2id hash (PHC string) with the library's recommended parameters.
pub fn hash_password(password: &str, salt: [u8; 16]) -> Result<String, ApiError> {
    let salt = SaltString::encode_b64(&salt).map_err(|_| ApiError::Internal)?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|_| ApiError::Internal)
}

/// Whether `password` matches the stored hash. For an unknown user, pass `None`: a hash is
/// still computed, so both answers take the same time.
pub fn verify_password(password: &str, stored: Option<&str>) -> bool {
    match stored.and_then(|s| PasswordHash::new(s).ok()) {
        Some(hash) => Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .is_ok(),
        None => {
            let _ = hash_password(password, [0; 16]);
            false
        }
    }
}

/// A new user's id: `u` and 24 hex digits.
pub fn user_id(random: [u8; 12]) -> String {
    std::iter::once("u".to_string())
        .chain(random.iter().map(|b| format!("{b:02x}")))
        .collect()
}

/// The session token for a logged-in user, and when it expires.
pub fn session_token(
    user_id: &str,
    role: &str,
    now: Millis,
    ttl_secs: i64,
    secret: &[u8],
) -> (String, Millis) {
    let exp = now.as_secs() + ttl_secs;
    let claims = Claims {
        sub: user_id.to_string(),
        exp,
        nbf: None,
        iat: Some(now.as_secs()),
        role: (role == "admin").then(|| "admin".to_string()),
    };
    (jwt::sign(&claims, secret), Millis(exp * 1000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registration_is_normalized_and_validated() {
        let r =
            Registration::parse(br#"{"username":" Alice_1 ","password":"correct horse"}"#).unwrap();
        assert_eq!((r.username.as_str(), r.nickname), ("alice_1", None));
        for body in [
            r#"{"username":"al","password":"longenough"}"#,
            r#"{"username":"alice","password":"short"}"#,
            r#"{"username":"al ice","password":"longenough"}"#,
            r#"{"username":"alice","password":"longenough","nickname":""}"#,
            r#"{"username":"alice","password":"longenough","role":"admin"}"#,
            r#"{"username":"alice"}"#,
            "[]",
        ] {
            assert_eq!(
                Registration::parse(body.as_bytes()).unwrap_err().code(),
                "invalid_request",
                "{body}"
            );
        }
    }

    #[test]
    fn a_password_verifies_only_against_its_own_hash() {
        let hash = hash_password("correct horse", [7; 16]).unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(verify_password("correct horse", Some(&hash)));
        assert!(!verify_password("wrong horse", Some(&hash)));
        assert!(!verify_password("correct horse", None));
        assert!(!verify_password("correct horse", Some("not a hash")));
    }

    #[test]
    fn a_session_token_verifies_with_the_role() {
        let (token, expires) = session_token("u1", "admin", Millis(1_000_000), 60, b"k");
        assert_eq!(expires, Millis(1_060_000));
        let p = jwt::verify(&token, b"k", 1_001).unwrap();
        assert!(p.is_admin());
        let (token, _) = session_token("u1", "user", Millis(1_000_000), 60, b"k");
        assert!(!jwt::verify(&token, b"k", 1_001).unwrap().is_admin());
        assert!(jwt::verify(&token, b"k", 1_000 + 60 + 31).is_err());
    }

    #[test]
    fn user_ids_fit_the_token_subject() {
        let id = user_id([0xab; 12]);
        assert_eq!(id.len(), 25);
        assert!(crate::ids::UserId::parse(&id).is_some());
    }
}
