//! Postgres down while users claim. Its own test binary: it stops the shared Postgres, so
//! nothing else may run beside it (cargo runs test binaries one after another).

use flashclaim_tests::{root, TestApp};

fn services(action: &str) {
    let status = std::process::Command::new(root().join("scripts/services.sh"))
        .arg(action)
        .status()
        .unwrap();
    assert!(status.success(), "services.sh {action}");
}

#[tokio::test(flavor = "multi_thread")]
async fn claims_keep_working_while_postgres_is_down_and_the_drain_catches_up() {
    let t = TestApp::start().await;
    let id = t.create_activity(100, "").await;
    t.publish(id).await;
    for u in 0..10 {
        assert_eq!(t.claim(id, &format!("before-{u}"), "").await.status, 201);
    }

    services("pg-stop");
    // Postgres comes back even if an assertion below fails, so later tests still run.
    struct Restart;
    impl Drop for Restart {
        fn drop(&mut self) {
            services("pg-start");
        }
    }
    let restart = Restart;
    {
        for u in 0..40 {
            let r = t.claim(id, &format!("during-{u}"), "").await;
            assert_eq!(r.status, 201, "claims need only Redis: {}", r.text());
        }
        // The drain takes nothing while Postgres is away, and says why.
        let r = t.send("POST", "/admin/drain", Some(&t.admin), "").await;
        assert_eq!(r.status, 503, "{}", r.text());
        assert_eq!(r.json()["code"], "unavailable");
        assert!(t.app.fire_cron("drain").await.unwrap().is_err());
    }
    drop(restart);

    // The scheduled drain resumes by itself once Postgres is back.
    let schedulers = t.app.spawn_cron_schedulers();
    let mut rows = 0;
    for _ in 0..100 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        rows = t.count("SELECT count(*) FROM tickets").await;
        if rows == 50 {
            break;
        }
    }
    for s in schedulers {
        s.abort();
    }
    assert_eq!(
        rows, 50,
        "every claim, before and during the outage, is in Postgres"
    );
    assert_eq!(
        t.count("SELECT count(DISTINCT claim_id) FROM tickets")
            .await,
        50
    );
}
