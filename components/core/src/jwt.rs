//! JWT HS256: the only algorithm accepted. `alg: none`, any other algorithm, a bad
//! signature, a missing or bad `sub`, an expired or not-yet-valid token are all refused
//! the same way, so a caller learns nothing about which check failed.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::error::ApiError;
use crate::ids::UserId;

type HmacSha256 = Hmac<Sha256>;

/// Tokens longer than this are refused before any decoding work.
pub const MAX_TOKEN_LEN: usize = 4096;
/// Clock skew tolerated on `exp` and `nbf`, in seconds.
const LEEWAY_SECS: i64 = 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    User,
    Admin,
}

/// Who is calling, as proven by a valid token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user: UserId,
    pub role: Role,
}

impl Principal {
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
}

const BAD_TOKEN: ApiError = ApiError::Unauthenticated("missing, invalid or expired token");

/// Reads `Authorization: Bearer <token>` and verifies it.
pub fn authenticate(
    authorization: Option<&str>,
    secret: &[u8],
    now_secs: i64,
) -> Result<Principal, ApiError> {
    let header = authorization.ok_or(BAD_TOKEN)?;
    let token = header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .ok_or(BAD_TOKEN)?;
    verify(token.trim(), secret, now_secs)
}

pub fn verify(token: &str, secret: &[u8], now_secs: i64) -> Result<Principal, ApiError> {
    if token.len() > MAX_TOKEN_LEN || secret.is_empty() {
        return Err(BAD_TOKEN);
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(BAD_TOKEN);
    };
    let header: Header =
        serde_json::from_slice(&b64url_decode(h).ok_or(BAD_TOKEN)?).map_err(|_| BAD_TOKEN)?;
    if header.alg != "HS256" {
        return Err(BAD_TOKEN);
    }
    let signature = b64url_decode(s).ok_or(BAD_TOKEN)?;
    let mut mac = HmacSha256::new_from_slice(secret).map_err(|_| BAD_TOKEN)?;
    mac.update(&token.as_bytes()[..h.len() + 1 + p.len()]);
    mac.verify_slice(&signature).map_err(|_| BAD_TOKEN)?;

    let claims: Claims =
        serde_json::from_slice(&b64url_decode(p).ok_or(BAD_TOKEN)?).map_err(|_| BAD_TOKEN)?;
    if claims.exp + LEEWAY_SECS <= now_secs {
        return Err(BAD_TOKEN);
    }
    if claims.nbf.is_some_and(|nbf| nbf - LEEWAY_SECS > now_secs) {
        return Err(BAD_TOKEN);
    }
    let user = UserId::parse(&claims.sub).ok_or(BAD_TOKEN)?;
    let role = match claims.role.as_deref() {
        Some("admin") => Role::Admin,
        _ => Role::User,
    };
    Ok(Principal { user, role })
}

