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
//! - `/vars/NAME`, `/http/out`, `/trap`;
//! - `/pg/roundtrip` — every type the host converts, through spin-sdk's async `pg`
//!   (`open-async`, `execute-async`, `query-async`), answered as the WASIp2 fixture answers;
//! - `/pg/blocking` — the synchronous functions of `spin:postgres@4.2.0` and its connection
//!   builder (sync and async `build`);
//! - `/pg/zero-rows?addr=A` — a query with no row (spin#3671), then one with a row;
//! - `/pg/open?addr=A` — opens a connection to any address (outbound rules);
//! - `/pg/sleep?ms=N` — a query that waits in Postgres, with the in-flight count.
//!
//! Routes are matched on `spin-path-info`, so the component can be mounted anywhere.
//! wasip3 0.7 has no cross-task wake-ups: state shared by concurrent requests is kept in
//! plain cells that are never borrowed across an `.await`.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use spin_sdk::http::body::IncomingBodyExt;
use spin_sdk::http::{IntoResponse, Request, StatusCode};
use spin_sdk::http_service;
use spin_sdk::pg::{self, DbValue, ParameterValue as P, PgError};
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
        "/pg/roundtrip" => pg_roundtrip().await,
        "/pg/blocking" => text(200, pg_blocking(&var("pg_address").await).await),
        "/pg/zero-rows" => {
            // A query with no row (spin#3671), then one that has a row, on one connection.
            let addr = match query_param(&req, "addr") {
                Some(a) => a,
                None => var("pg_address").await,
            };
            match pg::Connection::open(addr).await {
                Ok(conn) => text(
                    200,
                    format!(
                        "zero={:?}\nafter={:?}",
                        rows(&conn, "SELECT 1 AS one WHERE false", []).await,
                        rows(&conn, "SELECT count(*) FROM pg_class WHERE false", []).await
                    ),
                ),
                Err(e) => text(502, format!("open={:?}", wit_error(e))),
            }
        }
        "/pg/open" => {
            let addr = match query_param(&req, "addr") {
                Some(a) => a,
                None => var("pg_address").await,
            };
            match pg::Connection::open(addr).await {
                Ok(_) => text(200, "opened"),
                Err(e) => text(502, format!("{:?}", wit_error(e))),
            }
        }
        "/pg/sleep" => {
            let (_guard, in_flight) = InFlight::enter();
            let ms: i64 = query_param(&req, "ms")
                .and_then(|v| v.parse().ok())
                .unwrap_or(50);
            let slept = match pg::Connection::open(var("pg_address").await).await {
                Ok(conn) => rows(
                    &conn,
                    "SELECT 1::int4 AS slept FROM pg_sleep($1::int8 / 1000.0::float8)",
                    [P::Int64(ms)],
                )
                .await
                .map(|_| ()),
                Err(e) => Err(wit_error(e)),
            };
            text(
                200,
                format!("instance={id:x} in_flight={in_flight} slept={slept:?}"),
            )
        }
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

/// The WIT error inside spin-sdk's, so answers read as the WASIp2 fixture's do.
fn wit_error(e: pg::Error) -> PgError {
    match e {
        pg::Error::PgError(e) => e,
        pg::Error::Decode(d) => PgError::Other(d),
    }
}

/// The columns and all rows of a query through `query-async`: the stream, then how the
/// query ended.
async fn query(
    conn: &pg::Connection,
    statement: &str,
    params: impl Into<Vec<P>>,
) -> Result<(Vec<pg::Column>, Vec<Vec<DbValue>>), PgError> {
    let result = conn.query(statement, params).await.map_err(wit_error)?;
    let (columns, mut stream, ended) = result.into_inner();
    let mut rows = Vec::new();
    while let Some(row) = stream.next().await {
        rows.push(row);
    }
    ended.await?;
    Ok((columns, rows))
}

async fn rows(
    conn: &pg::Connection,
    statement: &str,
    params: impl Into<Vec<P>>,
) -> Result<Vec<Vec<DbValue>>, PgError> {
    query(conn, statement, params).await.map(|(_, rows)| rows)
}

