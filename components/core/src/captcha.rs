//! The optional human check in front of registration and claim passes: when
//! `captcha_verify_url` is set, the request's `Captcha-Token` is verified with that
//! endpoint in the shape hCaptcha's and Cloudflare Turnstile's `siteverify` share (a form
//! POST of `secret` and `response`, a JSON answer with `success`). It fails closed: no
//! token, a rejected token, or a verifier that cannot be asked are all refusals.

use serde::Deserialize;

use crate::error::ApiError;

/// Longest token accepted (Turnstile's are ≤ 2048 characters).
pub const MAX_TOKEN_LEN: usize = 4096;

/// The header a page sends the widget's token in.
pub const TOKEN_HEADER: &str = "captcha-token";

/// The token from the request's header, or why there is none to verify.
pub fn token(header: Option<&str>) -> Result<&str, ApiError> {
    match header.map(str::trim) {
        None | Some("") => Err(ApiError::CaptchaRequired),
        Some(t) if t.len() > MAX_TOKEN_LEN || t.chars().any(char::is_control) => {
            Err(ApiError::CaptchaFailed)
        }
        Some(t) => Ok(t),
    }
}

/// The `application/x-www-form-urlencoded` body of the verification request.
pub fn verify_body(secret: &str, token: &str) -> String {
    format!(
        "secret={}&response={}",
        form_encode(secret),
        form_encode(token)
    )
}

fn form_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'*' => {
                (b as char).to_string()
            }
            b' ' => "+".to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[derive(Deserialize)]
struct Verdict {
    success: bool,
}

/// The verifier's answer judged: `success: true` passes; `success: false` is a failed
/// check; anything else (another status, a body that is not the documented JSON) means
/// the check could not be made, and the request is refused as unavailable.
pub fn judge(status: u16, body: &[u8]) -> Result<(), ApiError> {
    let unavailable = ApiError::Unavailable("the human check could not be verified; try again");
    if status != 200 {
        return Err(unavailable);
    }
    match serde_json::from_slice::<Verdict>(body) {
        Ok(Verdict { success: true }) => Ok(()),
        Ok(Verdict { success: false }) => Err(ApiError::CaptchaFailed),
        Err(_) => Err(unavailable),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_without_a_token_is_told_to_send_one() {
        assert_eq!(token(None), Err(ApiError::CaptchaRequired));
        assert_eq!(token(Some("  ")), Err(ApiError::CaptchaRequired));
        assert_eq!(token(Some(" abc ")), Ok("abc"));
    }

    #[test]
    fn an_oversized_or_binary_token_fails_without_asking_the_verifier() {
        assert_eq!(
            token(Some(&"a".repeat(MAX_TOKEN_LEN + 1))),
            Err(ApiError::CaptchaFailed)
        );
        assert_eq!(token(Some("a\u{0}b")), Err(ApiError::CaptchaFailed));
    }

    #[test]
    fn the_verification_body_is_form_encoded() {
        assert_eq!(
            verify_body("s3cr&t=", "tok en/+"),
            "secret=s3cr%26t%3D&response=tok+en%2F%2B"
        );
    }

    #[test]
    fn only_an_explicit_success_passes() {
        assert_eq!(judge(200, br#"{"success":true,"hostname":"x"}"#), Ok(()));
        assert_eq!(
            judge(
                200,
                br#"{"success":false,"error-codes":["invalid-input-response"]}"#
            ),
            Err(ApiError::CaptchaFailed)
        );
    }

    #[test]
    fn a_verifier_that_cannot_answer_fails_closed() {
        for (status, body) in [
            (500, &br#"{"success":true}"#[..]),
            (200, b"<html>"),
            (200, b"{}"),
            (200, br#"{"success":"yes"}"#),
        ] {
            assert_eq!(
                judge(status, body).unwrap_err().status(),
                503,
                "{status} {body:?}"
            );
        }
    }
}
