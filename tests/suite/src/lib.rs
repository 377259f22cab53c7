//! Shared harness for flashclaim's tests: the private Redis and Postgres started by
//! `scripts/services.sh`, a fresh database and Redis keyspace per test, the app on the
//! test host, and helpers that act as an operator or a user would.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use flashclaim_core::jwt::{self, Claims};
use flashclaim_core::scripts::{Arg, RedisCommands, RedisFailure, Reply};
use spin_test_host::client::{HttpClient, Response};
use spin_test_host::{App, AppConfig, Flat, RunningServer};

pub const JWT_SECRET: &str = "test-jwt-secret-0123456789";
pub const TICKET_SECRET: &str = "test-ticket-secret-0123456789";

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Addresses from `.data/services.env`.
pub struct Services {
    pub redis_port: u16,
    pub pg_port: u16,
    pub pg_data: String,
    pub pg_bin: String,
    pub pg_user: String,
}

pub fn services() -> Services {
    let env = std::fs::read_to_string(root().join(".data/services.env")).expect(
        "no .data/services.env: run the tests through `make test` (it starts Redis and Postgres)",
    );
    let map: HashMap<&str, &str> = env.lines().filter_map(|l| l.split_once('=')).collect();
    Services {
        redis_port: map["REDIS_PORT"].parse().unwrap(),
        pg_port: map["PG_PORT"].parse().unwrap(),
        pg_data: map["PG_DATA"].to_string(),
        pg_bin: map["PG_BIN"].to_string(),
        pg_user: map["PG_USER"].to_string(),
    }
}

impl Services {
    pub fn pg_url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.pg_port)
    }
    pub fn redis_url(&self, db: u32) -> String {
        format!("redis://127.0.0.1:{}/{db}", self.redis_port)
    }
}

static NEXT_DB: AtomicU32 = AtomicU32::new(1);

/// A Redis logical database of this test's own, emptied first (test binaries reuse numbers).
pub async fn fresh_redis_db() -> (String, redis::aio::MultiplexedConnection) {
    let n = NEXT_DB.fetch_add(1, Ordering::SeqCst);
    assert!(n < 256, "more tests than Redis databases");
    let url = services().redis_url(n);
    let mut conn = redis_conn(&url).await;
    let () = redis::cmd("FLUSHDB").query_async(&mut conn).await.unwrap();
    (url, conn)
}

