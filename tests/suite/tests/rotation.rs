//! Rotating `jwt_secret` and `ticket_secret` over HTTP: with the old secret kept in
//! `jwt_secret_previous` / `ticket_secret_previous`, tokens and QR codes made before the
//! rotation keep working on every route that checks them (claim, pass, tickets, admin,
//! redeem); once it is removed they are refused, and a secret nobody configured never
//! works. The harness's tokens (`token`) are signed with `JWT_SECRET`, the "old" secret.

use flashclaim_core::jwt::{self, Claims};
use flashclaim_tests::*;

const NEW_JWT: &str = "rotated-jwt-secret-9876543210";
const NEW_TICKET: &str = "rotated-ticket-secret-9876543210";

fn signed(secret: &str, user: &str, role: Option<&str>) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let claims = Claims {
        sub: user.into(),
        exp: now + 3600,
        nbf: None,
        iat: Some(now),
        role: role.map(str::to_string),
    };
    bearer(&jwt::sign(&claims, secret.as_bytes()))
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_of_the_previous_jwt_secret_work_during_a_rotation_and_not_after() {
    let (redis, _) = fresh_redis_db().await;
    let pg = fresh_pg_db().await;
    let during = TestApp::start_on(
        &redis,
        &pg,
        &[
            ("SPIN_VARIABLE_JWT_SECRET", NEW_JWT),
            ("SPIN_VARIABLE_JWT_SECRET_PREVIOUS", JWT_SECRET),
        ],
    )
    .await;
    // The operator's old token (t.admin, signed with JWT_SECRET) still runs admin routes.
    let id = during.create_activity(5, r#","require_pass":true"#).await;
    during.publish(id).await;
    let old_user = bearer(&token("old-user", None));
    let new_user = signed(NEW_JWT, "new-user", None);
    let stranger = signed("a-secret-nobody-configured-0000", "eve", None);
    let passes = format!("/api/activities/{id}/passes");
    let claims = format!("/api/activities/{id}/claims");
    for who in [&old_user, &new_user] {
        let pass = during.send("POST", &passes, Some(who), "").await;
        assert_eq!(pass.status, 201, "{}", pass.text());
        let claim = during.send("POST", &claims, Some(who), "").await;
        assert_eq!(claim.status, 201, "{}", claim.text());
    }
    for route in [&passes, &claims] {
        problem(
            &during.send("POST", route, Some(&stranger), "").await,
            401,
            "unauthenticated",
        );
    }
    during.drain().await;
    let mine = during
        .send("GET", "/api/tickets", Some(&old_user), "")
        .await;
    assert_eq!(mine.status, 200, "{}", mine.text());

    // Rotation over: the previous secret is removed, old tokens are refused everywhere.
    drop(during);
    let after = TestApp::start_on(&redis, &pg, &[("SPIN_VARIABLE_JWT_SECRET", NEW_JWT)]).await;
    problem(
        &after.send("POST", &claims, Some(&old_user), "").await,
        401,
        "unauthenticated",
    );
    problem(
        &after.send("GET", "/api/tickets", Some(&old_user), "").await,
        401,
        "unauthenticated",
    );
    problem(
        &after
            .send("POST", "/admin/drain", Some(&after.admin), "")
            .await,
        401,
        "unauthenticated",
    );
    let new_admin = signed(NEW_JWT, "operator", Some("admin"));
    assert_eq!(
        after
            .send("POST", "/admin/drain", Some(&new_admin), "")
            .await
            .status,
        200
    );
    let mine = after.send("GET", "/api/tickets", Some(&new_user), "").await;
    assert_eq!(mine.status, 200, "{}", mine.text());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_qr_code_shown_before_a_ticket_secret_rotation_still_redeems_during_it() {
    let (redis, _) = fresh_redis_db().await;
    let pg = fresh_pg_db().await;
    let before = TestApp::start_on(&redis, &pg, &[]).await;
    let id = before.create_activity(5, "").await;
    before.publish(id).await;
    let mut qrs = Vec::new();
    for user in ["ann", "bob"] {
        let claim = before.claim(id, user, "").await;
        assert_eq!(claim.status, 201, "{}", claim.text());
        let t = &claim.json()["tickets"][0];
        let path_id = t
            .get("id")
            .unwrap_or(&t["code"])
            .as_str()
            .unwrap()
            .to_string();
        let mine = before
            .as_user(user, "GET", &format!("/api/tickets/{path_id}"), "")
            .await;
        assert_eq!(mine.status, 200, "{}", mine.text());
        qrs.push((path_id, mine.json()["qr"].as_str().unwrap().to_string()));
    }
    drop(before);
    let redeem = |path_id: &str| format!("/admin/tickets/{path_id}/redeem");
    let body = |qr: &str| serde_json::json!({ "qr": qr }).to_string();

    // Rotated without keeping the previous secret: the old QR is refused, nothing changes.
    let without =
        TestApp::start_on(&redis, &pg, &[("SPIN_VARIABLE_TICKET_SECRET", NEW_TICKET)]).await;
    problem(
        &without
            .as_admin("POST", &redeem(&qrs[1].0), &body(&qrs[1].1))
            .await,
        422,
        "verification_failed",
    );
    drop(without);

    // Rotated keeping it: both old QRs redeem, once each.
    let during = TestApp::start_on(
        &redis,
        &pg,
        &[
            ("SPIN_VARIABLE_TICKET_SECRET", NEW_TICKET),
            ("SPIN_VARIABLE_TICKET_SECRET_PREVIOUS", TICKET_SECRET),
        ],
    )
    .await;
    for (path_id, qr) in &qrs {
        let r = during.as_admin("POST", &redeem(path_id), &body(qr)).await;
        assert_eq!(r.status, 200, "{}", r.text());
        problem(
            &during.as_admin("POST", &redeem(path_id), &body(qr)).await,
            409,
            "conflict",
        );
    }
    // New QR codes are made with the new secret.
    let mine = during
        .as_user("ann", "GET", &format!("/api/tickets/{}", qrs[0].0), "")
        .await;
    assert_ne!(mine.json()["qr"].as_str().unwrap(), qrs[0].1);
}
