//! Redis Cluster with real processes: three primaries and three replicas
//! (`flashclaim_tests::cluster`) as flashclaim's one shard, `redis_address =
//! redis-cluster://<three seeds>`, with `redis_replicas_ack` at its cluster default (1).
//! The e2e basics over activities spread on several primaries; a hot activity's slot moved
//! mid-storm to a primary added to the running cluster; its primary SIGKILLed mid-storm.
//! The storms end with the promise of RELIABILITY.md (`flashclaim_tests::storm`). Figures
//! are printed (`--nocapture`).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flashclaim_core::cluster::key_slot;
use flashclaim_tests::cluster::{RedisCluster, NODE_TIMEOUT_MS};
use flashclaim_tests::storm::{self, *};
use flashclaim_tests::*;

async fn app_on(cluster: &RedisCluster) -> TestApp {
    TestApp::start_on(
        &cluster.address(),
        &fresh_pg_db().await,
        &[("SPIN_VARIABLE_REDIS_HOST", "127.0.0.1:*")],
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn publish_claim_limits_sold_out_drain_and_return_work_on_activities_spread_over_a_cluster() {
    let cluster = RedisCluster::start("e2e").await;
    // The slot computed here is Redis' own.
    for key in [
        "123456789",
        "fc:{a:1}:meta",
        "fc:shard",
        "fc:activities",
        "{user1000}.following",
        "foo{}{bar}",
        "foo{{bar}}zap",
    ] {
        assert_eq!(
            cluster.keyslot(key).await,
            Some(i64::from(key_slot(key.as_bytes()))),
            "{key}"
        );
    }
    let t = app_on(&cluster).await;
    let mut ids = Vec::new();
    let mut owners = HashSet::new();
    for _ in 0..6 {
        let id = t.create_activity(3, r#","per_user_limit":2"#).await;
        t.publish(id).await;
        owners.insert(cluster.owner_of_activity(id).await);
        ids.push(id);
    }
    assert!(
        owners.len() >= 2,
        "six activities on one primary: {owners:?}"
    );

    let mut first_code = None;
    for &id in &ids {
        let r = t.claim(id, "alice", r#"{"quantity":2}"#).await;
        assert_eq!(r.status, 201, "{}", r.text());
        assert_eq!(r.json()["tickets"].as_array().unwrap().len(), 2);
        first_code
            .get_or_insert_with(|| r.json()["tickets"][0]["code"].as_str().unwrap().to_string());
        problem(&t.claim(id, "alice", "").await, 409, "limit_reached");
        assert_eq!(t.claim(id, "bob", "").await.status, 201);
        problem(&t.claim(id, "carol", "").await, 409, "sold_out");
        assert_eq!(t.detail(id, None).await.json()["stock_left"], 0);
        let stats = t
            .as_admin("GET", &format!("/admin/activities/{id}/stats"), "")
            .await;
        assert_eq!(stats.status, 200, "{}", stats.text());
    }
    // Where the map is read: a WASIp3 claim instance keeps it, a WASIp2 request reads it.
    // On an activity whose slot is not on slot 0's primary, so that a count sent to a node
    // without regard to the key (where a keyless connection goes) would be refused.
    let slot_zero = cluster.owner(0).await;
    let mut away = None;
    for &id in &ids {
        if Some(cluster.owner_of_activity(id).await) != slot_zero {
            away = Some(id);
            break;
        }
    }
    let away = away.expect("an activity away from slot 0's primary");
    let before = cluster.map_reads().await;
    let claims = 40;
    for n in 0..claims {
        let r = t.claim(away, &format!("reader-{n}"), "").await;
        problem(&r, 409, "sold_out");
    }
    let reads = cluster.map_reads().await - before;
    println!("cluster map: {reads} CLUSTER NODES for {claims} claims");
    if wasip3_claim() {
        assert!(reads < claims / 4, "{reads} map reads for {claims} claims");
    } else {
        assert!(reads >= claims, "{reads} map reads for {claims} claims");
    }

    // Every sold_out answer is counted on the activity's own primary, those a WASIp3
    // instance gave from its cache too (within the count's second, on a loaded machine 5 s).
    let counted = |fields: &[(String, String)]| -> i64 {
        fields
            .iter()
            .filter(|(f, _)| f.starts_with("answers:sold_out:"))
            .filter_map(|(_, v)| v.parse::<i64>().ok())
            .sum()
    };
    let key = format!("fc:{{a:{away}}}:metrics");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let n = counted(&cluster.hash(&key).await);
        if n == claims as i64 + 1 {
            break;
        }
        assert!(
            n <= claims as i64 + 1 && Instant::now() < deadline,
            "{n} sold_out answers counted of {} (carol and the readers)",
            claims + 1
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The list reads the stock of activities on several primaries (one script per slot).
    let list = t.send("GET", "/api/activities", None, "").await;
    assert_eq!(list.status, 200, "{}", list.text());
    assert!(list.text().contains("stock_left"), "{}", list.text());

    t.drain_to_empty().await;
    assert_eq!(t.count("SELECT count(*) FROM tickets").await, 18);
    assert_eq!(t.count("SELECT count(*) FROM claims").await, 12);
    for &id in &ids {
        let reconcile = t
            .as_admin("GET", &format!("/admin/activities/{id}/reconcile"), "")
            .await
            .json();
        assert_eq!(reconcile["ok"], true, "{reconcile}");
    }

    // Giving a ticket back puts it back in stock, and someone else can claim it.
    let code = first_code.unwrap();
    let r = t
        .as_user("alice", "DELETE", &format!("/api/tickets/{code}"), "")
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["stock_left"], 1, "{}", r.text());
    assert_eq!(t.claim(ids[0], "carol", "").await.status, 201);
    t.drain_to_empty().await;
    assert_eq!(
        t.count("SELECT count(*) FROM tickets WHERE status = 'returned'")
            .await,
        1
    );
    // /healthz (and the console's Stores page) names each primary and its replica.
    let health = t.send("GET", "/healthz", None, "").await;
    assert_eq!(health.status, 200, "{}", health.text());
    let groups = health.json()["redis_groups"].as_array().cloned().unwrap();
    assert_eq!(groups.len(), 3, "{}", health.text());
    for g in &groups {
        assert_eq!(
            (g["role"].as_str(), g["replicas"].as_i64()),
            (Some("master"), Some(1)),
            "{g}"
        );
    }

    // Registration and log-in: the throttle's counters and the global metrics, one script.
    t.register_and_log_in(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ask_is_followed_while_a_slot_moves_and_moved_after_it_and_tryagain_claims_nothing() {
    let cluster = RedisCluster::start("redirects").await;
    let t = app_on(&cluster).await;
    let id = t.create_activity(10, "").await;
    t.publish(id).await;
    assert_eq!(t.claim(id, "alice", "").await.status, 201);
    // Every key the detail's script reads exists now: the cached view, stocks, claimed.
    assert_eq!(t.detail(id, None).await.json()["stock_left"], 9);
    let slot = key_slot(format!("a:{id}").as_bytes());
    let from = cluster.owner(slot).await.unwrap();
    let to = cluster.other_primary(from).await;

    // Mid-move, every key already on the importing node: the owner answers ASK, followed
    // once with ASKING on the same connection (and the script loaded there with EVAL).
    cluster.begin_move(slot, from, to).await;
    assert!(cluster.migrate_keys(slot, from, to).await > 0);
    let detail = t.detail(id, None).await;
    assert_eq!(detail.status, 200, "{}", detail.text());
    assert_eq!(detail.json()["stock_left"], 9, "{}", detail.text());
    // A new claim's keys are partly nowhere yet: the importing node refuses it (TRYAGAIN),
    // which proves nothing ran.
    let r = t.claim(id, "bob", "").await;
    problem(&r, 503, "unavailable");
    assert_eq!(r.json()["claimed"], false, "{}", r.text());

    // Moved: the map is corrected by MOVED and the claim goes to the new owner.
    cluster.finish_move(slot, from, to).await;
    let r = t.claim(id, "bob", "").await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(t.detail(id, None).await.json()["stock_left"], 8);
    t.drain_to_empty().await;
    assert_eq!(
        t.claim_ids(id).await.len(),
        2,
        "alice's and bob's claims, once each"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hot_activity_moved_mid_storm_to_a_primary_added_to_the_running_cluster_loses_nothing() {
    let mut cluster = RedisCluster::start("reshard").await;
    let t = Arc::new(app_on(&cluster).await);
    let id = activity(&t).await;
    let slot = key_slot(format!("a:{id}").as_bytes());
    // A primary (with its replica, so WAIT 1 can be met there) joins the running cluster;
    // nothing is published again.
    let added = cluster.add_primary().await;
    cluster.add_replica(added).await;

    let stop = Arc::new(AtomicBool::new(false));
    let runner = tokio::spawn(storm::storm(t.clone(), id, stop.clone()));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let moved = cluster.move_slot(slot, added).await;
    let moved_at = Instant::now();
    let (first_claim_after, probes) = wait_for_claims(&t, id, moved_at).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::SeqCst);
    let mut seen = runner.await.unwrap();
    seen.extend(probes);

    assert_eq!(cluster.owner(slot).await, Some(added), "the slot moved");
    let (acked, nothing, unknown) = assert_clean(&seen);
    let (survived, afresh) = replay_unknowns(&t, id, &mut seen).await;
    let in_postgres = check_promise(&t, &cluster.node_url(added), id, &seen).await;
    println!(
        "cluster reshard: {} claims, {CONCURRENCY} in flight; slot {slot} (the activity's \
         {} keys) moved from node {} to node {added}, a primary added to the running \
         cluster, in {:.0} ms; first 201 {:.0} ms after the move; answers: {acked} 201, \
         {nothing} 503 claimed:false, {unknown} 503 claimed:null ({survived} had claimed, \
         {afresh} had not); {in_postgres} acknowledged, all in Postgres once, 0 lost, 0 doubled",
        seen.len(),
        moved.keys,
        moved.from,
        moved.took.as_secs_f64() * 1000.0,
        first_claim_after.as_secs_f64() * 1000.0,
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_primary_killed_mid_storm_is_replaced_by_its_replica_and_nothing_acknowledged_is_lost() {
    let mut cluster = RedisCluster::start("kill").await;
    let t = Arc::new(app_on(&cluster).await);
    let id = activity(&t).await;
    let slot = key_slot(format!("a:{id}").as_bytes());

    let stop = Arc::new(AtomicBool::new(false));
    let runner = tokio::spawn(storm::storm(t.clone(), id, stop.clone()));
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let old = cluster.owner(slot).await.expect("an owner");
    let killed_at = Instant::now();
    cluster.kill(old);
    let prober = {
        let t = t.clone();
        tokio::spawn(async move { wait_for_claims(&t, id, killed_at).await })
    };
    let new = cluster
        .wait_for_new_owner(slot, old, Duration::from_secs(30))
        .await;
    let promoted_after = killed_at.elapsed();
    // The promoted replica has no replica of its own: WAIT 1 cannot be met until the old
    // primary, restarted as a crashed host's supervisor would, rejoins as its replica.
    cluster.restart(old);
    cluster
        .wait_until_replica_in_sync(old, Duration::from_secs(30))
        .await;
    let replica_back_after = killed_at.elapsed();
    let (first_claim_after, probes) = prober.await.unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::SeqCst);
    let mut seen = runner.await.unwrap();
    seen.extend(probes);

    let (acked, nothing, unknown) = assert_clean(&seen);
    let (survived, afresh) = replay_unknowns(&t, id, &mut seen).await;
    let in_postgres = check_promise(&t, &cluster.node_url(new), id, &seen).await;
    println!(
        "cluster kill: {} claims, {CONCURRENCY} in flight; primary node {old} SIGKILLed, its \
         replica node {new} promoted after {:.2} s (cluster-node-timeout {NODE_TIMEOUT_MS} \
         ms), node {old} back as its replica after {:.2} s, first 201 after {:.2} s; \
         answers: {acked} 201, {nothing} 503 claimed:false, {unknown} 503 claimed:null \
         ({survived} had claimed, {afresh} had not); {in_postgres} acknowledged, all in \
         Postgres once, 0 lost, 0 doubled",
        seen.len(),
        promoted_after.as_secs_f64(),
        replica_back_after.as_secs_f64(),
        first_claim_after.as_secs_f64(),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_misconfigured_cluster_answers_a_clear_503_at_once_and_never_hangs() {
    let redis_port = services().redis_port;
    for (what, redis_address) in [
        (
            "a Redis without cluster support as the seed",
            format!("redis-cluster://127.0.0.1:{redis_port}"),
        ),
        (
            "no reachable seed",
            format!(
                "redis-cluster://127.0.0.1:{},127.0.0.1:{}",
                free_port(),
                free_port()
            ),
        ),
        (
            "a password the seed refuses",
            format!("redis-cluster://nobody:wrong-password@127.0.0.1:{redis_port}"),
        ),
        (
            "a seed without a port",
            "redis-cluster://nobody:wrong-password@127.0.0.1".to_string(),
        ),
    ] {
        assert_misconfigured_answers(what, &redis_address).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn one_hot_activity_in_three_stock_buckets_on_three_primaries_gives_every_ticket_once_within_every_limit(
) {
    use flashclaim_core::buckets;
    let cluster = RedisCluster::start("buckets").await;
    let t = Arc::new(app_on(&cluster).await);
    let now = now_ms();
    let body = format!(
        r#"{{"name":"Hot","starts_at":"{}","ends_at":"{}","per_user_limit":3,"stock_buckets":3,
            "ticket_types":[{{"key":"std","name":"Standard","stock_total":31,"per_user_limit":2}},
                            {{"key":"vip","name":"VIP","stock_total":10,"per_user_limit":2}}]}}"#,
        flashclaim_core::time::Millis(now - 60_000),
        flashclaim_core::time::Millis(now + 3_600_000),
    );
    let created = t
        .send("POST", "/admin/activities", Some(&t.admin), &body)
        .await;
    assert_eq!(created.status, 201, "{}", created.text());
    assert_eq!(created.json()["stock_buckets"], 3, "{}", created.text());
    let id = created.json()["id"].as_i64().unwrap();
    let published = t.publish(id).await;
    assert_eq!(published.json()["stock_left"], 41, "{}", published.text());
    let mut owners = HashSet::new();
    for b in 0..3 {
        let tag = buckets::tag(flashclaim_core::ids::ActivityId::from_db(id), b, 3);
        owners.insert(cluster.owner(key_slot(tag.as_bytes())).await.unwrap());
    }
    assert_eq!(owners.len(), 3, "one bucket per primary: {owners:?}");

    // 60 people press at once, each for 2 std then 2 vip, then once more each: 160 tickets
    // wanted of 41, and the activity's limit of 3 cuts the vip of those who got 2 std.
    let mut presses = Vec::new();
    for u in 0..60 {
        let t = t.clone();
        presses.push(tokio::spawn(async move {
            let user = format!("hot-{u}");
            let mut got = Vec::new();
            for body in [
                r#"{"quantity":2,"ticket_type":"std"}"#,
                r#"{"quantity":2,"ticket_type":"vip"}"#,
                r#"{"quantity":1,"ticket_type":"std"}"#,
                r#"{"quantity":1,"ticket_type":"vip"}"#,
            ] {
                let r = t.claim(id, &user, body).await;
                match r.status {
                    201 => {
                        for ticket in r.json()["tickets"].as_array().unwrap() {
                            let ty = r.json()["ticket_type"].as_str().unwrap().to_string();
                            got.push((ty, ticket["code"].as_str().unwrap().to_string()));
                        }
                    }
                    409 => {}
                    other => panic!("{user}: {other} {}", r.text()),
                }
            }
            (user, got)
        }));
    }
    let mut codes = HashSet::new();
    let (mut std, mut vip) = (0, 0);
    let mut holder = None;
    for press in presses {
        let (user, got) = press.await.unwrap();
        let of = |ty: &str| got.iter().filter(|(t, _)| t == ty).count();
        assert!(
            of("std") <= 2 && of("vip") <= 2 && got.len() <= 3,
            "{user}: {got:?}"
        );
        std += of("std");
        vip += of("vip");
        for (_, code) in &got {
            assert!(codes.insert(code.clone()), "{code} given twice");
            if holder.is_none() && code.ends_with("-2") {
                let ty = got.iter().find(|(_, c)| c == code).unwrap().0.clone();
                holder = Some((user.clone(), code.clone(), ty));
            }
        }
    }
    assert_eq!((std, vip), (31, 10), "every ticket given, none twice");
    let detail = t.detail(id, None).await;
    assert_eq!(detail.json()["stock_left"], 0, "{}", detail.text());
    problem(
        &t.claim(id, "late", r#"{"ticket_type":"std"}"#).await,
        409,
        "sold_out",
    );

    // Everything reaches Postgres, from every bucket's log, and the operator sees one
    // activity.
    t.drain_to_empty().await;
    assert_eq!(t.count("SELECT count(*) FROM tickets").await, 41);
    assert_eq!(
        t.count(
            "SELECT coalesce(max(n), 0) FROM (SELECT count(*) AS n FROM tickets \
             GROUP BY user_id) AS per_user"
        )
        .await,
        3
    );
    let reconcile = t
        .as_admin("GET", &format!("/admin/activities/{id}/reconcile"), "")
        .await
        .json();
    assert_eq!(reconcile["ok"], true, "{reconcile}");
    let stats = t
        .as_admin("GET", &format!("/admin/activities/{id}/stats"), "")
        .await;
    assert_eq!(stats.status, 200, "{}", stats.text());

    // A ticket of bucket 2 is found, shown to its owner and given back there; after the
    // bound within which an empty home does not ask again, anyone can claim it.
    let (owner, code, ty) = holder.expect("a ticket of bucket 2");
    let mine = t
        .as_user(&owner, "GET", &format!("/api/tickets/{code}"), "")
        .await;
    assert_eq!(mine.status, 200, "{}", mine.text());
    let detail = t.detail(id, Some(&owner)).await.json();
    assert!(detail["my_claimed"].as_i64().unwrap() >= 1, "{detail}");
    let back = t
        .as_user(&owner, "DELETE", &format!("/api/tickets/{code}"), "")
        .await;
    assert_eq!(back.status, 200, "{}", back.text());
    assert_eq!(t.detail(id, None).await.json()["stock_left"], 1);
    tokio::time::sleep(Duration::from_millis(
        (buckets::DRY_MS + flashclaim_core::claim_cache::MAX_BOUND_MS + 200) as u64,
    ))
    .await;
    let again = t
        .claim(id, "second", &format!(r#"{{"ticket_type":"{ty}"}}"#))
        .await;
    assert_eq!(again.status, 201, "{}", again.text());
    t.drain_to_empty().await;
    assert_eq!(
        t.count("SELECT count(*) FROM tickets WHERE status = 'returned'")
            .await,
        1
    );
}
