//! The API pieces the H5 app and the operator console need (issue 11), end to end through
//! the real components on the test host or real Spin: the server's clock in public reads,
//! edge-cache headers, CORS for configured origins, the ticket's QR image, and the
//! operator's lists (every activity, the blacklist).

use flashclaim_tests::{bearer, problem, token, TestApp};
use spin_test_host::client::Response;

const ORIGIN: &str = "https://m.example.com";
const OTHER_ORIGIN: &str = "https://evil.example.com";

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn header<'r>(r: &'r Response, name: &str) -> Option<&'r str> {
    r.headers.get(name).map(|v| v.to_str().unwrap())
}

/// Every value of a header, comma lists split (`Vary: Authorization, Origin`).
fn list(r: &Response, name: &str) -> Vec<String> {
    r.headers
        .get_all(name)
        .iter()
        .flat_map(|v| v.to_str().unwrap().split(','))
        .map(|v| v.trim().to_ascii_lowercase())
        .collect()
}

fn code_of(claim: &Response) -> String {
    assert_eq!(claim.status, 201, "{}", claim.text());
    // The route id (for a counter activity it is also the code shown).
    let ticket = &claim.json()["tickets"][0];
    ticket["id"]
        .as_str()
        .or(ticket["code"].as_str())
        .unwrap()
        .to_string()
}

