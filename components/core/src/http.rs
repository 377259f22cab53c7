//! A transport-neutral HTTP response, so the library can build every body and header
//! without depending on spin-sdk; components copy it into Spin's response type.

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
}
