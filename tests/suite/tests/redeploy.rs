//! A redeploy in the middle of a sale: the previous release (tests/previous-release, built
//! by scripts/previous-release.sh and named by `FLASHCLAIM_PREVIOUS_MANIFEST`) and the
//! current build serve side by side on the same Redis and Postgres, the test sending each
//! request to one or the other in turn as a round-robin balancer would, during a claim storm
//! with Idempotency-Keys. Mid-storm the old one is stopped with SIGTERM, as a rollout stops
//! an old pod. A request the stop cuts (no answer) is retried with its key on the new one,
//! and so is every `503` whose outcome is unknown, until it resolves. Then: every answer
//! was a clean 201, 409 or 503; every acknowledged claim is in Postgres exactly once; nobody
//! holds more than the limit; the stock adds up exactly; no code was given twice.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flashclaim_tests::*;
use spin_test_host::client::HttpClient;
use tokio::sync::Semaphore;

const STOCK: i64 = 400;
const LIMIT: i64 = 2;
const USERS: usize = 400;
/// More than the limit: some answers are `limit_reached`.
const ATTEMPTS_PER_USER: usize = 3;
const CONCURRENCY: usize = 32;
/// The old release is stopped once this many attempts have started.
const STOP_AFTER: usize = 400;

/// The previous release, as a process of its own so that it can be stopped with SIGTERM:
/// `spin up` on real Spin (naming the HTTP components, as on a Spin without the cron
/// plugin), else the test host's binary, which runs its cron drain every second as the old
/// release's own scheduler would.
enum OldRelease {
    Host(std::process::Child, String),
    Spin(SpinProcess),
}

impl OldRelease {
    async fn start(manifest: &std::path::Path, env: &HashMap<String, String>) -> OldRelease {
        if Runtime::from_env() != Runtime::TestHost {
            return OldRelease::Spin(SpinProcess::start_from(Runtime::Spin, manifest, env).await);
        }
        let port = free_port();
        let binary = root().join("target/debug/spin-test-host");
        let mut cmd = std::process::Command::new(&binary);
        cmd.arg("--manifest")
            .arg(manifest)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null());
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("SPIN_VARIABLE_") {
                cmd.env_remove(k);
            }
        }
        cmd.envs(env);
        // A test binary killed by a time-out leaves no old release behind.
        use std::os::unix::process::CommandExt;
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {} (cargo build --bins): {e}", binary.display()));
        let base_url = format!("http://127.0.0.1:{port}");
        let probe = HttpClient::new(base_url.clone()).with_timeout(Duration::from_secs(2));
        let deadline = Instant::now() + Duration::from_secs(120);
        while probe.get("/healthz").await.is_err() {
            assert!(
                Instant::now() < deadline,
                "the previous release did not answer on {base_url} within 120 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        OldRelease::Host(child, base_url)
    }

    fn base_url(&self) -> &str {
        match self {
            OldRelease::Host(_, url) => url,
            OldRelease::Spin(spin) => &spin.base_url,
        }
    }

    /// SIGTERM, as a rollout stops an old pod; what it was serving is cut.
    fn stop(&mut self) {
        let pid = match self {
            OldRelease::Host(child, _) => child.id(),
            OldRelease::Spin(spin) => spin.pid(),
        };
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    }
}