/// The WASIp2 fixture's `/pg/roundtrip` through spin-sdk 7's async API: every type the
/// host converts, a NULL parameter, and `timestamptz` read as a date-time (refused).
async fn pg_roundtrip() -> (StatusCode, String) {
    let conn = match pg::Connection::open(var("pg_address").await).await {
        Ok(c) => c,
        Err(e) => return text(502, format!("{:?}", wit_error(e))),
    };
    let execute = async |statement: &str, params: Vec<P>| {
        conn.execute(statement, params).await.map_err(wit_error)
    };
    let mut out = Vec::new();
    out.push(format!(
        "create={:?}",
        execute(
            "CREATE TEMP TABLE rt (b bool, i2 int2, i4 int4, i8 int8, f4 float4, f8 float8, \
             s text, bin bytea, at timestamptz, naive timestamp, u uuid, j jsonb, n text)",
            vec![]
        )
        .await
    ));
    // The WASIp2 fixture's values, so both interfaces are proven alike.
    let params = include!("../../fixture/src/roundtrip_params.rs").to_vec();
    out.push(format!(
        "insert={:?}",
        execute(
            "INSERT INTO rt VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
            params
        )
        .await
    ));
    let select = "SELECT b, i2, i4, i8, f4, f8, s, bin, extract(epoch FROM at)::int8 AS at_epoch, \
                  naive, u, j, n FROM rt";
    match query(&conn, select, []).await {
        Ok((columns, rows)) => {
            for c in &columns {
                out.push(format!("column {}={:?}", c.name, c.data_type));
            }
            for v in rows.iter().flatten() {
                out.push(format!("value={v:?}"));
            }
        }
        Err(e) => out.push(format!("select error={e:?}")),
    }
    out.push(format!(
        "timestamptz_as_datetime={:?}",
        rows(&conn, "SELECT at FROM rt", []).await
    ));
    out.push(format!(
        "null_param={:?}",
        rows(&conn, "SELECT $1::int8 IS NULL AS is_null", [P::DbNull]).await
    ));
    text(200, out.join("\n"))
}

/// The synchronous functions of `spin:postgres@4.2.0` (spin-sdk 7's raw bindings), which
/// block the instance while the host awaits Postgres, and the connection builder (its
/// `build` and `build-async`).
// The error is the WIT interface's own, answered as it is.
#[allow(clippy::result_large_err)]
async fn pg_blocking(addr: &str) -> String {
    use pg::wit::postgres::{Connection, ConnectionBuilder};
    let mut out = Vec::new();
    match Connection::open(addr) {
        Ok(conn) => {
            out.push(format!(
                "create={:?}",
                conn.execute("CREATE TEMP TABLE blocking (i int4, s text)", &[])
            ));
            out.push(format!(
                "insert={:?}",
                conn.execute(
                    "INSERT INTO blocking VALUES ($1, $2), ($3, NULL)",
                    &[P::Int32(1), P::Str("one".into()), P::Int32(2)]
                )
            ));
            match conn.query("SELECT i, s FROM blocking ORDER BY i", &[]) {
                Ok(set) => {
                    let columns: Vec<_> = set
                        .columns
                        .iter()
                        .map(|c| format!("{}:{:?}", c.name, c.data_type))
                        .collect();
                    out.push(format!("columns={}", columns.join(",")));
                    out.push(format!("rows={:?}", set.rows));
                }
                Err(e) => out.push(format!("query={e:?}")),
            }
        }
        Err(e) => out.push(format!("open={e:?}")),
    }
    out.push(format!(
        "denied={:?}",
        Connection::open("postgres://postgres@127.0.0.1:1/x").map(|_| ())
    ));
    let builder = ConnectionBuilder::new(addr);
    out.push(format!(
        "bad_ca_root={:?}",
        builder.set_ca_root("not a certificate")
    ));
    out.push(format!(
        "built={:?}",
        builder
            .build()
            .and_then(|conn| conn.query("SELECT 7::int4 AS seven", &[]))
            .map(|set| set.rows)
    ));
    let built = ConnectionBuilder::new(addr).build_async().await;
    out.push(format!(
        "built_async={:?}",
        built.and_then(|conn| conn.execute("SELECT 1", &[]))
    ));
    out.join("\n")
}
