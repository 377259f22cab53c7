//! End to end over HTTP: the real components on the test host, a real Redis and Postgres.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use flashclaim_core::activity::MAX_ACTIVITY_BODY;
use flashclaim_core::claim::MAX_CLAIM_BODY;
use flashclaim_core::ids::ActivityId;
use flashclaim_core::jwt::{b64url_encode, sign, Claims};
use flashclaim_core::keys::{ActivityKeys, DRAIN_GROUP};
use flashclaim_core::scripts::{run_script, Arg, RedisCommands, DRAIN_READ};
use flashclaim_tests::{bearer, fresh_pg_db, problem, token, NativeRedis, TestApp, JWT_SECRET};
use tokio::sync::Semaphore;

#[tokio::test(flavor = "multi_thread")]
async fn publish_claim_drain_and_read_tickets_end_to_end() {
    let t = TestApp::start().await;
    let id = t.create_activity(3, r#","per_user_limit":2"#).await;

    // A draft is invisible to users.
    problem(&t.detail(id, None).await, 404, "not_found");
    problem(&t.claim(id, "alice", "").await, 404, "not_found");

    let published = t.publish(id).await.json();
    assert_eq!(
        (
            published["status"].as_str(),
            published["stock_left"].as_i64()
        ),
        (Some("published"), Some(3))
    );
    let view = t.detail(id, None).await;
    assert_eq!(view.status, 200);
    assert_eq!(view.json()["stock_left"], 3);

    let r = t.claim(id, "alice", r#"{"quantity": 2}"#).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let body = r.json();
    assert_eq!(body["stock_left"], 1);
    let codes: Vec<String> = body["tickets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["code"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(codes.len(), 2);
    assert!(codes.iter().all(|c| c.starts_with(&format!("{id}-"))));
    // The live stock shows at once, through the cached view.
    assert_eq!(t.detail(id, None).await.json()["stock_left"], 1);

    // A ticket is visible to its owner and an admin, and does not exist for anyone else.
    let alice = bearer(&token("alice", None));
    let mine = t
        .send(
            "GET",
            &format!("/api/tickets/{}", codes[0]),
            Some(&alice),
            "",
        )
        .await;
    assert_eq!(mine.status, 200, "{}", mine.text());
    assert_eq!(mine.json()["status"], "active");
    let theirs = t
        .send(
            "GET",
            &format!("/api/tickets/{}", codes[0]),
            Some(&bearer(&token("bob", None))),
            "",
        )
        .await;
    problem(&theirs, 404, "not_found");
    assert_eq!(
        t.send(
            "GET",
            &format!("/api/tickets/{}", codes[0]),
            Some(&t.admin),
            ""
        )
        .await
        .status,
        200
    );

    problem(&t.claim(id, "alice", "").await, 409, "limit_reached");
    assert_eq!(t.claim(id, "bob", "").await.status, 201);
    problem(&t.claim(id, "carol", "").await, 409, "sold_out");

    // The cron entry point drains like the HTTP one. Real Spin cannot fire a tick on
    // demand: there the cron trigger is proven by tests/spin_cron.rs.
    // spin.toml has no cron component: its drain is the HTTP route alone.
    match t.host_app() {
        Some(app) if flashclaim_tests::manifest_has_cron() => {
            assert_eq!(app.fire_cron("drain-cron").await.unwrap(), Ok(()))
        }
        _ => assert_eq!(t.drain().await["tickets"].as_i64(), Some(3)),
    }
    assert_eq!(t.count("SELECT count(*) FROM tickets").await, 3);
    assert_eq!(t.count("SELECT count(*) FROM claims").await, 2);
    let report = t.drain().await;
    assert_eq!(
        (report["entries"].as_i64(), report["backlog"].as_i64()),
        (Some(0), Some(0))
    );

    let listed = t.send("GET", "/api/tickets", Some(&alice), "").await;
    assert_eq!(listed.status, 200);
    let listed: HashSet<String> = listed.json()["tickets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["code"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(listed, codes.into_iter().collect());
}

#[tokio::test(flavor = "multi_thread")]
async fn contention_gives_out_every_ticket_exactly_once() {
    const STOCK: i64 = 1_000;
    const USERS: usize = 20_000;
    const CONCURRENCY: usize = 256;
    let t = Arc::new(TestApp::start().await);
    let id = t.create_activity(STOCK, "").await;
    t.publish(id).await;

    let gate = Arc::new(Semaphore::new(CONCURRENCY));
    let mut tasks = Vec::with_capacity(USERS * 2);
    for attempt in 0..2 {
        for u in 0..USERS {
            let (t, gate) = (t.clone(), gate.clone());
            tasks.push(tokio::spawn(async move {
                let _permit = gate.acquire_owned().await.unwrap();
                let user = format!("user-{u}");
                let r = t.claim(id, &user, "").await;
                (attempt, user, r.status, r.json())
            }));
        }
    }
    let mut created = 0;
    let mut per_user: HashMap<String, usize> = HashMap::new();
    let mut codes = HashSet::new();
    for task in tasks {
        let (_, user, status, body) = task.await.unwrap();
        match status {
            201 => {
                created += 1;
                *per_user.entry(user).or_default() += 1;
                for ticket in body["tickets"].as_array().unwrap() {
                    assert!(
                        codes.insert(ticket["code"].as_str().unwrap().to_string()),
                        "duplicate code"
                    );
                }
            }
            409 => {
                let code = body["code"].as_str().unwrap().to_string();
                assert!(code == "sold_out" || code == "limit_reached", "{body}");
            }
            other => panic!("unexpected status {other}: {body}"),
        }
    }
    assert_eq!(created, STOCK as usize, "exactly the stock is given out");
    assert!(
        per_user.values().all(|n| *n == 1),
        "nobody holds two tickets"
    );
    assert_eq!(t.detail(id, None).await.json()["stock_left"], 0);

    let mut drained = 0;
    for _ in 0..20 {
        let report = t.drain().await;
        drained += report["entries"].as_i64().unwrap();
        if report["backlog"] == 0 && drained >= STOCK {
            break;
        }
    }
    assert_eq!(t.count("SELECT count(*) FROM tickets").await, STOCK);
    assert_eq!(
        t.count("SELECT count(DISTINCT code) FROM tickets").await,
        STOCK
    );
    assert_eq!(
        t.count("SELECT count(DISTINCT user_id) FROM tickets").await,
        STOCK
    );
    let mut redis = t.redis().await;
    let left: i64 = redis::cmd("XLEN")
        .arg(ActivityKeys::new(ActivityId::from_db(id)).log())
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(left, 0, "nothing left in the log");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_drain_run_that_died_before_acknowledging_is_written_exactly_once() {
    let t = TestApp::start_with(&[("SPIN_VARIABLE_DRAIN_RECLAIM_AFTER_MS", "500")]).await;
    let id = t.create_activity(10, "").await;
    t.publish(id).await;
    for u in ["a", "b", "c"] {
        assert_eq!(t.claim(id, u, "").await.status, 201);
    }
    // The run that dies: it takes the batch exactly as the drain does, then never acks.
    let redis = NativeRedis::new(t.redis().await);
    let log = vec![ActivityKeys::new(ActivityId::from_db(id)).log()];
    let taken = run_script(
        &redis,
        &DRAIN_READ,
        &log,
        &[
            Arg::from(DRAIN_GROUP),
            Arg::from("run-died"),
            Arg::Int(100),
            Arg::Int(500),
        ],
    )
    .unwrap();
    assert_eq!(taken.len(), 6, "three entries, as id/payload pairs");

    // While the dead run might still be alive, nobody else writes its entries.
    assert_eq!(t.drain().await["entries"], 0);
    assert_eq!(t.count("SELECT count(*) FROM claims").await, 0);

    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    assert_eq!(t.drain().await["entries"], 3);
    assert_eq!(t.count("SELECT count(*) FROM claims").await, 3);
    // Writing again changes nothing: the log is empty and the inserts are idempotent.
    assert_eq!(t.drain().await["entries"], 0);
    assert_eq!(t.count("SELECT count(*) FROM tickets").await, 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_repeated_idempotency_key_returns_the_first_claim() {
    let t = TestApp::start().await;
    let id = t.create_activity(10, r#","per_user_limit":3"#).await;
    t.publish(id).await;
    let auth = bearer(&token("alice", None));
    let headers = [
        ("authorization", auth.as_str()),
        ("idempotency-key", "retry-42"),
    ];
    let path = format!("/api/activities/{id}/claims");
    let first = t.client.send("POST", &path, &headers, "").await.unwrap();
    let again = t.client.send("POST", &path, &headers, "").await.unwrap();
    assert_eq!((first.status, again.status), (201, 201));
    assert_eq!(first.json()["claim_id"], again.json()["claim_id"]);
    assert_eq!(first.json()["tickets"], again.json()["tickets"]);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(t.detail(id, None).await.json()["stock_left"], 9);
}

/// One request written to the app's socket as it is, and what came back before the server
/// closed (`connection: close`); `""` when nothing did. `half_close`: the client stops
/// sending after `request`, as one whose body breaks off does.
async fn raw_exchange(t: &TestApp, request: &[u8], half_close: bool) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = t
        .client
        .base_url()
        .trim_start_matches("http://")
        .to_string();
    let exchange = async {
        let mut socket = tokio::net::TcpStream::connect(&address).await?;
        socket.write_all(request).await?;
        if half_close {
            socket.shutdown().await?;
        }
        let mut answer = Vec::new();
        // A reset after a half-close still ends the exchange: what came before it counts.
        let _ = socket.read_to_end(&mut answer).await;
        std::io::Result::Ok(String::from_utf8_lossy(&answer).into_owned())
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), exchange)
        .await
        .expect("no answer within 10 s (a hung request)")
        .expect("the exchange failed")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_claims_body_counts_whole_whether_its_length_is_given_or_chunked_and_a_broken_one_claims_nothing(
) {
    let t = TestApp::start().await;
    let id = t.create_activity(10, r#","per_user_limit":2"#).await;
    t.publish(id).await;
    let head = |user: &str, framing: &str| {
        format!(
            "POST /api/activities/{id}/claims HTTP/1.1\r\nhost: flashclaim\r\nconnection: close\r\n\
             authorization: {}\r\ncontent-type: application/json\r\n{framing}\r\n",
            bearer(&token(user, None))
        )
    };
    let tickets = |answer: &str| {
        let (status, body) = answer.split_once("\r\n\r\n").unwrap_or((answer, ""));
        assert!(status.starts_with("HTTP/1.1 201"), "{answer}");
        // The document, whether it came with a length or in chunks (the WASIp2 build).
        let json = &body[body.find('{').unwrap_or(0)..body.rfind('}').map_or(0, |e| e + 1)];
        serde_json::from_str::<serde_json::Value>(json).unwrap()["tickets"]
            .as_array()
            .map_or(0, Vec::len)
    };

    // A body of known length: all of it is the claim (two tickets, not the default one).
    let body = r#"{"quantity":2}"#;
    let known = format!(
        "{}{body}",
        head("ann", &format!("content-length: {}\r\n", body.len()))
    );
    assert_eq!(tickets(&raw_exchange(&t, known.as_bytes(), false).await), 2);

    // The same body in two chunks, no length: read to its end, not to its first chunk.
    let chunked = format!(
        "{}7\r\n{{\"quant\r\n7\r\nity\":2}}\r\n0\r\n\r\n",
        head("bob", "transfer-encoding: chunked\r\n")
    );
    assert_eq!(
        tickets(&raw_exchange(&t, chunked.as_bytes(), false).await),
        2
    );

    // A body that breaks off before its length: whatever the client still hears, nothing
    // is claimed.
    let broken = format!("{}{{\"quantity\"", head("cy", "content-length: 14\r\n"));
    let answer = raw_exchange(&t, broken.as_bytes(), true).await;
    assert!(!answer.starts_with("HTTP/1.1 2"), "{answer}");
    assert_eq!(t.detail(id, None).await.json()["stock_left"], 6);
    assert_eq!(t.detail(id, Some("cy")).await.json()["my_claimed"], 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_claims_body_longer_than_a_claim_takes_is_refused_and_the_wasip3_claim_refuses_it_unread()
{
    let t = TestApp::start().await;
    let id = t.create_activity(10, "").await;
    t.publish(id).await;
    let press = |user: &str, length: usize, sent: &str| {
        format!(
            "POST /api/activities/{id}/claims HTTP/1.1\r\nhost: flashclaim\r\nconnection: close\r\n\
             authorization: {}\r\ncontent-type: application/json\r\ncontent-length: {length}\r\n\r\n{sent}",
            bearer(&token(user, None))
        )
    };
    let refused = |answer: &str| {
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
        assert!(answer.contains("invalid_request"), "{answer}");
        assert!(
            answer.contains(&format!("the body exceeds {MAX_CLAIM_BODY} bytes")),
            "{answer}"
        );
    };
    // One byte too many, all of it sent: every build refuses it, as the parser would.
    let over = " ".repeat(MAX_CLAIM_BODY + 1);
    refused(&raw_exchange(&t, press("ann", over.len(), &over).as_bytes(), false).await);

    // A length no claim needs, and nothing after the head: the WASIp3 claim answers at once
    // instead of waiting for (and holding) 50 MB. (The WASIp2 claim cannot: its SDK reads
    // the whole body before the handler runs.)
    if flashclaim_tests::wasip3_claim() {
        refused(&raw_exchange(&t, press("bob", 50_000_000, "{").as_bytes(), false).await);
    }
    assert_eq!(t.detail(id, None).await.json()["stock_left"], 10);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_a_4xx_problem_and_changes_nothing() {
    let t = TestApp::start().await;
    let id = t.create_activity(5, "").await;
    t.publish(id).await;
    let user = bearer(&token("alice", None));
    let claims = format!("/api/activities/{id}/claims");

    // Claims: bodies.
    for body in [
        "{",
        "[]",
        r#"{"quantity":"1"}"#,
        r#"{"quantity":0}"#,
        r#"{"quantity":1.5}"#,
        r#"{"quantity":2}"#,
        r#"{"x":1}"#,
        "null",
    ] {
        problem(
            &t.send("POST", &claims, Some(&user), body).await,
            400,
            "invalid_request",
        );
    }
    problem(
        &t.send("POST", &claims, Some(&user), &"x".repeat(1 << 20))
            .await,
        400,
        "invalid_request",
    );
    // Claims: tokens.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let expired = sign(
        &Claims {
            sub: "alice".into(),
            exp: now - 3600,
            nbf: None,
            iat: None,
            role: None,
        },
        JWT_SECRET.as_bytes(),
    );
    let wrong_secret = sign(
        &Claims {
            sub: "alice".into(),
            exp: now + 3600,
            nbf: None,
            iat: None,
            role: None,
        },
        b"not-the-secret",
    );
    let alg_none = format!(
        "{}.{}.",
        b64url_encode(br#"{"alg":"none","typ":"JWT"}"#),
        b64url_encode(format!(r#"{{"sub":"alice","exp":{}}}"#, now + 3600).as_bytes())
    );
    for auth in [
        None,
        Some("Bearer".to_string()),
        Some("Bearer x.y.z".into()),
        Some(bearer(&expired)),
        Some(bearer(&wrong_secret)),
        Some(bearer(&alg_none)),
        Some(format!("Basic {}", token("alice", None))),
    ] {
        problem(
            &t.send("POST", &claims, auth.as_deref(), "").await,
            401,
            "unauthenticated",
        );
    }
    // Ids that are not activity ids.
    for path in [
        "/api/activities/abc/claims",
        "/api/activities/0/claims",
        "/api/activities/-1/claims",
        "/api/activities/99999/claims",
        "/api/activities/1e3/claims",
    ] {
        problem(
            &t.send("POST", path, Some(&user), "").await,
            404,
            "not_found",
        );
    }
    for path in [
        "/api/activities/abc",
        "/api/activities/99999",
        "/api/activities/007",
        &format!("/api/activities/{id}/nope"),
    ] {
        problem(&t.send("GET", path, None, "").await, 404, "not_found");
    }
    problem(
        &t.send("DELETE", &format!("/api/activities/{id}"), None, "")
            .await,
        405,
        "method_not_allowed",
    );
    problem(
        &t.send("GET", &claims, Some(&user), "").await,
        405,
        "method_not_allowed",
    );
    // Tickets.
    for code in [
        "nope",
        "0-x",
        &format!("{id}-NOPE-1"),
        &format!("{id}-a%20b"),
    ] {
        problem(
            &t.send("GET", &format!("/api/tickets/{code}"), Some(&user), "")
                .await,
            404,
            "not_found",
        );
    }
    problem(
        &t.send("GET", "/api/tickets", None, "").await,
        401,
        "unauthenticated",
    );
    // Admin: role, bodies.
    problem(
        &t.send("POST", "/admin/activities", Some(&user), "{}").await,
        403,
        "forbidden",
    );
    problem(
        &t.send("POST", "/admin/activities", None, "{}").await,
        401,
        "unauthenticated",
    );
    problem(
        &t.send("POST", "/admin/drain", Some(&user), "").await,
        403,
        "forbidden",
    );
    for body in [
        "{",
        "[]",
        "{}",
        r#"{"name":"x","starts_at":"tomorrow","ends_at":"2030-01-01T00:00:00Z","stock_total":1}"#,
        r#"{"name":"x","starts_at":"2030-01-01T00:00:00Z","ends_at":"2030-01-01T00:00:00Z","stock_total":1}"#,
        r#"{"name":"x","starts_at":"2030-01-01T00:00:00Z","ends_at":"2031-01-01T00:00:00Z","stock_total":"many"}"#,
    ] {
        problem(
            &t.send("POST", "/admin/activities", Some(&t.admin), body)
                .await,
            400,
            "invalid_request",
        );
    }
    problem(
        &t.send(
            "POST",
            "/admin/activities",
            Some(&t.admin),
            &"x".repeat(MAX_ACTIVITY_BODY + 1),
        )
        .await,
        400,
        "invalid_request",
    );
    for path in [
        "/admin/activities/abc/publish",
        "/admin/activities/424242/publish",
    ] {
        problem(
            &t.send("POST", path, Some(&t.admin), "").await,
            404,
            "not_found",
        );
    }
    problem(
        &t.send("GET", "/admin/nope", Some(&t.admin), "").await,
        404,
        "not_found",
    );

    // Nothing changed: one activity, full stock, no claims anywhere.
    assert_eq!(t.count("SELECT count(*) FROM activities").await, 1);
    assert_eq!(t.detail(id, None).await.json()["stock_left"], 5);
    t.drain().await;
    assert_eq!(t.count("SELECT count(*) FROM claims").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_ids_are_negatively_cached_in_redis() {
    let t = TestApp::start().await;
    problem(
        &t.send("GET", "/api/activities/4242", None, "").await,
        404,
        "not_found",
    );
    let mut redis = t.redis().await;
    let cached: Option<String> = redis::cmd("GET")
        .arg(ActivityKeys::new(ActivityId::from_db(4242)).view())
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(cached.as_deref(), Some("-"));
    // Postgres is no longer asked: even a row inserted behind the cache's back stays unseen
    // until the negative entry expires.
    let pg = t.pg().await;
    pg.execute(
        "INSERT INTO activities (id, name, starts_at, ends_at, status, stock_total) OVERRIDING SYSTEM VALUE \
         VALUES (4242, 'x', now(), now() + interval '1 hour', 'published', 1)",
        &[],
    )
    .await
    .unwrap();
    problem(
        &t.send("GET", "/api/activities/4242", None, "").await,
        404,
        "not_found",
    );
}

/// spin.toml is what a newcomer runs on the Spin they install: the released 4.0.x, or the
/// 3.6 in SpinKube's shim. Those link WASI 0.2 and only an rc of 0.3, so a component that
/// imports a final `@0.3.0` interface (spin-sdk 7) fails to start there ("component imports
/// instance `wasi:http/types@0.3.0`, but a matching implementation was not found in the
/// linker"). The WASIp3 manifest's claim does import it, which shows the check can fail.
#[test]
fn the_default_manifest_imports_nothing_the_released_spin_lacks() {
    let sources = |name: &str| -> Vec<(String, std::path::PathBuf)> {
        let text = std::fs::read_to_string(flashclaim_tests::root().join(name)).unwrap();
        let manifest: toml::Value = toml::from_str(&text).unwrap();
        manifest["component"]
            .as_table()
            .unwrap()
            .iter()
            .map(|(id, c)| {
                let source = c["source"].as_str().unwrap();
                (id.clone(), flashclaim_tests::root().join(source))
            })
            .collect()
    };
    let wasi_0_3 = |import: &String| import.starts_with("wasi:") && import.contains("@0.3");
    for (id, path) in sources("spin.toml") {
        let imports = spin_test_host::component_imports(&path)
            .unwrap_or_else(|e| panic!("component `{id}` ({}): {e:#}", path.display()));
        let late: Vec<&String> = imports.iter().filter(|i| wasi_0_3(i)).collect();
        assert!(late.is_empty(), "spin.toml's `{id}` imports {late:?}");
        assert!(
            imports
                .iter()
                .any(|i| i.starts_with("wasi:") && i.contains("@0.2.")),
            "`{id}` imports WASI 0.2: {imports:?}"
        );
    }
    let (_, claim_p3) = sources("spin.wasip3.toml")
        .into_iter()
        .find(|(id, _)| id == "claim")
        .unwrap();
    let imports = spin_test_host::component_imports(&claim_p3).unwrap();
    assert!(
        imports.iter().any(|i| i == "wasi:http/types@0.3.0"),
        "the WASIp3 claim imports the final wasi:http 0.3.0: {imports:?}"
    );
}

#[test]
fn every_component_stays_small_because_it_is_instantiated_per_request() {
    // 600 KiB until the Redis Cluster topology (issue 23): the glue every component links
    // grew by the slot map and MOVED/ASK handling, and the admin component (operators
    // only, never on a sale's hot path) came to 632 KB. The claim components are 370-470 KB.
    const LIMIT: u64 = 640 * 1024;
    let manifest: toml::Value =
        toml::from_str(&std::fs::read_to_string(flashclaim_tests::manifest()).unwrap()).unwrap();
    let components = manifest["component"].as_table().unwrap();
    // Every HTTP component, and the cron tick's where the manifest has one (the drain's
    // .wasm under an id of its own).
    let mut ids: Vec<&str> = components.keys().map(String::as_str).collect();
    ids.sort();
    let mut expected: Vec<&str> = flashclaim_tests::HTTP_COMPONENTS.to_vec();
    if flashclaim_tests::manifest_has_cron() {
        expected.push("drain-cron");
    }
    expected.sort();
    assert_eq!(ids, expected);
    for (id, component) in components {
        let source = component["source"].as_str().unwrap();
        let size = std::fs::metadata(flashclaim_tests::root().join(source))
            .unwrap_or_else(|e| panic!("component `{id}`: {source}: {e}"))
            .len();
        assert!(size <= LIMIT, "{source} is {size} bytes, over {LIMIT}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn with_redis_unreachable_a_claim_fails_fast_and_says_nothing_was_claimed() {
    // Nothing listens on port 1: connecting is refused at once, as with a stopped Redis.
    let t = TestApp::start_with(&[
        ("SPIN_VARIABLE_REDIS_ADDRESS", "redis://127.0.0.1:1"),
        ("SPIN_VARIABLE_REDIS_HOST", "127.0.0.1:*"),
    ])
    .await;
    let started = std::time::Instant::now();
    let r = t.claim(1, "alice", "").await;
    problem(&r, 503, "unavailable");
    assert_eq!(r.json()["claimed"], false);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    problem(
        &t.send("GET", "/api/activities/1", None, "").await,
        503,
        "unavailable",
    );
    let health = t.send("GET", "/healthz", None, "").await;
    assert_eq!(health.status, 503);
    let h = health.json();
    assert_eq!(
        (
            h["status"].as_str(),
            h["redis"].as_bool(),
            h["postgres"].as_bool()
        ),
        (Some("degraded"), Some(false), Some(true))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn health_reports_the_drain_backlog_and_its_age() {
    let t = TestApp::start().await;
    let h = t.send("GET", "/healthz", None, "").await;
    assert_eq!(h.status, 200, "{}", h.text());
    assert_eq!(
        (h.json()["status"].as_str(), h.json()["backlog"].as_i64()),
        (Some("ok"), Some(0))
    );
    assert!(h.json()["oldest_entry_age_ms"].is_null());

    let id = t.create_activity(10, "").await;
    t.publish(id).await;
    for u in ["a", "b"] {
        assert_eq!(t.claim(id, u, "").await.status, 201);
    }
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let h = t.send("GET", "/healthz", None, "").await.json();
    assert_eq!(h["backlog"], 2);
    assert!(h["oldest_entry_age_ms"].as_i64().unwrap() >= 50, "{h}");
    t.drain().await;
    let h = t.send("GET", "/healthz", None, "").await.json();
    assert_eq!(h["backlog"], 0);
    assert!(h["oldest_entry_age_ms"].is_null());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_closed_activity_refuses_claims_and_cannot_be_published_again() {
    let t = TestApp::start().await;
    let id = t.create_activity(10, "").await;
    t.publish(id).await;
    assert_eq!(t.claim(id, "alice", "").await.status, 201);

    let close = format!("/admin/activities/{id}/close");
    let user = bearer(&token("alice", None));
    problem(
        &t.send("POST", &close, Some(&user), "").await,
        403,
        "forbidden",
    );
    let closed = t.send("POST", &close, Some(&t.admin), "").await;
    assert_eq!(closed.status, 200, "{}", closed.text());
    assert_eq!(
        (
            closed.json()["status"].as_str(),
            closed.json()["stock_left"].as_i64()
        ),
        (Some("closed"), Some(9))
    );
    assert_eq!(
        t.send("POST", &close, Some(&t.admin), "").await.status,
        200,
        "closing is idempotent"
    );

    problem(&t.claim(id, "bob", "").await, 409, "ended");
    let view = t.detail(id, None).await.json();
    assert_eq!(
        (view["status"].as_str(), view["stock_left"].as_i64()),
        (Some("closed"), Some(9))
    );
    problem(
        &t.send(
            "POST",
            &format!("/admin/activities/{id}/publish"),
            Some(&t.admin),
            "",
        )
        .await,
        409,
        "conflict",
    );

    // A draft closes in Postgres alone and never becomes claimable.
    let draft = t.create_activity(5, "").await;
    let r = t
        .send(
            "POST",
            &format!("/admin/activities/{draft}/close"),
            Some(&t.admin),
            "",
        )
        .await;
    assert_eq!(r.json()["status"], "closed");
    problem(&t.claim(draft, "bob", "").await, 404, "not_found");
    // The claim before closing is still drained.
    t.drain().await;
    assert_eq!(t.count("SELECT count(*) FROM tickets").await, 1);
}

/// Redis refusing the script whole (loading after a restart, a read-only replica): the
/// claim certainly did not happen, and the answer says so; a connection lost after the
/// script was sent leaves the outcome unknown, and the answer says that instead.
#[tokio::test(flavor = "multi_thread")]
async fn a_claim_refused_whole_by_redis_says_nothing_was_claimed() {
    use flashclaim_tests::{FakeRedis, FakeScriptReply};
    let pg_url = fresh_pg_db().await;
    for (reply, claimed) in [
        (
            FakeScriptReply::Error("LOADING Redis is loading the dataset in memory"),
            serde_json::json!(false),
        ),
        (
            FakeScriptReply::Error("READONLY You can't write against a read only replica."),
            serde_json::json!(false),
        ),
        (FakeScriptReply::CloseAfterReading, serde_json::Value::Null),
    ] {
        let fake = FakeRedis::start(reply.clone()).await;
        let redis_host = format!("127.0.0.1:{}", fake.port);
        let t = TestApp::start_on(
            &format!("redis://{redis_host}"),
            &pg_url,
            &[("SPIN_VARIABLE_REDIS_HOST", redis_host.as_str())],
        )
        .await;
        let r = t.claim(1, "alice", "").await;
        problem(&r, 503, "unavailable");
        assert_eq!(r.json()["claimed"], claimed, "{reply:?}: {}", r.text());
    }
}

/// Creates an activity of ticket types as the operator (open now, for an hour); `extra`
/// are more activity fields.
async fn create_typed(t: &TestApp, types: &str, extra: &str) -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let body = format!(
        r#"{{"name":"Show","starts_at":"{}","ends_at":"{}","ticket_types":{types}{extra}}}"#,
        flashclaim_core::time::Millis(now - 60_000),
        flashclaim_core::time::Millis(now + 3_600_000),
    );
    let r = t.as_admin("POST", "/admin/activities", &body).await;
    assert_eq!(r.status, 201, "create: {}", r.text());
    r.json()["id"].as_i64().unwrap()
}

/// Issue 10's proof: one activity, two types of 500, 10,000 users each trying both types
/// twice with 256 in flight: exactly 500 of each, nobody above a type's limit (1) or the
/// activity's (2), 1,000 rows after the drain, and every type's stock 0.
#[tokio::test(flavor = "multi_thread")]
async fn contention_over_two_types_gives_out_each_types_stock_exactly_once() {
    const STOCK: i64 = 500;
    const USERS: usize = 10_000;
    const CONCURRENCY: usize = 256;
    let t = Arc::new(TestApp::start().await);
    let id = create_typed(
        &t,
        r#"[{"key":"am","name":"Morning","stock_total":500},{"key":"pm","name":"Afternoon","stock_total":500}]"#,
        r#","per_user_limit":2"#,
    )
    .await;
    t.publish(id).await;

    let gate = Arc::new(Semaphore::new(CONCURRENCY));
    let mut tasks = Vec::with_capacity(USERS * 4);
    for _attempt in 0..2 {
        for ty in ["am", "pm"] {
            for u in 0..USERS {
                let (t, gate) = (t.clone(), gate.clone());
                tasks.push(tokio::spawn(async move {
                    let _permit = gate.acquire_owned().await.unwrap();
                    let user = format!("user-{u}");
                    let body = format!(r#"{{"ticket_type":"{ty}"}}"#);
                    let r = t.claim(id, &user, &body).await;
                    (ty, user, r.status, r.json())
                }));
            }
        }
    }
    let mut per_type: HashMap<&str, i64> = HashMap::new();
    let mut per_user_type: HashMap<(String, &str), usize> = HashMap::new();
    let mut per_user: HashMap<String, usize> = HashMap::new();
    let mut codes = HashSet::new();
    for task in tasks {
        let (ty, user, status, body) = task.await.unwrap();
        match status {
            201 => {
                assert_eq!(body["ticket_type"], ty, "{body}");
                *per_type.entry(ty).or_default() += 1;
                *per_user_type.entry((user.clone(), ty)).or_default() += 1;
                *per_user.entry(user).or_default() += 1;
                for ticket in body["tickets"].as_array().unwrap() {
                    assert!(
                        codes.insert(ticket["id"].as_str().unwrap().to_string()),
                        "duplicate code"
                    );
                }
            }
            409 => {
                let code = body["code"].as_str().unwrap();
                assert!(code == "sold_out" || code == "limit_reached", "{body}");
                assert_eq!(body["ticket_type"], ty, "a refusal names its type: {body}");
            }
            other => panic!("unexpected status {other}: {body}"),
        }
    }
    assert_eq!(
        (per_type["am"], per_type["pm"]),
        (STOCK, STOCK),
        "exactly each type's stock"
    );
    assert!(
        per_user_type.values().all(|n| *n == 1),
        "nobody above a type's limit"
    );
    assert!(
        per_user.values().all(|n| *n <= 2),
        "nobody above the activity's limit"
    );
    let view = t.detail(id, None).await.json();
    assert_eq!(view["stock_left"], 0, "{view}");
    for ty in view["ticket_types"].as_array().unwrap() {
        assert_eq!(ty["stock_left"], 0, "{view}");
    }

    let mut drained = 0;
    for _ in 0..20 {
        let report = t.drain().await;
        drained += report["entries"].as_i64().unwrap();
        if report["backlog"] == 0 && drained >= 2 * STOCK {
            break;
        }
    }
    assert_eq!(t.count("SELECT count(*) FROM tickets").await, 2 * STOCK);
    for ty in ["am", "pm"] {
        assert_eq!(
            t.count(&format!(
                "SELECT count(*) FROM tickets WHERE ticket_type = '{ty}'"
            ))
            .await,
            STOCK
        );
    }
    assert_eq!(
        t.count("SELECT count(*) FROM (SELECT user_id FROM tickets GROUP BY user_id, ticket_type HAVING count(*) > 1) AS over")
            .await,
        0
    );
}

/// An activity of two types end to end: codes per type, the page with each type's live
/// stock and what the caller holds, claims naming a type, a pool code exactly as uploaded
/// (API, ticket read, export), per-type stats, and the drained rows' type.
#[tokio::test(flavor = "multi_thread")]
async fn an_activity_of_two_types_from_create_to_export() {
    let t = TestApp::start().await;
    let id = create_typed(
        &t,
        r#"[{"key":"vip","name":"VIP","description":"front rows","stock_total":2,"per_user_limit":2,"kind":"codes"},
            {"key":"std","name":"Standard","stock_total":3}]"#,
        "",
    )
    .await;
    // Codes go to the type named; the old route finds the only `codes` type itself.
    let upload = |path: String, body: &'static str| {
        let t = &t;
        async move {
            t.send_typed("POST", &path, &t.admin, "text/csv", body.to_string())
                .await
        }
    };
    let r = upload(
        format!("/admin/activities/{id}/ticket_types/vip/codes"),
        "SAVE10-AB12\n",
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["ticket_type"], "vip");
    let r = upload(format!("/admin/activities/{id}/codes"), "SAVE10-CD34\n").await;
    assert_eq!(
        (r.status, r.json()["total_codes"].as_i64()),
        (201, Some(2)),
        "{}",
        r.text()
    );
    problem(
        &upload(
            format!("/admin/activities/{id}/ticket_types/std/codes"),
            "X1\n",
        )
        .await,
        409,
        "conflict",
    );
    problem(
        &upload(
            format!("/admin/activities/{id}/ticket_types/nope/codes"),
            "X1\n",
        )
        .await,
        404,
        "not_found",
    );
    t.publish(id).await;

    let page = t.detail(id, Some("alice")).await.json();
    assert_eq!(
        (page["stock_total"].as_i64(), page["stock_left"].as_i64()),
        (Some(5), Some(5))
    );
    assert_eq!(
        (page["kind"].as_str(), page["my_claimed"].as_i64()),
        (Some("mixed"), Some(0))
    );
    assert!(page["per_user_limit"].is_null(), "{page}");
    assert_eq!(page["ticket_types"][0]["description"], "front rows");

    problem(&t.claim(id, "alice", "").await, 400, "invalid_request");
    let r = t.claim(id, "alice", r#"{"ticket_type":"balcony"}"#).await;
    problem(&r, 400, "invalid_request");
    assert_eq!(r.json()["ticket_types"], serde_json::json!(["vip", "std"]));

    let r = t
        .claim(id, "alice", r#"{"ticket_type":"vip","quantity":2}"#)
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let claim = r.json();
    assert_eq!(
        (claim["ticket_type"].as_str(), claim["stock_left"].as_i64()),
        (Some("vip"), Some(0))
    );
    let ticket = &claim["tickets"][0];
    assert_eq!(
        ticket["code"], "SAVE10-AB12",
        "a pool code exactly as uploaded"
    );
    assert_eq!(ticket["id"], format!("{id}-SAVE10-AB12"));
    let r = t.claim(id, "bob", r#"{"ticket_type":"vip"}"#).await;
    problem(&r, 409, "sold_out");
    assert_eq!(r.json()["ticket_type"], "vip");
    let r = t.claim(id, "alice", r#"{"ticket_type":"std"}"#).await;
    assert_eq!(r.status, 201, "the other type has stock: {}", r.text());
    let std_code = r.json()["tickets"][0]["code"].as_str().unwrap().to_string();
    assert!(
        std_code.starts_with(&format!("{id}-")),
        "a generated code as before"
    );

    let page = t.detail(id, Some("alice")).await.json();
    assert_eq!(
        (page["stock_left"].as_i64(), page["my_claimed"].as_i64()),
        (Some(2), Some(3))
    );
    assert_eq!(
        (
            page["ticket_types"][0]["stock_left"].as_i64(),
            page["ticket_types"][0]["my_claimed"].as_i64()
        ),
        (Some(0), Some(2))
    );
    assert_eq!(
        (
            page["ticket_types"][1]["stock_left"].as_i64(),
            page["ticket_types"][1]["my_claimed"].as_i64()
        ),
        (Some(2), Some(1))
    );
    let listed = t.send("GET", "/api/activities", None, "").await.json();
    let mine = listed["activities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == id)
        .unwrap()
        .clone();
    assert_eq!(
        (
            mine["stock_left"].as_i64(),
            mine["ticket_types"][1]["stock_left"].as_i64()
        ),
        (Some(2), Some(2))
    );

    let read = t
        .as_user(
            "alice",
            "GET",
            &format!("/api/tickets/{id}-SAVE10-AB12"),
            "",
        )
        .await;
    assert_eq!(read.status, 200, "{}", read.text());
    assert_eq!(
        (
            read.json()["code"].as_str(),
            read.json()["ticket_type"].as_str()
        ),
        (Some("SAVE10-AB12"), Some("vip"))
    );

    let stats = t
        .as_admin("GET", &format!("/admin/activities/{id}/stats"), "")
        .await
        .json();
    assert_eq!(
        (
            stats["sold"].as_i64(),
            stats["ticket_types"][0]["sold"].as_i64(),
            stats["ticket_types"][1]["sold"].as_i64()
        ),
        (Some(3), Some(2), Some(1))
    );

    t.drain().await;
    assert_eq!(
        t.count("SELECT count(*) FROM tickets WHERE ticket_type = 'vip'")
            .await,
        2
    );
    let listed = t.as_user("alice", "GET", "/api/tickets", "").await.json();
    let codes: HashSet<&str> = listed["tickets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["code"].as_str().unwrap())
        .collect();
    assert!(
        codes.contains("SAVE10-AB12") && codes.contains(std_code.as_str()),
        "{listed}"
    );
    let csv = t
        .as_admin("GET", &format!("/admin/activities/{id}/claims.csv"), "")
        .await
        .text();
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let column = |name: &str| header.iter().position(|c| *c == name).unwrap();
    let (code, ticket_type) = (column("code"), column("ticket_type"));
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    let has = |c: &str, ty: &str| rows.iter().any(|r| r[code] == c && r[ticket_type] == ty);
    assert!(has("SAVE10-AB12", "vip"), "a pool code as uploaded: {csv}");
    assert!(has(&std_code, "std"), "{csv}");
    let reconcile = t
        .as_admin("GET", &format!("/admin/activities/{id}/reconcile"), "")
        .await
        .json();
    assert_eq!(reconcile["ok"], true, "{reconcile}");
    assert_eq!(reconcile["ticket_types"].as_array().unwrap().len(), 2);

    // Giving back puts the code back into its type's pool.
    let r = t
        .as_user(
            "alice",
            "DELETE",
            &format!("/api/tickets/{id}-SAVE10-AB12"),
            "",
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        (r.json()["code"].as_str(), r.json()["stock_left"].as_i64()),
        (Some("SAVE10-AB12"), Some(1))
    );
    // Claimable again within `claim_cache_ms` (an instance may have learned the sell-out).
    let given_back = std::time::Instant::now();
    let bound = std::time::Duration::from_millis(
        flashclaim_core::claim_cache::DEFAULT_BOUND_MS as u64 + 750,
    );
    let r = loop {
        let r = t.claim(id, "bob", r#"{"ticket_type":"vip"}"#).await;
        if r.status != 409 || given_back.elapsed() > bound {
            break r;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(
        r.json()["tickets"][0]["code"],
        "SAVE10-AB12",
        "{}",
        r.text()
    );
}

/// An activity created without types answers as it always did, and its one type is
/// `default`; after publish only the display fields of a type change.
#[tokio::test(flavor = "multi_thread")]
async fn an_activity_without_types_keeps_every_answer_and_patches_check_the_types() {
    let t = TestApp::start().await;
    let id = t
        .create_activity(4, r#","per_user_limit":2,"kind":"counter""#)
        .await;
    let view = t.publish(id).await.json();
    assert_eq!(
        (
            view["stock_total"].as_i64(),
            view["per_user_limit"].as_i64(),
            view["kind"].as_str()
        ),
        (Some(4), Some(2), Some("counter"))
    );
    assert_eq!(view["ticket_types"][0]["key"], "default");
    let r = t.claim(id, "alice", r#"{"quantity":2}"#).await;
    assert_eq!(
        (r.status, r.json()["stock_left"].as_i64()),
        (201, Some(2)),
        "{}",
        r.text()
    );
    let r = t.claim(id, "alice", "").await;
    problem(&r, 409, "limit_reached");
    assert_eq!(
        (r.json()["limit"].as_i64(), r.json()["scope"].as_str()),
        (Some(2), Some("ticket_type"))
    );

    let r = t
        .as_admin(
            "PATCH",
            &format!("/admin/activities/{id}"),
            r#"{"ticket_types":[{"key":"default","name":"General","stock_total":9}]}"#,
        )
        .await;
    problem(&r, 409, "conflict");
    let r = t
        .as_admin(
            "PATCH",
            &format!("/admin/activities/{id}"),
            r#"{"ticket_types":[{"key":"default","name":"General"}]}"#,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        (
            r.json()["ticket_types"][0]["name"].as_str(),
            r.json()["stock_left"].as_i64()
        ),
        (Some("General"), Some(2))
    );

    // Bad types are refused whole at creation: nothing is stored.
    let before = t.count("SELECT count(*) FROM activities").await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let (opens, closes) = (
        flashclaim_core::time::Millis(now),
        flashclaim_core::time::Millis(now + 60_000),
    );
    for types in [
        r#"[{"key":"a","name":"A","stock_total":1},{"key":"a","name":"B","stock_total":1}]"#
            .to_string(),
        r#"[{"key":"a","name":"A","stock_total":1,"kind":"lottery"}]"#.to_string(),
        format!(
            r#"[{{"key":"a","name":"A","stock_total":1,"ends_at":"{}"}}]"#,
            flashclaim_core::time::Millis(now + 120_000)
        ),
        "[]".to_string(),
    ] {
        let body = format!(
            r#"{{"name":"x","starts_at":"{opens}","ends_at":"{closes}","ticket_types":{types}}}"#
        );
        problem(
            &t.as_admin("POST", "/admin/activities", &body).await,
            400,
            "invalid_request",
        );
    }
    let both = format!(
        r#"{{"name":"x","starts_at":"{opens}","ends_at":"{closes}","stock_total":3,"ticket_types":[{{"key":"a","name":"A","stock_total":1}}]}}"#
    );
    problem(
        &t.as_admin("POST", "/admin/activities", &both).await,
        400,
        "invalid_request",
    );
    assert_eq!(
        t.count("SELECT count(*) FROM activities").await,
        before,
        "nothing stored"
    );

    // A draft's types are replaced whole; bad types change nothing.
    let draft = create_typed(&t, r#"[{"key":"a","name":"A","stock_total":1}]"#, "").await;
    for bad in [
        r#"{"ticket_types":[]}"#,
        r#"{"ticket_types":[{"key":"A B","name":"x","stock_total":1}]}"#,
        r#"{"stock_total":5}"#,
        r#"{"ticket_types":[{"key":"a","ends_at":"2000-01-01T00:00:00Z"}]}"#,
    ] {
        problem(
            &t.as_admin("PATCH", &format!("/admin/activities/{draft}"), bad)
                .await,
            400,
            "invalid_request",
        );
    }
    let r = t
        .as_admin(
            "PATCH",
            &format!("/admin/activities/{draft}"),
            r#"{"ticket_types":[{"key":"b","name":"B","stock_total":7}]}"#,
        )
        .await;
    assert_eq!(
        (r.status, r.json()["stock_total"].as_i64()),
        (200, Some(7)),
        "{}",
        r.text()
    );
    assert_eq!(
        t.count(&format!(
            "SELECT count(*) FROM ticket_types WHERE activity_id = {draft}"
        ))
        .await,
        1
    );
    assert_eq!(t.count(&format!("SELECT sum(stock_total)::int8 FROM ticket_types WHERE activity_id = {draft} AND key = 'b'")).await, 7);

    // A type holding uploaded codes cannot be dropped from a draft: its codes would be lost.
    let pooled = create_typed(
        &t,
        r#"[{"key":"p","name":"Pool","stock_total":1,"kind":"codes"},{"key":"q","name":"Q","stock_total":1}]"#,
        "",
    )
    .await;
    let r = t
        .send_typed(
            "POST",
            &format!("/admin/activities/{pooled}/codes"),
            &t.admin,
            "text/csv",
            "P1\n".into(),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let r = t
        .as_admin(
            "PATCH",
            &format!("/admin/activities/{pooled}"),
            r#"{"ticket_types":[{"key":"q"}]}"#,
        )
        .await;
    problem(&r, 409, "conflict");
    assert_eq!(
        t.count(&format!(
            "SELECT count(*) FROM ticket_types WHERE activity_id = {pooled}"
        ))
        .await,
        2,
        "nothing changed"
    );
}

/// The migration on a database the previous schema filled: every activity gets the type
/// `default` holding its stock, limit and kind, and every ticket and code points at it.
#[tokio::test(flavor = "multi_thread")]
async fn migration_0003_gives_every_existing_activity_its_default_type() {
    let s = flashclaim_tests::services();
    let admin = flashclaim_tests::pg_conn(&s.pg_url("postgres")).await;
    let name = format!("m_{}", std::process::id());
    for sql in [
        format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        format!("CREATE DATABASE {name}"),
    ] {
        admin.batch_execute(&sql).await.unwrap();
    }
    let pg = flashclaim_tests::pg_conn(&s.pg_url(&name)).await;
    let migration = |file: &str| {
        std::fs::read_to_string(flashclaim_tests::root().join("migrations").join(file)).unwrap()
    };
    for file in ["0001_init.sql", "0002_blacklist.sql"] {
        pg.batch_execute(&migration(file)).await.unwrap();
    }
    pg.batch_execute(
        "INSERT INTO activities (name, starts_at, ends_at, stock_total, per_user_limit, kind) VALUES \
           ('counter', now(), now() + interval '1 day', 10, 2, 'counter'), \
           ('pool', now(), now() + interval '1 day', 5, 1, 'codes'); \
         INSERT INTO ticket_codes (activity_id, code) VALUES (2, 'SAVE10-AB12'), (2, 'SAVE10-CD34'); \
         INSERT INTO claims (id, activity_id, user_id, quantity, claimed_at) VALUES \
           ('c1', 1, 'u1', 2, now()), ('c2', 2, 'u2', 1, now()); \
         INSERT INTO tickets (claim_id, activity_id, user_id, code, claimed_at) VALUES \
           ('c1', 1, 'u1', 'AAAA-1', now()), ('c1', 1, 'u1', 'AAAA-2', now()), \
           ('c2', 2, 'u2', 'SAVE10-AB12', now());",
    )
    .await
    .unwrap();
    pg.batch_execute(&format!(
        "BEGIN; {} COMMIT;",
        migration("0003_ticket_types.sql")
    ))
    .await
    .unwrap();
    let rows = pg
        .query(
            "SELECT activity_id, key, name, stock_total, per_user_limit, kind, starts_at IS NULL AND ends_at IS NULL \
             FROM ticket_types ORDER BY activity_id",
            &[],
        )
        .await
        .unwrap();
    let types: Vec<(i64, String, String, i32, i32, String, bool)> = rows
        .iter()
        .map(|r| {
            (
                r.get(0),
                r.get(1),
                r.get(2),
                r.get(3),
                r.get(4),
                r.get(5),
                r.get(6),
            )
        })
        .collect();
    assert_eq!(
        types,
        vec![
            (
                1,
                "default".into(),
                "counter".into(),
                10,
                2,
                "counter".into(),
                true
            ),
            (
                2,
                "default".into(),
                "pool".into(),
                5,
                1,
                "codes".into(),
                true
            ),
        ]
    );
    let untyped: i64 = pg
        .query_one(
            "SELECT (SELECT count(*) FROM tickets WHERE ticket_type <> 'default') \
                  + (SELECT count(*) FROM ticket_codes WHERE ticket_type <> 'default')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        untyped, 0,
        "every ticket and code points at the default type"
    );
    let tickets: i64 = pg
        .query_one("SELECT count(*) FROM tickets", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(tickets, 3, "nothing lost");
    // A ticket of a type that does not exist is refused from now on.
    let e = pg
        .batch_execute("INSERT INTO tickets (claim_id, activity_id, user_id, code, claimed_at, ticket_type) VALUES ('c1', 1, 'u1', 'X', now(), 'vip')")
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("foreign key") || format!("{e:?}").contains("23503"),
        "{e:?}"
    );
    drop(pg);
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await
        .unwrap();
}

/// `GET /metrics` on the app under test: refused without the metrics token or an operator's
/// token (401, never the token echoed), and counting what the sale did, with the manifest's
/// flavour in flashclaim_build_info.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_are_read_with_the_metrics_token_or_as_an_operator_and_count_the_sale() {
    const METRICS_TOKEN: &str = "scrape-me-5b1c9e";
    let t = TestApp::start_with(&[("SPIN_VARIABLE_METRICS_TOKEN", METRICS_TOKEN)]).await;
    let id = t.create_activity(2, "").await;
    t.publish(id).await;
    let mut statuses = Vec::new();
    for user in ["a", "b", "c"] {
        statuses.push(t.claim(id, user, "").await.status);
    }
    assert_eq!(statuses, [201, 201, 409]);
    t.drain().await;
    // A registration, a taken name, a wrong and a right password: counted below.
    t.register_and_log_in(true).await;

    for auth in [
        None,
        Some("Bearer not-the-token".to_string()),
        Some(bearer(&token("someone", None))),
        Some(format!("Basic {METRICS_TOKEN}")),
    ] {
        let r = t.send("GET", "/metrics", auth.as_deref(), "").await;
        problem(&r, 401, "unauthenticated");
        assert!(!r.text().contains(METRICS_TOKEN));
    }
    let query = t
        .send("GET", &format!("/metrics?token={METRICS_TOKEN}"), None, "")
        .await;
    problem(&query, 401, "unauthenticated");
    problem(
        &t.send("POST", "/metrics", Some(&t.admin), "").await,
        405,
        "method_not_allowed",
    );

    let r = t
        .send(
            "GET",
            "/metrics",
            Some(&format!("Bearer {METRICS_TOKEN}")),
            "",
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = r.text();
    assert!(!text.contains(METRICS_TOKEN));
    let flavour = match flashclaim_tests::manifest()
        .file_name()
        .and_then(|f| f.to_str())
    {
        Some("spin.toml") => "wasip2",
        _ => "wasip3",
    };
    let of = |rest: &str| format!(r#"{{activity="{id}",ticket_type="default"{rest}"#);
    for line in [
        format!(
            r#"flashclaim_claim_answers_total{} 2"#,
            of(r#",outcome="claimed"}"#)
        ),
        format!(
            r#"flashclaim_claim_answers_total{} 1"#,
            of(r#",outcome="sold_out"}"#)
        ),
        format!(
            r#"flashclaim_claim_answers_total{} 0"#,
            of(r#",outcome="rate_limited"}"#)
        ),
        format!("flashclaim_tickets_issued_total{} 2", of("}")),
        format!("flashclaim_tickets_left{} 0", of("}")),
        r#"flashclaim_redis_up{shard="0"} 1"#.to_string(),
        r#"flashclaim_drain_backlog_entries{shard="0"} 0"#.to_string(),
        r#"flashclaim_drain_rows_written_total{table="tickets"} 2"#.to_string(),
        r#"flashclaim_registrations_total{outcome="created"} 1"#.to_string(),
        r#"flashclaim_registrations_total{outcome="taken"} 1"#.to_string(),
        r#"flashclaim_login_attempts_total{outcome="checked"} 2"#.to_string(),
        "flashclaim_login_successes_total 1".to_string(),
        "flashclaim_postgres_up 1".to_string(),
        format!(r#"flashclaim_build_info{{version="0.1.0",manifest="{flavour}"}} 1"#),
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
    }
    let runs = text
        .lines()
        .find_map(|l| l.strip_prefix("flashclaim_drain_runs_total "))
        .and_then(|v| v.parse::<f64>().ok());
    assert!(runs >= Some(1.0), "{text}");

    let r = t.send("GET", "/metrics", Some(&t.admin), "").await;
    assert_eq!(r.status, 200, "an operator reads them too");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_loan_between_stock_buckets_left_open_by_a_claim_that_died_is_credited_once_by_the_drain()
{
    use flashclaim_core::buckets;
    use flashclaim_core::scripts::{CREDIT, LEND};
    // Stock buckets work on one Redis too (every bucket on it): 9 tickets, 3 per bucket.
    let t = TestApp::start().await;
    let id = t.create_activity(9, r#","stock_buckets":3"#).await;
    t.publish(id).await;
    let activity = ActivityId::from_db(id);
    let (lender, home) = (
        ActivityKeys::in_bucket(activity, 2, 3),
        ActivityKeys::in_bucket(activity, 1, 3),
    );
    // A claim homed in bucket 1 borrowed 2 from bucket 2, long enough ago, then died
    // before its claim script ran.
    let redis = NativeRedis::new(t.redis().await);
    let at = flashclaim_tests::now_ms() - buckets::REPAIR_AFTER_MS - 1;
    let lent = run_script(
        &redis,
        &LEND,
        &[lender.meta(), lender.stocks(), lender.bucket()],
        &[
            Arg::from("default"),
            Arg::Int(2),
            Arg::from("died.2"),
            Arg::Int(1),
            Arg::Int(at),
        ],
    )
    .unwrap();
    assert_eq!(lent[0].as_int(), Some(2));
    let stock = |keys: &ActivityKeys| {
        redis
            .execute("HGET", &[Arg::from(keys.stocks()), Arg::from("default")])
            .unwrap()[0]
            .as_int()
            .unwrap()
    };
    assert_eq!((stock(&lender), stock(&home)), (1, 3));
    assert_eq!(
        t.detail(id, None).await.json()["stock_left"],
        7,
        "2 in flight"
    );

    t.drain().await;
    assert_eq!(
        (stock(&lender), stock(&home)),
        (1, 5),
        "credited to the home"
    );
    assert_eq!(t.detail(id, None).await.json()["stock_left"], 9);
    let open = redis
        .execute("HGETALL", &[Arg::from(lender.bucket())])
        .unwrap();
    assert!(open.is_empty(), "the loan is closed: {open:?}");
    // Crediting again (the claim's reply was only late) changes nothing.
    let again = run_script(
        &redis,
        &CREDIT,
        &[home.stocks(), home.bucket()],
        &[Arg::from("died.2"), Arg::from("default"), Arg::Int(2)],
    )
    .unwrap();
    assert_eq!(again[0].as_int(), Some(0));
    assert_eq!(stock(&home), 5);
}