/// `server_time` is the server's clock with milliseconds, and `Date` says the same second.
fn assert_server_time(r: &Response, before: i64, after: i64) {
    let text = r.json()["server_time"].as_str().unwrap().to_string();
    assert_eq!(text.len(), "2026-11-21T12:00:00.000Z".len(), "{text}");
    let t = flashclaim_core::time::Millis::parse_rfc3339(&text)
        .unwrap()
        .0;
    // Same machine, same clock: the server's time lies within the request's span.
    assert!((before - 5..=after + 5).contains(&t), "{text}");
    let date = header(r, "date").expect("a Date header");
    assert_eq!(
        r.headers.get_all("date").iter().count(),
        1,
        "one Date header"
    );
    assert_eq!(
        date,
        flashclaim_core::time::Millis(t).http_date(),
        "Date is the second of server_time"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn public_reads_carry_the_server_time_and_may_be_cached_by_an_edge() {
    let t = TestApp::start().await;
    let id = t.create_activity(10, "").await;
    t.publish(id).await;

    let before = now_ms();
    let list = t.send("GET", "/api/activities", None, "").await;
    let detail = t
        .send("GET", &format!("/api/activities/{id}"), None, "")
        .await;
    let after = now_ms();
    for r in [&list, &detail] {
        assert_eq!(r.status, 200, "{}", r.text());
        assert_server_time(r, before, after);
        assert_eq!(header(r, "cache-control"), Some("public, max-age=2"));
        assert!(self::list(r, "vary").contains(&"origin".into()));
    }
    assert!(
        self::list(&detail, "vary").contains(&"authorization".into()),
        "an edge must not serve the public detail to a caller with a token"
    );
    assert!(!list.text().contains("my_claimed") && !detail.text().contains("my_claimed"));

    // Made for the caller's token: private.
    let user = bearer(&token("reader", None));
    let mine = t
        .send("GET", &format!("/api/activities/{id}"), Some(&user), "")
        .await;
    assert_eq!(mine.status, 200);
    assert_eq!(mine.json()["my_claimed"], 0);
    assert!(header(&mine, "cache-control")
        .unwrap()
        .starts_with("private"));
    assert!(self::list(&mine, "vary").contains(&"authorization".into()));
    assert!(mine.json()["server_time"].is_string());

    // A stale token only leaves out my_claimed: the answer is the public one.
    let stale = t
        .send(
            "GET",
            &format!("/api/activities/{id}"),
            Some("Bearer not.a.token"),
            "",
        )
        .await;
    assert_eq!(header(&stale, "cache-control"), Some("public, max-age=2"));

    // Claims, tickets and errors are never kept by a shared cache.
    let claim = t.claim(id, "reader", "").await;
    assert_eq!(claim.status, 201, "{}", claim.text());
    assert_eq!(header(&claim, "cache-control"), Some("no-store"));
    let again = t.claim(id, "reader", "").await;
    problem(&again, 409, "limit_reached");
    assert_eq!(header(&again, "cache-control"), Some("no-store"));
    let tickets = t.send("GET", "/api/tickets", Some(&user), "").await;
    assert!(header(&tickets, "cache-control")
        .unwrap()
        .starts_with("private"));
    let missing = t.send("GET", "/api/activities/999999", None, "").await;
    problem(&missing, 404, "not_found");
    assert_eq!(header(&missing, "cache-control"), Some("no-store"));
    let bad = t.send("GET", "/api/activities?limit=0", None, "").await;
    problem(&bad, 400, "invalid_request");
    assert_eq!(header(&bad, "cache-control"), Some("no-store"));
}

fn preflight_headers<'a>(origin: &'a str, method: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("origin", origin),
        ("access-control-request-method", method),
        (
            "access-control-request-headers",
            "authorization, content-type, idempotency-key",
        ),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn configured_origins_get_preflights_and_cors_headers_and_no_one_else_does() {
    let t = TestApp::start_with(&[
        (
            "SPIN_VARIABLE_CORS_ALLOWED_ORIGINS",
            "https://m.example.com/, http://localhost:5173",
        ),
        ("SPIN_VARIABLE_CLAIM_RATE_LIMIT", "1/60000"),
    ])
    .await;
    let id = t.create_activity(10, r#","per_user_limit":5"#).await;
    t.publish(id).await;

    // A preflight of every component's routes is answered before any token check.
    for (method, path) in [
        ("POST", format!("/api/activities/{id}/claims")),
        ("GET", format!("/api/activities/{id}")),
        ("DELETE", "/api/tickets/1-X".to_string()),
        ("POST", "/api/sessions".to_string()),
        ("POST", "/admin/activities".to_string()),
        ("GET", "/healthz".to_string()),
    ] {
        let r = t
            .client
            .send("OPTIONS", &path, &preflight_headers(ORIGIN, method), "")
            .await
            .unwrap();
        assert_eq!(r.status, 204, "{path}: {}", r.text());
        assert_eq!(header(&r, "access-control-allow-origin"), Some(ORIGIN));
        let allowed = list(&r, "access-control-allow-headers");
        for h in ["authorization", "content-type", "idempotency-key"] {
            assert!(allowed.contains(&h.into()), "{path}: {allowed:?}");
        }
        assert!(list(&r, "access-control-allow-methods").contains(&method.to_ascii_lowercase()));
        assert!(header(&r, "access-control-max-age").is_some());
        assert!(r.body.is_empty());

        let refused = t
            .client
            .send(
                "OPTIONS",
                &path,
                &preflight_headers(OTHER_ORIGIN, method),
                "",
            )
            .await
            .unwrap();
        assert!(refused.status < 500, "{path}: {}", refused.status);
        assert_eq!(header(&refused, "access-control-allow-origin"), None);
    }

    // A claim from an allowed origin can read its answer, and Retry-After when limited.
    let user = bearer(&token("cdn-user", None));
    let claim_from = |origin: &'static str| {
        let user = user.clone();
        let client = t.client.clone();
        let path = format!("/api/activities/{id}/claims");
        async move {
            client
                .send(
                    "POST",
                    &path,
                    &[
                        ("origin", origin),
                        ("authorization", &user),
                        ("content-type", "application/json"),
                    ],
                    "{}",
                )
                .await
                .unwrap()
        }
    };
    let first = claim_from(ORIGIN).await;
    assert_eq!(first.status, 201, "{}", first.text());
    assert_eq!(header(&first, "access-control-allow-origin"), Some(ORIGIN));
    assert!(list(&first, "vary").contains(&"origin".into()));
    let limited = claim_from(ORIGIN).await;
    problem(&limited, 429, "rate_limited");
    assert_eq!(
        header(&limited, "access-control-allow-origin"),
        Some(ORIGIN)
    );
    assert!(list(&limited, "access-control-expose-headers").contains(&"retry-after".into()));
    assert!(header(&limited, "retry-after").is_some());

    let other = claim_from(OTHER_ORIGIN).await;
    assert_eq!(header(&other, "access-control-allow-origin"), None);
    assert_eq!(header(&other, "access-control-expose-headers"), None);

    // Reads and admin answers too; same-origin requests (no Origin) get no CORS header.
    let read = t
        .client
        .send(
            "GET",
            "/api/activities",
            &[("origin", "http://localhost:5173")],
            "",
        )
        .await
        .unwrap();
    assert_eq!(
        header(&read, "access-control-allow-origin"),
        Some("http://localhost:5173")
    );
    let admin = t
        .client
        .send(
            "GET",
            "/admin/blacklist",
            &[("origin", ORIGIN), ("authorization", &t.admin)],
            "",
        )
        .await
        .unwrap();
    assert_eq!(admin.status, 200, "{}", admin.text());
    assert_eq!(header(&admin, "access-control-allow-origin"), Some(ORIGIN));
    let plain = t.send("GET", "/api/activities", None, "").await;
    assert_eq!(header(&plain, "access-control-allow-origin"), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_configured_origins_no_cross_origin_page_is_answered() {
    let t = TestApp::start().await;
    let id = t.create_activity(10, "").await;
    t.publish(id).await;
    let path = format!("/api/activities/{id}/claims");
    let preflight = t
        .client
        .send("OPTIONS", &path, &preflight_headers(ORIGIN, "POST"), "")
        .await
        .unwrap();
    assert!(
        preflight.status < 500 && preflight.status != 204,
        "{}",
        preflight.status
    );
    assert_eq!(header(&preflight, "access-control-allow-origin"), None);
    let read = t
        .client
        .send(
            "GET",
            &format!("/api/activities/{id}"),
            &[("origin", ORIGIN)],
            "",
        )
        .await
        .unwrap();
    assert_eq!(read.status, 200);
    assert_eq!(header(&read, "access-control-allow-origin"), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ticket_qr_image_is_drawn_by_the_server_for_its_owner_only() {
    let t = TestApp::start().await;
    let id = t.create_activity(10, "").await;
    t.publish(id).await;
    let code = code_of(&t.claim(id, "holder", "").await);
    let holder = bearer(&token("holder", None));
    let path = format!("/api/tickets/{code}/qr.svg");

    let image = t.send("GET", &path, Some(&holder), "").await;
    assert_eq!(image.status, 200, "{}", image.text());
    assert_eq!(header(&image, "content-type"), Some("image/svg+xml"));
    assert!(header(&image, "cache-control")
        .unwrap()
        .starts_with("private"));
    assert!(list(&image, "vary").contains(&"authorization".into()));
    // Exactly the QR symbol of the ticket's own payload.
    let ticket = t
        .send("GET", &format!("/api/tickets/{code}"), Some(&holder), "")
        .await
        .json();
    let payload = ticket["qr"].as_str().unwrap();
    assert_eq!(
        image.text(),
        flashclaim_core::qr::svg(payload).unwrap(),
        "the image draws the ticket's qr payload"
    );

    // Anyone else gets the answer of an unknown ticket; without a token, 401.
    let other = t
        .send("GET", &path, Some(&bearer(&token("someone", None))), "")
        .await;
    problem(&other, 404, "not_found");
    let unknown = t
        .send(
            "GET",
            &format!("/api/tickets/{id}-NOPE/qr.svg"),
            Some(&holder),
            "",
        )
        .await;
    assert_eq!(other.text(), unknown.text(), "the same answer as no ticket");
    problem(
        &t.send("GET", &path, Some(&t.admin), "").await,
        404,
        "not_found",
    );
    problem(
        &t.send("GET", &path, None, "").await,
        401,
        "unauthenticated",
    );
    // A malformed code is answered as the ticket route answers it, never with a 5xx.
    for bad in ["%00", "abc-1", "1-", "1-%3Cscript%3E"] {
        let image = t
            .send(
                "GET",
                &format!("/api/tickets/{bad}/qr.svg"),
                Some(&holder),
                "",
            )
            .await;
        let json = t
            .send("GET", &format!("/api/tickets/{bad}"), Some(&holder), "")
            .await;
        assert!(matches!(image.status, 400 | 404), "{bad}: {}", image.text());
        assert_eq!(
            (image.status, image.text()),
            (json.status, json.text()),
            "{bad}"
        );
    }
    problem(
        &t.send("DELETE", &path, Some(&holder), "").await,
        405,
        "method_not_allowed",
    );
    // The QR image changed nothing: the ticket is still the holder's, active.
    let still = t
        .send("GET", &format!("/api/tickets/{code}"), Some(&holder), "")
        .await;
    assert_eq!(still.json()["status"], "active");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_operator_lists_every_activity_newest_first_by_status_a_page_at_a_time() {
    let t = TestApp::start().await;
    // Nothing yet: an empty page, not a hung query (spin#3671).
    let empty = t.as_admin("GET", "/admin/activities", "").await;
    assert_eq!(empty.status, 200, "{}", empty.text());
    assert_eq!(
        empty.json(),
        serde_json::json!({"activities": [], "next_cursor": null})
    );

    let draft = t.create_activity(5, "").await;
    let published = t.create_activity(7, "").await;
    t.publish(published).await;
    let closed = t.create_activity(9, "").await;
    t.publish(closed).await;
    let r = t
        .as_admin("POST", &format!("/admin/activities/{closed}/close"), "")
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    t.claim(published, "buyer", "").await;

    let ids = |r: &Response| -> Vec<i64> {
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["activities"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["id"].as_i64().unwrap())
            .collect()
    };
    let all = t.as_admin("GET", "/admin/activities", "").await;
    assert_eq!(ids(&all), vec![closed, published, draft], "newest first");
    let statuses: Vec<String> = all.json()["activities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(statuses, ["closed", "published", "draft"]);
    assert_eq!(all.json()["activities"][1]["stock_left"], 6, "live stock");
    for (status, expected) in [
        ("draft", draft),
        ("published", published),
        ("closed", closed),
    ] {
        let r = t
            .as_admin("GET", &format!("/admin/activities?status={status}"), "")
            .await;
        assert_eq!(ids(&r), vec![expected], "{status}");
    }

    // Paging: one at a time walks them all, newest first, and stops.
    let mut seen = Vec::new();
    let mut path = "/admin/activities?limit=1".to_string();
    loop {
        let page = t.as_admin("GET", &path, "").await;
        seen.extend(ids(&page));
        match page.json()["next_cursor"].as_str() {
            Some(cursor) => path = format!("/admin/activities?limit=1&cursor={cursor}"),
            None => break,
        }
        assert!(seen.len() <= 3, "paging does not stop: {seen:?}");
    }
    assert_eq!(seen, vec![closed, published, draft]);

    // One activity whatever its status: drafts too, which the public API never shows.
    let one = t
        .as_admin("GET", &format!("/admin/activities/{draft}"), "")
        .await;
    assert_eq!(one.status, 200, "{}", one.text());
    assert_eq!(one.json()["status"], "draft");
    assert_eq!(one.json()["id"], draft);
    problem(
        &t.send("GET", &format!("/api/activities/{draft}"), None, "")
            .await,
        404,
        "not_found",
    );
    problem(
        &t.as_admin("GET", "/admin/activities/999999", "").await,
        404,
        "not_found",
    );

    for bad in [
        "status=open",
        "status=",
        "limit=0",
        "limit=101",
        "cursor=-1",
        "sort=name",
    ] {
        problem(
            &t.as_admin("GET", &format!("/admin/activities?{bad}"), "")
                .await,
            400,
            "invalid_request",
        );
    }
    // A malformed id is an unknown one, as on every activity route.
    problem(
        &t.as_admin("GET", "/admin/activities/abc", "").await,
        404,
        "not_found",
    );
    // An admin answer is nobody else's: never kept by a shared cache.
    assert!(header(&all, "cache-control")
        .unwrap()
        .starts_with("private"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_operator_lists_the_blacklist_with_reasons_a_page_at_a_time() {
    let t = TestApp::start().await;
    let empty = t.as_admin("GET", "/admin/blacklist", "").await;
    assert_eq!(empty.status, 200, "{}", empty.text());
    assert_eq!(
        empty.json(),
        serde_json::json!({"users": [], "next_cursor": null})
    );
    for (user, reason) in [
        ("scalper-b", "bot traffic"),
        ("scalper-a", ""),
        ("zed-c", "resold tickets"),
    ] {
        let body = serde_json::json!({ "reason": reason }).to_string();
        let path = format!("/admin/blacklist/{user}");
        let r = t.as_admin("PUT", &path, &body).await;
        assert_eq!(r.status, 200, "{user}: {}", r.text());
    }
    let first = t.as_admin("GET", "/admin/blacklist?limit=2", "").await;
    assert_eq!(first.status, 200, "{}", first.text());
    let users = first.json()["users"].clone();
    assert_eq!(users[0]["user_id"], "scalper-a");
    assert_eq!(users[0]["reason"], "");
    assert_eq!(users[1]["user_id"], "scalper-b");
    assert_eq!(users[1]["reason"], "bot traffic");
    assert!(users[1]["created_at"].as_str().unwrap().ends_with('Z'));
    let cursor = first.json()["next_cursor"].as_str().unwrap().to_string();
    let second = t
        .as_admin(
            "GET",
            &format!("/admin/blacklist?limit=2&cursor={cursor}"),
            "",
        )
        .await;
    assert_eq!(second.status, 200, "{}", second.text());
    assert_eq!(second.json()["users"][0]["user_id"], "zed-c");
    assert_eq!(second.json()["users"][0]["reason"], "resold tickets");
    assert_eq!(second.json()["next_cursor"], serde_json::Value::Null);

    for bad in ["cursor=xyz", "limit=0", "user=scalper-a"] {
        problem(
            &t.as_admin("GET", &format!("/admin/blacklist?{bad}"), "")
                .await,
            400,
            "invalid_request",
        );
    }
    problem(
        &t.as_user("scalper-a", "GET", "/admin/blacklist", "").await,
        403,
        "forbidden",
    );
}
