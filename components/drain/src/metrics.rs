//! `GET /metrics` (see `flashclaim_core::metrics`): the reads of one scrape, and the
//! drain's own tally. The drain serves it because it already walks every shard's activities
//! and talks to Postgres.

use flashclaim_core::drain::DrainReport;
use flashclaim_core::ids::ActivityId;
use flashclaim_core::keys::ACTIVITY_INDEX;
use flashclaim_core::metrics::{self, ActivityReading, Scrape, ShardReading};
use flashclaim_core::scripts::{Arg, RedisCommands, Reply, METRICS, TALLY};
use flashclaim_core::{ApiError, HttpResponse};
use flashclaim_spin as glue;
use glue::SpinRedis;
use spin_sdk::http::Request;

pub fn serve(req: &Request) -> Result<HttpResponse, ApiError> {
    let authorization = req.header("authorization").and_then(|h| h.as_str());
    let token = glue::optional_var("metrics_token");
    metrics::authorize(authorization, token.as_deref(), || {
        glue::principal(req).is_ok_and(|p| p.is_admin())
    })
    .map_err(|refusal| {
        let fields = [("reason", refusal.reason().into())];
        eprintln!(
            "{}",
            flashclaim_core::log::line(glue::now().0, "metrics_refused", &fields)
        );
        refusal.to_error()
    })?;
    Ok(scrape()?.render().to_response())
}

fn scrape() -> Result<Scrape, ApiError> {
    let shards = glue::redis_shards()?;
    let mut scrape = Scrape {
        now_ms: glue::now().0,
        version: env!("CARGO_PKG_VERSION").to_string(),
        manifest: glue::optional_var("manifest").unwrap_or_else(|| "unknown".into()),
        postgres_up: glue::pg_open()
            .map(|pg| pg.query("SELECT 1", &[]).is_ok())
            .unwrap_or(false),
        ..Scrape::default()
    };
    for (index, address) in shards.all().iter().enumerate() {
        let Ok(redis) = SpinRedis::open(address) else {
            scrape.shards.push(ShardReading::default());
            continue;
        };
        let reading = read_shard(&redis);
        if index == 0 && reading.up {
            scrape.global = redis
                .execute("HGETALL", &[Arg::from(metrics::GLOBAL_KEY)])
                .map(|r| metrics::pairs(&r))
                .unwrap_or_default();
        }
        scrape.shards.push(reading);
    }
    Ok(scrape)
}

/// One shard: its activities (one metrics.lua each) and its NOSCRIPT count.
fn read_shard(redis: &SpinRedis) -> ShardReading {
    let Ok(members) = redis.execute("SMEMBERS", &[Arg::from(ACTIVITY_INDEX)]) else {
        return ShardReading::default();
    };
    let script_reloads = redis
        .execute("INFO", &[Arg::from("errorstats")])
        .ok()
        .and_then(|r| {
            r.first()
                .and_then(Reply::as_text)
                .map(metrics::noscript_count)
        });
    let activities = members
        .iter()
        .filter_map(Reply::as_text)
        .filter_map(|t| ActivityId::parse(t).ok())
        .filter_map(|id| {
            // Every stock bucket of it, read as one activity (flashclaim_core::buckets).
            let mut one: Option<ActivityReading> = None;
            for k in glue::bucket_keys(redis, id).ok()? {
                let keys = [k.meta(), k.stocks(), k.metrics(), k.passes(), k.log()];
                let reply = redis.run(&METRICS, &keys, &[]).ok()?;
                let reading = ActivityReading::decode(id.get(), &reply)?;
                match one.as_mut() {
                    Some(one) => one.merge(reading),
                    None => one = Some(reading),
                }
            }
            one
        })
        .collect();
    ShardReading {
        up: true,
        script_reloads,
        activities,
    }
}

/// Counts a drain run in the global metrics hash on the first endpoint, and writes its log
/// line. Best effort: a first endpoint that is down loses this run's tally (said in README,
/// "Monitoring"), never the run's answer.
pub fn note_run(run: &Result<DrainReport, ApiError>) {
    let now = glue::now().0;
    if let Some(line) = metrics::drain_log_line(run, now) {
        eprintln!("{line}");
    }
    let first = glue::redis_shards()
        .ok()
        .and_then(|s| s.all().first().cloned());
    let tallied = first
        .ok_or_else(|| "no redis_address".to_string())
        .and_then(|address| SpinRedis::open(&address).map_err(|e| e.to_string()))
        .and_then(|redis| {
            let keys = [metrics::GLOBAL_KEY.to_string()];
            redis
                .run(&TALLY, &keys, &metrics::drain_tally(run, now))
                .map_err(|e| e.to_string())
        });
    if tallied.is_err() {
        let fields = [("reason", "first redis endpoint unreachable".into())];
        eprintln!(
            "{}",
            flashclaim_core::log::line(now, "drain_tally_lost", &fields)
        );
    }
}
