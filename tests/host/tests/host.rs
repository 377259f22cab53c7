//! The test host, proven on the real fixture component against a real Redis and Postgres
//! (started by `scripts/services.sh`, addresses in `.data/test/services.env`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

mod common;

use common::{bare, unique};
use spin_test_host::client::HttpClient;
use spin_test_host::{App, AppConfig, RunningServer};

struct Services {
    redis_port: String,
    pg_port: String,
    pg_url: String,
}

fn services() -> Services {
    let map = common::services();
    Services {
        redis_port: map["REDIS_PORT"].clone(),
        pg_port: map["PG_PORT"].clone(),
        pg_url: map["FLASHCLAIM_PG_URL"].clone(),
    }
}

fn manifest() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixture/spin.toml")
}

fn fixture_env(extra: &[(&str, &str)]) -> HashMap<String, String> {
    let s = services();
    let mut env: HashMap<String, String> = [
        (
            "SPIN_VARIABLE_REDIS_ADDRESS",
            format!("redis://127.0.0.1:{}", s.redis_port),
        ),
        ("SPIN_VARIABLE_REDIS_PORT", s.redis_port.clone()),
        ("SPIN_VARIABLE_PG_ADDRESS", s.pg_url.clone()),
        ("SPIN_VARIABLE_PG_PORT", s.pg_port.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    for (k, v) in extra {
        env.insert(k.to_string(), v.to_string());
    }
    env
}

async fn start(extra: &[(&str, &str)]) -> (Arc<App>, RunningServer, HttpClient) {
    let app = App::load(AppConfig {
        manifest: manifest(),
        env: fixture_env(extra),
        process_env: false,
        ..AppConfig::default()
    })
    .await
    .expect("fixture app loads");
    let server = spin_test_host::server::start(app.clone(), "127.0.0.1:0")
        .await
        .unwrap();
    let client = HttpClient::new(server.base_url());
    (app, server, client)
}

async fn redis() -> redis::aio::MultiplexedConnection {
    redis::Client::open(format!("redis://127.0.0.1:{}", services().redis_port))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn routes_follow_the_manifest_with_exact_before_wildcard() {
    let (_app, _server, client) = start(&[]).await;
    let exact = client.get("/hello").await.unwrap();
    assert_eq!(
        (exact.status, exact.text()),
        (200, "hello from exact".into())
    );
    let wildcard = client.get("/hello/again").await.unwrap();
    assert_eq!(
        wildcard.status, 404,
        "the wildcard component answers its own 404"
    );
    assert_eq!(wildcard.text(), "fixture: no such route");
    let echo = client
        .send("POST", "/echo", &[], "body bytes")
        .await
        .unwrap();
    assert_eq!((echo.status, echo.text()), (200, "body bytes".into()));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unrouted_path_is_404_from_the_host() {
    let dir = tempdir();
    let fixture = manifest().canonicalize().unwrap();
    let text = std::fs::read_to_string(&fixture)
        .unwrap()
        .replace("route = \"/...\"", "route = \"/only/...\"")
        .replace(
            "../../target",
            &format!("{}/../../target", fixture.parent().unwrap().display()),
        );
    let path = dir.join("spin.toml");
    std::fs::write(&path, text).unwrap();
    let app = App::load(AppConfig {
        manifest: path,
        env: fixture_env(&[]),
        process_env: false,
        ..AppConfig::default()
    })
    .await
    .unwrap();
    let server = spin_test_host::server::start(app, "127.0.0.1:0")
        .await
        .unwrap();
    let client = HttpClient::new(server.base_url());
    let unrouted = client.get("/elsewhere").await.unwrap();
    assert_eq!(
        (unrouted.status, unrouted.text()),
        (404, "Not Found".into())
    );
    let routed = client.get("/only/anything").await.unwrap();
    assert_eq!(
        routed.text(),
        "fixture: no such route",
        "reached the component"
    );
    assert_eq!(client.get("/hello").await.unwrap().status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn spin_headers_are_set_as_spin_sets_them() {
    let (_app, server, client) = start(&[]).await;
    let r = client.get("/headers?x=1").await.unwrap();
    let text = r.text();
    let header = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("{name} missing in:\n{text}"))
            .to_string()
    };
    assert_eq!(
        header("spin-full-url"),
        format!("{}/headers?x=1", server.base_url())
    );
    assert_eq!(header("spin-path-info"), "/headers");
    assert_eq!(header("spin-matched-route"), "/...");
    assert_eq!(header("spin-raw-component-route"), "/...");
    assert_eq!(header("spin-component-route"), "");
    assert_eq!(header("spin-base-path"), "/");
    assert!(header("spin-client-addr").starts_with("127.0.0.1:"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trap_is_a_500_for_that_request_only() {
    let (_app, _server, client) = start(&[]).await;
    let trapped = client.get("/trap").await.unwrap();
    assert_eq!(trapped.status, 500);
    let fine = client.get("/hello").await.unwrap();
    assert_eq!(fine.status, 200);
    let (a, b) = tokio::join!(client.get("/trap"), client.get("/vars/whoami"));
    assert_eq!(a.unwrap().status, 500);
    let b = b.unwrap();
    assert_eq!((b.status, b.text()), (200, "fixture".into()));
}

#[tokio::test(flavor = "multi_thread")]
async fn variables_resolve_default_then_environment_through_component_templates() {
    let (_app, _server, client) = start(&[]).await;
    let get = |name: &'static str| {
        let client = client.clone();
        async move {
            let r = client.get(&format!("/vars/{name}")).await.unwrap();
            (r.status, bare(&r.text()))
        }
    };
    assert_eq!(get("greeting").await.1, "from-default");
    let framed = get("framed").await.1;
    assert_eq!(framed, format!("<from-default|{}>", services().redis_port));
    let (status, undefined) = get("not_declared").await;
    assert_eq!(status, 404);
    assert!(undefined.starts_with("Undefined"), "{undefined}");
    let (_, invalid) = get("Bad-Name").await;
    assert!(invalid.starts_with("InvalidName"), "{invalid}");

    let (_app, _server, client) = start(&[("SPIN_VARIABLE_GREETING", "from-env")]).await;
    let r = client.get("/vars/framed").await.unwrap();
    assert!(r.text().starts_with("<from-env|"), "{}", r.text());
    // The other component declares no `greeting`: variables are per component.
    let (_app, _server, client) = start(&[]).await;
    assert_eq!(
        client.get("/hello").await.unwrap().text(),
        "hello from exact"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_required_variable_without_a_value_fails_start_up() {
    let mut env = fixture_env(&[]);
    env.remove("SPIN_VARIABLE_PG_ADDRESS");
    let err = App::load(AppConfig {
        manifest: manifest(),
        env,
        process_env: false,
        ..AppConfig::default()
    })
    .await
    .err()
    .expect("must not start");
    assert!(format!("{err:#}").contains("pg_address"), "{err:#}");
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_basic_commands_behave_as_in_spin() {
    let (_app, _server, client) = start(&[]).await;
    let r = client
        .get(&format!("/redis/basic?prefix={}", unique("basic:")))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let text = bare(&r.text());
    let expected = [
        "set=Ok(())",
        "get=Ok(Some([118, 49]))",
        "get_missing=Ok(None)",
        "incr=Ok(1)",
        "incr=Ok(2)",
        "incr_wrong_type=Err(",
        "sadd=Ok(2)",
        "smembers=[\"a\", \"b\"]",
        "srem=Ok(1)",
        "del=Ok(2)",
        "publish=Ok(())",
    ];
    for (line, want) in text.lines().zip(expected) {
        assert!(
            line.starts_with(want),
            "`{line}` should start with `{want}`"
        );
    }
    assert_eq!(text.lines().count(), expected.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_execute_flattens_nested_replies_and_surfaces_errors_as_other() {
    let (_app, _server, client) = start(&[]).await;
    let r = client.get("/redis/eval").await.unwrap();
    let text = bare(&r.text());
    let line = |p: &str| text.lines().find(|l| l.starts_with(p)).unwrap().to_string();
    // Lua {1, 'x', {2, {'y', 'z'}}, false, status 'FINE', -7}: flattened depth first,
    // with Lua false arriving as nil and the status reply as a status.
    assert_eq!(
        line("nested="),
        "nested=Ok([Int64(1), Binary([120]), Int64(2), Binary([121]), Binary([122]), Nil, \
         Status(\"FINE\"), Int64(-7)])"
    );
    assert!(line("error=").starts_with("error=Err(Other("), "{text}");
    assert!(line("error=").contains("boom"), "{text}");
    // Spin renders Redis errors with the redis crate's Display: NOSCRIPT arrives as
    // "NoScriptError: No matching script", which components must recognise.
    assert!(line("noscript=").contains("NoScriptError"), "{text}");
    assert_eq!(line("status="), "status=Ok([Status(\"OK\")])");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_denied_outbound_address_fails_the_open() {
    let (_app, _server, client) = start(&[]).await;
    let port = services().redis_port;
    let allowed = client
        .get(&format!("/redis/open?addr=redis://127.0.0.1:{port}"))
        .await
        .unwrap();
    assert_eq!(allowed.text(), "opened");
    for addr in [
        "redis://127.0.0.1:1".to_string(),
        format!("redis://localhost:{port}"),
    ] {
        let denied = client
            .get(&format!("/redis/open?addr={addr}"))
            .await
            .unwrap();
        assert_eq!(
            (denied.status, bare(&denied.text())),
            (502, "InvalidAddress".into()),
            "{addr}"
        );
    }
    let pg_denied = client
        .get("/pg/open?addr=postgres://postgres@127.0.0.1:1/x")
        .await
        .unwrap();
    assert!(
        pg_denied.text().contains("not permitted"),
        "{}",
        pg_denied.text()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_round_trips_every_supported_type_and_null() {
    let (_app, _server, client) = start(&[]).await;
    let r = client.get("/pg/roundtrip").await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    common::assert_pg_roundtrip(&bare(&r.text()));
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_errors_map_to_the_wit_variants() {
    let (_app, _server, client) = start(&[]).await;
    let text = bare(&client.get("/pg/error").await.unwrap().text());
    assert!(text.starts_with("QueryFailed(DbError(DbError {"), "{text}");
    assert!(text.contains("code: \"42P01\""), "{text}");
    let down = client
        .get("/pg/open?addr=postgres://postgres@127.0.0.1:1/x")
        .await
        .unwrap();
    assert_eq!(down.status, 502);
}

async fn cron_ticks(prefix: &str) -> (i64, u64) {
    let mut r = redis().await;
    let ticks: Option<i64> = redis::cmd("GET")
        .arg(format!("{prefix}:ticks"))
        .query_async(&mut r)
        .await
        .unwrap();
    let last: Option<u64> = redis::cmd("GET")
        .arg(format!("{prefix}:last"))
        .query_async(&mut r)
        .await
        .unwrap();
    (ticks.unwrap_or(0), last.unwrap_or(0))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cron_tick_can_be_fired_synchronously() {
    let prefix = unique("cron-sync:");
    let (app, _server, _client) = start(&[("SPIN_VARIABLE_CRON_PREFIX", &prefix)]).await;
    assert_eq!(cron_ticks(&prefix).await.0, 0);
    assert_eq!(app.fire_cron("fixture").await.unwrap(), Ok(()));
    assert_eq!(
        cron_ticks(&prefix).await.0,
        1,
        "the tick ran before fire_cron returned"
    );

    let (app, _server, _client) = start(&[("SPIN_VARIABLE_CRON_FAIL", "yes")]).await;
    let failed = app.fire_cron("fixture").await.unwrap();
    assert!(failed.unwrap_err().contains("asked to fail"));
    assert!(
        app.fire_cron("fixture-exact").await.is_ok(),
        "same wasm, same export"
    );
    assert!(app.fire_cron("nope").await.is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cron_scheduler_follows_the_expression() {
    let prefix = unique("cron-sched:");
    let (app, _server, _client) = start(&[("SPIN_VARIABLE_CRON_PREFIX", &prefix)]).await;
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let schedulers = app.spawn_cron_schedulers();
    tokio::time::sleep(std::time::Duration::from_millis(3500)).await;
    for s in schedulers {
        s.abort();
    }
    let (ticks, last) = cron_ticks(&prefix).await;
    assert!(
        (2..=4).contains(&ticks),
        "every second for 3.5 s: {ticks} ticks"
    );
    assert!(last >= started, "the tick carries the trigger's timestamp");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_manifest_error_names_the_field_at_start_up() {
    let dir = tempdir();
    let text = std::fs::read_to_string(manifest()).unwrap().replace(
        "cron_expression = \"* * * * * *\"",
        "cron_expression = \"* * *\"",
    );
    let path = dir.join("spin.toml");
    std::fs::write(&path, text).unwrap();
    let err = App::load(AppConfig {
        manifest: path,
        env: fixture_env(&[]),
        process_env: false,
        ..AppConfig::default()
    })
    .await
    .err()
    .expect("must not start");
    assert!(
        format!("{err:#}").contains("trigger.cron[0].cron_expression"),
        "{err:#}"
    );
}

fn tempdir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "spin-test-host-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread")]
async fn the_binary_serves_a_manifest_on_an_address() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_spin-test-host"))
        .args([
            "--manifest",
            manifest().to_str().unwrap(),
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--no-cron",
        ])
        .envs(fixture_env(&[]))
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let client = HttpClient::new(format!("http://127.0.0.1:{port}"));
    let mut answer = None;
    for _ in 0..100 {
        if let Ok(r) = client.get("/hello").await {
            answer = Some(r);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    child.kill().await.unwrap();
    let r = answer.expect("the binary answered within 10 s");
    assert_eq!((r.status, r.text()), (200, "hello from exact".into()));
}

#[tokio::test(flavor = "multi_thread")]
async fn outbound_http_is_denied_as_for_a_component_without_http_hosts() {
    let (_app, _server, client) = start(&[]).await;
    let r = client.get("/http/out").await.unwrap();
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.text().contains("HttpRequestDenied"), "{}", r.text());
}

/// Spin 4.0.x never returns from a query with no row (spin#3671). The host answers it with
/// an error naming the bug and from then on refuses the database it ran on, so a component
/// that ignores the error (or has already streamed its 200) still fails its test.
#[tokio::test(flavor = "multi_thread")]
async fn a_postgres_query_with_zero_rows_is_refused_and_its_database_marked() {
    let (_app, _server, client) = start(&[]).await;
    let path = format!(
        "/pg/zero-rows?addr={}",
        common::zero_rows_address(&services().pg_url)
    );
    let first = client.get(&path).await.unwrap();
    let again = client.get(&path).await.unwrap();
    common::assert_zero_rows_refused(
        "fixture",
        (first.status, first.text()),
        (again.status, again.text()),
    );
    let other = client.get("/pg/roundtrip").await.unwrap();
    assert!(
        other.text().contains("null_param=Ok("),
        "other addresses work as before: {}",
        other.text()
    );
}