impl Drop for OldRelease {
    fn drop(&mut self) {
        if let OldRelease::Host(child, _) = self {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn previous_manifest() -> PathBuf {
    let path = std::env::var("FLASHCLAIM_PREVIOUS_MANIFEST").expect(
        "FLASHCLAIM_PREVIOUS_MANIFEST names the previous release's manifest \
         (make test-redeploy builds it with scripts/previous-release.sh)",
    );
    PathBuf::from(path)
}

/// One claim attempt and what became of it.
#[derive(Debug)]
struct Attempt {
    user: String,
    /// Every answer it got, in order: (backend, status or 0 for no answer, body).
    answers: Vec<(&'static str, u16, serde_json::Value)>,
    /// Whether the answer it resolved with was a replay of a claim an earlier, cut try made.
    replayed: bool,
}

impl Attempt {
    fn last(&self) -> &(&'static str, u16, serde_json::Value) {
        self.answers.last().expect("an attempt has an answer")
    }
}

/// Sends one attempt until it resolves (`201` or `409`): first to `first`, and after no
/// answer or a `503` again with the same key to the new release, at most 50 times.
async fn attempt(
    backends: &[(&'static str, HttpClient); 2],
    first: usize,
    id: i64,
    user: String,
    key: String,
) -> Attempt {
    let auth = bearer(&token(&user, None));
    let path = format!("/api/activities/{id}/claims");
    let mut answers = Vec::new();
    let mut replayed = false;
    let mut which = first;
    for _ in 0..50 {
        let (name, client) = &backends[which];
        let headers = [
            ("content-type", "application/json"),
            ("authorization", auth.as_str()),
            ("idempotency-key", key.as_str()),
        ];
        match client.send("POST", &path, &headers, "").await {
            Ok(r) => {
                let body = serde_json::from_slice(&r.body).unwrap_or_default();
                answers.push((*name, r.status, body));
                if r.status == 201 || r.status == 409 {
                    replayed = r.header("idempotent-replayed") == Some("true");
                    break;
                }
            }
            Err(_) => answers.push((*name, 0, serde_json::Value::Null)),
        }
        // The retry goes to the new release: the old one is being rolled away.
        which = 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Attempt {
        user,
        answers,
        replayed,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redeploy_mid_sale_loses_nothing_acknowledged_and_gives_out_the_stock_exactly() {
    let (redis_url, _) = fresh_redis_db().await;
    let pg_url = fresh_pg_db().await;
    // The old release's cron drain may be stopped between reading a batch and
    // acknowledging it; the new one takes such entries over after drain_reclaim_after_ms
    // (30 s by default), here shortened so the final drain below need not wait that long.
    let new = Arc::new(
        TestApp::start_manifest_on_runtime(
            Runtime::from_env(),
            &root().join("spin.toml"),
            &redis_url,
            &pg_url,
            &[("SPIN_VARIABLE_DRAIN_RECLAIM_AFTER_MS", "2000")],
        )
        .await,
    );
    let env = app_env(&redis_url, &pg_url);
    let mut old = OldRelease::start(&previous_manifest(), &env).await;

    // The activity is made and published by the old release, as it would be before the
    // rollout began.
    let old_client = HttpClient::new(old.base_url().to_string());
    let now = flashclaim_core::time::Millis(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64,
    );
    let body = format!(
        r#"{{"name":"Rollout","starts_at":"{}","ends_at":"{}","stock_total":{STOCK},"per_user_limit":{LIMIT}}}"#,
        flashclaim_core::time::Millis(now.0 - 60_000),
        flashclaim_core::time::Millis(now.0 + 3_600_000),
    );
    let admin_headers = [
        ("content-type", "application/json"),
        ("authorization", new.admin.as_str()),
    ];
    let created = old_client
        .send("POST", "/admin/activities", &admin_headers, body)
        .await
        .unwrap();
    assert_eq!(created.status, 201, "{}", created.text());
    let id = created.json()["id"].as_i64().unwrap();
    let published = old_client
        .send(
            "POST",
            &format!("/admin/activities/{id}/publish"),
            &admin_headers,
            "",
        )
        .await
        .unwrap();
    assert_eq!(published.status, 200, "{}", published.text());

    let backends = Arc::new([
        ("old", HttpClient::new(old.base_url().to_string())),
        ("new", new.client.clone()),
    ]);
    let old_stopped = Arc::new(AtomicBool::new(false));
    let started = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(CONCURRENCY));
    let storm_started = Instant::now();

    // The new release's drain runs as the scheduler would call it, all along; the old one
    // drains on its own cron until it is stopped.
    let draining = Arc::new(AtomicBool::new(true));
    let drainer = {
        let (new, draining) = (new.clone(), draining.clone());
        tokio::spawn(async move {
            while draining.load(Ordering::SeqCst) {
                let r = new.send("POST", "/admin/drain", Some(&new.admin), "").await;
                assert_eq!(r.status, 200, "drain: {}", r.text());
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };

    let stop_at = Arc::new(Mutex::new(None::<Duration>));
    let mut tasks = Vec::new();
    for n in 0..USERS * ATTEMPTS_PER_USER {
        let (backends, old_stopped, started, gate) = (
            backends.clone(),
            old_stopped.clone(),
            started.clone(),
            gate.clone(),
        );
        let user = format!("rollout-{}", n % USERS);
        let key = format!("key-{n}");
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await.unwrap();
            started.fetch_add(1, Ordering::SeqCst);
            let first = if old_stopped.load(Ordering::SeqCst) {
                1
            } else {
                n % 2
            };
            attempt(&backends, first, id, user, key).await
        }));
    }
    // The rollout: once STOP_AFTER attempts have started, the old release gets SIGTERM.
    while started.load(Ordering::SeqCst) < STOP_AFTER {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    old.stop();
    old_stopped.store(true, Ordering::SeqCst);
    *stop_at.lock().unwrap() = Some(storm_started.elapsed());

    let mut attempts = Vec::new();
    for task in tasks {
        attempts.push(task.await.unwrap());
    }
    let storm_took = storm_started.elapsed();
    draining.store(false, Ordering::SeqCst);
    drainer.await.unwrap();
    drop(old);

    // Every answer was clean; every attempt resolved.
    let mut by_status: HashMap<(&str, u16), usize> = HashMap::new();
    for a in &attempts {
        for (backend, status, body) in &a.answers {
            *by_status.entry((backend, *status)).or_default() += 1;
            match status {
                201 | 409 => {}
                // A cut request: the old release was stopped while serving it.
                0 => assert_eq!(
                    *backend, "old",
                    "{}: no answer from the new release",
                    a.user
                ),
                503 => assert!(
                    body["claimed"].is_null() || body["claimed"] == false,
                    "a 503 says whether anything was claimed: {body}"
                ),
                other => panic!("{}: answered {other}: {body}", a.user),
            }
        }
        let (_, status, body) = a.last();
        assert!(
            *status == 201 || *status == 409,
            "{}: never resolved: {:?}",
            a.user,
            a.answers
        );
        if *status == 409 {
            let code = body["code"].as_str().unwrap_or_default();
            assert!(
                code == "sold_out" || code == "limit_reached",
                "{}: {body}",
                a.user
            );
        }
    }
    let cut = attempts
        .iter()
        .filter(|a| a.answers.iter().any(|(_, s, _)| *s == 0 || *s == 503))
        .count();
    // A cut request that had claimed before the stop: its retry replays that claim.
    let cut_but_claimed = attempts
        .iter()
        .filter(|a| a.replayed && a.answers.len() > 1)
        .count();

    // Drain to the end through the new release.
    new.drain_to_empty().await;

    // Every acknowledged claim is in Postgres exactly once, and nothing else is.
    let acknowledged: HashSet<String> = attempts
        .iter()
        .filter(|a| a.last().1 == 201)
        .map(|a| a.last().2["claim_id"].as_str().unwrap().to_string())
        .collect();
    let stored = new.claim_ids(id).await;
    let stored_set: HashSet<String> = stored.iter().cloned().collect();
    assert_eq!(stored.len(), stored_set.len(), "a claim stored twice");
    assert_eq!(
        stored_set, acknowledged,
        "Postgres holds exactly the acknowledged claims"
    );
    let tickets = new
        .count(&format!(
            "SELECT count(*) FROM tickets WHERE activity_id = {id}"
        ))
        .await;
    assert_eq!(tickets, STOCK, "the whole stock given out, once");
    assert_eq!(
        new.count(&format!(
            "SELECT count(DISTINCT code) FROM tickets WHERE activity_id = {id}"
        ))
        .await,
        STOCK,
        "no code twice"
    );
    assert_eq!(
        new.count(&format!(
            "SELECT count(*) FROM (SELECT user_id FROM tickets WHERE activity_id = {id} \
             GROUP BY user_id HAVING count(*) > {LIMIT}) o"
        ))
        .await,
        0,
        "nobody above the limit"
    );
    let detail = new.detail(id, None).await.json();
    assert_eq!(detail["stock_left"].as_i64(), Some(0), "{detail}");

    let old_answered = by_status
        .iter()
        .filter(|((b, s), _)| *b == "old" && *s != 0)
        .map(|(_, n)| n)
        .sum::<usize>();
    println!(
        "redeploy: {} attempts by {USERS} users, {CONCURRENCY} in flight, in {:.2} s; old release \
         stopped (SIGTERM) at {:.2} s after {old_answered} answers; {cut} attempts cut or answered \
         503 and retried with their key ({cut_but_claimed} of them had claimed before the cut \
         and got that claim back); {} acknowledged, {} in Postgres, {tickets} tickets of \
         {STOCK}; answers by (release, status): {:?}",
        attempts.len(),
        storm_took.as_secs_f64(),
        stop_at.lock().unwrap().unwrap().as_secs_f64(),
        acknowledged.len(),
        stored_set.len(),
        {
            let mut v: Vec<_> = by_status.into_iter().collect();
            v.sort();
            v
        }
    );
    assert!(old_answered > 0, "the old release served part of the storm");
}
