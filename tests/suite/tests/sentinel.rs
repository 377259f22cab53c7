//! Redis high availability with real processes: a Sentinel group (1 primary + 2 replicas,
//! AOF always, 3 sentinels, quorum 2, `down-after-milliseconds` 1000) as flashclaim's one
//! shard, `redis_address = redis-sentinel://…#flashclaim`. Each test ends with the promise
//! of RELIABILITY.md: every acknowledged claim in Postgres exactly once, nobody above a
//! limit, no code twice, the stock adds up. Figures are printed (`--nocapture`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flashclaim_tests::sentinel::{SentinelGroup, DOWN_AFTER_MS};
use flashclaim_tests::storm::{self, *};
use flashclaim_tests::*;

async fn app_on(group: &SentinelGroup, extra: &[(&str, &str)]) -> TestApp {
    let mut env = vec![("SPIN_VARIABLE_REDIS_HOST", "127.0.0.1:*")];
    env.extend_from_slice(extra);
    TestApp::start_on(&group.address(), &fresh_pg_db().await, &env).await
}

/// The promise of RELIABILITY.md (`storm::check_promise`), the stock read on the primary.
async fn check_promise(t: &TestApp, group: &SentinelGroup, id: i64, seen: &[Seen]) -> usize {
    let primary = group.primary().await.expect("a primary");
    storm::check_promise(t, &group.node_url(primary), id, seen).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_primary_killed_mid_storm_is_replaced_by_itself_twice_and_nothing_acknowledged_is_lost() {
    let mut group = SentinelGroup::start("kill").await;
    let t = Arc::new(app_on(&group, &[]).await);
    let id = activity(&t).await;

    let stop = Arc::new(AtomicBool::new(false));
    let runner = tokio::spawn(storm(t.clone(), id, stop.clone()));
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // First failover: the primary dies.
    let one = fail_primary(&mut group, &t, id, SentinelGroup::kill).await;
    let (first, second) = (one.old, one.new);

    // The old primary comes back on its data and is made a replica of the new one.
    group.restart(first);
    group
        .wait_until_replica_in_sync(first, Duration::from_secs(30))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Second failover in the same storm.
    let two = fail_primary(&mut group, &t, id, SentinelGroup::kill).await;
    assert_eq!(two.old, second);
    let third = two.new;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::SeqCst);
    let mut seen = runner.await.unwrap();
    seen.extend(one.probes);
    seen.extend(two.probes);

    let (acked, nothing, unknown) = assert_clean(&seen);
    let (survived, afresh) = replay_unknowns(&t, id, &mut seen).await;
    let in_postgres = check_promise(&t, &group, id, &seen).await;

    // /healthz (and the console's health page) names the primary now, and says when its
    // replica has caught up.
    let expected = group
        .node_url(third)
        .replace("redis://", "")
        .replace("/0", "");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let health = t.send("GET", "/healthz", None, "").await.json();
        let g = &health["redis_groups"][0];
        assert_eq!(g["primary"], expected.as_str(), "{health}");
        assert_eq!(g["role"], "master", "{health}");
        if g["replicas_in_sync"] == true && g["replicas"] == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "replica never in sync: {health}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "sentinel kill: {} claims, {CONCURRENCY} in flight; primary {first} SIGKILLed, node \
         {second} promoted after {:.2} s, first 201 after {:.2} s; node {first} back as a \
         replica, then {second} SIGKILLed, node {third} promoted, first 201 after {:.2} s \
         (down-after-milliseconds {DOWN_AFTER_MS}); answers: {acked} 201, {nothing} 503 \
         claimed:false, {unknown} 503 claimed:null; replayed with their keys, {survived} of the unknown had \
         claimed and got that claim back, {afresh} had not and claimed afresh; \
         {in_postgres} acknowledged, all in Postgres once, 0 lost, 0 doubled",
        seen.len(),
        one.promoted_after.as_secs_f64(),
        one.first_claim_after.as_secs_f64(),
        two.first_claim_after.as_secs_f64(),
    );
    assert!(
        one.first_claim_after < Duration::from_secs(10)
            && two.first_claim_after < Duration::from_secs(10),
        "claims resumed within 10 s"
    );
}

/// What one failover took.
struct Failover {
    old: usize,
    new: usize,
    /// From the fault until the sentinels named another primary.
    promoted_after: Duration,
    /// From the fault until a claim made after it succeeded.
    first_claim_after: Duration,
    probes: Vec<Seen>,
}

