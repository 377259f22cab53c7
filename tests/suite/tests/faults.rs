//! Faults while users claim, each test from a clean state, each ending with the promise
//! checked: tickets issued = stock taken, nobody above the limit, every acknowledged claim
//! in Postgres exactly once, and the claim log empty after the final drain.
//!
//! The Redis tests kill a private redis-server (SIGKILL) of their own, so they never disturb
//! the shared one; figures are printed for RELIABILITY.md (`--nocapture`).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flashclaim_core::ids::ActivityId;
use flashclaim_core::keys::ActivityKeys;
use flashclaim_tests::{fresh_pg_db, redis_conn, root, TestApp};
use tokio::sync::Semaphore;

/// A redis-server owned by one test: killed with SIGKILL, restarted on the same data dir.
struct PrivateRedis {
    port: u16,
    dir: PathBuf,
    durable: bool,
    child: Option<Child>,
}

impl PrivateRedis {
    async fn start(name: &str, durable: bool) -> PrivateRedis {
        let port = flashclaim_tests::free_port();
        let dir = root().join(format!(".data/faults/{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut redis = PrivateRedis {
            port,
            dir,
            durable,
            child: None,
        };
        redis.spawn().await;
        redis
    }

    async fn spawn(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if self.durable {
            // The documented durable setting: every write is on disk before the reply.
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        }
        self.child = Some(
            cmd.spawn()
                .expect("redis-server (installed by scripts/deps.sh)"),
        );
        for _ in 0..200 {
            if let Ok(client) = redis::Client::open(self.url()) {
                if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
                    let pong: redis::RedisResult<String> =
                        redis::cmd("PING").query_async(&mut conn).await;
                    if pong.is_ok() {
                        return;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("redis-server did not start on {}", self.port);
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill(); // SIGKILL
            let _ = child.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    async fn app(&self, extra: &[(&str, &str)]) -> TestApp {
        let host = format!("127.0.0.1:{}", self.port);
        let mut env = vec![("SPIN_VARIABLE_REDIS_HOST", host.as_str())];
        env.extend_from_slice(extra);
        TestApp::start_on(&self.url(), &fresh_pg_db().await, &env).await
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One claim as the client saw it.
#[derive(Debug, Clone)]
struct Seen {
    user: String,
    status: u16,
    body: serde_json::Value,
    started: Instant,
    took: Duration,
}

/// Users `0..users` each claim once, `concurrency` at a time; `acknowledged` counts 201s.
async fn storm(
    t: Arc<TestApp>,
    id: i64,
    prefix: &'static str,
    users: usize,
    concurrency: usize,
    acknowledged: Arc<AtomicUsize>,
) -> Vec<Seen> {
    let gate = Arc::new(Semaphore::new(concurrency));
    let mut tasks = Vec::with_capacity(users);
    for u in 0..users {
        let (t, gate, acknowledged) = (t.clone(), gate.clone(), acknowledged.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await.unwrap();
            let user = format!("{prefix}-{u}");
            let started = Instant::now();
            let r = t.claim(id, &user, "").await;
            if r.status == 201 {
                acknowledged.fetch_add(1, Ordering::SeqCst);
            }
            let body = serde_json::from_slice(&r.body).unwrap_or_default();
            Seen {
                user,
                status: r.status,
                body,
                started,
                took: started.elapsed(),
            }
        }));
    }
    let mut seen = Vec::with_capacity(users);
    for task in tasks {
        seen.push(task.await.unwrap());
    }
    seen
}

/// The promise, checked against Postgres and Redis; returns (acknowledged, in Postgres).
async fn check_invariants(t: &TestApp, id: i64, seen: &[Seen], limit: i64) -> (usize, usize) {
    let pg = t.pg().await;
    let rows = pg
        .query(
            "SELECT c.id, c.user_id FROM claims c WHERE c.activity_id = $1",
            &[&id],
        )
        .await
        .unwrap();
    let stored: HashMap<String, String> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let acknowledged: Vec<&Seen> = seen.iter().filter(|s| s.status == 201).collect();
    let present = acknowledged
        .iter()
        .filter(|s| stored.contains_key(s.body["claim_id"].as_str().unwrap()))
        .count();
    // Stored claims are acknowledged ones, or ones whose outcome the client was told is unknown.
    let unknown: HashSet<&str> = seen
        .iter()
        .filter(|s| s.status == 503 && s.body["claimed"].is_null())
        .map(|s| s.user.as_str())
        .collect();
    let acked_users: HashSet<&str> = acknowledged.iter().map(|s| s.user.as_str()).collect();
    for user in stored.values() {
        assert!(
            acked_users.contains(user.as_str()) || unknown.contains(user.as_str()),
            "{user} has a claim in Postgres but was told nothing was claimed"
        );
    }
    let over: i64 = pg
        .query_one(
            "SELECT count(*) FROM (SELECT user_id FROM tickets WHERE activity_id = $1 AND status <> 'returned' \
             GROUP BY user_id HAVING count(*) > $2) o",
            &[&id, &limit],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(over, 0, "nobody above the limit");
    let doubled: i64 = pg
        .query_one(
            "SELECT count(*) FROM (SELECT code FROM tickets WHERE activity_id = $1 GROUP BY code HAVING count(*) > 1) d",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(doubled, 0, "no ticket twice");
    let mut redis = redis_conn(&t.redis_url).await;
    let keys = ActivityKeys::new(ActivityId::from_db(id));
    let log_len: i64 = redis::cmd("XLEN")
        .arg(keys.log())
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(log_len, 0, "the log is empty after the final drain");
    (acknowledged.len(), present)
}

/// Stock taken in Redis equals the tickets Postgres holds.
async fn check_stock(t: &TestApp, id: i64, stock_total: i64) {
    let mut redis = redis_conn(&t.redis_url).await;
    let keys = ActivityKeys::new(ActivityId::from_db(id));
    let left: Option<i64> = redis::cmd("HGET")
        .arg(keys.stocks())
        .arg("default")
        .query_async(&mut redis)
        .await
        .unwrap();
    let tickets = t
        .count(&format!(
            "SELECT count(*) FROM tickets WHERE activity_id = {id} AND status <> 'returned'"
        ))
        .await;
    assert_eq!(
        stock_total - left.unwrap(),
        tickets,
        "tickets issued = stock taken"
    );
}

/// Drains to the end, then checks that exactly `expected` claims were acknowledged, each is
/// in Postgres once with one ticket, and the stock adds up.
async fn assert_each_claim_once(t: &TestApp, id: i64, seen: &[Seen], stock: i64, expected: usize) {
    t.drain_to_empty().await;
    let (acked, present) = check_invariants(t, id, seen, 1).await;
    assert_eq!((acked, present), (expected, expected));
    let tickets = t
        .count(&format!(
            "SELECT count(*) FROM tickets WHERE activity_id = {id}"
        ))
        .await;
    assert_eq!(tickets as usize, expected, "nothing doubled");
    check_stock(t, id, stock).await;
}

/// `POST /admin/drain` in a loop until `stop`, `pause` between runs, as a scheduler would;
/// returns (runs, runs that did not answer 200).
fn drain_loop(
    t: Arc<TestApp>,
    stop: Arc<AtomicBool>,
    pause: Duration,
) -> tokio::task::JoinHandle<(usize, usize)> {
    tokio::spawn(async move {
        let (mut runs, mut failed) = (0, 0);
        while !stop.load(Ordering::SeqCst) {
            let r = t.send("POST", "/admin/drain", Some(&t.admin), "").await;
            runs += 1;
            failed += usize::from(r.status != 200);
            tokio::time::sleep(pause).await;
        }
        (runs, failed)
    })
}

/// Kills Redis once `after` claims are acknowledged, keeps it down for `down`, restarts it.
fn killer(
    redis: Arc<tokio::sync::Mutex<PrivateRedis>>,
    acknowledged: Arc<AtomicUsize>,
    after: usize,
    down: Duration,
) -> tokio::task::JoinHandle<Outage> {
    tokio::spawn(async move {
        while acknowledged.load(Ordering::SeqCst) < after {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        redis.lock().await.kill();
        let killed = Instant::now();
        tokio::time::sleep(down).await;
        let restarting = Instant::now();
        redis.lock().await.spawn().await;
        Outage {
            killed,
            restarting,
            back: Instant::now(),
        }
    })
}

struct Outage {
    killed: Instant,
    /// The new server may take requests from here on, before `back` confirms it.
    restarting: Instant,
    back: Instant,
}

/// Requests that began after the kill and ended before the restart.
/// While Redis is down a claim says "nothing was claimed" (`false`) when it knows: its
/// connection could not be opened. The WASIp3 claim keeps one connection per instance
/// across requests, and a request on a kept connection that died cannot know whether its
/// command left (the host reports "broken pipe" either way), so it says "unknown" (`null`,
/// retry with the same Idempotency-Key); the instance then drops its kept connections, so
/// that happens at most once per instance, i.e. per request in flight at a time (the storm
/// runs 32 at once). Every `false` is checked against what was stored by
/// `check_invariants`: a claim that says it did not happen never did.
fn assert_outage_answers_are_honest(outage: &[&Seen]) {
    let unknown = outage
        .iter()
        .filter(|s| s.body["claimed"].is_null())
        .count();
    for s in outage {
        assert!(
            s.body["claimed"] == false || s.body["claimed"].is_null(),
            "{:?}",
            s.body
        );
    }
    assert!(
        unknown <= 32,
        "at most one outcome-unknown per kept connection: {unknown} of {}",
        outage.len()
    );
    assert!(
        outage.len() > unknown,
        "after the first failure a claim opens a fresh connection and knows nothing was sent"
    );
}

fn during<'a>(seen: &'a [Seen], outage: &Outage) -> Vec<&'a Seen> {
    seen.iter()
        .filter(|s| {
            s.started > outage.killed + Duration::from_millis(20)
                && s.started + s.took < outage.restarting
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_killed_mid_storm_with_aof_always_loses_no_acknowledged_claim() {
    const STOCK: i64 = 5_000;
    let redis = PrivateRedis::start("aof", true).await;
    let t = Arc::new(redis.app(&[]).await);
    let id = t.create_activity(STOCK, "").await;
    t.publish(id).await;
    let redis = Arc::new(tokio::sync::Mutex::new(redis));
    let acknowledged = Arc::new(AtomicUsize::new(0));
    let kill = killer(
        redis.clone(),
        acknowledged.clone(),
        400,
        Duration::from_millis(1500),
    );
    let mut seen = storm(t.clone(), id, "u", 3_000, 32, acknowledged).await;
    let window = kill.await.unwrap();

    assert!(
        seen.iter().all(|s| s.status == 201 || s.status == 503),
        "only 201 or 503"
    );
    let outage = during(&seen, &window);
    assert!(!outage.is_empty(), "the storm ran through the outage");
    for s in &outage {
        assert_eq!(
            (s.status, s.body["code"].as_str()),
            (503, Some("unavailable")),
            "{:?}",
            s.body
        );
        assert!(s.took < Duration::from_secs(2), "fails fast: {:?}", s.took);
    }
    assert_outage_answers_are_honest(&outage);
    let slowest = outage.iter().map(|s| s.took).max().unwrap();
    let outage_count = outage.len();
    // Back up with its data: claims go on (the scripts are loaded again through EVAL).
    let after = storm(t.clone(), id, "after", 50, 8, Arc::new(AtomicUsize::new(0))).await;
    assert!(
        after.iter().all(|s| s.status == 201),
        "claims resume after the restart"
    );
    seen.extend(after);
    t.drain_to_empty().await;
    let (acked, present) = check_invariants(&t, id, &seen, 1).await;
    check_stock(&t, id, STOCK).await;
    let unknown = seen
        .iter()
        .filter(|s| s.status == 503 && s.body["claimed"].is_null())
        .count();
    eprintln!(
        "RELIABILITY aof-always: acknowledged {acked}, in postgres {present}, lost {}, \
         503 during outage {} (slowest {slowest:?}), outcome-unknown {unknown}, down {:?}",
        acked - present,
        outage_count,
        window.back - window.killed
    );
    assert_eq!(present, acked, "not one acknowledged claim lost");
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_killed_mid_storm_with_default_persistence_loses_at_most_the_undrained_window() {
    const STOCK: i64 = 5_000;
    let redis = PrivateRedis::start("default", false).await;
    let t = Arc::new(redis.app(&[]).await);
    let id = t.create_activity(STOCK, "").await;
    t.publish(id).await;
    // The drain runs every 200 ms, as the cron trigger would (every second on Spin).
    let stop = Arc::new(AtomicBool::new(false));
    let drains = drain_loop(t.clone(), stop.clone(), Duration::from_millis(200));
    let redis = Arc::new(tokio::sync::Mutex::new(redis));
    let acknowledged = Arc::new(AtomicUsize::new(0));
    let kill = killer(
        redis.clone(),
        acknowledged.clone(),
        400,
        Duration::from_millis(1500),
    );
    let seen = storm(t.clone(), id, "u", 3_000, 32, acknowledged).await;
    let outage = kill.await.unwrap();
    let killed = outage.killed;
    stop.store(true, Ordering::SeqCst);
    drains.await.unwrap();

    assert!(
        seen.iter().all(|s| [201, 404, 503].contains(&s.status)),
        "no 500s: {:?}",
        seen.iter().map(|s| s.status).collect::<HashSet<_>>()
    );
    let outage_answers = during(&seen, &outage);
    assert!(outage_answers.iter().all(|s| s.status == 503));
    assert_outage_answers_are_honest(&outage_answers);
    let stored: HashSet<String> = t.claim_ids(id).await.into_iter().collect();
    let acked: Vec<&Seen> = seen.iter().filter(|s| s.status == 201).collect();
    let lost: Vec<&&Seen> = acked
        .iter()
        .filter(|s| !stored.contains(s.body["claim_id"].as_str().unwrap()))
        .collect();
    // Without persistence Redis comes back empty: whatever the drain had not yet moved is
    // gone, and the activity is no longer loaded (claims answer 404 until republished).
    let after_restart_404 = seen.iter().filter(|s| s.status == 404).count();
    let window = lost
        .iter()
        .map(|s| killed.saturating_duration_since(s.started))
        .max()
        .unwrap_or_default();
    eprintln!(
        "RELIABILITY default: acknowledged {}, in postgres {}, lost {} (acknowledged within {:?} \
         before the kill), 404 after restart {after_restart_404}",
        acked.len(),
        acked.len() - lost.len(),
        lost.len(),
        window
    );
    assert!(
        window < Duration::from_millis(1500),
        "only claims newer than the last drains are lost, not {window:?} old ones"
    );
    // Redis came back empty: the activity is gone until the operator publishes it again,
    // and the reload takes stock and per-user counts from what Postgres recorded.
    let r = t.claim(id, "u-0", "").await;
    assert_eq!(r.status, 404, "{}", r.text());
    t.publish(id).await;
    let drained_user = acked
        .iter()
        .find(|s| stored.contains(s.body["claim_id"].as_str().unwrap()))
        .unwrap();
    let again = t.claim(id, &drained_user.user, "").await;
    assert_eq!(again.json()["code"], "limit_reached", "{}", again.text());
    let after = storm(t.clone(), id, "after", 50, 8, Arc::new(AtomicUsize::new(0))).await;
    assert!(after.iter().all(|s| s.status == 201));
    t.drain_to_empty().await;
    check_invariants(&t, id, &[seen.clone(), after].concat(), 1).await;
    check_stock(&t, id, STOCK).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_drain_run_killed_after_reading_or_after_committing_loses_and_doubles_nothing() {
    // `committed`: rows in Postgres after both dead runs (40 through HTTP, 10 through cron).
    for (point, committed) in [("after_read", 0), ("after_commit", 50)] {
        let reclaim = ("SPIN_VARIABLE_DRAIN_RECLAIM_AFTER_MS", "300");
        let healthy = Arc::new(TestApp::start_with(&[reclaim]).await);
        let id = healthy.create_activity(60, "").await;
        healthy.publish(id).await;
        let none = || Arc::new(AtomicUsize::new(0));
        let mut seen = storm(healthy.clone(), id, "u", 40, 8, none()).await;
        // The same deployment with a drain that dies at `point`, through both entry points.
        let dying = TestApp::start_on(
            &healthy.redis_url,
            &healthy.pg_url,
            &[reclaim, ("SPIN_VARIABLE_DRAIN_FAILPOINT", point)],
        )
        .await;
        let r = dying
            .send("POST", "/admin/drain", Some(&dying.admin), "")
            .await;
        assert_eq!(r.status, 500, "{point}: the run died");
        seen.extend(storm(healthy.clone(), id, "v", 10, 8, none()).await);
        let cron = dying.app().fire_cron("drain-cron").await;
        assert!(
            !matches!(cron, Ok(Ok(()))),
            "{point}: the cron run died too"
        );
        assert!(seen.iter().all(|s| s.status == 201));
        assert_eq!(
            healthy.count("SELECT count(*) FROM claims").await,
            committed,
            "{point}"
        );
        // Before the timeout nobody takes the dead runs' entries; after it, exactly once.
        assert_eq!(healthy.drain().await["entries"], 0, "{point}");
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert_eq!(healthy.drain().await["entries"], 50, "{point}");
        assert_each_claim_once(&healthy, id, &seen, 60, 50).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn overlapping_drain_runs_that_steal_each_others_entries_double_nothing() {
    // Reclaim after 1 ms: every run takes over the entries any other run is still writing,
    // the worst case of a slow run overlapping the next tick.
    let t = Arc::new(TestApp::start_with(&[("SPIN_VARIABLE_DRAIN_RECLAIM_AFTER_MS", "1")]).await);
    let id = t.create_activity(3_000, "").await;
    t.publish(id).await;
    let stop = Arc::new(AtomicBool::new(false));
    let drains: Vec<_> = (0..6)
        .map(|_| drain_loop(t.clone(), stop.clone(), Duration::ZERO))
        .collect();
    let schedulers = t.app().spawn_cron_schedulers();
    let seen = storm(t.clone(), id, "u", 2_000, 32, Arc::new(AtomicUsize::new(0))).await;
    stop.store(true, Ordering::SeqCst);
    let mut runs = 0;
    for d in drains {
        let (ran, failed) = d.await.unwrap();
        assert_eq!(failed, 0, "every overlapping run succeeds");
        runs += ran;
    }
    for s in schedulers {
        s.abort();
    }
    assert_each_claim_once(&t, id, &seen, 3_000, 2_000).await;
    eprintln!("RELIABILITY overlapping drains: {runs} concurrent runs, 2000 acknowledged, 2000 in postgres");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trapping_request_never_affects_the_requests_around_it() {
    let t = Arc::new(TestApp::start_with(&[("SPIN_VARIABLE_DRAIN_FAILPOINT", "after_read")]).await);
    let id = t.create_activity(500, "").await;
    t.publish(id).await;
    // Seed the log so every drain request reaches its failpoint and traps.
    assert_eq!(t.claim(id, "seed", "").await.status, 201);
    let mut traps = Vec::new();
    for _ in 0..50 {
        let t = t.clone();
        traps.push(tokio::spawn(async move {
            t.send("POST", "/admin/drain", Some(&t.admin), "")
                .await
                .status
        }));
    }
    let seen = storm(t.clone(), id, "u", 300, 16, Arc::new(AtomicUsize::new(0))).await;
    for trap in traps {
        assert_eq!(trap.await.unwrap(), 500, "each drain traps on its own");
    }
    assert!(
        seen.iter().all(|s| s.status == 201),
        "every claim beside the traps succeeded"
    );
    let health = t.send("GET", "/healthz", None, "").await;
    assert_eq!(health.status, 200, "{}", health.text());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_stuck_waiting_never_delays_the_others_and_ends_with_a_clear_503() {
    let t = Arc::new(TestApp::start().await);
    let id = t.create_activity(500, "").await;
    t.publish(id).await;
    // A rebuild lock that nobody releases (its holder died): readers of the cold activity
    // wait for the view, then give up with a 503 instead of hanging.
    let mut redis = redis_conn(&t.redis_url).await;
    let lock = ActivityKeys::new(ActivityId::from_db(id)).view_lock();
    let () = redis::cmd("SET")
        .arg(&lock)
        .arg("1")
        .arg("PX")
        .arg(60_000)
        .query_async(&mut redis)
        .await
        .unwrap();
    let mut stuck = Vec::new();
    for _ in 0..20 {
        let t = t.clone();
        stuck.push(tokio::spawn(async move {
            let started = Instant::now();
            let r = t
                .send("GET", &format!("/api/activities/{id}"), None, "")
                .await;
            (r.status, r.json()["code"].clone(), started.elapsed())
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let seen = storm(t.clone(), id, "u", 200, 16, Arc::new(AtomicUsize::new(0))).await;
    assert!(seen.iter().all(|s| s.status == 201));
    let slowest = seen.iter().map(|s| s.took).max().unwrap();
    assert!(
        slowest < Duration::from_secs(1),
        "claims beside stuck readers stay fast: {slowest:?}"
    );
    for task in stuck {
        let (status, code, took) = task.await.unwrap();
        assert_eq!((status, code.as_str()), (503, Some("unavailable")));
        assert!(took < Duration::from_secs(10), "{took:?}");
    }
    eprintln!("RELIABILITY stuck readers: 20 waited and answered 503; 200 claims beside them, slowest {slowest:?}");
}
