//! Every error a client can see, each with one status and one stable `code`, rendered as
//! RFC 9457 `application/problem+json`. Internal failures are answered generically; their
//! detail goes to the log, never to the client.

use crate::http::HttpResponse;
use crate::time::Millis;

/// Which per-user limit a claim reached: its ticket type's, or the activity's over all types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitScope {
    TicketType,
    Activity,
}

impl LimitScope {
    pub fn as_str(self) -> &'static str {
        match self {
            LimitScope::TicketType => "ticket_type",
            LimitScope::Activity => "activity",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{0}")]
    Unauthenticated(&'static str),
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("not found")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("the activity starts at {starts_at}")]
    NotStarted { starts_at: Millis },
    #[error("the activity has ended")]
    Ended,
    #[error("sold out")]
    SoldOut,
    #[error("the per-user limit of {limit} ({}) is reached", scope.as_str())]
    LimitReached { limit: i64, scope: LimitScope },
    #[error("a claim pass is required")]
    PassRequired,
    #[error("{0}")]
    Conflict(String),
    #[error("the ticket's verification data does not match")]
    VerificationFailed,
    /// An upload of codes with bad or duplicate entries: nothing of it was stored.
    #[error("the upload was rejected: {} bad, {} duplicate; nothing was stored", bad.len(), duplicates.len())]
    CodesRejected {
        bad: Vec<String>,
        duplicates: Vec<String>,
    },
    #[error("too many requests")]
    RateLimited { retry_after_secs: u64 },
    #[error("{0}")]
    Unavailable(&'static str),
    /// The store failed while a write may have been applied: the client cannot be told
    /// "nothing happened", only how to find out safely.
    #[error("the outcome could not be confirmed; retry with the same Idempotency-Key to get it")]
    OutcomeUnknown,
    /// A claim named no ticket type while the activity has several (`named: None`), or one
    /// it does not offer.
    #[error("{}", if *named {
        format!("this activity offers no such ticket type; it offers: {}", offered.join(", "))
    } else {
        format!("this activity offers several ticket types; name one in ticket_type: {}", offered.join(", "))
    })]
    UnknownTicketType { named: bool, offered: Vec<String> },
    /// A claim refused for one ticket type (not open yet, closed, sold out, its limit):
    /// the inner error's status and code, naming the type.
    #[error("{error} (ticket type `{ticket_type}`)")]
    OfType {
        ticket_type: String,
        error: Box<ApiError>,
    },
    /// `captcha_verify_url` is set and the request carried no `Captcha-Token`.
    #[error("this request needs a human check: send its token in the Captcha-Token header")]
    CaptchaRequired,
    /// The human-check service said the token is not valid (expired, reused, forged).
    #[error("the human check was not passed; solve it again")]
    CaptchaFailed,
    #[error("internal error")]
    Internal,
}

impl ApiError {
    pub fn invalid(detail: impl Into<String>) -> Self {
        ApiError::InvalidRequest(detail.into())
    }

    /// One of every variant, so the API document can be checked against what the service
    /// can answer. Adding a variant fails to compile until it is listed here too.
    pub fn examples() -> Vec<ApiError> {
        let all = vec![
            ApiError::InvalidRequest(String::new()),
            ApiError::Unauthenticated(""),
            ApiError::Forbidden(""),
            ApiError::NotFound,
            ApiError::MethodNotAllowed,
            ApiError::NotStarted {
                starts_at: Millis(0),
            },
            ApiError::Ended,
            ApiError::SoldOut,
            ApiError::LimitReached {
                limit: 1,
                scope: LimitScope::Activity,
            },
            ApiError::PassRequired,
            ApiError::Conflict(String::new()),
            ApiError::VerificationFailed,
            ApiError::CodesRejected {
                bad: Vec::new(),
                duplicates: Vec::new(),
            },
            ApiError::RateLimited {
                retry_after_secs: 1,
            },
            ApiError::Unavailable(""),
            ApiError::OutcomeUnknown,
            ApiError::UnknownTicketType {
                named: false,
                offered: Vec::new(),
            },
            ApiError::OfType {
                ticket_type: String::new(),
                error: Box::new(ApiError::SoldOut),
            },
            ApiError::CaptchaRequired,
            ApiError::CaptchaFailed,
            ApiError::Internal,
        ];
        for e in &all {
            match e {
                ApiError::InvalidRequest(_)
                | ApiError::Unauthenticated(_)
                | ApiError::Forbidden(_)
                | ApiError::NotFound
                | ApiError::MethodNotAllowed
                | ApiError::NotStarted { .. }
                | ApiError::Ended
                | ApiError::SoldOut
                | ApiError::LimitReached { .. }
                | ApiError::PassRequired
                | ApiError::Conflict(_)
                | ApiError::VerificationFailed
                | ApiError::CodesRejected { .. }
                | ApiError::RateLimited { .. }
                | ApiError::CaptchaRequired
                | ApiError::CaptchaFailed
                | ApiError::Unavailable(_)
                | ApiError::OutcomeUnknown
                | ApiError::UnknownTicketType { .. }
                | ApiError::OfType { .. }
                | ApiError::Internal => {}
            }
        }
        all
    }

