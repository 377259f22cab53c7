//! The claim and drain benchmark (`make bench`): claims/s and latency through the full stack
//! (HTTP → test host → claim component → one EVALSHA), beside the physical limits measured
//! in the same run on the same machine: `redis-benchmark` running the same EVALSHA on the
//! same Redis, and a bulk insert of the same rows into the same Postgres.

use std::sync::Arc;
use std::time::{Duration, Instant};

use flashclaim_core::activity::{Activity, Kind, Status};
use flashclaim_core::claim::{ClaimCommand, ClaimRequest, RateLimit};
use flashclaim_core::ids::{ActivityId, UserId};
use flashclaim_core::scripts::{run_script, Arg, CLAIM, PUBLISH};
use flashclaim_core::time::Millis;
use flashclaim_tests::{bearer, services, token, NativeRedis, TestApp};
use tokio::sync::Semaphore;

const REQUESTS_PER_LEVEL: usize = 20_000;
const LEVELS: [usize; 2] = [64, 256];
const REDIS_BENCH_REQUESTS: usize = 200_000;

struct Level {
    concurrency: usize,
    claims_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Answers other than 201, by status (0: the request itself failed).
    errors: std::collections::BTreeMap<u16, usize>,
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

async fn http_level(t: &Arc<TestApp>, id: i64, concurrency: usize, offset: usize) -> Level {
    // Tokens are made up front: signing is the client's cost, not the service's.
    let auths: Vec<String> = (0..REQUESTS_PER_LEVEL)
        .map(|i| bearer(&token(&format!("bench-{}", offset + i), None)))
        .collect();
    let gate = Arc::new(Semaphore::new(concurrency));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(REQUESTS_PER_LEVEL);
    for auth in auths {
        let (t, gate) = (t.clone(), gate.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await.unwrap();
            let sent = Instant::now();
            let r = t
                .client
                .send(
                    "POST",
                    &format!("/api/activities/{id}/claims"),
                    &[("authorization", auth.as_str())],
                    "",
                )
                .await;
            (sent.elapsed(), r.map_or(0, |r| r.status))
        }));
    }
    let mut latencies = Vec::with_capacity(REQUESTS_PER_LEVEL);
    let mut errors = std::collections::BTreeMap::new();
    for task in tasks {
        let (latency, status) = task.await.unwrap();
        latencies.push(latency);
        if status != 201 {
            *errors.entry(status).or_insert(0) += 1;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    Level {
        concurrency,
        claims_per_sec: REQUESTS_PER_LEVEL as f64 / elapsed,
        p50_ms: percentile(&latencies, 0.50),
        p99_ms: percentile(&latencies, 0.99),
        errors,
    }
}

/// redis-benchmark running the claim script's EVALSHA, every call a new user.
fn redis_benchmark(redis_db: u32, concurrency: usize) -> f64 {
    let id = ActivityId::from_db(999_999);
    let user = UserId::parse("u__rand_int__").unwrap();
    let cmd = ClaimCommand::new(
        id,
        &user,
        ClaimRequest { quantity: 1 },
        None,
        Millis(now_ms()),
        "bench-claim-__rand_int__",
        &["BENCH".to_string()],
        RateLimit::OFF,
        RateLimit::OFF,
    );
    let mut args: Vec<String> = vec![
        "-p".into(),
        services().redis_port.to_string(),
        "--dbnum".into(),
        redis_db.to_string(),
        "-n".into(),
        REDIS_BENCH_REQUESTS.to_string(),
        "-c".into(),
        concurrency.to_string(),
        "-r".into(),
        "100000000".into(),
        "--csv".into(),
        "EVALSHA".into(),
        CLAIM.sha1.into(),
        cmd.keys.len().to_string(),
    ];
    args.extend(cmd.keys.iter().cloned());
    args.extend(cmd.argv.iter().map(|a| match a {
        Arg::Int(n) => n.to_string(),
        Arg::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
    }));
    let out = std::process::Command::new("redis-benchmark")
        .args(&args)
        .output()
        .expect("redis-benchmark runs");
    let text = String::from_utf8_lossy(&out.stdout);
    // CSV: "test","rps",...; the data line's second field is requests per second.
    let line = text
        .lines()
        .find(|l| l.starts_with("\"EVALSHA"))
        .unwrap_or_else(|| panic!("redis-benchmark said: {text}"));
    line.split(',')
        .nth(1)
        .unwrap()
        .trim_matches('"')
        .parse()
        .unwrap()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run());
}

