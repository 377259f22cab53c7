//! A WASIp3 component built with spin-sdk 7 (`#[http_service]`, async `spin:redis@3.0.0`),
//! the way flashclaim's reused claim component is built. Spin 4 reuses such an instance for
//! up to 128 requests, 16 at once; this component keeps state in the instance so the test
//! host's tests can see that reuse from outside:
//!
//! - `/count` — a counter kept in the instance, with the instance's random id;
//! - `/slow?ms=N` — waits on the host's clock, reporting how many requests of this instance
//!   were in flight when it started (concurrent reuse);
//! - `/redis/kept?key=K` — INCR on a Redis connection opened once per instance, with the
//!   number of times this instance opened one;
//! - `/redis/eval` — EVAL / EVALSHA replies and errors, as the WASIp2 fixture's route;
//! - `/redis/open?addr=A` — opens a connection to any address (outbound rules);
//! - `POST /echo?v=V` — answers `V` and the request body (to match answers to requests),
//!   with the instance's id, counter and in-flight count;
//! - `/vars/NAME`, `/http/out`, `/trap`.
//!
//! Routes are matched on `spin-path-info`, so the component can be mounted anywhere.
//! wasip3 0.7 has no cross-task wake-ups: state shared by concurrent requests is kept in
//! plain cells that are never borrowed across an `.await`.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use spin_sdk::http::body::IncomingBodyExt;
use spin_sdk::http::{IntoResponse, Request, StatusCode};
use spin_sdk::http_service;
use spin_sdk::redis::{Connection, RedisParameter as R};
use spin_sdk::variables;

thread_local! {
    static INSTANCE_ID: Cell<u64> = const { Cell::new(0) };
    static COUNT: Cell<u64> = const { Cell::new(0) };
    static IN_FLIGHT: Cell<u32> = const { Cell::new(0) };
    static REDIS_OPENS: Cell<u32> = const { Cell::new(0) };
    static REDIS: RefCell<Option<Rc<Connection>>> = const { RefCell::new(None) };
}

/// A random id drawn the first time this instance needs one.
fn instance_id() -> u64 {
    INSTANCE_ID.with(|id| {
        if id.get() == 0 {
            id.set(spin_sdk::wasip3::random::random::get_random_u64() | 1);
        }
        id.get()
    })
}

fn text(status: u16, body: impl Into<String>) -> (StatusCode, String) {
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        body.into(),
    )
}

fn query_param(req: &Request, name: &str) -> Option<String> {
    req.uri()
        .query()?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

async fn var(name: &str) -> String {
    variables::get(name).await.unwrap_or_default()
}

/// The connection this instance keeps, opened on first use. The `Rc` is cloned out of the
/// cell before any `.await`, so concurrent requests never hold a borrow across a wait.
async fn kept_connection() -> Result<Rc<Connection>, String> {
    if let Some(conn) = REDIS.with_borrow(|c| c.clone()) {
        return Ok(conn);
    }
    let conn = Connection::open(var("redis_address").await)
        .await
        .map_err(|e| format!("{e:?}"))?;
    REDIS_OPENS.set(REDIS_OPENS.get() + 1);
    let conn = Rc::new(conn);
    REDIS.set(Some(conn.clone()));
    Ok(conn)
}

/// Decrements the in-flight count however the request ends.
struct InFlight;

impl InFlight {
    fn enter() -> (Self, u32) {
        let now = IN_FLIGHT.get() + 1;
        IN_FLIGHT.set(now);
        (InFlight, now)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT.set(IN_FLIGHT.get() - 1);
    }
}

#[http_service]
async fn handle(req: Request) -> impl IntoResponse {
    let path = req
        .headers()
        .get("spin-path-info")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| req.uri().path())
        .to_string();
    let id = instance_id();
    match path.as_str() {
        "/hello" => text(200, format!("hello from {}", var("greeting").await)),
        "/count" => {
            let n = COUNT.get() + 1;
            COUNT.set(n);
            text(200, format!("instance={id:x} count={n}"))
        }
        "/slow" => {
            let (_guard, in_flight) = InFlight::enter();
            let ms: u64 = query_param(&req, "ms")
                .and_then(|v| v.parse().ok())
                .unwrap_or(50);
            spin_sdk::wasip3::clocks::monotonic_clock::wait_for(ms * 1_000_000).await;
            text(200, format!("instance={id:x} in_flight={in_flight}"))
        }
        "/echo" => {
            let (_guard, in_flight) = InFlight::enter();
            let n = COUNT.get() + 1;
            COUNT.set(n);
            let v = query_param(&req, "v").unwrap_or_default();
            match req.into_body().bytes().await {
                Ok(body) => text(
                    200,
                    format!(
                        "instance={id:x} count={n} in_flight={in_flight} v={v} body={}",
                        String::from_utf8_lossy(&body)
                    ),
                ),
                Err(e) => text(400, format!("{e:?}")),
            }
        }
        "/redis/kept" => {
            let key = query_param(&req, "key").unwrap_or_else(|| "fixture-p3:kept".into());
            let conn = match kept_connection().await {
                Ok(c) => c,
                Err(e) => return text(502, e),
            };
            let n = conn.incr(&key).await;
            text(
                200,
                format!("instance={id:x} opens={} incr={n:?}", REDIS_OPENS.get()),
            )
        }
        "/redis/eval" => match kept_connection().await {
            Ok(conn) => text(200, redis_eval(&conn).await),
            Err(e) => text(502, e),
        },
        "/redis/open" => {
            let addr = match query_param(&req, "addr") {
                Some(a) => a,
                None => var("redis_address").await,
            };
            match Connection::open(addr).await {
                Ok(_) => text(200, "opened"),
                Err(e) => text(502, format!("{e:?}")),
            }
        }
        p if p.starts_with("/vars/") => match variables::get(&p["/vars/".len()..]).await {
            Ok(v) => text(200, v),
            Err(e) => text(404, format!("{e:?}")),
        },
        "/http/out" => {
            let outbound = Request::<()>::builder()
                .uri("https://example.com/")
                .body(String::new())
                .expect("a valid request");
            match spin_sdk::http::send(outbound).await {
                Ok(r) => text(200, format!("sent: {}", r.status())),
                Err(e) => text(502, format!("{e:?}")),
            }
        }
        "/trap" => panic!("the p3 fixture was asked to trap"),
        _ => text(404, "fixture-p3: no such route"),
    }
}

async fn redis_eval(conn: &Connection) -> String {
    let script = b"return {1, 'x', {2, {'y', ARGV[1]}}, false, redis.status_reply('FINE'), tonumber(ARGV[2])}";
    let mut out = Vec::new();
    let nested = conn
        .execute(
            "EVAL",
            [
                R::Binary(script.to_vec()),
                R::Int64(0),
                R::Binary(b"z".to_vec()),
                R::Int64(-7),
            ],
        )
        .await;
    out.push(format!("nested={nested:?}"));
    let error = conn
        .execute(
            "EVAL",
            [
                R::Binary(b"return redis.error_reply('ERR boom')".to_vec()),
                R::Int64(0),
            ],
        )
        .await;
    out.push(format!("error={error:?}"));
    let noscript = conn
        .execute(
            "EVALSHA",
            [
                R::Binary(b"0000000000000000000000000000000000000000".to_vec()),
                R::Int64(0),
            ],
        )
        .await;
    out.push(format!("noscript={noscript:?}"));
    let status = conn
        .execute(
            "SET",
            [R::Binary(b"fixture-p3:status".to_vec()), R::Int64(1)],
        )
        .await;
    out.push(format!("status={status:?}"));
    out.join("\n")
}
