//! Postgres stopped for 30 s in the middle of a claim storm. Its own test binary: it stops
//! the shared Postgres, so nothing else may run beside it (cargo runs test binaries one
//! after another). Figures are printed for RELIABILITY.md (`--nocapture`).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flashclaim_tests::{PostgresOutage, TestApp};

const OUTAGE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread")]
async fn a_30_second_postgres_outage_mid_storm_loses_and_doubles_nothing() {
    const STOCK: i64 = 200_000;
    let t = Arc::new(TestApp::start().await);
    let id = t.create_activity(STOCK, "").await;
    t.publish(id).await;
    // The cron trigger drains every second all along, as it would on Spin.
    let schedulers = t.app().spawn_cron_schedulers();

    // Eight users at a time claim, each a new user, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..8 {
        let (t, stop, next) = (t.clone(), stop.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let user = format!("u-{}", next.fetch_add(1, Ordering::SeqCst));
                let r = t.claim(id, &user, "").await;
                seen.push((r.status, r.json()["claim_id"].as_str().map(str::to_string)));
                // Paced so the run stays bounded: about 400 claims a second.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            seen
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let restart = PostgresOutage::start();
    let stopped_at = Instant::now();
    tokio::time::sleep(OUTAGE / 2).await;
    let r = t.send("POST", "/admin/drain", Some(&t.admin), "").await;
    assert_eq!(
        (r.status, r.json()["code"].as_str()),
        (503, Some("unavailable")),
        "the drain takes nothing while Postgres is away, and says why"
    );
    tokio::time::sleep(OUTAGE.saturating_sub(stopped_at.elapsed())).await;
    drop(restart);
    let restarted_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::SeqCst);
    let mut seen = Vec::new();
    for w in workers {
        seen.extend(w.await.unwrap());
    }
    assert!(
        seen.iter().all(|(s, _)| *s == 201),
        "claims need only Redis"
    );
    let acknowledged: HashSet<String> = seen.into_iter().filter_map(|(_, c)| c).collect();

    // The scheduled drain catches up by itself.
    let mut rows = 0;
    while restarted_at.elapsed() < Duration::from_secs(60) {
        rows = t.count("SELECT count(*) FROM claims").await;
        if rows as usize == acknowledged.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let caught_up = restarted_at.elapsed();
    for s in schedulers {
        s.abort();
    }
    let stored: HashSet<String> = t
        .pg()
        .await
        .query("SELECT id FROM claims", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    eprintln!(
        "RELIABILITY postgres-outage: {:?} down, acknowledged {}, in postgres {}, \
         caught up {caught_up:?} after the restart",
        OUTAGE,
        acknowledged.len(),
        rows
    );
    assert_eq!(
        stored, acknowledged,
        "every acknowledged claim, and only those"
    );
    assert_eq!(
        t.count("SELECT count(*) FROM tickets").await as usize,
        acknowledged.len(),
        "nothing doubled"
    );
}
