//! The drain token over HTTP: a scheduler that holds `drain_token` runs the drain (as a
//! bearer credential, or as `?token=` for schedulers that can only name a path), and the
//! token opens nothing else: every other admin route answers it `403` and changes nothing.
//! During a rotation the previous token works too; an empty token turns it off. One call
//! drains until the log is empty or its time bound, and says what is left.

use flashclaim_tests::*;
use spin_test_host::client::Response;

const DRAIN_TOKEN: &str = "drain-token-0123456789abcdef";

async fn claims(t: &TestApp, users: usize) -> i64 {
    let id = t.create_activity(100, "").await;
    t.publish(id).await;
    for u in 0..users {
        assert_eq!(t.claim(id, &format!("user-{u}"), "").await.status, 201);
    }
    id
}

async fn drain_with(t: &TestApp, path: &str, auth: Option<&str>) -> Response {
    t.send("POST", path, auth, "").await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_scheduler_with_the_drain_token_runs_the_drain_by_header_or_query() {
    let t = TestApp::start_with(&[("SPIN_VARIABLE_DRAIN_TOKEN", DRAIN_TOKEN)]).await;
    claims(&t, 3).await;

    let r = drain_with(&t, "/admin/drain", Some(&bearer(DRAIN_TOKEN))).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let report = r.json();
    assert_eq!(report["tickets"].as_i64(), Some(3), "{report}");
    assert_eq!(report["backlog"].as_i64(), Some(0), "{report}");
    assert_eq!(report["complete"].as_bool(), Some(true), "{report}");
    assert_eq!(t.count("SELECT count(*) FROM tickets").await, 3);

    // Akamai's `spin aka cron` gives a path and query only.
    let r = drain_with(&t, &format!("/admin/drain?token={DRAIN_TOKEN}"), None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // An operator's token still drains.
    let admin = t.admin.clone();
    assert_eq!(
        drain_with(&t, "/admin/drain", Some(&admin)).await.status,
        200
    );

    for wrong in [
        bearer("drain-token-0123456789abcdeX"),
        bearer(&DRAIN_TOKEN[..DRAIN_TOKEN.len() - 1]),
        bearer(&format!("{DRAIN_TOKEN}0")),
    ] {
        problem(
            &drain_with(&t, "/admin/drain", Some(&wrong)).await,
            401,
            "unauthenticated",
        );
    }
    problem(
        &drain_with(&t, "/admin/drain?token=nope", None).await,
        401,
        "unauthenticated",
    );
    problem(
        &drain_with(&t, "/admin/drain", None).await,
        401,
        "unauthenticated",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_drain_token_opens_no_other_admin_route_and_changes_nothing() {
    let t = TestApp::start_with(&[("SPIN_VARIABLE_DRAIN_TOKEN", DRAIN_TOKEN)]).await;
    let id = claims(&t, 1).await;
    let token = bearer(DRAIN_TOKEN);
    let body = r#"{"name":"Sneaky","starts_at":"2030-01-01T00:00:00Z","ends_at":"2030-01-02T00:00:00Z","stock_total":5}"#;
    for (method, path, body) in [
        ("GET", "/admin/activities".to_string(), ""),
        ("POST", "/admin/activities".to_string(), body),
        ("GET", format!("/admin/activities/{id}/stats"), ""),
        ("POST", format!("/admin/activities/{id}/close"), ""),
        (
            "PUT",
            "/admin/blacklist/user-0".to_string(),
            r#"{"reason":"x"}"#,
        ),
        ("GET", format!("/admin/activities/{id}/claims.csv"), ""),
    ] {
        let r = t.send(method, &path, Some(&token), body).await;
        problem(&r, 403, "forbidden");
        assert!(
            !r.text().contains(DRAIN_TOKEN),
            "{method} {path}: the answer repeats the token"
        );
        // The same through the query parameter: still nothing but the drain.
        let with_query = format!(
            "{path}{}token={DRAIN_TOKEN}",
            if path.contains('?') { '&' } else { '?' }
        );
        problem(
            &t.send(method, &with_query, None, body).await,
            403,
            "forbidden",
        );
    }
    assert_eq!(t.count("SELECT count(*) FROM activities").await, 1);
    assert_eq!(
        t.count("SELECT count(*) FROM activities WHERE status = 'closed'")
            .await,
        0
    );
    assert_eq!(t.count("SELECT count(*) FROM blacklist").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn during_a_rotation_the_previous_drain_token_works_and_an_empty_one_never_does() {
    let (redis, _) = fresh_redis_db().await;
    let pg = fresh_pg_db().await;
    let rotating = TestApp::start_on(
        &redis,
        &pg,
        &[
            ("SPIN_VARIABLE_DRAIN_TOKEN", "new-drain-token-0001"),
            ("SPIN_VARIABLE_DRAIN_TOKEN_PREVIOUS", DRAIN_TOKEN),
        ],
    )
    .await;
    claims(&rotating, 2).await;
    for token in [DRAIN_TOKEN, "new-drain-token-0001"] {
        let r = drain_with(&rotating, "/admin/drain", Some(&bearer(token))).await;
        assert_eq!(r.status, 200, "{token}: {}", r.text());
    }
    assert_eq!(rotating.count("SELECT count(*) FROM tickets").await, 2);
    drop(rotating);

    // Rotation over: the old token is refused.
    let after = TestApp::start_on(
        &redis,
        &pg,
        &[("SPIN_VARIABLE_DRAIN_TOKEN", "new-drain-token-0001")],
    )
    .await;
    problem(
        &drain_with(&after, "/admin/drain", Some(&bearer(DRAIN_TOKEN))).await,
        401,
        "unauthenticated",
    );
    drop(after);

    // No token configured (the default): an empty or any token is refused.
    let off = TestApp::start_on(&redis, &pg, &[]).await;
    for path in ["/admin/drain?token=", "/admin/drain?token=x"] {
        problem(&drain_with(&off, path, None).await, 401, "unauthenticated");
    }
    problem(
        &drain_with(&off, "/admin/drain", Some("Bearer ")).await,
        401,
        "unauthenticated",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_drain_call_stops_at_its_time_bound_and_says_how_much_is_left() {
    let (redis, _) = fresh_redis_db().await;
    let pg = fresh_pg_db().await;
    // A bound already past when the run starts: it takes no batch at all.
    let bounded = TestApp::start_on(
        &redis,
        &pg,
        &[
            ("SPIN_VARIABLE_DRAIN_TOKEN", DRAIN_TOKEN),
            ("SPIN_VARIABLE_DRAIN_RUN_BOUND_MS", "0"),
        ],
    )
    .await;
    claims(&bounded, 4).await;
    let r = drain_with(&bounded, "/admin/drain", Some(&bearer(DRAIN_TOKEN))).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let report = r.json();
    assert_eq!(report["complete"].as_bool(), Some(false), "{report}");
    assert_eq!(report["entries"].as_i64(), Some(0), "{report}");
    assert_eq!(report["backlog"].as_i64(), Some(4), "{report}");
    assert_eq!(bounded.count("SELECT count(*) FROM tickets").await, 0);
    drop(bounded);

    let unbounded =
        TestApp::start_on(&redis, &pg, &[("SPIN_VARIABLE_DRAIN_TOKEN", DRAIN_TOKEN)]).await;
    let report = drain_with(&unbounded, "/admin/drain", Some(&bearer(DRAIN_TOKEN)))
        .await
        .json();
    assert_eq!(report["complete"].as_bool(), Some(true), "{report}");
    assert_eq!(report["backlog"].as_i64(), Some(0), "{report}");
    assert_eq!(unbounded.count("SELECT count(*) FROM tickets").await, 4);
}
