//! What the web component answers, with no I/O: parse (method, path, `If-None-Match`) →
//! the embedded file → the response with its caching and security headers.
//!
//! It depends on nothing of flashclaim's domain: its two problems (404, 405) are written
//! here in the API's problem+json shape with the same stable codes.

/// A response, ready for the Spin wiring in lib.rs.
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

/// The web component's only failures, answered like the API's (RFC 9457).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebError {
    NotFound,
    MethodNotAllowed,
}

impl WebError {
    fn to_response(self) -> HttpResponse {
        let (status, title, code, detail) = match self {
            WebError::NotFound => (404, "Not Found", "not_found", "no such page or asset"),
            WebError::MethodNotAllowed => (
                405,
                "Method Not Allowed",
                "method_not_allowed",
                "pages and assets answer GET and HEAD only",
            ),
        };
        let body = format!(
            r#"{{"type":"about:blank","title":"{title}","status":{status},"code":"{code}","detail":"{detail}"}}"#
        );
        HttpResponse {
            status,
            headers: vec![("content-type", "application/problem+json".to_string())],
            body: body.into_bytes(),
        }
    }
}

/// A file compiled into the component by build.rs.
pub struct Embedded {
    pub name: &'static str,
    pub content_type: &'static str,
    /// A quoted strong validator: the hash of the body.
    pub etag: &'static str,
    pub body: &'static [u8],
}

include!(concat!(env!("OUT_DIR"), "/embedded.rs"));

/// No inline script or style anywhere; the API is same-origin; images may also be a
/// ticket's QR code fetched with the token (`blob:`) or an activity's `image_url` on an
/// https host; nobody may frame the pages.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
style-src 'self'; img-src 'self' data: blob: https:; connect-src 'self'; \
media-src 'self' blob:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Pages change with every deployment: always revalidate (cheap, thanks to the ETag).
const PAGE_CACHE: &str = "no-cache";
/// Assets live under a versioned path that changes whenever any of them does.
const ASSET_CACHE: &str = "public, max-age=31536000, immutable";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Other,
}

/// One request, as much of it as the answer depends on.
pub struct WebRequest<'a> {
    pub method: Method,
    pub path: &'a str,
    pub if_none_match: Option<&'a str>,
}

/// Routes `/` (H5 app), `/console` and `/console/` (operator console) and
/// `/assets/<version>/<name>`; anything else is a problem+json 404.
pub fn answer(req: &WebRequest) -> HttpResponse {
    let mut response = match find(req.path) {
        None => WebError::NotFound.to_response(),
        Some(_) if req.method == Method::Other => WebError::MethodNotAllowed.to_response(),
        Some((file, cache)) => serve(file, cache, req),
    };
    for (name, value) in [
        ("content-security-policy", CONTENT_SECURITY_POLICY),
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
    ] {
        response.headers.push((name, value.to_string()));
    }
    if response.status == 405 {
        response.headers.push(("allow", "GET, HEAD".to_string()));
    }
    response
}

fn find(path: &str) -> Option<(&'static Embedded, &'static str)> {
    let page = |name: &str| PAGES.iter().find(|p| p.name == name);
    match path {
        "/" | "/index.html" => page("h5.html").map(|p| (p, PAGE_CACHE)),
        "/console" | "/console/" | "/console/index.html" => {
            page("console.html").map(|p| (p, PAGE_CACHE))
        }
        _ => {
            let rest = path.strip_prefix("/assets/")?;
            let (version, name) = rest.split_once('/')?;
            if version != VERSION {
                return None;
            }
            ASSETS
                .iter()
                .find(|a| a.name == name)
                .map(|a| (a, ASSET_CACHE))
        }
    }
}

fn serve(file: &Embedded, cache: &str, req: &WebRequest) -> HttpResponse {
    let fresh = req
        .if_none_match
        .is_some_and(|list| matches_etag(list, file.etag));
    let (status, body) = match (fresh, req.method) {
        (true, _) => (304, Vec::new()),
        (false, Method::Head) => (200, Vec::new()),
        (false, _) => (200, file.body.to_vec()),
    };
    let mut headers = vec![
        ("etag", file.etag.to_string()),
        ("cache-control", cache.to_string()),
    ];
    if status == 200 {
        headers.push(("content-type", file.content_type.to_string()));
        headers.push(("content-length", file.body.len().to_string()));
    }
    HttpResponse {
        status,
        headers,
        body,
    }
}

/// RFC 9110 §13.1.2: a comma-separated list of entity tags (weak comparison), or `*`.
fn matches_etag(list: &str, etag: &str) -> bool {
    list.split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &str, inm: Option<&str>) -> HttpResponse {
        answer(&WebRequest {
            method: Method::Get,
            path,
            if_none_match: inm,
        })
    }

    fn header<'a>(r: &'a HttpResponse, name: &str) -> Option<&'a str> {
        r.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn pages_point_at_the_versioned_assets_and_revalidate() {
        let page = get("/", None);
        assert_eq!(page.status, 200);
        assert_eq!(header(&page, "cache-control"), Some("no-cache"));
        let html = String::from_utf8(page.body).unwrap();
        assert!(html.contains(&format!("/assets/{VERSION}/")), "{html}");
        assert!(!html.contains("{{assets}}"));
    }

    #[test]
    fn an_etag_match_answers_304_with_no_body() {
        let first = get("/console/", None);
        let etag = header(&first, "etag").unwrap().to_string();
        let again = get("/console/", Some(&format!("\"nope\", W/{etag}")));
        assert_eq!(again.status, 304);
        assert!(again.body.is_empty());
        assert_eq!(get("/console/", Some("\"nope\"")).status, 200);
    }

    #[test]
    fn assets_of_another_version_are_not_found() {
        let name = ASSETS[0].name;
        assert_eq!(get(&format!("/assets/{VERSION}/{name}"), None).status, 200);
        assert_eq!(
            get(&format!("/assets/000000000000/{name}"), None).status,
            404
        );
        assert_eq!(
            get(&format!("/assets/{VERSION}/../Cargo.toml"), None).status,
            404
        );
    }
}
