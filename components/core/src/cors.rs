//! Cross-origin access and the caching headers every API answer carries, decided in one
//! place for every component (the glue crates only read the request and the variable).
//!
//! H5 pages are often served from a CDN's origin, so the API answers browsers from the
//! origins listed in `cors_allowed_origins` (comma-separated, exact `scheme://host[:port]`;
//! empty, the default, allows only the app's own origin, which needs no header). Tokens
//! travel in `Authorization`, never in cookies, so credentials are never allowed.

use crate::http::HttpResponse;

/// The methods and request headers a page may use; `Idempotency-Key` makes a retried claim
/// safe, so a cross-origin page must be able to send it.
pub const ALLOW_METHODS: &str = "GET, POST, PUT, PATCH, DELETE";
pub const ALLOW_HEADERS: &str = "Authorization, Content-Type, Idempotency-Key";
/// Response headers a page must read: `Retry-After` for the rate-limited countdown,
/// `Idempotent-Replayed` and `Location`.
pub const EXPOSE_HEADERS: &str = "Retry-After, Idempotent-Replayed, Location";
/// How long a browser may reuse a preflight answer (Chromium caps it at 2 h).
pub const PREFLIGHT_MAX_AGE_SECS: u32 = 600;

/// What the response path needs to know about a request, owned so a WASIp3 handler can
/// keep it after the request body is consumed. Only requests with an `Origin` allocate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestFacts {
    /// The request's method, upper case as sent (`GET`, `POST`, `OPTIONS`, ...).
    pub method: String,
    pub origin: Option<String>,
    /// `Access-Control-Request-Method`: present only on a CORS preflight.
    pub preflight_method: Option<String>,
    pub authorization: bool,
}

impl RequestFacts {
    /// A CORS preflight: `OPTIONS` with `Origin` and `Access-Control-Request-Method`.
    pub fn is_preflight(&self) -> bool {
        self.method.eq_ignore_ascii_case("OPTIONS")
            && self.origin.is_some()
            && self.preflight_method.is_some()
    }

    fn is_read(&self) -> bool {
        self.method.eq_ignore_ascii_case("GET") || self.method.eq_ignore_ascii_case("HEAD")
    }
}

/// The origins of `cors_allowed_origins`, normalised as browsers send `Origin` (lower
/// case, no trailing slash). Entries that cannot be an origin are dropped: no browser
/// would send them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedOrigins(Vec<String>);

impl AllowedOrigins {
    pub fn parse(variable: Option<&str>) -> Self {
        AllowedOrigins(
            variable
                .unwrap_or("")
                .split(',')
                .map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase())
                .filter(|o| is_origin(o))
                .collect(),
        )
    }

    pub fn allows(&self, origin: &str) -> bool {
        self.0.iter().any(|o| o.eq_ignore_ascii_case(origin))
    }

    /// The answer to a preflight from an allowed origin; `None` for anything else, which
    /// is then routed as any request is (and gets no CORS header, so the browser refuses).
    pub fn preflight(&self, request: &RequestFacts) -> Option<HttpResponse> {
        let origin = request.origin.as_deref()?;
        if !request.is_preflight() || !self.allows(origin) {
            return None;
        }
        let mut r = HttpResponse::empty(204);
        r.headers.extend([
            ("access-control-allow-origin", origin.to_string()),
            ("access-control-allow-methods", ALLOW_METHODS.to_string()),
            ("access-control-allow-headers", ALLOW_HEADERS.to_string()),
            ("access-control-max-age", PREFLIGHT_MAX_AGE_SECS.to_string()),
            ("vary", "Origin".to_string()),
            ("cache-control", "no-store".to_string()),
        ]);
        Some(r)
    }
}

/// `scheme://host[:port]` with nothing after it (the `null` origin is never allowed: any
/// sandboxed page can send it).
fn is_origin(text: &str) -> bool {
    let Some((scheme, rest)) = text.split_once("://") else {
        return false;
    };
    matches!(scheme, "http" | "https")
        && !rest.is_empty()
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
}

/// How long and by whom an answer may be kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caching {
    /// The same for everyone: an edge cache may hold it this long.
    Public { max_age_secs: i64 },
    /// Depends on the caller's token: only the caller's browser may keep it, this long.
    Private { max_age_secs: i64 },
    /// Never kept (claims, admin answers, anything that changes state).
    NoStore,
}

