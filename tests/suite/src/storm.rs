//! A claim storm and the promise of RELIABILITY.md checked after it, for the tests that
//! break Redis under load (the Sentinel and Cluster tiers): every answer a clean `201` or
//! `503` that says whether anything ran, every unknown outcome replayed with its key, and
//! in Postgres exactly the acknowledged claims, once each, the stock adding up.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flashclaim_core::ids::ActivityId;
use flashclaim_core::keys::ActivityKeys;

use crate::{bearer, redis_conn, token, TestApp};

/// Claims in flight during a storm.
pub const CONCURRENCY: usize = 32;

/// The stock of [`activity`]: room for every claim of a storm.
pub const STOCK: i64 = 1_000_000;

/// One claim as the client saw it (each user claims once, with its own key).
#[derive(Debug, Clone)]
pub struct Seen {
    pub user: String,
    pub key: String,
    pub status: u16,
    pub body: serde_json::Value,
}

/// An activity with room for every claim of the storm, two per user allowed: a replay that
/// claimed again instead of returning the first result would show as a second ticket.
pub async fn activity(t: &TestApp) -> i64 {
    let id = t.create_activity(STOCK, r#","per_user_limit":2"#).await;
    // With `redis_replicas_ack` 1 a publish waits up to 200 ms for a replica, which two
    // storms sharing two cores can exceed: it then answers 503 "retry", as the API says,
    // and publishing again is safe (it reloads the same activity). An operator retries;
    // so does the setup, a few times, and fails on anything else.
    let path = format!("/admin/activities/{id}/publish");
    for attempt in 1..=5 {
        let r = t.send("POST", &path, Some(&t.admin), "").await;
        if r.status == 200 {
            return id;
        }
        assert!(
            r.status == 503 && attempt < 5,
            "publish (attempt {attempt}): {} {}",
            r.status,
            r.text()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    unreachable!("the last attempt returns or fails")
}

pub async fn claim_with_key(
    t: &TestApp,
    id: i64,
    user: &str,
    key: &str,
) -> (u16, serde_json::Value) {
    let (status, body, _) = claim_replayed(t, id, user, key).await;
    (status, body)
}

/// A claim with its key; the third value says whether it replayed an earlier claim.
pub async fn claim_replayed(
    t: &TestApp,
    id: i64,
    user: &str,
    key: &str,
) -> (u16, serde_json::Value, bool) {
    let auth = bearer(&token(user, None));
    let headers = [
        ("content-type", "application/json"),
        ("authorization", auth.as_str()),
        ("idempotency-key", key),
    ];
    match t
        .client
        .send(
            "POST",
            &format!("/api/activities/{id}/claims"),
            &headers,
            "",
        )
        .await
    {
        Ok(r) => (
            r.status,
            serde_json::from_slice(&r.body).unwrap_or_default(),
            r.header("idempotent-replayed") == Some("true"),
        ),
        Err(e) => panic!("{user}: no answer: {e:#}"),
    }
}

/// Claims from `CONCURRENCY` workers, one new user each time, until `stop`.
pub async fn storm(t: Arc<TestApp>, id: i64, stop: Arc<AtomicBool>) -> Vec<Seen> {
    let next = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut workers = Vec::new();
    for _ in 0..CONCURRENCY {
        let (t, stop, next, seen) = (t.clone(), stop.clone(), next.clone(), seen.clone());
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let n = next.fetch_add(1, Ordering::SeqCst);
                let (user, key) = (format!("ha-{n}"), format!("key-{n}"));
                let (status, body) = claim_with_key(&t, id, &user, &key).await;
                seen.lock().unwrap().push(Seen {
                    user,
                    key,
                    status,
                    body,
                });
                if status == 503 {
                    // A client backs off a little after "try again".
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    Arc::try_unwrap(seen).unwrap().into_inner().unwrap()
}

/// Every answer was a clean `201` or `503`, and every `503` said whether anything ran.
pub fn assert_clean(seen: &[Seen]) -> (usize, usize, usize) {
    let (mut acked, mut nothing, mut unknown) = (0, 0, 0);
    for s in seen {
        match s.status {
            201 => acked += 1,
            503 => {
                assert_eq!(s.body["code"], "unavailable", "{}: {}", s.user, s.body);
                match &s.body["claimed"] {
                    serde_json::Value::Bool(false) => nothing += 1,
                    serde_json::Value::Null => unknown += 1,
                    other => panic!("{}: claimed = {other}", s.user),
                }
            }
            other => panic!("{}: answered {other}: {}", s.user, s.body),
        }
    }
    (acked, nothing, unknown)
}

/// Replays every `503` with its key until it resolves (as the H5 app does); returns how
/// many of the unknown outcomes (`"claimed": null`) had claimed (the replay returns that
/// claim) and how many had not (lost with the old primary, or never run: claimed afresh).
/// A key told `"claimed": false` must not turn out to have claimed, unless one of its own
/// replays was itself answered `null` (that replay may have claimed; the next returns it).
pub async fn replay_unknowns(t: &TestApp, id: i64, seen: &mut [Seen]) -> (usize, usize) {
    let (mut survived, mut afresh) = (0, 0);
    for s in seen.iter_mut().filter(|s| s.status == 503) {
        let unknown = s.body["claimed"].is_null();
        // Whether an answer for this key so far left room for a claim: the first one, or a
        // replay answered `null` (it may have claimed, and the next replay returns that).
        let mut may_have_claimed = unknown;
        for attempt in 0.. {
            let (status, body, replayed) = claim_replayed(t, id, &s.user, &s.key).await;
            if status == 201 {
                assert!(
                    !replayed || may_have_claimed,
                    "{}: a claim told `claimed: false` had claimed (and no replay answered \
                     `null` since)",
                    s.user
                );
                if unknown {
                    if replayed {
                        survived += 1;
                    } else {
                        afresh += 1;
                    }
                }
                s.status = 201;
                s.body = body;
                break;
            }
            assert_eq!(status, 503, "{}: {body}", s.user);
            may_have_claimed |= body["claimed"].is_null();
            assert!(attempt < 100, "{}: never resolved: {body}", s.user);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    (survived, afresh)
}

/// The promise, after a final drain: Postgres holds exactly the acknowledged claims, one
/// ticket each, nobody above the limit, no code twice, stock taken = tickets issued (read
/// on `stock_node`, the Redis that holds the activity now).
pub async fn check_promise(t: &TestApp, stock_node: &str, id: i64, seen: &[Seen]) -> usize {
    t.drain_to_empty().await;
    let acknowledged: HashSet<String> = seen
        .iter()
        .filter(|s| s.status == 201)
        .map(|s| s.body["claim_id"].as_str().unwrap().to_string())
        .collect();
    let pg = t.pg().await;
    let stored: Vec<(String, String)> = pg
        .query(
            "SELECT id, user_id FROM claims WHERE activity_id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let stored_ids: HashSet<String> = stored.iter().map(|(c, _)| c.clone()).collect();
    assert_eq!(stored.len(), stored_ids.len(), "a claim stored twice");
    let lost: Vec<&String> = acknowledged.difference(&stored_ids).collect();
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
    assert_eq!(
        stored_ids, acknowledged,
        "Postgres holds exactly the acknowledged claims"
    );
    let mut per_user: HashMap<&str, usize> = HashMap::new();
    for (_, user) in &stored {
        *per_user.entry(user).or_default() += 1;
    }
    assert!(
        per_user.values().all(|n| *n == 1),
        "a user claimed once and holds one claim"
    );
    let count = |sql: String| async move { t.count(&sql).await };
    let tickets = count(format!(
        "SELECT count(*) FROM tickets WHERE activity_id = {id}"
    ))
    .await;
    assert_eq!(tickets as usize, acknowledged.len(), "one ticket per claim");
    assert_eq!(
        count(format!(
            "SELECT count(DISTINCT code) FROM tickets WHERE activity_id = {id}"
        ))
        .await,
        tickets,
        "no code twice"
    );
    let mut redis = redis_conn(stock_node).await;
    let left: i64 = redis::cmd("HGET")
        .arg(ActivityKeys::new(ActivityId::from_db(id)).stocks())
        .arg("default")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(STOCK - left, tickets, "stock taken = tickets issued");
    acknowledged.len()
}

/// The time from `since` until a claim made after it succeeds, probing every 50 ms with
/// new users (each with its key); the probes are claims like any other.
pub async fn wait_for_claims(t: &TestApp, id: i64, since: Instant) -> (Duration, Vec<Seen>) {
    let deadline = since + Duration::from_secs(30);
    let mut probes = Vec::new();
    loop {
        let n = PROBES.fetch_add(1, Ordering::SeqCst);
        let (user, key) = (format!("probe-{n}"), format!("probe-key-{n}"));
        let (status, body) = claim_with_key(t, id, &user, &key).await;
        probes.push(Seen {
            user,
            key,
            status,
            body,
        });
        if status == 201 {
            return (since.elapsed(), probes);
        }
        assert!(
            Instant::now() < deadline,
            "no claim succeeded within 30 s of the failure"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

static PROBES: AtomicUsize = AtomicUsize::new(0);

/// flashclaim on a misconfigured `redis_address`: a claim answers `503 unavailable` with
/// `"claimed": false` and `/healthz` `503` with `redis: false`, both in under 5 s, and
/// neither shows the word `wrong-password` (the password the misconfigurations use).
pub async fn assert_misconfigured_answers(what: &str, redis_address: &str) {
    let t = TestApp::start_on(
        redis_address,
        &crate::fresh_pg_db().await,
        &[("SPIN_VARIABLE_REDIS_HOST", "127.0.0.1:*")],
    )
    .await;
    let started = Instant::now();
    let r = t.claim(1, "someone", "").await;
    assert_eq!(r.status, 503, "{what}: {}", r.text());
    assert_eq!(r.json()["code"], "unavailable", "{what}");
    assert_eq!(r.json()["claimed"], false, "{what}: nothing can have run");
    let health = t.send("GET", "/healthz", None, "").await;
    assert_eq!(health.status, 503, "{what}: {}", health.text());
    assert_eq!(health.json()["redis"], false, "{what}");
    assert!(
        !health.text().contains("wrong-password") && !r.text().contains("wrong-password"),
        "{what}: a secret in an answer"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{what}: took {:?}",
        started.elapsed()
    );
}