/// Does `fault` to the primary now, then waits (bounded) for the sentinels to name another
/// node and for a claim to succeed.
async fn fail_primary(
    group: &mut SentinelGroup,
    t: &TestApp,
    id: i64,
    fault: fn(&mut SentinelGroup, usize),
) -> Failover {
    let old = group.primary().await.expect("a primary");
    let at = Instant::now();
    fault(group, old);
    let new = group
        .wait_for_new_primary(old, Duration::from_secs(20))
        .await;
    let promoted_after = at.elapsed();
    let (first_claim_after, probes) = wait_for_claims(t, id, at).await;
    Failover {
        old,
        new,
        promoted_after,
        first_claim_after,
        probes,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_primary_frozen_past_down_after_is_replaced_and_demoted_when_it_wakes_losing_nothing() {
    let mut group = SentinelGroup::start("freeze").await;
    let t = Arc::new(app_on(&group, &[]).await);
    let id = activity(&t).await;
    let stop = Arc::new(AtomicBool::new(false));
    let runner = tokio::spawn(storm(t.clone(), id, stop.clone()));
    tokio::time::sleep(Duration::from_millis(1000)).await;

    let frozen = fail_primary(&mut group, &t, id, |g, node| g.freeze(node)).await;
    let (first, second) = (frozen.old, frozen.new);
    // It wakes up still believing it is the primary, with claims queued on its sockets.
    let thawed_at = Instant::now();
    group.thaw(first);
    let deadline = Instant::now() + Duration::from_secs(20);
    while group.role(first).await.as_deref() != Some("slave") {
        assert!(
            Instant::now() < deadline,
            "the woken primary was not demoted within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let demoted_after = thawed_at.elapsed();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::SeqCst);
    let mut seen = runner.await.unwrap();
    seen.extend(frozen.probes);

    let (acked, nothing, unknown) = assert_clean(&seen);
    let (survived, afresh) = replay_unknowns(&t, id, &mut seen).await;
    let in_postgres = check_promise(&t, &group, id, &seen).await;
    println!(
        "sentinel freeze: {} claims; primary {first} SIGSTOPped, node {second} promoted after \
         {:.2} s, first 201 after {:.2} s; SIGCONT, demoted to a replica {:.2} s later; \
         answers: {acked} 201, {nothing} 503 claimed:false, {unknown} 503 claimed:null \
         ({survived} had claimed, {afresh} had not); {in_postgres} acknowledged, all in \
         Postgres once, 0 lost, 0 doubled",
        seen.len(),
        frozen.promoted_after.as_secs_f64(),
        frozen.first_claim_after.as_secs_f64(),
        demoted_after.as_secs_f64(),
    );
    assert!(
        frozen.first_claim_after < Duration::from_secs(10),
        "claims resumed within 10 s"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn one_sentinel_down_changes_nothing_and_with_all_down_the_wasip3_claim_keeps_its_primary() {
    let mut group = SentinelGroup::start("sentinels-down").await;
    let t = app_on(&group, &[]).await;
    let id = activity(&t).await;
    let mut seen = Vec::new();
    let claim = |n: usize| {
        let (user, key) = (format!("sd-{n}"), format!("sd-key-{n}"));
        let t = &t;
        async move {
            let (status, body) = claim_with_key(t, id, &user, &key).await;
            Seen {
                user,
                key,
                status,
                body,
            }
        }
    };
    for n in 0..20 {
        seen.push(claim(n).await);
    }
    group.kill_sentinel(0);
    for n in 20..60 {
        let s = claim(n).await;
        assert_eq!(s.status, 201, "one sentinel of three down: {}", s.body);
        seen.push(s);
    }
    group.kill_sentinel(1);
    group.kill_sentinel(2);
    let started = Instant::now();
    for n in 60..80 {
        let s = claim(n).await;
        if wasip3_claim() {
            // The reused instance keeps the primary it knows.
            assert_eq!(s.status, 201, "WASIp3, no sentinel: {}", s.body);
        } else {
            // A WASIp2 instance knows nothing: it cannot find the primary, and says that
            // nothing was claimed.
            assert_eq!(s.status, 503, "WASIp2, no sentinel: {}", s.body);
            assert_eq!(s.body["claimed"], false, "{}", s.body);
        }
        seen.push(s);
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "no sentinel: 20 answers took {:?}",
        started.elapsed()
    );
    // One sentinel back: every component finds the primary again (the WASIp2 ones, and
    // /healthz, ask on every request).
    group.restart_sentinel(1);
    let deadline = Instant::now() + Duration::from_secs(20);
    while t.send("GET", "/healthz", None, "").await.status != 200 {
        assert!(
            Instant::now() < deadline,
            "not healthy after a sentinel came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let s = claim(80).await;
    assert_eq!(s.status, 201, "a sentinel back: {}", s.body);
    seen.push(s);
    assert_clean(&seen);
    replay_unknowns(&t, id, &mut seen).await;
    check_promise(&t, &group, id, &seen).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_misconfigured_group_answers_a_clear_503_at_once_and_never_hangs() {
    let group = SentinelGroup::start("misconfigured").await;
    let address = group.address();
    let with_credentials = address.replacen(
        "redis-sentinel://",
        "redis-sentinel://nobody:wrong-password@",
        1,
    );
    let nowhere = format!(
        "redis-sentinel://127.0.0.1:{},127.0.0.1:{}#flashclaim",
        free_port(),
        free_port()
    );
    for (what, redis_address) in [
        (
            "an unknown master name",
            group.address_named("no-such-master"),
        ),
        ("no reachable sentinel", nowhere),
        ("a password the primary refuses", with_credentials),
        ("no master name at all", address.replace("#flashclaim", "")),
    ] {
        assert_misconfigured_answers(what, &redis_address).await;
    }
}