impl Caching {
    /// Sets `Cache-Control` and the `Vary` that goes with it. A public answer of a route
    /// that also answers callers with a token (whose answer differs) must say
    /// `Vary: Authorization` itself, with [`HttpResponse::add_vary`].
    pub fn apply(self, response: &mut HttpResponse) {
        let value = match self {
            Caching::Public { max_age_secs } => format!("public, max-age={max_age_secs}"),
            Caching::Private { max_age_secs: 0 } => "private, no-cache".to_string(),
            Caching::Private { max_age_secs } => format!("private, max-age={max_age_secs}"),
            Caching::NoStore => "no-store".to_string(),
        };
        response.set_header("cache-control", value);
        if let Caching::Private { .. } = self {
            response.add_vary("Authorization");
        }
    }
}

/// How long an edge may keep a public activity read: as long as the server keeps a
/// listing page, so an edge adds no more staleness than the server has. The detail's view
/// is kept longer server-side, but its stock is live and a change drops it, so the edge
/// gets no longer for it either (a countdown page must not see a minute-old stock).
pub const PUBLIC_READ_MAX_AGE_SECS: i64 = crate::activity::LIST_TTL_MS / 1000;
// A listing lifetime under a second would make `max-age=0`: say so at build time.
const _: () = assert!(PUBLIC_READ_MAX_AGE_SECS >= 1);

/// `GET /api/activities` and `GET /api/activities/{id}`: public unless the answer was made
/// for the caller's token (`my_claimed`).
pub fn activity_read(for_caller: bool) -> Caching {
    match for_caller {
        true => Caching::Private { max_age_secs: 0 },
        false => Caching::Public {
            max_age_secs: PUBLIC_READ_MAX_AGE_SECS,
        },
    }
}

