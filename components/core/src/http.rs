//! A transport-neutral HTTP response, so the library can build every body and header
//! without depending on spin-sdk; components copy it into Spin's response type.

use crate::error::ApiError;

/// A body longer than a route takes: refused before it is parsed, or before it is read
/// at all when its length says so (`flashclaim_spin3::body`).
pub fn body_too_large(max: usize) -> ApiError {
    ApiError::invalid(format!("the body exceeds {max} bytes"))
}

/// A request body that must be one JSON object of at most `max` bytes (checked before any
/// parsing work).
pub fn json_object(
    body: &[u8],
    max: usize,
) -> Result<serde_json::Map<String, serde_json::Value>, ApiError> {
    if body.len() > max {
        return Err(body_too_large(max));
    }
    match serde_json::from_slice(body) {
        Ok(serde_json::Value::Object(object)) => Ok(object),
        Ok(_) => Err(ApiError::invalid("the body must be a JSON object")),
        Err(e) => Err(ApiError::invalid(format!(
            "the body is not valid JSON: {e}"
        ))),
    }
}

/// Refuses the first field of `object` not in `allowed`.
pub fn reject_unknown(
    object: &serde_json::Map<String, serde_json::Value>,
    allowed: &[&str],
) -> Result<(), ApiError> {
    match object.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(unknown) => Err(ApiError::invalid(format!("unknown field `{unknown}`"))),
        None => Ok(()),
    }
}

/// A JSON object body read into `T` (whose serde attributes refuse unknown fields).
pub fn json_body<T: serde::de::DeserializeOwned>(body: &[u8], max: usize) -> Result<T, ApiError> {
    serde_json::from_value(serde_json::Value::Object(json_object(body, max)?))
        .map_err(|e| ApiError::invalid(e.to_string()))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn json(status: u16, value: &impl serde::Serialize) -> Self {
        Self::json_with_type(status, "application/json", value)
    }

    pub fn json_with_type(status: u16, content_type: &str, value: &impl serde::Serialize) -> Self {
        HttpResponse {
            status,
            headers: vec![("content-type", content_type.to_string())],
            body: serde_json::to_vec(value).unwrap_or_default(),
        }
    }

    pub fn empty(status: u16) -> Self {
        HttpResponse {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// The first value of a header (names are stored lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Replaces every value of a header with one.
    pub fn set_header(&mut self, name: &'static str, value: String) {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self.headers.push((name, value));
    }

    /// Adds a request header the answer depends on to one `Vary` list (once).
    pub fn add_vary(&mut self, request_header: &str) {
        match self.headers.iter_mut().find(|(n, _)| *n == "vary") {
            Some((_, list)) => {
                if !list
                    .split(',')
                    .any(|h| h.trim().eq_ignore_ascii_case(request_header))
                {
                    list.push_str(", ");
                    list.push_str(request_header);
                }
            }
            None => self.headers.push(("vary", request_header.to_string())),
        }
    }
}
