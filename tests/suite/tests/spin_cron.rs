//! The drain on real Spin's cron trigger: the whole manifest under `spin up` with the
//! trigger-cron plugin, and nobody calling `POST /admin/drain`. Run by `make test-spin`
//! only when a `spin` binary with the plugin is present (the test host's cron is proven in
//! e2e.rs and faults.rs).

use std::time::{Duration, Instant};

use flashclaim_tests::{fresh_pg_db, fresh_redis_db, Runtime, TestApp};

#[tokio::test(flavor = "multi_thread")]
async fn claims_reach_postgres_on_the_cron_trigger_alone() {
    let (redis_url, _) = fresh_redis_db().await;
    let pg_url = fresh_pg_db().await;
    let t = TestApp::start_on_runtime(Runtime::SpinWithCron, &redis_url, &pg_url, &[]).await;
    let id = t.create_activity(50, r#","per_user_limit":2"#).await;
    t.publish(id).await;
    for i in 0..20 {
        let r = t.claim(id, &format!("cron-{i}"), r#"{"quantity":2}"#).await;
        assert_eq!(r.status, 201, "{}", r.text());
    }

    // The cron expression fires every second; give it a few ticks.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let tickets = t
            .count(&format!(
                "SELECT count(*) FROM tickets WHERE activity_id = {id}"
            ))
            .await;
        if tickets == 40 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the cron trigger moved {tickets} of 40 tickets into Postgres in 15 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let health = t.send("GET", "/healthz", None, "").await;
    assert_eq!(health.status, 200, "{}", health.text());
    assert_eq!(health.json()["backlog"], 0, "{}", health.text());
    assert_eq!(
        t.count("SELECT count(DISTINCT code)::int8 FROM tickets")
            .await,
        40,
        "no ticket twice"
    );
}