async fn run() {
    let t = Arc::new(TestApp::start().await);
    const WARM_UP: usize = 200;
    let stock = (REQUESTS_PER_LEVEL * LEVELS.len() + WARM_UP) as i64;
    let id = t.create_activity(stock, "").await;
    t.publish(id).await;

    // Warm up: the first instantiation of each component pays for lazy work.
    for i in 0..WARM_UP {
        t.claim(id, &format!("warm-{i}"), "").await;
    }
    let mut levels = Vec::new();
    for (n, c) in LEVELS.iter().enumerate() {
        levels.push(http_level(&t, id, *c, n * REQUESTS_PER_LEVEL).await);
    }

    // The same script straight on Redis: load an activity with room for every call.
    let redis_db: u32 = t.redis_url.rsplit('/').next().unwrap().parse().unwrap();
    let native = NativeRedis::new(t.redis().await);
    let bench_activity = Activity {
        id: ActivityId::from_db(999_999),
        name: "redis-benchmark".into(),
        description: String::new(),
        image_url: None,
        starts_at: Millis(now_ms() - 60_000),
        ends_at: Millis(now_ms() + 3_600_000),
        status: Status::Published,
        stock_total: (REDIS_BENCH_REQUESTS * LEVELS.len() * 2) as i64,
        per_user_limit: 100,
        kind: Kind::Counter,
        require_pass: false,
    };
    let (keys, argv) = bench_activity.publish_command(0);
    run_script(&native, &PUBLISH, &keys, &argv).unwrap();
    let limits: Vec<f64> = LEVELS
        .iter()
        .map(|c| redis_benchmark(redis_db, *c))
        .collect();

    // Drain: every claim of the HTTP runs into Postgres, in batches, as the cron does.
    let to_drain = t.count("SELECT count(*) FROM claims").await;
    let started = Instant::now();
    let mut drained = 0i64;
    while drained < stock {
        let report = t.drain().await;
        let n = report["entries"].as_i64().unwrap();
        drained += n;
        if n == 0 {
            break;
        }
    }
    let drain_secs = started.elapsed().as_secs_f64();
    let tickets = t.count("SELECT count(*) FROM tickets").await;
    let drain_rate = (tickets - to_drain) as f64 / drain_secs;

    // Postgres's own bulk rate for the same rows (claim + ticket per entry) in one statement each.
    let pg = t.pg().await;
    pg.batch_execute(
        "CREATE TEMP TABLE bench_claims (LIKE claims INCLUDING ALL); \
         CREATE TEMP TABLE bench_tickets (LIKE tickets INCLUDING ALL EXCLUDING IDENTITY); \
         ALTER TABLE bench_tickets ADD COLUMN bid bigserial",
    )
    .await
    .unwrap();
    let started = Instant::now();
    pg.batch_execute(&format!(
        "BEGIN; \
         INSERT INTO bench_claims (id, activity_id, user_id, quantity, claimed_at) \
           SELECT 'c' || g, {id}, 'u' || g, 1, now() FROM generate_series(1, {tickets}) g; \
         INSERT INTO bench_tickets (id, claim_id, activity_id, user_id, code, status, claimed_at) \
           SELECT g, 'c' || g, {id}, 'u' || g, 'X-' || g, 'active', now() FROM generate_series(1, {tickets}) g; \
         COMMIT"
    ))
    .await
    .unwrap();
    let bulk_rate = tickets as f64 / started.elapsed().as_secs_f64();

    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "\n## flashclaim benchmark ({cpus} CPUs, {})\n",
        flashclaim_core::time::Millis(now_ms())
    );
    println!("| measure | concurrency | result | physical limit (same run) | ratio |");
    println!("|---|---|---|---|---|");
    for (level, limit) in levels.iter().zip(&limits) {
        println!(
            "| claims/s through HTTP → test host → claim component | {} | {:.0}/s (p50 {:.2} ms, p99 {:.2} ms, non-201: {:?}) | redis-benchmark EVALSHA claim.lua: {:.0}/s | {:.1}% |",
            level.concurrency, level.claims_per_sec, level.p50_ms, level.p99_ms, level.errors, limit,
            100.0 * level.claims_per_sec / limit
        );
    }
    println!(
        "| drain rows/s (claim log → Postgres, batches of 500) | 1 | {drain_rate:.0} tickets/s ({tickets} tickets in {drain_secs:.2} s) | bulk INSERT … SELECT of the same rows: {bulk_rate:.0}/s | {:.1}% |",
        100.0 * drain_rate / bulk_rate
    );
}
