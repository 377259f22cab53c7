//! Abuse resistance end to end (issue 13): the client's address (forwarded headers believed
//! only from trusted proxies), accounts per address, and failed logins throttled before any
//! password is hashed. Runs on the test host, and on real Spin with
//! FLASHCLAIM_E2E_RUNTIME=spin.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use flashclaim_core::login;
use flashclaim_tests::{problem, Backend, TestApp};
use spin_test_host::client::Response;

const PASSWORD: &str = "correct horse battery";

/// A JSON POST with extra headers (the shared client's time limit applies).
async fn post_json(app: &TestApp, path: &str, headers: &[(&str, &str)], body: String) -> Response {
    let mut h = vec![("content-type", "application/json")];
    h.extend_from_slice(headers);
    app.client
        .send("POST", path, &h, body)
        .await
        .unwrap_or_else(|e| panic!("POST {path} answers: {e}"))
}

async fn register(app: &TestApp, name: &str, headers: &[(&str, &str)]) -> Response {
    let body = format!(r#"{{"username":"{name}","password":"{PASSWORD}"}}"#);
    post_json(app, "/api/users", headers, body).await
}

async fn log_in(app: &TestApp, name: &str, password: &str, headers: &[(&str, &str)]) -> Response {
    let body = format!(r#"{{"username":"{name}","password":"{password}"}}"#);
    post_json(app, "/api/sessions", headers, body).await
}

/// Whether the manifest under test logs in with the WASIp3 build (which holds refusals).
fn sessions_is_wasip3() -> bool {
    let manifest: toml::Value =
        toml::from_str(&std::fs::read_to_string(flashclaim_tests::manifest()).unwrap()).unwrap();
    manifest["component"]["sessions"]["source"]
        .as_str()
        .is_some_and(|s| s.ends_with("_p3.wasm"))
}

fn retry_after(r: &Response) -> u64 {
    r.header("retry-after")
        .unwrap_or_else(|| panic!("429 without Retry-After: {}", r.text()))
        .parse()
        .expect("Retry-After in seconds")
}

/// The name of the threads of the runtime that the CPU-measuring test runs on. On the test
/// host the app under test runs in this process, on the threads of the runtime that started
/// it; the other tests of this file run at the same time on runtimes of their own, and
/// counting the whole process counted their password hashes too.
const MEASURED_RUNTIME: &str = "measured-rt";

/// CPU time (ms) of the server: on the test host, the threads of [`MEASURED_RUNTIME`] (the
/// host serving the app, and the test's own client, whose share is small and the same for
/// both kinds of request); on Spin, every process of Spin's process group.
fn server_cpu_ms(app: &TestApp) -> f64 {
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let fields = |stat: &str| -> Vec<String> {
        // The command name may hold spaces; fields after it are plain.
        let rest = &stat[stat.rfind(')').map_or(0, |i| i + 2)..];
        rest.split_whitespace().map(str::to_string).collect()
    };
    let cpu = |f: &[String]| {
        (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / tick * 1000.0
    };
    match &app.backend {
        Backend::Host { .. } => {
            let threads: Vec<i32> = std::fs::read_dir("/proc/self/task")
                .unwrap()
                .filter_map(|e| {
                    let e = e.ok()?;
                    let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
                    (comm.trim_end() == MEASURED_RUNTIME).then_some(())?;
                    e.file_name().to_str()?.parse().ok()
                })
                .collect();
            assert!(
                !threads.is_empty(),
                "the test runs on the threads of `{MEASURED_RUNTIME}`"
            );
            threads.into_iter().map(thread_cpu_ms).sum()
        }
        Backend::Spin(spin) => {
            let group = spin.pid().to_string();
            std::fs::read_dir("/proc")
                .unwrap()
                .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("stat")).ok())
                .map(|s| fields(&s))
                .filter(|f| f.len() > 12 && f[2] == group)
                .map(|f| cpu(&f))
                .sum()
        }
    }
}

/// CPU time (ms) of one thread of this process, in nanoseconds where /proc counts 10 ms
/// ticks: Linux's CPU clock of a thread id (`MAKE_THREAD_CPUCLOCK(tid, CPUCLOCK_SCHED)`).
/// A thread gone since it was listed counts nothing.
fn thread_cpu_ms(tid: i32) -> f64 {
    let clock = (!tid << 3) | 6;
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    if unsafe { libc::clock_gettime(clock, &mut t) } != 0 {
        return 0.0;
    }
    t.tv_sec as f64 * 1000.0 + t.tv_nsec as f64 / 1e6
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forwarded_address_from_an_untrusted_peer_is_ignored() {
    let app = TestApp::start_with(&[("SPIN_VARIABLE_REGISTER_RATE_LIMIT", "3/60000")]).await;
    for (i, forged) in ["198.51.100.1", "198.51.100.2", "198.51.100.3"]
        .iter()
        .enumerate()
    {
        let r = register(&app, &format!("forger{i}"), &[("x-forwarded-for", forged)]).await;
        assert_eq!(r.status, 201, "{}", r.text());
    }
    // A fourth "address" is still the same peer: the forged headers counted for nothing.
    let r = register(
        &app,
        "forger3",
        &[
            ("x-forwarded-for", "198.51.100.4"),
            ("forwarded", "for=198.51.100.4"),
        ],
    )
    .await;
    problem(&r, 429, "rate_limited");
    assert!(
        (1..=60).contains(&retry_after(&r)),
        "{:?}",
        r.header("retry-after")
    );
    let n = app
        .count("SELECT count(DISTINCT created_addr) FROM users")
        .await;
    assert_eq!(n, 1, "every account was counted under the one real peer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_trusted_proxy_names_the_client_and_each_client_has_its_own_limit() {
    let app = TestApp::start_with(&[
        ("SPIN_VARIABLE_REGISTER_RATE_LIMIT", "2/60000"),
        ("SPIN_VARIABLE_TRUSTED_PROXIES", "127.0.0.0/8, ::1/128"),
    ])
    .await;
    // The client wrote a left part itself; the proxy appended what it saw.
    let via = |client: &'static str| [("x-forwarded-for", client)];
    for i in 0..2 {
        let r = register(&app, &format!("first{i}"), &via("1.1.1.1, 198.51.100.1")).await;
        assert_eq!(r.status, 201, "{}", r.text());
    }
    problem(
        &register(&app, "first2", &via("9.9.9.9, 198.51.100.1")).await,
        429,
        "rate_limited",
    );
    let r = register(&app, "second0", &via("198.51.100.2")).await;
    assert_eq!(
        r.status,
        201,
        "another client behind the proxy: {}",
        r.text()
    );
    // IPv6 clients are counted per /64: another address in the same /64 is the same client.
    for (i, v6) in ["2001:db8:7:1::a", "2001:db8:7:1::b"].iter().enumerate() {
        let r = register(
            &app,
            &format!("six{i}"),
            &[("forwarded", &format!("for=\"[{v6}]\""))],
        )
        .await;
        assert_eq!(r.status, 201, "{}", r.text());
    }
    problem(
        &register(
            &app,
            "six2",
            &[("forwarded", "for=\"[2001:db8:7:1:ffff::1]:443\"")],
        )
        .await,
        429,
        "rate_limited",
    );
    let r = register(&app, "six3", &[("forwarded", "for=\"[2001:db8:7:2::1]\"")]).await;
    assert_eq!(
        r.status,
        201,
        "the next /64 is another client: {}",
        r.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_registrations_from_one_address_are_cut_at_the_limit() {
    let app =
        Arc::new(TestApp::start_with(&[("SPIN_VARIABLE_REGISTER_RATE_LIMIT", "20/3600000")]).await);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..32 {
        let (app, next) = (app.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= 1_000 {
                    return statuses;
                }
                let r = register(&app, &format!("farm{i:04}"), &[]).await;
                if r.status == 429 {
                    retry_after(&r);
                }
                statuses.push(r.status);
            }
        }));
    }
    let mut created = 0;
    let mut refused = 0;
    for w in workers {
        for s in w.await.unwrap() {
            match s {
                201 => created += 1,
                429 => refused += 1,
                other => panic!("a registration answered {other}"),
            }
        }
    }
    assert_eq!((created, refused), (20, 980));
    let n = app.count("SELECT count(*) FROM users").await;
    assert_eq!(
        n, 20,
        "exactly the limit, however many raced for the last place"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_guesses_at_once_gets_exactly_the_free_failures_hashed() {
    // Counted before the hash, not after it: 64 guesses in flight together cannot all read
    // "no failures yet" and all be hashed.
    let app =
        Arc::new(TestApp::start_with(&[("SPIN_VARIABLE_LOGIN_THROTTLE_PER_USER", "5")]).await);
    assert_eq!(register(&app, "victim", &[]).await.status, 201);
    let guesses: Vec<_> = (0..64)
        .map(|i| {
            let app = app.clone();
            tokio::spawn(async move { log_in(&app, "victim", &format!("burst-{i:03}"), &[]).await })
        })
        .collect();
    let mut statuses = BTreeMap::new();
    for guess in guesses {
        let r = guess.await.unwrap();
        match r.status {
            401 => problem(&r, 401, "unauthenticated"),
            429 => problem(&r, 429, "rate_limited"),
            other => panic!("a wrong password answered {other}: {}", r.text()),
        }
        *statuses.entry(r.status).or_insert(0) += 1;
    }
    assert_eq!(statuses, BTreeMap::from([(401, 5), (429, 59)]));
}

#[test]
fn a_password_guessing_run_is_throttled_and_costs_no_hash_past_the_threshold() {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .thread_name(MEASURED_RUNTIME)
        .enable_all()
        .build()
        .unwrap()
        .block_on(password_guessing_run())
}

async fn password_guessing_run() {
    let app = TestApp::start_with(&[("SPIN_VARIABLE_LOGIN_THROTTLE_PER_USER", "5")]).await;
    assert_eq!(register(&app, "victim", &[]).await.status, 201);

    let before = server_cpu_ms(&app);
    for i in 0..5 {
        let r = log_in(&app, "victim", &format!("guess-{i:04}"), &[]).await;
        problem(&r, 401, "unauthenticated");
    }
    let hashed = (server_cpu_ms(&app) - before) / 5.0;

    // Keep guessing, waiting out each wait, until the wait is long enough (8 s) that 30
    // throttled attempts surely fall inside it on a busy machine.
    let mut failures = 5;
    loop {
        let r = log_in(&app, "victim", &format!("guess-{failures:04}"), &[]).await;
        match r.status {
            401 => failures += 1,
            429 if retry_after(&r) >= 8 => break,
            429 => tokio::time::sleep(Duration::from_secs(retry_after(&r))).await,
            other => panic!("a wrong password answered {other}: {}", r.text()),
        }
        assert!(failures <= 8, "the wait grows to 8 s by the 8th failure");
    }

    // 30 at once: each refusal is held for a second (WASIp3 build), and one after another
    // they would outlast the wait.
    let app = Arc::new(app);
    let before = server_cpu_ms(&app);
    let guesses = (0..30).map(|i| {
        let app = app.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let r = log_in(&app, "victim", &format!("guess-x{i:04}"), &[]).await;
            (r, started.elapsed())
        })
    });
    let mut waits = Vec::new();
    for guess in guesses.collect::<Vec<_>>() {
        let (r, took) = guess.await.unwrap();
        problem(&r, 429, "rate_limited");
        waits.push(retry_after(&r));
        if sessions_is_wasip3() {
            assert!(
                took >= Duration::from_millis(login::REFUSAL_HOLD_MS),
                "a refused guess is held {} ms before its answer; this one took {took:?}",
                login::REFUSAL_HOLD_MS
            );
        }
    }
    assert_eq!(waits.len(), 30);
    let throttled = (server_cpu_ms(&app) - before) / 30.0;
    eprintln!("CPU per login: {hashed:.1} ms with a hash, {throttled:.2} ms throttled");
    assert!(
        throttled * 10.0 < hashed,
        "a throttled login must not hash: {throttled:.2} ms vs {hashed:.1} ms per hashed login"
    );
    assert!(waits.iter().all(|w| (1..=8).contains(w)), "{waits:?}");

    // The right password is refused too while the wait lasts (the guesser cannot tell).
    problem(
        &log_in(&app, "victim", PASSWORD, &[]).await,
        429,
        "rate_limited",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_back_off_grows_with_each_failure_and_ends() {
    let app = TestApp::start_with(&[
        ("SPIN_VARIABLE_LOGIN_THROTTLE_PER_USER", "2"),
        ("SPIN_VARIABLE_LOGIN_THROTTLE_PER_ADDRESS", "0"),
    ])
    .await;
    assert_eq!(register(&app, "slowpoke", &[]).await.status, 201);
    for i in 0..2 {
        problem(
            &log_in(&app, "slowpoke", &format!("wrong-{i}xx"), &[]).await,
            401,
            "unauthenticated",
        );
    }
    // Two failures: the next attempt waits 1 s; after it, one more failure makes it 2 s.
    let r = log_in(&app, "slowpoke", "wrong-2xx", &[]).await;
    problem(&r, 429, "rate_limited");
    assert_eq!(retry_after(&r), 1);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    problem(
        &log_in(&app, "slowpoke", "wrong-3xx", &[]).await,
        401,
        "unauthenticated",
    );
    let r = log_in(&app, "slowpoke", PASSWORD, &[]).await;
    problem(&r, 429, "rate_limited");
    assert_eq!(retry_after(&r), 2, "three failures: twice the first wait");
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let r = log_in(&app, "slowpoke", PASSWORD, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // A success forgets the username's failures.
    problem(
        &log_in(&app, "slowpoke", "wrong-4xx", &[]).await,
        401,
        "unauthenticated",
    );
    problem(
        &log_in(&app, "slowpoke", "wrong-5xx", &[]).await,
        401,
        "unauthenticated",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_address_guessing_across_many_accounts_is_throttled() {
    let app = TestApp::start_with(&[
        ("SPIN_VARIABLE_LOGIN_THROTTLE_PER_USER", "100"),
        ("SPIN_VARIABLE_LOGIN_THROTTLE_PER_ADDRESS", "3"),
        ("SPIN_VARIABLE_TRUSTED_PROXIES", "127.0.0.1/32"),
    ])
    .await;
    let from = |a: &'static str| [("x-forwarded-for", a)];
    for i in 0..3 {
        let r = log_in(
            &app,
            &format!("someone{i}"),
            "password1",
            &from("203.0.113.5"),
        )
        .await;
        problem(&r, 401, "unauthenticated");
    }
    let r = log_in(&app, "someone9", "password1", &from("203.0.113.5")).await;
    problem(&r, 429, "rate_limited");
    let r = log_in(&app, "someone9", "password1", &from("203.0.113.6")).await;
    problem(&r, 401, "unauthenticated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wrong_password_and_an_unknown_user_are_answered_alike() {
    let app = TestApp::start().await;
    assert_eq!(register(&app, "known", &[]).await.status, 201);
    let wrong = log_in(&app, "known", "not the password", &[]).await;
    let unknown = log_in(&app, "unknown", "not the password", &[]).await;
    problem(&wrong, 401, "unauthenticated");
    assert_eq!(wrong.status, unknown.status);
    assert_eq!(wrong.text(), unknown.text());
    // Both were counted (so neither answer nor counter tells who exists), in Redis.
    let mut redis = app.redis().await;
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg("fc:login:{fc:metrics}:user:*")
        .query_async(&mut redis)
        .await
        .unwrap();
    keys.sort();
    assert_eq!(
        keys,
        vec![
            "fc:login:{fc:metrics}:user:known",
            "fc:login:{fc:metrics}:user:unknown"
        ]
    );
}

/// A stand-in for hCaptcha's / Turnstile's `siteverify`: a real HTTP server on a local
/// port that passes the token `human` (when sent with the right secret), fails any other,
/// and records what it was sent. `broken` answers 500 to everything.
struct Verifier {
    url: String,
    origin: String,
    seen: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Verifier {
    async fn start(broken: bool) -> Verifier {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                let log = log.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    // Headers, then as many body bytes as Content-Length says.
                    let body = loop {
                        let n = socket.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let text = String::from_utf8_lossy(&buf).to_string();
                        if let Some(end) = text.find("\r\n\r\n") {
                            let length = text[..end]
                                .lines()
                                .find_map(|l| {
                                    let (k, v) = l.split_once(':')?;
                                    k.eq_ignore_ascii_case("content-length")
                                        .then(|| v.trim().parse::<usize>().ok())?
                                })
                                .unwrap_or(0);
                            if buf.len() >= end + 4 + length {
                                break text[end + 4..end + 4 + length].to_string();
                            }
                        }
                    };
                    log.lock().unwrap().push(body.clone());
                    let (status, json) = if broken {
                        ("500 Internal Server Error", r#"{"error":"down"}"#)
                    } else if body == "secret=verifier-secret&response=human" {
                        ("200 OK", r#"{"success":true}"#)
                    } else {
                        (
                            "200 OK",
                            r#"{"success":false,"error-codes":["invalid-input-response"]}"#,
                        )
                    };
                    let reply = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{json}",
                        json.len()
                    );
                    let _ = socket.write_all(reply.as_bytes()).await;
                });
            }
        });
        Verifier {
            url: format!("http://127.0.0.1:{port}/siteverify"),
            origin: format!("http://127.0.0.1:{port}"),
            seen,
        }
    }

    async fn app(&self) -> TestApp {
        TestApp::start_with(&[
            ("SPIN_VARIABLE_CAPTCHA_VERIFY_URL", self.url.as_str()),
            ("SPIN_VARIABLE_CAPTCHA_ORIGIN", self.origin.as_str()),
            ("SPIN_VARIABLE_CAPTCHA_SECRET", "verifier-secret"),
        ])
        .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_a_captcha_verifier_registration_needs_a_token_it_accepts() {
    let verifier = Verifier::start(false).await;
    let app = verifier.app().await;

    problem(
        &register(&app, "nobody1", &[]).await,
        400,
        "captcha_required",
    );
    problem(
        &register(&app, "robot01", &[("captcha-token", "forged")]).await,
        403,
        "captcha_failed",
    );
    let r = register(&app, "person1", &[("captcha-token", "human")]).await;
    assert_eq!(r.status, 201, "{}", r.text());

    let seen = verifier.seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![
            "secret=verifier-secret&response=forged".to_string(),
            "secret=verifier-secret&response=human".to_string(),
        ],
        "a request without a token never reaches the verifier"
    );
    let users = app.count("SELECT count(*) FROM users").await;
    assert_eq!(users, 1, "refused registrations stored nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_captcha_verifier_that_fails_or_is_gone_fails_closed() {
    let broken = Verifier::start(true).await;
    let app = broken.app().await;
    let r = register(&app, "person2", &[("captcha-token", "human")]).await;
    problem(&r, 503, "unavailable");
    assert!(!r.text().contains("verifier-secret"), "{}", r.text());

    // Nothing listens there any more.
    let gone = TestApp::start_with(&[
        (
            "SPIN_VARIABLE_CAPTCHA_VERIFY_URL",
            "http://127.0.0.1:9/siteverify",
        ),
        ("SPIN_VARIABLE_CAPTCHA_ORIGIN", "http://127.0.0.1:9"),
    ])
    .await;
    problem(
        &register(&gone, "person3", &[("captcha-token", "human")]).await,
        503,
        "unavailable",
    );
}

/// A registered user's session token, logging in from `from` (a trusted proxy's
/// X-Forwarded-For).
async fn session(app: &TestApp, name: &str, from: &str) -> String {
    let r = register(app, name, &[("x-forwarded-for", from)]).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let r = log_in(app, name, PASSWORD, &[("x-forwarded-for", from)]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    format!("Bearer {}", r.json()["token"].as_str().unwrap())
}

async fn claim_from(app: &TestApp, id: i64, token: &str, from: &str) -> Response {
    let headers = [("authorization", token), ("x-forwarded-for", from)];
    post_json(
        app,
        &format!("/api/activities/{id}/claims"),
        &headers,
        "{}".into(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn claims_from_one_address_get_a_burst_and_then_wait() {
    let app = TestApp::start_with(&[
        ("SPIN_VARIABLE_CLAIM_RATE_LIMIT_PER_ADDRESS", "1/60000/3"),
        ("SPIN_VARIABLE_TRUSTED_PROXIES", "127.0.0.1/32"),
        ("SPIN_VARIABLE_REGISTER_RATE_LIMIT", "0"),
    ])
    .await;
    let id = app.create_activity(100, "").await;
    assert_eq!(app.publish(id).await.status, 200);
    let mut tokens = Vec::new();
    for i in 0..5 {
        tokens.push(session(&app, &format!("burst{i}"), "203.0.113.50").await);
    }
    for token in &tokens[..3] {
        let r = claim_from(&app, id, token, "203.0.113.50").await;
        assert_eq!(r.status, 201, "{}", r.text());
    }
    let r = claim_from(&app, id, &tokens[3], "203.0.113.50").await;
    problem(&r, 429, "rate_limited");
    assert!(
        (1..=60).contains(&retry_after(&r)),
        "{:?}",
        r.header("retry-after")
    );
    // The same user from another address is not held back by the first one's bucket.
    let r = claim_from(&app, id, &tokens[3], "203.0.113.51").await;
    assert_eq!(r.status, 201, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn operators_see_claims_and_accounts_per_address_in_stats_and_export() {
    let app = TestApp::start_with(&[
        ("SPIN_VARIABLE_TRUSTED_PROXIES", "127.0.0.1/32"),
        ("SPIN_VARIABLE_REGISTER_RATE_LIMIT", "0"),
    ])
    .await;
    let id = app.create_activity(100, "").await;
    assert_eq!(app.publish(id).await.status, 200);
    for i in 0..3 {
        let token = session(&app, &format!("farm{i}"), "192.0.2.66").await;
        assert_eq!(claim_from(&app, id, &token, "192.0.2.66").await.status, 201);
    }
    let token = session(&app, "honest", "198.51.100.20").await;
    assert_eq!(
        claim_from(&app, id, &token, "198.51.100.20").await.status,
        201
    );
    app.drain().await;

    let stats = app
        .as_admin("GET", &format!("/admin/activities/{id}/stats"), "")
        .await;
    assert_eq!(stats.status, 200, "{}", stats.text());
    let addresses = stats.json()["client_addresses"].clone();
    let list = addresses.as_array().expect("client_addresses is a list");
    assert_eq!(list.len(), 2, "{addresses}");
    assert_eq!(
        (
            &list[0]["claims"],
            &list[0]["users"],
            &list[0]["accounts_created"]
        ),
        (
            &serde_json::json!(3),
            &serde_json::json!(3),
            &serde_json::json!(3)
        ),
        "{addresses}"
    );
    assert_eq!(list[1]["claims"], 1, "{addresses}");
    let farm = list[0]["client_addr"].as_str().unwrap().to_string();
    assert!(
        !stats.text().contains("192.0.2.66"),
        "addresses are stored hashed"
    );

    let csv = app
        .as_admin("GET", &format!("/admin/activities/{id}/claims.csv"), "")
        .await
        .text();
    let mut lines = csv.lines();
    assert!(lines.next().unwrap().ends_with(",client_addr"), "{csv}");
    let from_farm = lines.filter(|l| l.ends_with(&format!(",{farm}"))).count();
    assert_eq!(from_farm, 3, "{csv}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_a_captcha_verifier_a_claim_pass_needs_a_token_it_accepts() {
    let verifier = Verifier::start(false).await;
    let app = verifier.app().await;
    let id = app.create_activity(10, r#","require_pass":true"#).await;
    assert_eq!(app.publish(id).await.status, 200);
    let pass = |token: Option<&'static str>| {
        let app = &app;
        async move {
            let auth = flashclaim_tests::bearer(&flashclaim_tests::token("passer", None));
            let mut headers = vec![("authorization", auth.as_str())];
            if let Some(t) = token {
                headers.push(("captcha-token", t));
            }
            post_json(
                app,
                &format!("/api/activities/{id}/passes"),
                &headers,
                String::new(),
            )
            .await
        }
    };
    problem(&pass(None).await, 400, "captcha_required");
    problem(&pass(Some("forged")).await, 403, "captcha_failed");
    let r = pass(Some("human")).await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(verifier.seen.lock().unwrap().len(), 2);
}