/// Issues an HS256 token (used by the auth component and by tests).
pub fn sign(claims: &Claims, secret: &[u8]) -> String {
    let header = b64url_encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = b64url_encode(&serde_json::to_vec(claims).unwrap_or_default());
    let signing_input = format!("{header}.{payload}");
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(signing_input.as_bytes());
    let signature = b64url_encode(&mac.finalize().into_bytes());
    format!("{signing_input}.{signature}")
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

pub fn b64url_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

const INVALID: u8 = 0xff;

/// Each byte's value in [`ALPHABET`], or [`INVALID`]: every claim decodes its token, one
/// look-up per character instead of a search of the alphabet.
const DECODE: [u8; 256] = {
    let mut table = [INVALID; 256];
    let mut i = 0;
    while i < ALPHABET.len() {
        table[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    table
};

/// Unpadded base64url only, as JWTs use; anything else is `None`.
pub fn b64url_decode(text: &str) -> Option<Vec<u8>> {
    if text.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    for chunk in text.as_bytes().chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            let v = DECODE[usize::from(*c)];
            if v == INVALID {
                return None;
            }
            n |= u32::from(v) << (18 - 6 * i);
        }
        for i in 0..chunk.len() - 1 {
            out.push((n >> (16 - 8 * i)) as u8);
        }
        // Non-canonical trailing bits would let two strings decode to the same bytes.
        let used_bits = 8 * (chunk.len() - 1);
        if n & ((1 << (24 - used_bits)) - 1) != 0 {
            return None;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"test-secret";
    const NOW: i64 = 1_800_000_000;

    fn token(sub: &str, exp: i64, role: Option<&str>) -> String {
        sign(
            &Claims {
                sub: sub.into(),
                exp,
                nbf: None,
                iat: Some(NOW),
                role: role.map(str::to_string),
            },
            SECRET,
        )
    }

    #[test]
    fn a_valid_token_names_the_user_and_role() {
        let p = verify(&token("alice", NOW + 60, Some("admin")), SECRET, NOW).unwrap();
        assert_eq!(p.user.as_str(), "alice");
        assert!(p.is_admin());
        let p = verify(&token("bob", NOW + 60, Some("superuser")), SECRET, NOW).unwrap();
        assert_eq!(p.role, Role::User);
    }

    #[test]
    fn an_expired_token_is_refused() {
        assert_eq!(
            verify(&token("a", NOW - 31, None), SECRET, NOW),
            Err(BAD_TOKEN)
        );
    }

    #[test]
    fn a_token_signed_with_another_secret_is_refused() {
        let t = sign(
            &Claims {
                sub: "a".into(),
                exp: NOW + 60,
                nbf: None,
                iat: None,
                role: None,
            },
            b"other",
        );
        assert_eq!(verify(&t, SECRET, NOW), Err(BAD_TOKEN));
    }

    #[test]
    fn alg_none_and_other_algorithms_are_refused() {
        let payload = b64url_encode(format!(r#"{{"sub":"a","exp":{}}}"#, NOW + 60).as_bytes());
        for header in [
            r#"{"alg":"none"}"#,
            r#"{"alg":"HS512"}"#,
            r#"{"alg":"RS256"}"#,
            r#"{"alg":"hs256"}"#,
        ] {
            let h = b64url_encode(header.as_bytes());
            assert_eq!(
                verify(&format!("{h}.{payload}."), SECRET, NOW),
                Err(BAD_TOKEN)
            );
            // Even with a correct HMAC over the input, a non-HS256 header is refused.
            let mut mac = HmacSha256::new_from_slice(SECRET).unwrap();
            mac.update(format!("{h}.{payload}").as_bytes());
            let s = b64url_encode(&mac.finalize().into_bytes());
            assert_eq!(
                verify(&format!("{h}.{payload}.{s}"), SECRET, NOW),
                Err(BAD_TOKEN)
            );
        }
    }

    #[test]
    fn a_token_not_yet_valid_is_refused() {
        let t = sign(
            &Claims {
                sub: "a".into(),
                exp: NOW + 600,
                nbf: Some(NOW + 300),
                iat: None,
                role: None,
            },
            SECRET,
        );
        assert_eq!(verify(&t, SECRET, NOW), Err(BAD_TOKEN));
    }

    #[test]
    fn bad_subjects_and_shapes_are_refused() {
        assert!(verify(&token("", NOW + 60, None), SECRET, NOW).is_err());
        assert!(verify(&token(&"x".repeat(65), NOW + 60, None), SECRET, NOW).is_err());
        assert!(verify("a.b", SECRET, NOW).is_err());
        assert!(verify("a.b.c.d", SECRET, NOW).is_err());
        assert!(verify(&"a".repeat(MAX_TOKEN_LEN + 1), SECRET, NOW).is_err());
        let no_sub = sign(
            &Claims {
                sub: String::new(),
                exp: NOW + 60,
                nbf: None,
                iat: None,
                role: None,
            },
            SECRET,
        );
        assert!(verify(&no_sub, SECRET, NOW).is_err());
    }

    #[test]
    fn the_authorization_header_needs_the_bearer_scheme() {
        let t = token("a", NOW + 60, None);
        assert!(authenticate(Some(&format!("Bearer {t}")), SECRET, NOW).is_ok());
        assert!(authenticate(Some(&format!("Basic {t}")), SECRET, NOW).is_err());
        assert!(authenticate(None, SECRET, NOW).is_err());
    }

    #[test]
    fn base64url_round_trips_and_refuses_non_canonical_input() {
        for len in 0..20 {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37) as u8).collect();
            assert_eq!(b64url_decode(&b64url_encode(&bytes)).unwrap(), bytes);
        }
        assert!(b64url_decode("QQ==").is_none());
        assert!(b64url_decode("QR").is_none());
        assert!(b64url_decode("Q").is_none());
    }

    #[test]
    fn base64url_decodes_every_alphabet_character_and_refuses_every_other_byte() {
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(b64url_decode(&b64url_encode(&all)).unwrap(), all);
        for (value, c) in ALPHABET.iter().enumerate() {
            let text = format!("{}A", *c as char);
            assert_eq!(
                b64url_decode(&text),
                Some(vec![(value as u8) << 2]),
                "{text}"
            );
        }
        for byte in (0..128u8).filter(|b| !ALPHABET.contains(b)) {
            let text = String::from_utf8(vec![b'A', byte, b'A', b'A']).unwrap();
            assert!(b64url_decode(&text).is_none(), "{byte:#x}");
        }
        assert!(b64url_decode("AéA").is_none(), "bytes past ASCII");
    }
}