/// The headers every API answer leaves with, after its component built it:
/// - `Cache-Control` when the component did not choose: `no-store` for anything but a read,
///   and for reads without a token (errors, health); `private` for reads with a token;
/// - for an allowed `Origin`: `Access-Control-Allow-Origin` (that origin) and the exposed
///   headers; and `Vary: Origin` on every answer that could be cached and served to
///   another origin, so an edge never hands one origin's answer to another.
pub fn finish(response: &mut HttpResponse, request: &RequestFacts, allowed: &AllowedOrigins) {
    if response.header("cache-control").is_none() {
        let caching = if request.is_read() && request.authorization && response.status < 300 {
            Caching::Private { max_age_secs: 0 }
        } else {
            Caching::NoStore
        };
        caching.apply(response);
    }
    let allowed_origin = request.origin.as_deref().filter(|o| allowed.allows(o));
    let cacheable = response
        .header("cache-control")
        .is_some_and(|c| c.starts_with("public"));
    if let Some(origin) = allowed_origin {
        response
            .headers
            .push(("access-control-allow-origin", origin.to_string()));
        response
            .headers
            .push(("access-control-expose-headers", EXPOSE_HEADERS.to_string()));
    }
    if allowed_origin.is_some() || cacheable {
        response.add_vary("Origin");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, origin: Option<&str>) -> RequestFacts {
        RequestFacts {
            method: method.into(),
            origin: origin.map(String::from),
            preflight_method: None,
            authorization: false,
        }
    }

    fn preflight(origin: &str) -> RequestFacts {
        RequestFacts {
            preflight_method: Some("POST".into()),
            ..request("OPTIONS", Some(origin))
        }
    }

    fn allowed() -> AllowedOrigins {
        AllowedOrigins::parse(Some(
            " https://m.example.com/ , http://localhost:8080,*,null",
        ))
    }

    #[test]
    fn the_list_is_normalised_and_junk_is_dropped() {
        let a = allowed();
        assert!(a.allows("https://m.example.com"));
        assert!(a.allows("HTTPS://M.EXAMPLE.COM"));
        assert!(a.allows("http://localhost:8080"));
        for other in [
            "https://evil.example.com",
            "http://m.example.com",
            "http://localhost:8081",
            "null",
            "*",
            "https://m.example.com.evil.com",
        ] {
            assert!(!a.allows(other), "{other}");
        }
        assert_eq!(AllowedOrigins::parse(None), AllowedOrigins::default());
        assert_eq!(AllowedOrigins::parse(Some("")), AllowedOrigins::default());
    }

    #[test]
    fn a_preflight_from_an_allowed_origin_is_answered_with_what_a_page_may_send() {
        let r = allowed()
            .preflight(&preflight("https://m.example.com"))
            .unwrap();
        assert_eq!(r.status, 204);
        assert_eq!(
            r.header("access-control-allow-origin"),
            Some("https://m.example.com")
        );
        let headers = r.header("access-control-allow-headers").unwrap();
        for h in ["Authorization", "Content-Type", "Idempotency-Key"] {
            assert!(headers.contains(h), "{headers}");
        }
        assert!(r
            .header("access-control-allow-methods")
            .unwrap()
            .contains("POST"));
        assert_eq!(r.header("access-control-max-age"), Some("600"));
        assert_eq!(r.header("vary"), Some("Origin"));
        assert!(r.header("access-control-allow-credentials").is_none());
    }

    #[test]
    fn no_preflight_answer_for_other_origins_or_plain_options() {
        let a = allowed();
        assert_eq!(a.preflight(&preflight("https://evil.example.com")), None);
        assert_eq!(
            a.preflight(&request("OPTIONS", Some("https://m.example.com"))),
            None
        );
        assert_eq!(a.preflight(&request("OPTIONS", None)), None);
        let empty = AllowedOrigins::parse(Some(""));
        assert_eq!(empty.preflight(&preflight("https://m.example.com")), None);
    }

    #[test]
    fn an_allowed_origin_gets_its_own_origin_back_and_retry_after_exposed() {
        let mut r = HttpResponse::empty(429);
        finish(
            &mut r,
            &request("POST", Some("https://m.example.com")),
            &allowed(),
        );
        assert_eq!(
            r.header("access-control-allow-origin"),
            Some("https://m.example.com")
        );
        assert!(r
            .header("access-control-expose-headers")
            .unwrap()
            .contains("Retry-After"));
        assert_eq!(r.header("vary"), Some("Origin"));
    }

    #[test]
    fn other_origins_and_same_origin_requests_get_no_cors_header() {
        for (origins, origin) in [
            (allowed(), Some("https://evil.example.com")),
            (allowed(), None),
            (AllowedOrigins::default(), Some("https://m.example.com")),
        ] {
            let mut r = HttpResponse::empty(200);
            finish(&mut r, &request("POST", origin), &origins);
            assert!(
                !r.headers
                    .iter()
                    .any(|(n, _)| n.starts_with("access-control-")),
                "{origin:?}: {:?}",
                r.headers
            );
            assert_eq!(r.header("vary"), None, "a no-store answer needs no Vary");
        }
    }

    #[test]
    fn writes_and_anonymous_reads_are_never_stored_and_token_reads_are_private() {
        let mut write = HttpResponse::empty(201);
        finish(
            &mut write,
            &request("POST", None),
            &AllowedOrigins::default(),
        );
        assert_eq!(write.header("cache-control"), Some("no-store"));

        let mut anonymous = HttpResponse::empty(200);
        finish(
            &mut anonymous,
            &request("GET", None),
            &AllowedOrigins::default(),
        );
        assert_eq!(anonymous.header("cache-control"), Some("no-store"));

        let token = RequestFacts {
            authorization: true,
            ..request("GET", None)
        };
        let mut mine = HttpResponse::empty(200);
        finish(&mut mine, &token, &AllowedOrigins::default());
        assert_eq!(mine.header("cache-control"), Some("private, no-cache"));
        assert_eq!(mine.header("vary"), Some("Authorization"));

        let mut refused = HttpResponse::empty(404);
        finish(&mut refused, &token, &AllowedOrigins::default());
        assert_eq!(refused.header("cache-control"), Some("no-store"));
    }

    #[test]
    fn a_public_answer_keeps_its_lifetime_and_varies_by_origin_even_without_cors() {
        let mut r = HttpResponse::empty(200);
        Caching::Public { max_age_secs: 2 }.apply(&mut r);
        r.add_vary("Authorization");
        finish(&mut r, &request("GET", None), &AllowedOrigins::default());
        assert_eq!(r.header("cache-control"), Some("public, max-age=2"));
        assert_eq!(r.header("vary"), Some("Authorization, Origin"));
    }

    #[test]
    fn activity_reads_are_public_for_the_server_cache_lifetime_unless_made_for_a_token() {
        assert_eq!(
            PUBLIC_READ_MAX_AGE_SECS * 1000,
            crate::activity::LIST_TTL_MS
        );
        let mut public = HttpResponse::empty(200);
        activity_read(false).apply(&mut public);
        assert_eq!(
            public.header("cache-control").unwrap(),
            format!("public, max-age={PUBLIC_READ_MAX_AGE_SECS}")
        );
        let mut mine = HttpResponse::empty(200);
        activity_read(true).apply(&mut mine);
        assert_eq!(mine.header("cache-control"), Some("private, no-cache"));
        assert_eq!(mine.header("vary"), Some("Authorization"));
    }

    #[test]
    fn private_answers_vary_by_authorization() {
        let mut r = HttpResponse::empty(200);
        Caching::Private { max_age_secs: 3600 }.apply(&mut r);
        assert_eq!(r.header("cache-control"), Some("private, max-age=3600"));
        assert_eq!(r.header("vary"), Some("Authorization"));
        let mut again = r.clone();
        again.add_vary("authorization");
        assert_eq!(again.header("vary"), Some("Authorization"), "no duplicate");
    }
}