    pub fn status(&self) -> u16 {
        match self {
            ApiError::OfType { error, .. } => error.status(),
            ApiError::InvalidRequest(_)
            | ApiError::UnknownTicketType { .. }
            | ApiError::CaptchaRequired => 400,
            ApiError::Unauthenticated(_) => 401,
            ApiError::Forbidden(_) | ApiError::CaptchaFailed => 403,
            ApiError::NotFound => 404,
            ApiError::MethodNotAllowed => 405,
            ApiError::NotStarted { .. }
            | ApiError::Ended
            | ApiError::SoldOut
            | ApiError::LimitReached { .. }
            | ApiError::PassRequired
            | ApiError::Conflict(_) => 409,
            ApiError::VerificationFailed | ApiError::CodesRejected { .. } => 422,
            ApiError::RateLimited { .. } => 429,
            ApiError::Internal => 500,
            ApiError::Unavailable(_) | ApiError::OutcomeUnknown => 503,
        }
    }

    /// The stable, documented machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::OfType { error, .. } => error.code(),
            ApiError::InvalidRequest(_) | ApiError::UnknownTicketType { .. } => "invalid_request",
            ApiError::Unauthenticated(_) => "unauthenticated",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::CaptchaRequired => "captcha_required",
            ApiError::CaptchaFailed => "captcha_failed",
            ApiError::NotFound => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::NotStarted { .. } => "not_started",
            ApiError::Ended => "ended",
            ApiError::SoldOut => "sold_out",
            ApiError::LimitReached { .. } => "limit_reached",
            ApiError::PassRequired => "pass_required",
            ApiError::Conflict(_) => "conflict",
            ApiError::VerificationFailed => "verification_failed",
            ApiError::CodesRejected { .. } => "codes_rejected",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::Unavailable(_) | ApiError::OutcomeUnknown => "unavailable",
            ApiError::Internal => "internal",
        }
    }

    fn title(&self) -> &'static str {
        match self.status() {
            400 => "Bad Request",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "Not Found",
            405 => "Method Not Allowed",
            409 => "Conflict",
            422 => "Unprocessable Content",
            429 => "Too Many Requests",
            503 => "Service Unavailable",
            _ => "Internal Server Error",
        }
    }

    pub fn to_response(&self) -> HttpResponse {
        let mut response = HttpResponse::json_with_type(
            self.status(),
            "application/problem+json",
            &self.problem(),
        );
        // A type's refusal carries its error's headers.
        let headed = match self {
            ApiError::OfType { error, .. } => error,
            other => other,
        };
        if let ApiError::RateLimited { retry_after_secs } = headed {
            response
                .headers
                .push(("retry-after", retry_after_secs.max(&1).to_string()));
        }
        if let ApiError::Unauthenticated(_) = headed {
            response
                .headers
                .push(("www-authenticate", "Bearer".to_string()));
        }
        response
    }

    /// The problem document (RFC 9457). A type's refusal is its error's document, naming
    /// the type: built once, not encoded and parsed again (a cached `sold_out` of a type is
    /// answered this way to every press of a storm).
    fn problem(&self) -> serde_json::Value {
        if let ApiError::OfType { ticket_type, error } = self {
            let mut body = error.problem();
            body["ticket_type"] = ticket_type.as_str().into();
            body["detail"] = self.to_string().into();
            return body;
        }
        let mut body = serde_json::json!({
            "type": "about:blank",
            "title": self.title(),
            "status": self.status(),
            "code": self.code(),
            "detail": self.to_string(),
        });
        match self {
            ApiError::NotStarted { starts_at } => {
                body["starts_at"] = serde_json::json!(starts_at);
            }
            ApiError::LimitReached { limit, scope } => {
                body["limit"] = (*limit).into();
                body["scope"] = scope.as_str().into();
            }
            ApiError::UnknownTicketType { offered, .. } => {
                body["ticket_types"] = offered.clone().into();
            }
            ApiError::Unavailable(_) => body["claimed"] = false.into(),
            ApiError::OutcomeUnknown => body["claimed"] = serde_json::Value::Null,
            ApiError::CodesRejected { bad, duplicates } => {
                // The first few of each, enough to fix the file; the counts say the rest.
                body["bad"] = bad
                    .iter()
                    .take(100)
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .into();
                body["bad_count"] = bad.len().into();
                body["duplicates"] = duplicates
                    .iter()
                    .take(100)
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .into();
                body["duplicate_count"] = duplicates.len().into();
            }
            _ => {}
        }
        body
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(e: &ApiError) -> serde_json::Value {
        serde_json::from_slice(&e.to_response().body).unwrap()
    }

    #[test]
    fn problems_carry_status_code_and_problem_json_type() {
        let r = ApiError::SoldOut.to_response();
        assert_eq!(r.status, 409);
        assert!(r
            .headers
            .contains(&("content-type", "application/problem+json".into())));
        let b = body(&ApiError::SoldOut);
        assert_eq!(b["code"], "sold_out");
        assert_eq!(b["status"], 409);
    }

    #[test]
    fn rate_limited_says_when_to_retry() {
        let r = ApiError::RateLimited {
            retry_after_secs: 0,
        }
        .to_response();
        assert_eq!(r.status, 429);
        assert!(r.headers.contains(&("retry-after", "1".into())));
    }

    #[test]
    fn unavailable_says_nothing_was_claimed() {
        let b = body(&ApiError::Unavailable(
            "claims are unavailable; nothing was claimed",
        ));
        assert_eq!(b["code"], "unavailable");
        assert_eq!(b["claimed"], false);
    }

    #[test]
    fn an_unconfirmed_outcome_is_not_reported_as_nothing_claimed() {
        let b = body(&ApiError::OutcomeUnknown);
        assert_eq!(
            (b["status"].as_u64(), b["code"].as_str()),
            (Some(503), Some("unavailable"))
        );
        assert!(b["claimed"].is_null());
    }

    #[test]
    fn rejected_uploads_list_what_to_fix() {
        let e = ApiError::CodesRejected {
            bad: vec!["line 2: `a b`".into()],
            duplicates: (0..150).map(|n| n.to_string()).collect(),
        };
        let b = body(&e);
        assert_eq!(
            (b["status"].as_u64(), b["code"].as_str()),
            (Some(422), Some("codes_rejected"))
        );
        assert_eq!(b["duplicates"].as_array().unwrap().len(), 100);
        assert_eq!(b["duplicate_count"], 150);
        assert_eq!(b["bad"][0], "line 2: `a b`");
    }

    #[test]
    fn a_refusal_about_one_type_keeps_its_status_and_code_and_names_the_type() {
        let e = ApiError::OfType {
            ticket_type: "vip".into(),
            error: Box::new(ApiError::LimitReached {
                limit: 2,
                scope: LimitScope::Activity,
            }),
        };
        assert_eq!((e.status(), e.code()), (409, "limit_reached"));
        let b = body(&e);
        assert_eq!(
            (
                b["ticket_type"].as_str(),
                b["scope"].as_str(),
                b["limit"].as_i64()
            ),
            (Some("vip"), Some("activity"), Some(2))
        );
        assert!(b["detail"].as_str().unwrap().contains("`vip`"), "{b}");
        let e = ApiError::UnknownTicketType {
            named: false,
            offered: vec!["a".into(), "b".into()],
        };
        let b = body(&e);
        assert_eq!(
            (b["status"].as_u64(), b["code"].as_str()),
            (Some(400), Some("invalid_request"))
        );
        assert_eq!(b["ticket_types"], serde_json::json!(["a", "b"]));
    }

    #[test]
    fn a_refusal_about_one_type_carries_its_errors_headers_and_the_same_document_as_its_error_plus_the_type(
    ) {
        let inner = ApiError::RateLimited {
            retry_after_secs: 3,
        };
        let e = ApiError::OfType {
            ticket_type: "vip".into(),
            error: Box::new(inner.clone()),
        };
        let r = e.to_response();
        assert!(
            r.headers.contains(&("retry-after", "3".to_string())),
            "{:?}",
            r.headers
        );
        let (mut b, own) = (body(&e), body(&inner));
        assert_eq!(b["ticket_type"], "vip");
        assert_ne!(b["detail"], own["detail"]);
        b["detail"] = own["detail"].clone();
        b.as_object_mut().unwrap().remove("ticket_type");
        assert_eq!(b, own);
    }

    #[test]
    fn internal_errors_have_a_generic_body() {
        let b = body(&ApiError::Internal);
        assert_eq!(b["detail"], "internal error");
    }
}
