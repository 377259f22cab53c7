//! A minimal HTTP/1.1 client for tests, on the same hyper the host serves with.

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::HeaderMap;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

#[derive(Clone)]
pub struct HttpClient {
    base: String,
    inner: Client<HttpConnector, Full<Bytes>>,
    timeout: std::time::Duration,
}

/// How long a request may take, headers and body, before it is a failure. Long enough for
/// a request queued behind a claim storm; short enough that a request that never answers
/// (spin#3671: a Postgres query with zero rows never returns on Spin 4.0.x) fails the test
/// with a message instead of hanging CI.
pub const DEFAULT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl HttpClient {
    pub fn new(base: impl Into<String>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let inner = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(512)
            .build(connector);
        Self {
            base: base.into().trim_end_matches('/').to_string(),
            inner,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// The same client with another per-request time limit.
    pub fn with_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Sends one request; `headers` are `(name, value)` pairs.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Result<Response> {
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{}", self.base, path));
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let req = req
            .body(Full::new(body.into()))
            .context("building request")?;
        let exchange = async {
            let resp = self.inner.request(req).await?;
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let body = resp.into_body().collect().await?.to_bytes();
            anyhow::Ok(Response {
                status,
                headers,
                body,
            })
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(result) => result.with_context(|| format!("{method} {path}")),
            Err(_) => anyhow::bail!(
                "{method} {path}: no complete answer within {:?} (a hung request)",
                self.timeout
            ),
        }
    }

    pub async fn get(&self, path: &str) -> Result<Response> {
        self.send("GET", path, &[], Bytes::new()).await
    }
}
