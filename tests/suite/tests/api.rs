//! The product API end to end (issue: the whole product API): auth, returns, code pools,
//! passes, blacklist, redeem, listing, admin changes, stats, export and reconcile, through
//! the real components on the test host with a real Redis and Postgres.

use std::collections::HashMap;
use std::sync::Arc;

use flashclaim_tests::{bearer, problem, TestApp};

/// The first ticket's id: what the ticket routes take (`<activity id>-<code>`).
fn code_of(claim: &serde_json::Value) -> String {
    claim["tickets"][0]["id"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn users_register_log_in_and_claim_with_the_issued_token() {
    let t = TestApp::start().await;
    let register = |body: &'static str| t.send("POST", "/api/users", None, body);
    let r = register(r#"{"username":"Alice","password":"correct horse","nickname":"Al"}"#).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let alice_id = r.json()["id"].as_str().unwrap().to_string();
    assert_eq!(r.json()["username"], "alice");
    problem(
        &register(r#"{"username":"alice","password":"another one"}"#).await,
        409,
        "conflict",
    );
    problem(
        &register(r#"{"username":"bob","password":"short"}"#).await,
        400,
        "invalid_request",
    );
    let stored: String = t
        .pg()
        .await
        .query_one(
            "SELECT password_hash FROM users WHERE username = 'alice'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(stored.starts_with("$argon2id$"), "{stored}");

    let login = |body: &'static str| t.send("POST", "/api/sessions", None, body);
    let wrong = login(r#"{"username":"alice","password":"wrong horse"}"#).await;
    let unknown = login(r#"{"username":"nobody","password":"correct horse"}"#).await;
    problem(&wrong, 401, "unauthenticated");
    assert_eq!(wrong.text(), unknown.text(), "the same answer for both");
    let session = login(r#"{"username":"ALICE","password":"correct horse"}"#).await;
    assert_eq!(session.status, 200, "{}", session.text());
    let token = bearer(session.json()["token"].as_str().unwrap());
    assert!(session.json()["expires_at"]
        .as_str()
        .unwrap()
        .ends_with('Z'));

    let id = t.create_activity(5, r#","per_user_limit":2"#).await;
    t.publish(id).await;
    let path = format!("/api/activities/{id}");
    let claim = t
        .send(
            "POST",
            &format!("{path}/claims"),
            Some(&token),
            r#"{"quantity":2}"#,
        )
        .await;
    assert_eq!(claim.status, 201, "{}", claim.text());
    assert_eq!(claim.json()["tickets"].as_array().unwrap().len(), 2);
    let mine = t.send("GET", &path, Some(&token), "").await.json();
    assert_eq!(
        (mine["my_claimed"].as_i64(), mine["stock_left"].as_i64()),
        (Some(2), Some(3))
    );
    assert!(t
        .send("GET", &path, None, "")
        .await
        .json()
        .get("my_claimed")
        .is_none());
    t.drain().await;
    let owner: String = t
        .pg()
        .await
        .query_one("SELECT DISTINCT user_id FROM tickets", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        owner, alice_id,
        "tickets belong to the registered user's id"
    );
    // An operator created by the set-up tool logs in like anyone else and gets the role.
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_flashclaim-operator"))
        .arg(&t.pg_url)
        .env("FLASHCLAIM_ADMIN_USERNAME", "boss")
        .env("FLASHCLAIM_ADMIN_PASSWORD", "operator password")
        .status()
        .unwrap();
    assert!(status.success());
    let admin = login(r#"{"username":"boss","password":"operator password"}"#).await;
    assert_eq!(admin.json()["user"]["role"], "admin", "{}", admin.text());
    let admin = bearer(admin.json()["token"].as_str().unwrap());
    let stats = t
        .send(
            "GET",
            &format!("/admin/activities/{id}/stats"),
            Some(&admin),
            "",
        )
        .await;
    assert_eq!(stats.status, 200, "{}", stats.text());
}

#[tokio::test(flavor = "multi_thread")]
async fn return_then_reclaim_keeps_stock_exact_and_the_drain_records_it() {
    let t = TestApp::start().await;
    let id = t.create_activity(2, "").await;
    t.publish(id).await;
    let a = code_of(&t.claim(id, "a", "").await.json());
    assert_eq!(t.claim(id, "b", "").await.status, 201);
    problem(&t.claim(id, "c", "").await, 409, "sold_out");

    let ticket = format!("/api/tickets/{a}");
    problem(
        &t.as_user("b", "DELETE", &ticket, "").await,
        404,
        "not_found",
    );
    problem(
        &t.send("DELETE", &ticket, None, "").await,
        401,
        "unauthenticated",
    );
    let back = t.as_user("a", "DELETE", &ticket, "").await;
    assert_eq!(
        (back.status, back.json()["stock_left"].as_i64()),
        (200, Some(1)),
        "{}",
        back.text()
    );
    problem(
        &t.as_user("a", "DELETE", &ticket, "").await,
        409,
        "conflict",
    );
    assert_eq!(
        t.as_user("a", "GET", &ticket, "").await.json()["status"],
        "returned"
    );
    assert_eq!(t.claim(id, "c", "").await.status, 201);
    problem(&t.claim(id, "d", "").await, 409, "sold_out");

    t.drain().await;
    assert_eq!(
        t.count(&format!(
            "SELECT count(*) FROM tickets WHERE activity_id = {id} AND status = 'active'"
        ))
        .await,
        2
    );
    assert_eq!(
        t.count(&format!("SELECT count(*) FROM tickets WHERE activity_id = {id} AND status = 'returned' AND returned_at IS NOT NULL")).await,
        1
    );
    let stats = t
        .as_admin("GET", &format!("/admin/activities/{id}/stats"), "")
        .await
        .json();
    assert_eq!(
        (
            stats["sold"].as_i64(),
            stats["returned"].as_i64(),
            stats["stock_left"].as_i64()
        ),
        (Some(2), Some(1), Some(0)),
        "{stats}"
    );
    let report = t
        .as_admin("GET", &format!("/admin/activities/{id}/reconcile"), "")
        .await
        .json();
    assert_eq!(report["ok"], true, "{report}");
    let minutes = stats["claims_per_minute"].as_array().unwrap();
    let total: i64 = minutes.iter().map(|m| m["claims"].as_i64().unwrap()).sum();
    assert_eq!(total, 3, "three claims in the last hour: {stats}");
}

#[tokio::test(flavor = "multi_thread")]
async fn code_pools_are_uploaded_whole_or_not_at_all_and_codes_come_back_on_return() {
    let t = TestApp::start().await;
    let id = t.create_activity(10, r#","kind":"codes""#).await;
    let codes = format!("/admin/activities/{id}/codes");
    let upload =
        |ct: &'static str, body: &str| t.send_typed("POST", &codes, &t.admin, ct, body.to_string());
    let r = upload("text/csv", "code\r\nAAA-1\r\n\"AAA-2\"\r\n").await;
    assert_eq!(
        (r.status, r.json()["total_codes"].as_i64()),
        (201, Some(2)),
        "{}",
        r.text()
    );
    let r = upload("text/csv", "BBB-1\nBBB-1\nbad code\n").await;
    problem(&r, 422, "codes_rejected");
    assert_eq!(
        (
            r.json()["duplicates"][0].as_str(),
            r.json()["bad_count"].as_i64()
        ),
        (Some("BBB-1"), Some(1))
    );
    problem(
        &upload("application/json", r#"{"codes":["CCC-1","AAA-1"]}"#).await,
        422,
        "codes_rejected",
    );
    problem(
        &upload("application/xml", "<codes/>").await,
        400,
        "invalid_request",
    );
    assert_eq!(
        t.count(&format!(
            "SELECT count(*) FROM ticket_codes WHERE activity_id = {id}"
        ))
        .await,
        2,
        "nothing half-applied"
    );

    t.publish(id).await;
    let r = upload("application/json", r#"{"codes":["LATE-1"]}"#).await;
    assert_eq!(
        (r.status, r.json()["pool_left"].as_i64()),
        (201, Some(3)),
        "{}",
        r.text()
    );
    let mut issued = Vec::new();
    let mut shown = Vec::new();
    for user in ["a", "b", "c"] {
        let claim = t.claim(id, user, "").await.json();
        issued.push(code_of(&claim));
        shown.push(claim["tickets"][0]["code"].as_str().unwrap().to_string());
    }
    assert_eq!(
        issued,
        vec![
            format!("{id}-AAA-1"),
            format!("{id}-AAA-2"),
            format!("{id}-LATE-1")
        ]
    );
    assert_eq!(
        shown,
        ["AAA-1", "AAA-2", "LATE-1"],
        "pool codes as uploaded"
    );
    problem(&t.claim(id, "d", "").await, 409, "sold_out");
    assert_eq!(
        t.as_user("a", "DELETE", &format!("/api/tickets/{}", issued[0]), "")
            .await
            .status,
        200
    );
    assert_eq!(
        code_of(&t.claim(id, "d", "").await.json()),
        issued[0],
        "the returned code is handed out again"
    );
    t.drain().await;
    let rows = t
        .count(&format!(
            "SELECT count(*) FROM tickets WHERE activity_id = {id} AND code = 'AAA-1'"
        ))
        .await;
    assert_eq!(rows, 2, "the earlier holder's row is kept as returned");
    let counter = t.create_activity(1, "").await;
    let r = t
        .send_typed(
            "POST",
            &format!("/admin/activities/{counter}/codes"),
            &t.admin,
            "text/csv",
            "X1\n".into(),
        )
        .await;
    problem(&r, 409, "conflict");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ticket_is_verified_and_redeemed_once() {
    let t = TestApp::start().await;
    let id = t.create_activity(2, "").await;
    t.publish(id).await;
    let code = code_of(&t.claim(id, "a", "").await.json());
    let mine = t
        .as_user("a", "GET", &format!("/api/tickets/{code}"), "")
        .await
        .json();
    let qr = mine["qr"].as_str().unwrap().to_string();
    assert!(qr.starts_with(&format!("FC1.{code}.")), "{qr}");
    let redeem = format!("/admin/tickets/{code}/redeem");
    let forged = serde_json::json!({ "verification": "AAAAAAAAAAAAAAAAAAAAAA" }).to_string();
    problem(
        &t.as_admin("POST", &redeem, &forged).await,
        422,
        "verification_failed",
    );
    let body = serde_json::json!({ "qr": qr }).to_string();
    let other = code_of(&t.claim(id, "b", "").await.json());
    problem(
        &t.as_admin("POST", &format!("/admin/tickets/{other}/redeem"), &body)
            .await,
        422,
        "verification_failed",
    );
    let r = t.as_admin("POST", &redeem, &body).await;
    assert_eq!(
        (r.status, r.json()["user_id"].as_str()),
        (200, Some("a")),
        "{}",
        r.text()
    );
    problem(&t.as_admin("POST", &redeem, &body).await, 409, "conflict");
    problem(
        &t.as_user("a", "POST", &redeem, &body).await,
        403,
        "forbidden",
    );
    t.drain().await;
    assert_eq!(
        t.count(
            "SELECT count(*) FROM tickets WHERE status = 'redeemed' AND redeemed_at IS NOT NULL"
        )
        .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn blacklisted_users_are_refused_until_removed_even_on_activities_published_later() {
    let t = TestApp::start().await;
    let id = t.create_activity(5, "").await;
    t.publish(id).await;
    let r = t
        .as_admin("PUT", "/admin/blacklist/mallory", r#"{"reason":"bot"}"#)
        .await;
    assert_eq!(
        (r.status, r.json()["activities"].as_i64()),
        (200, Some(1)),
        "{}",
        r.text()
    );
    problem(&t.claim(id, "mallory", "").await, 403, "forbidden");
    let later = t.create_activity(5, "").await;
    t.publish(later).await;
    problem(&t.claim(later, "mallory", "").await, 403, "forbidden");
    assert_eq!(
        t.as_admin("DELETE", "/admin/blacklist/mallory", "")
            .await
            .status,
        200
    );
    assert_eq!(t.claim(id, "mallory", "").await.status, 201);
    assert_eq!(t.count("SELECT count(*) FROM blacklist").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_activity_with_passes_needs_one_per_claim() {
    let t = TestApp::start_with(&[("SPIN_VARIABLE_CLAIM_PASS_FACTOR", "1")]).await;
    let id = t.create_activity(1, r#","require_pass":true"#).await;
    t.publish(id).await;
    let passes = format!("/api/activities/{id}/passes");
    problem(&t.claim(id, "a", "").await, 409, "pass_required");
    assert_eq!(t.as_user("a", "POST", &passes, "").await.status, 201);
    assert_eq!(t.as_user("a", "POST", &passes, "").await.status, 200);
    problem(&t.as_user("b", "POST", &passes, "").await, 409, "sold_out");
    assert_eq!(t.claim(id, "a", "").await.status, 201);
    problem(
        &t.send("POST", &passes, None, "").await,
        401,
        "unauthenticated",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_listing_pages_published_activities_with_live_stock() {
    let t = TestApp::start().await;
    let mut published = Vec::new();
    for _ in 0..3 {
        let id = t.create_activity(4, "").await;
        t.publish(id).await;
        published.push(id);
    }
    let draft = t.create_activity(4, "").await;
    let first = t.send("GET", "/api/activities?limit=2", None, "").await;
    assert_eq!(first.status, 200, "{}", first.text());
    let page = first.json();
    let ids: Vec<i64> = page["activities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, published[..2]);
    let cursor = page["next_cursor"].as_str().unwrap().to_string();
    assert_eq!(t.claim(published[2], "a", "").await.status, 201);
    let rest = t
        .send(
            "GET",
            &format!("/api/activities?limit=2&cursor={cursor}"),
            None,
            "",
        )
        .await
        .json();
    assert_eq!(rest["activities"].as_array().unwrap().len(), 1);
    assert_eq!(
        (
            rest["activities"][0]["id"].as_i64(),
            rest["activities"][0]["stock_left"].as_i64()
        ),
        (Some(published[2]), Some(3))
    );
    assert!(rest["next_cursor"].is_null());
    assert!(!page.to_string().contains(&format!("\"id\":{draft},")));
    problem(
        &t.send("GET", "/api/activities?limit=1000", None, "").await,
        400,
        "invalid_request",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_draft_changes_freely_and_a_published_activity_only_in_its_display_fields() {
    let t = TestApp::start().await;
    let id = t.create_activity(4, "").await;
    let path = format!("/admin/activities/{id}");
    let r = t
        .as_admin("PATCH", &path, r#"{"stock_total":9,"per_user_limit":3}"#)
        .await;
    assert_eq!(
        (r.status, r.json()["stock_total"].as_i64()),
        (200, Some(9)),
        "{}",
        r.text()
    );
    assert_eq!(t.publish(id).await.json()["stock_left"], 9);
    assert_eq!(t.detail(id, None).await.json()["name"], "Free ride");
    problem(
        &t.as_admin("PATCH", &path, r#"{"stock_total":99}"#).await,
        409,
        "conflict",
    );
    problem(
        &t.as_admin("PATCH", &path, r#"{"name":""}"#).await,
        400,
        "invalid_request",
    );
    assert_eq!(
        t.as_admin("PATCH", &path, r#"{"name":"Renamed"}"#)
            .await
            .status,
        200
    );
    assert_eq!(t.detail(id, None).await.json()["name"], "Renamed");
    problem(
        &t.as_admin("PATCH", "/admin/activities/999999", r#"{"name":"x"}"#)
            .await,
        404,
        "not_found",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn reconcile_reports_drift_injected_on_purpose() {
    let t = TestApp::start().await;
    let id = t.create_activity(5, "").await;
    t.publish(id).await;
    let mut codes = Vec::new();
    for user in ["a", "b", "c"] {
        codes.push(code_of(&t.claim(id, user, "").await.json()));
    }
    t.drain().await;
    let path = format!("/admin/activities/{id}/reconcile");
    assert_eq!(t.as_admin("GET", &path, "").await.json()["ok"], true);
    // Drift: one row lost from Postgres, one ticket's stock created out of nowhere in Redis.
    let lost = codes[1].split_once('-').unwrap().1.to_string();
    t.pg()
        .await
        .execute("DELETE FROM tickets WHERE code = $1", &[&lost])
        .await
        .unwrap();
    let mut redis = t.redis().await;
    let _: i64 = redis::cmd("HINCRBY")
        .arg(
            flashclaim_core::keys::ActivityKeys::new(flashclaim_core::ids::ActivityId::from_db(id))
                .stocks(),
        )
        .arg("default")
        .arg(1)
        .query_async(&mut redis)
        .await
        .unwrap();
    let report = t.as_admin("GET", &path, "").await.json();
    assert_eq!(report["ok"], false, "{report}");
    assert_eq!(report["missing_in_postgres"], serde_json::json!([lost]));
    assert_eq!(report["stock_drift"], -1);
    assert_eq!(report["ticket_types"][0]["stock_drift"], -1, "{report}");
}

/// RFC 4180 reader for the test: fields, quoted or not, rows ended by CRLF.
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let (mut rows, mut row, mut field) = (Vec::new(), Vec::new(), String::new());
    let (mut chars, mut quoted) = (text.chars().peekable(), false);
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut field)),
            (false, '\r') => {}
            (false, '\n') => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            (false, c) => field.push(c),
        }
    }
    rows
}

#[tokio::test(flavor = "multi_thread")]
async fn the_claims_export_streams_every_row_as_postgres_has_it() {
    const ROWS: i64 = 100_000;
    let t = TestApp::start().await;
    let id = t.create_activity(ROWS, "").await;
    t.publish(id).await;
    // Two claims through the API (ids with characters CSV must quote), the rest written
    // straight into Postgres: the export is what is tested, not the claim path.
    assert_eq!(t.claim(id, "comma,user", "").await.status, 201);
    assert_eq!(t.claim(id, "plain-user", "").await.status, 201);
    t.drain().await;
    let pg = t.pg().await;
    pg.batch_execute(&format!(
        "INSERT INTO claims (id, activity_id, user_id, quantity, claimed_at) \
         SELECT 'bulk-' || n, {id}, 'user-' || n, 1, now() - n * interval '1 ms' FROM generate_series(3, {ROWS}) n; \
         INSERT INTO tickets (claim_id, activity_id, user_id, code, status, claimed_at, returned_at) \
         SELECT 'bulk-' || n, {id}, CASE WHEN n % 5 = 0 THEN 'say \"hi\", ' || n ELSE 'user-' || n END, 'B' || n, CASE WHEN n % 7 = 0 THEN 'returned' ELSE 'active' END, \
                now() - n * interval '1 ms', CASE WHEN n % 7 = 0 THEN now() END \
         FROM generate_series(3, {ROWS}) n;"
    ))
    .await
    .unwrap();
    let r = t
        .as_admin("GET", &format!("/admin/activities/{id}/claims.csv"), "")
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/csv; charset=utf-8"));
    let rows = parse_csv(&r.text());
    assert_eq!(
        rows[0],
        [
            "claim_id",
            "activity_id",
            "user_id",
            "code",
            "status",
            "claimed_at",
            "returned_at",
            "redeemed_at",
            "drained_at",
            "ticket_type",
            "client_addr"
        ]
    );
    let expected = pg
        .query(
            "SELECT t.claim_id, t.user_id, t.code, t.status, \
                    (extract(epoch FROM t.claimed_at) * 1000)::int8, (extract(epoch FROM t.returned_at) * 1000)::int8 \
             FROM tickets t WHERE t.activity_id = $1 ORDER BY t.id",
            &[&id],
        )
        .await
        .unwrap();
    assert_eq!(rows.len() as i64 - 1, ROWS);
    assert_eq!(expected.len() as i64, ROWS);
    let time = |ms: Option<i64>| {
        ms.map(|m| flashclaim_core::time::Millis(m).to_string())
            .unwrap_or_default()
    };
    for (row, want) in rows[1..].iter().zip(expected.iter()) {
        assert_eq!(row[0], want.get::<_, String>(0));
        assert_eq!(row[1], id.to_string());
        assert_eq!(row[2], want.get::<_, String>(1));
        assert_eq!(row[3], format!("{id}-{}", want.get::<_, String>(2)));
        assert_eq!(row[4], want.get::<_, String>(3));
        assert_eq!(row[5], time(want.get(4)));
        assert_eq!(row[6], time(want.get(5)));
        assert_eq!(row[9], "default", "the type of an activity without types");
    }
    assert_eq!(rows[1][2], "comma,user", "quoted and unquoted back");
    assert_eq!(rows[5][2], "say \"hi\", 5", "quotes inside quoted fields");
    problem(
        &t.as_admin("GET", "/admin/activities/999999/claims.csv", "")
            .await,
        404,
        "not_found",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_reads_on_a_cold_activity_reads_postgres_once() {
    const READERS: usize = 1_000;
    let t = Arc::new(TestApp::start().await);
    let id = t.create_activity(5, "").await;
    t.publish(id).await; // publishing drops the cached view: the activity is cold
    let pg = t.pg().await;
    pg.batch_execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .await
        .unwrap();
    let loads = || async {
        t.pg()
            .await
            .query_one(
                "SELECT coalesce(sum(calls), 0)::int8 FROM pg_stat_statements s \
                 JOIN pg_database d ON d.oid = s.dbid \
                 WHERE d.datname = current_database() AND s.query LIKE '%LEFT JOIN activities ON activities.id = $1'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    let before = loads().await;
    let mut tasks = Vec::new();
    for _ in 0..READERS {
        let t = t.clone();
        tasks.push(tokio::spawn(async move { t.detail(id, None).await.status }));
    }
    let mut statuses: HashMap<u16, usize> = HashMap::new();
    for task in tasks {
        *statuses.entry(task.await.unwrap()).or_default() += 1;
    }
    assert_eq!(statuses, HashMap::from([(200, READERS)]));
    assert_eq!(
        loads().await - before,
        1,
        "one rebuild for {READERS} concurrent readers"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn authorization_matrix_every_route_by_anonymous_user_other_user_and_admin() {
    let t = TestApp::start().await;
    let id = t.create_activity(10, r#","per_user_limit":5"#).await;
    t.publish(id).await;
    let code = code_of(&t.claim(id, "owner", "").await.json());
    let other_code = code_of(&t.claim(id, "owner", "").await.json());
    let user = bearer(&flashclaim_tests::token("owner", None));
    let other = bearer(&flashclaim_tests::token("other", None));
    #[derive(Clone, Copy, PartialEq, Debug)]
    enum Who {
        Public,
        User,
        Owner,
        Admin,
    }
    let routes: Vec<(&str, String, Who)> = vec![
        ("GET", "/api/activities".into(), Who::Public),
        ("GET", format!("/api/activities/{id}"), Who::Public),
        ("POST", "/api/sessions".into(), Who::Public),
        ("GET", "/healthz".into(), Who::Public),
        ("POST", format!("/api/activities/{id}/claims"), Who::User),
        ("POST", format!("/api/activities/{id}/passes"), Who::User),
        ("GET", "/api/tickets".into(), Who::User),
        ("GET", format!("/api/tickets/{code}"), Who::Owner),
        ("GET", format!("/api/tickets/{code}/qr.svg"), Who::Owner),
        ("DELETE", format!("/api/tickets/{other_code}"), Who::Owner),
        ("POST", "/admin/activities".into(), Who::Admin),
        ("GET", "/admin/activities".into(), Who::Admin),
        ("GET", format!("/admin/activities/{id}"), Who::Admin),
        ("GET", "/admin/blacklist".into(), Who::Admin),
        ("PATCH", format!("/admin/activities/{id}"), Who::Admin),
        (
            "POST",
            format!("/admin/activities/{id}/publish"),
            Who::Admin,
        ),
        ("POST", format!("/admin/activities/{id}/codes"), Who::Admin),
        ("GET", format!("/admin/activities/{id}/stats"), Who::Admin),
        (
            "GET",
            format!("/admin/activities/{id}/claims.csv"),
            Who::Admin,
        ),
        (
            "GET",
            format!("/admin/activities/{id}/reconcile"),
            Who::Admin,
        ),
        ("PUT", "/admin/blacklist/someone".into(), Who::Admin),
        ("DELETE", "/admin/blacklist/someone".into(), Who::Admin),
        ("POST", format!("/admin/tickets/{code}/redeem"), Who::Admin),
        ("POST", "/admin/drain".into(), Who::Admin),
        ("POST", format!("/admin/activities/{id}/close"), Who::Admin),
    ];
    for (method, path, who) in routes {
        let anonymous = t.send(method, &path, None, "{}").await.status;
        let as_user = t.send(method, &path, Some(&user), "{}").await.status;
        let as_other = t.send(method, &path, Some(&other), "{}").await.status;
        let as_admin = t.send(method, &path, Some(&t.admin), "{}").await.status;
        let denied = |s: u16| s == 401 || s == 403;
        let case = format!("{method} {path}: anonymous {anonymous}, user {as_user}, other {as_other}, admin {as_admin}");
        match who {
            Who::Public => assert!(
                ![anonymous, as_user, as_admin].iter().any(|s| denied(*s)),
                "{case}"
            ),
            Who::User => {
                assert_eq!(anonymous, 401, "{case}");
                assert!(!denied(as_user) && !denied(as_admin), "{case}");
            }
            Who::Owner => {
                assert_eq!(
                    (anonymous, as_other),
                    (401, 404),
                    "{case}: another user's ticket is not found"
                );
                assert!(!denied(as_user) && as_user < 500, "{case}");
            }
            Who::Admin => {
                assert_eq!((anonymous, as_user, as_other), (401, 403, 403), "{case}");
                assert!(!denied(as_admin) && as_admin < 500, "{case}");
            }
        }
        assert!(
            ![anonymous, as_user, as_other, as_admin]
                .iter()
                .any(|s| *s >= 500 && *s != 503),
            "{case}"
        );
    }
}

/// method, path, authorization, body, expected status, expected problem code.
type BadInput<'a> = (&'a str, String, Option<String>, &'a str, u16, &'a str);

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_on_the_new_routes_is_a_4xx_problem_and_changes_nothing() {
    let t = TestApp::start().await;
    let id = t.create_activity(5, r#","kind":"codes""#).await;
    t.publish(id).await;
    let long_user = "u".repeat(65);
    let cases: Vec<BadInput> = vec![
        (
            "POST",
            "/api/users".into(),
            None,
            "not json",
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/api/users".into(),
            None,
            r#"{"username":"ok_name","password":"12345678","role":"admin"}"#,
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/api/sessions".into(),
            None,
            r#"{"username":1}"#,
            400,
            "invalid_request",
        ),
        (
            "GET",
            "/api/activities?cursor=abc".into(),
            None,
            "",
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/api/activities/abc/passes".into(),
            Some(bearer(&flashclaim_tests::token("a", None))),
            "",
            404,
            "not_found",
        ),
        (
            "DELETE",
            "/api/tickets/not-a-ticket".into(),
            Some(bearer(&flashclaim_tests::token("a", None))),
            "",
            404,
            "not_found",
        ),
        (
            "PATCH",
            format!("/admin/activities/{id}"),
            Some(t.admin.clone()),
            "[1]",
            400,
            "invalid_request",
        ),
        (
            "PATCH",
            format!("/admin/activities/{id}"),
            Some(t.admin.clone()),
            r#"{"name":"'; DROP TABLE activities; --"}"#,
            200,
            "",
        ),
        (
            "POST",
            format!("/admin/activities/{id}/codes"),
            Some(t.admin.clone()),
            r#"{"codes":"x"}"#,
            400,
            "invalid_request",
        ),
        (
            "PUT",
            format!("/admin/blacklist/{long_user}"),
            Some(t.admin.clone()),
            "",
            400,
            "invalid_request",
        ),
        (
            "PUT",
            "/admin/blacklist/someone".into(),
            Some(t.admin.clone()),
            r#"{"reason":5}"#,
            400,
            "invalid_request",
        ),
        (
            "POST",
            format!("/admin/tickets/{id}-NOPE/redeem"),
            Some(t.admin.clone()),
            "{}",
            400,
            "invalid_request",
        ),
        (
            "GET",
            "/admin/activities/0/stats".into(),
            Some(t.admin.clone()),
            "",
            404,
            "not_found",
        ),
    ];
    let snapshot = || async {
        (
            t.count("SELECT count(*) FROM users").await,
            t.count("SELECT count(*) FROM blacklist").await,
            t.count("SELECT count(*) FROM ticket_codes").await,
            t.count("SELECT count(*) FROM activities").await,
        )
    };
    let before = snapshot().await;
    for (method, path, auth, body, status, code) in cases {
        let r = t.send(method, &path, auth.as_deref(), body).await;
        if status == 200 {
            // SQL-looking input is stored and returned verbatim, never executed.
            assert_eq!(
                r.json()["name"],
                "'; DROP TABLE activities; --",
                "{}",
                r.text()
            );
        } else {
            problem(&r, status, code);
        }
    }
    assert_eq!(snapshot().await, before);
}

fn b64(bytes: &[u8]) -> String {
    flashclaim_core::jwt::b64url_encode(bytes)
}

/// A token with the given header and claims, signed HS256 with `secret`.
fn forged(header: &serde_json::Value, claims: &serde_json::Value, secret: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
    mac.update(input.as_bytes());
    format!("{input}.{}", b64(&mac.finalize().into_bytes()))
}

#[tokio::test(flavor = "multi_thread")]
async fn jwt_attacks_are_refused_everywhere_a_token_matters() {
    let t = TestApp::start().await;
    let id = t.create_activity(5, "").await;
    t.publish(id).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let secret = flashclaim_tests::JWT_SECRET.as_bytes();
    let hs = serde_json::json!({"alg": "HS256", "typ": "JWT"});
    let admin_claims = serde_json::json!({"sub": "attacker", "exp": now + 3600, "role": "admin"});
    let attacks: Vec<(&str, String)> = vec![
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(br#"{"alg":"none","typ":"JWT"}"#),
                b64(admin_claims.to_string().as_bytes())
            ),
        ),
        (
            "HS/RS confusion",
            forged(&serde_json::json!({"alg": "RS256"}), &admin_claims, secret),
        ),
        (
            "wrong secret",
            forged(&hs, &admin_claims, b"not-the-secret"),
        ),
        (
            "expired",
            forged(
                &hs,
                &serde_json::json!({"sub": "attacker", "exp": now - 120, "role": "admin"}),
                secret,
            ),
        ),
        (
            "not yet valid",
            forged(
                &hs,
                &serde_json::json!({"sub": "attacker", "exp": now + 3600, "nbf": now + 600, "role": "admin"}),
                secret,
            ),
        ),
        (
            "missing sub",
            forged(
                &hs,
                &serde_json::json!({"exp": now + 3600, "role": "admin"}),
                secret,
            ),
        ),
        (
            "empty sub",
            forged(
                &hs,
                &serde_json::json!({"sub": "", "exp": now + 3600, "role": "admin"}),
                secret,
            ),
        ),
        (
            "oversized",
            forged(
                &hs,
                &serde_json::json!({"sub": "attacker", "exp": now + 3600, "role": "admin", "pad": "x".repeat(5000)}),
                secret,
            ),
        ),
        ("not a token", "a.b".into()),
    ];
    let before = t.count("SELECT count(*) FROM activities").await;
    for (attack, token) in attacks {
        let auth = bearer(&token);
        for (method, path) in [
            ("POST", format!("/api/activities/{id}/claims")),
            ("GET", "/api/tickets".to_string()),
            ("POST", "/admin/activities".to_string()),
            ("POST", "/admin/drain".to_string()),
        ] {
            let r = t.send(method, &path, Some(&auth), "{}").await;
            problem(&r, 401, "unauthenticated");
            assert_eq!(r.header("www-authenticate"), Some("Bearer"), "{attack}");
        }
    }
    assert_eq!(t.count("SELECT count(*) FROM activities").await, before);
    let stats = t
        .as_admin("GET", &format!("/admin/activities/{id}/stats"), "")
        .await
        .json();
    assert_eq!(stats["stock_left"], 5, "no attack claimed anything");
}

#[tokio::test(flavor = "multi_thread")]
async fn script_looking_input_is_stored_and_returned_verbatim_never_run() {
    let t = TestApp::start().await;
    let id = t
        .create_activity(
            5,
            r#","description":"redis.call('FLUSHALL') -- ]] '; DROP TABLE claims; --""#,
        )
        .await;
    t.publish(id).await;
    let user = "redis.call('FLUSHALL')";
    let r = t.claim(id, user, "").await;
    assert_eq!(r.status, 201, "{}", r.text());
    t.drain().await;
    let stored: String = t
        .pg()
        .await
        .query_one("SELECT user_id FROM claims", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, user);
    let view = t.detail(id, None).await.json();
    assert_eq!(
        view["description"],
        "redis.call('FLUSHALL') -- ]] '; DROP TABLE claims; --"
    );
    assert_eq!(view["stock_left"], 4, "Redis still holds the activity");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_limit_is_a_clear_4xx() {
    let t = TestApp::start().await;
    let id = t
        .create_activity(500, r#","kind":"codes","per_user_limit":100"#)
        .await;
    let big_csv: String = (0..100_001).map(|n| format!("C{n}\n")).collect();
    let huge_csv = "A".repeat(flashclaim_core::codes::MAX_UPLOAD_BYTES + 1);
    let codes = format!("/admin/activities/{id}/codes");
    problem(
        &t.send_typed("POST", &codes, &t.admin, "text/csv", big_csv)
            .await,
        400,
        "invalid_request",
    );
    problem(
        &t.send_typed("POST", &codes, &t.admin, "text/csv", huge_csv)
            .await,
        400,
        "invalid_request",
    );
    let r = t
        .send_typed(
            "POST",
            &codes,
            &t.admin,
            "text/csv",
            (0..100_000).map(|n| format!("C{n}\n")).collect(),
        )
        .await;
    assert_eq!(
        (r.status, r.json()["accepted"].as_i64()),
        (201, Some(100_000)),
        "exactly the limit is fine"
    );
    t.publish(id).await;
    let claims = format!("/api/activities/{id}/claims");
    problem(
        &t.as_user("a", "POST", &claims, r#"{"quantity":101}"#).await,
        400,
        "invalid_request",
    );
    problem(
        &t.as_user("a", "POST", &claims, &" ".repeat(2048)).await,
        400,
        "invalid_request",
    );
    problem(
        &t.send("GET", "/api/activities?limit=101", None, "").await,
        400,
        "invalid_request",
    );
    let padded = format!(r#"{{"name":"x","description":"{}"}}"#, "d".repeat(20_000));
    problem(
        &t.as_admin("POST", "/admin/activities", &padded).await,
        400,
        "invalid_request",
    );
    let long_password = format!(
        r#"{{"username":"longpw","password":"{}"}}"#,
        "p".repeat(5000)
    );
    problem(
        &t.send("POST", "/api/users", None, &long_password).await,
        400,
        "invalid_request",
    );
    assert_eq!(
        t.as_user("a", "POST", &claims, r#"{"quantity":100}"#)
            .await
            .status,
        201,
        "the largest quantity allowed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_global_rate_limit_answers_429_with_retry_after() {
    let t = TestApp::start_with(&[("SPIN_VARIABLE_CLAIM_GLOBAL_RATE_LIMIT", "3/60000")]).await;
    let id = t.create_activity(100, "").await;
    t.publish(id).await;
    for user in ["a", "b", "c"] {
        assert_eq!(t.claim(id, user, "").await.status, 201);
    }
    let r = t.claim(id, "d", "").await;
    problem(&r, 429, "rate_limited");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
}

/// Spin 4.0.x never answers a request whose Postgres query has no row (spin#3671); the test
/// host refuses such a query and marks the database (pg_host.rs), and on Spin the client's
/// timeout ends the test. So every route whose SQL could find nothing is asked here about
/// data that has nothing: a fresh deployment, an empty activity, unknown ids and names.
#[tokio::test(flavor = "multi_thread")]
async fn nothing_to_find_is_answered_on_every_route_never_a_query_without_rows() {
    let t = TestApp::start().await;
    let app = &t;
    let user = |path: String| async move { app.as_user("nobody-yet", "GET", &path, "").await };

    // A deployment without users, activities, tickets or blacklist.
    let login = |body: &'static str| t.send("POST", "/api/sessions", None, body);
    let unknown = login(r#"{"username":"ghost","password":"correct horse"}"#).await;
    problem(&unknown, 401, "unauthenticated");
    let r = t
        .send(
            "POST",
            "/api/users",
            None,
            r#"{"username":"alice","password":"correct horse"}"#,
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let wrong = login(r#"{"username":"alice","password":"wrong horse"}"#).await;
    problem(&wrong, 401, "unauthenticated");
    assert_eq!(wrong.text(), unknown.text(), "the same answer for both");
    let mine = user("/api/tickets".into()).await;
    assert_eq!(mine.status, 200, "{}", mine.text());
    assert_eq!(mine.json(), serde_json::json!({ "tickets": [] }));
    let listing = t.send("GET", "/api/activities", None, "").await;
    assert_eq!(listing.status, 200, "{}", listing.text());
    assert_eq!(
        (
            listing.json()["activities"].clone(),
            listing.json()["next_cursor"].clone()
        ),
        (serde_json::json!([]), serde_json::Value::Null),
        "{}",
        listing.text()
    );
    problem(
        &t.send("GET", "/api/activities/424242", None, "").await,
        404,
        "not_found",
    );
    problem(
        &user("/api/tickets/424242-NOPE".into()).await,
        404,
        "not_found",
    );
    for (method, path, body) in [
        ("GET", "/admin/activities/424242/stats", ""),
        ("GET", "/admin/activities/424242/reconcile", ""),
        ("GET", "/admin/activities/424242/claims.csv", ""),
        ("POST", "/admin/activities/424242/publish", ""),
        ("POST", "/admin/activities/424242/close", ""),
        ("PATCH", "/admin/activities/424242", r#"{"name":"x"}"#),
        (
            "POST",
            "/admin/activities/424242/codes",
            r#"{"codes":["A-1"]}"#,
        ),
    ] {
        let r = t.as_admin(method, path, body).await;
        assert_eq!(r.status, 404, "{method} {path}: {}", r.text());
        problem(&r, 404, "not_found");
    }

    // An activity nothing happened to: a draft, then published with an empty blacklist.
    let id = t.create_activity(3, "").await;
    let draft = t.detail(id, None).await;
    problem(&draft, 404, "not_found");
    let admin_path = |tail: &str| format!("/admin/activities/{id}/{tail}");
    let empty_reads = || async {
        let stats = t.as_admin("GET", &admin_path("stats"), "").await;
        assert_eq!(stats.status, 200, "{}", stats.text());
        let stats = stats.json();
        assert_eq!(
            (
                &stats["drained_tickets"],
                &stats["drained_claims"],
                &stats["returned"],
                &stats["claims_per_minute"]
            ),
            (
                &serde_json::json!(0),
                &serde_json::json!(0),
                &serde_json::json!(0),
                &serde_json::json!([])
            ),
            "{stats}"
        );
        let reconcile = t.as_admin("GET", &admin_path("reconcile"), "").await;
        assert_eq!(reconcile.status, 200, "{}", reconcile.text());
        assert_eq!(reconcile.json()["ok"], true, "{}", reconcile.text());
        assert_eq!(reconcile.json()["missing_in_redis"], serde_json::json!([]));
        let csv = t.as_admin("GET", &admin_path("claims.csv"), "").await;
        assert_eq!(csv.status, 200);
        assert_eq!(
            csv.text(),
            "claim_id,activity_id,user_id,code,status,claimed_at,returned_at,redeemed_at,drained_at,ticket_type,client_addr\r\n"
        );
    };
    empty_reads().await;
    let published = t.publish(id).await.json();
    assert_eq!(published["status"], "published");
    empty_reads().await;
    // Another page size: the empty first page is cached for a while.
    let listed = t
        .send("GET", "/api/activities?limit=5", None, "")
        .await
        .json();
    assert_eq!(listed["activities"][0]["id"], id, "{listed}");
    let after = t
        .send("GET", &format!("/api/activities?cursor={id}"), None, "")
        .await
        .json();
    assert_eq!(after["activities"], serde_json::json!([]), "{after}");

    // A code pool activity published before any upload, then an upload without duplicates.
    let pool = t.create_activity(2, r#","kind":"codes""#).await;
    t.publish(pool).await;
    let upload = t
        .as_admin(
            "POST",
            &format!("/admin/activities/{pool}/codes"),
            r#"{"codes":["P-1","P-2"]}"#,
        )
        .await;
    assert_eq!(upload.status, 201, "{}", upload.text());
    assert_eq!(upload.json()["pool_left"], 2);

    // Then data for the same routes, so the rewritten lists still list.
    let claim = t.claim(id, "nobody-yet", "").await;
    assert_eq!(claim.status, 201, "{}", claim.text());
    t.drain().await;
    let mine = user("/api/tickets".into()).await.json();
    assert_eq!(mine["tickets"][0]["code"], code_of(&claim.json()), "{mine}");
    let csv = t
        .as_admin("GET", &admin_path("claims.csv"), "")
        .await
        .text();
    assert_eq!(parse_csv(&csv).len(), 2, "{csv}");
    assert_eq!(
        t.as_admin("GET", &admin_path("stats"), "").await.json()["drained_tickets"],
        1
    );
    assert_eq!(
        t.as_admin("GET", &admin_path("reconcile"), "").await.json()["ok"],
        true
    );
    // The test host marks a database after a zero-row query whose error a component
    // swallowed (a streamed export ends like an empty one); this fails if that happened.
    let later = t.create_activity(1, "").await;
    assert!(later > pool);
}
