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
    let before = cluster.map_reads().await;
    let claims = 40;
    for n in 0..claims {
        let r = t.claim(ids[0], &format!("reader-{n}"), "").await;
        problem(&r, 409, "sold_out");
    }
    let reads = cluster.map_reads().await - before;
    println!("cluster map: {reads} CLUSTER NODES for {claims} claims");
    if wasip3_claim() {
        assert!(reads < claims / 4, "{reads} map reads for {claims} claims");
    } else {
        assert!(reads >= claims, "{reads} map reads for {claims} claims");
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