pub async fn redis_conn(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// A database copied from the migrated template, private to one test.
pub async fn fresh_pg_db() -> String {
    let s = services();
    let name = format!(
        "t_{}_{}",
        std::process::id(),
        NEXT_DB.fetch_add(1, Ordering::SeqCst)
    );
    let admin = pg_conn(&s.pg_url("postgres")).await;
    for sql in [
        format!("DROP DATABASE IF EXISTS {name}"),
        format!("CREATE DATABASE {name} TEMPLATE flashclaim_template"),
    ] {
        admin.batch_execute(&sql).await.unwrap();
    }
    s.pg_url(&name)
}

pub async fn pg_conn(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// Runs commands the way a component on Spin sees them: replies flattened.
pub struct NativeRedis {
    conn: redis::aio::MultiplexedConnection,
    runtime: tokio::runtime::Handle,
}

impl NativeRedis {
    pub fn new(conn: redis::aio::MultiplexedConnection) -> Self {
        NativeRedis {
            conn,
            runtime: tokio::runtime::Handle::current(),
        }
    }
}

impl RedisCommands for NativeRedis {
    fn execute(&self, command: &str, args: &[Arg]) -> Result<Vec<Reply>, RedisFailure> {
        let mut cmd = redis::cmd(command);
        for a in args {
            match a {
                Arg::Int(n) => cmd.arg(*n),
                Arg::Bytes(b) => cmd.arg(b.as_slice()),
            };
        }
        let mut conn = self.conn.clone();
        let value: redis::Value =
            tokio::task::block_in_place(|| self.runtime.block_on(cmd.query_async(&mut conn)))
                .map_err(|e| RedisFailure::Command(e.to_string()))?;
        let flat = spin_test_host::flatten_redis_reply(&value)
            .map_err(|e| RedisFailure::Command(e.to_string()))?;
        Ok(flat
            .into_iter()
            .map(|f| match f {
                Flat::Nil => Reply::Nil,
                Flat::Status(s) => Reply::Status(s),
                Flat::Int(n) => Reply::Int(n),
                Flat::Bytes(b) => Reply::Bytes(b),
            })
            .collect())
    }
}

pub fn token(user: &str, role: Option<&str>) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    jwt::sign(
        &Claims {
            sub: user.into(),
            exp: now + 3600,
            nbf: None,
            iat: Some(now),
            role: role.map(str::to_string),
        },
        JWT_SECRET.as_bytes(),
    )
}

pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// flashclaim on the test host, with its own Postgres database and Redis keyspace.
pub struct TestApp {
    pub app: Arc<App>,
    pub server: RunningServer,
    pub client: HttpClient,
    pub pg_url: String,
    pub redis_url: String,
    pub admin: String,
}

impl TestApp {
    pub async fn start() -> TestApp {
        Self::start_with(&[]).await
    }

    pub async fn start_with(extra: &[(&str, &str)]) -> TestApp {
        let (redis_url, _) = fresh_redis_db().await;
        let pg_url = fresh_pg_db().await;
        Self::start_on(&redis_url, &pg_url, extra).await
    }

    /// The app on given stores: a second app on the same data (a restarted or differently
    /// configured deployment), or one on a private Redis.
    pub async fn start_on(redis_url: &str, pg_url: &str, extra: &[(&str, &str)]) -> TestApp {
        let s = services();
        let (redis_url, pg_url) = (redis_url.to_string(), pg_url.to_string());
        let mut env: HashMap<String, String> = [
            ("SPIN_VARIABLE_REDIS_ADDRESS", redis_url.clone()),
            (
                "SPIN_VARIABLE_REDIS_HOST",
                format!("127.0.0.1:{}", s.redis_port),
            ),
            ("SPIN_VARIABLE_PG_ADDRESS", pg_url.clone()),
            ("SPIN_VARIABLE_PG_HOST", format!("127.0.0.1:{}", s.pg_port)),
            ("SPIN_VARIABLE_JWT_SECRET", JWT_SECRET.to_string()),
            ("SPIN_VARIABLE_TICKET_SECRET", TICKET_SECRET.to_string()),
            ("SPIN_VARIABLE_CLAIM_RATE_LIMIT", "0".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        for (k, v) in extra {
            env.insert(k.to_string(), v.to_string());
        }
        let app = App::load(AppConfig {
            manifest: root().join("spin.toml"),
            env,
            process_env: false,
            ..AppConfig::default()
        })
        .await
        .expect("flashclaim loads on the test host (was `make wasm` run?)");
        let server = spin_test_host::server::start(app.clone(), "127.0.0.1:0")
            .await
            .unwrap();
        let client = HttpClient::new(server.base_url());
        TestApp {
            app,
            server,
            client,
            pg_url,
            redis_url,
            admin: bearer(&token("operator", Some("admin"))),
        }
    }

    pub async fn pg(&self) -> tokio_postgres::Client {
        pg_conn(&self.pg_url).await
    }

    pub async fn redis(&self) -> redis::aio::MultiplexedConnection {
        redis_conn(&self.redis_url).await
    }

    pub async fn send(&self, method: &str, path: &str, auth: Option<&str>, body: &str) -> Response {
        let mut headers = vec![("content-type", "application/json")];
        if let Some(a) = auth {
            headers.push(("authorization", a));
        }
        self.client
            .send(method, path, &headers, body.to_string())
            .await
            .unwrap()
    }

    /// Creates an activity as the operator; `overrides` are extra JSON fields.
    pub async fn create_activity(&self, stock: i64, overrides: &str) -> i64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        let body = format!(
            r#"{{"name":"Free ride","starts_at":"{}","ends_at":"{}","stock_total":{stock}{overrides}}}"#,
            flashclaim_core::time::Millis(now - 60_000),
            flashclaim_core::time::Millis(now + 3_600_000),
        );
        let r = self
            .send("POST", "/admin/activities", Some(&self.admin), &body)
            .await;
        assert_eq!(r.status, 201, "create: {}", r.text());
        r.json()["id"].as_i64().unwrap()
    }

    pub async fn publish(&self, id: i64) -> Response {
        let r = self
            .send(
                "POST",
                &format!("/admin/activities/{id}/publish"),
                Some(&self.admin),
                "",
            )
            .await;
        assert_eq!(r.status, 200, "publish: {}", r.text());
        r
    }

    pub async fn claim(&self, id: i64, user: &str, body: &str) -> Response {
        self.send(
            "POST",
            &format!("/api/activities/{id}/claims"),
            Some(&bearer(&token(user, None))),
            body,
        )
        .await
    }

    /// Runs the drain through its HTTP route and returns its report.
    pub async fn drain(&self) -> serde_json::Value {
        let r = self
            .send("POST", "/admin/drain", Some(&self.admin), "")
            .await;
        assert_eq!(r.status, 200, "drain: {}", r.text());
        r.json()
    }

    pub async fn count(&self, sql: &str) -> i64 {
        self.pg()
            .await
            .query_one(sql, &[])
            .await
            .unwrap()
            .get::<_, i64>(0)
    }
}

/// Asserts an RFC 9457 problem with the given status and stable code.
pub fn problem(r: &Response, status: u16, code: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    assert_eq!(
        r.header("content-type"),
        Some("application/problem+json"),
        "{}",
        r.text()
    );
    assert_eq!(r.json()["code"], code, "{}", r.text());
}

impl TestApp {
    /// A request as `user` (a token signed with the test secret).
    pub async fn as_user(&self, user: &str, method: &str, path: &str, body: &str) -> Response {
        self.send(method, path, Some(&bearer(&token(user, None))), body)
            .await
    }

    pub async fn as_admin(&self, method: &str, path: &str, body: &str) -> Response {
        self.send(method, path, Some(&self.admin), body).await
    }

    /// A request with an explicit content type (uploads).
    pub async fn send_typed(
        &self,
        method: &str,
        path: &str,
        auth: &str,
        content_type: &str,
        body: String,
    ) -> Response {
        self.client
            .send(
                method,
                path,
                &[("content-type", content_type), ("authorization", auth)],
                body,
            )
            .await
            .unwrap()
    }
}
