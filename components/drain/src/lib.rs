//! The drain component: moves the claim log from Redis into Postgres.
//!
//! Runs every second on the cron trigger (`handle-cron-event`), and on demand as
//! `POST /admin/drain` for hosts without the cron plugin. At-least-once with idempotent
//! writes: a batch is written in one transaction with ON CONFLICT DO NOTHING and only then
//! acknowledged; entries of a run that died are taken over after the reclaim timeout.

use flashclaim_spin as glue;

use flashclaim_core::drain::{self, Batch, Changes, DrainReport, GroupHealth, Health, Rows, Step};
use flashclaim_core::ids::ActivityId;
use flashclaim_core::keys::{ActivityKeys, ACTIVITY_INDEX, DRAIN_GROUP};
use flashclaim_core::log;
use flashclaim_core::scripts::{self, Arg, RedisCommands, Reply, CREDIT, DRAIN_ACK, DRAIN_READ};
use flashclaim_core::shards::label;
use flashclaim_core::topology;
use flashclaim_core::{ApiError, HttpResponse};
use spin_sdk::http::{Method, Request, Response};
use spin_sdk::pg4;

use glue::SpinRedis;

mod metrics;

mod cron {
    wit_bindgen::generate!({
        path: "../../wit/spin-cron",
        world: "fermyon:spin-cron/spin-cron",
    });
}

use cron::fermyon::spin_cron::cron_types::{Error as CronError, Metadata};

struct Drain;

impl cron::Guest for Drain {
    fn handle_cron_event(_: Metadata) -> Result<(), CronError> {
        let report = counted_run().map_err(|e| CronError::Other(e.to_string()))?;
        match report.errors.first() {
            Some(e) => Err(CronError::Other(e.clone())),
            None => Ok(()),
        }
    }
}

cron::export!(Drain with_types_in cron);

#[spin_sdk::http_component]
fn handle(req: Request) -> Response {
    glue::serve(&req, route)
}

fn route(req: &Request) -> Result<HttpResponse, ApiError> {
    match (req.method(), glue::path_segments(req).as_slice()) {
        (Method::Get, ["healthz"]) => Ok(health().to_response()),
        (Method::Get, ["metrics"]) => metrics::serve(req),
        (Method::Post, ["admin", "drain"]) => {
            glue::drain_caller(req)?;
            Ok(HttpResponse::json(200, &counted_run()?))
        }
        (_, ["healthz"] | ["metrics"] | ["admin", "drain"]) => Err(ApiError::MethodNotAllowed),
        _ => Err(ApiError::NotFound),
    }
}

/// Both stores reachable, and the claim log's backlog with the age of its oldest entry.
fn health() -> Health {
    let postgres = glue::pg_open()
        .map(|pg| pg.query("SELECT 1", &[]).is_ok())
        .unwrap_or(false);
    let mut health = Health {
        redis: true,
        postgres,
        redis_down: Vec::new(),
        backlog: 0,
        oldest_entry_age_ms: None,
        redis_groups: Vec::new(),
    };
    let Ok(shards) = glue::redis_shards() else {
        health.redis = false;
        return health;
    };
    let now = glue::now().0;
    for (index, address) in shards.all().iter().enumerate() {
        let members = SpinRedis::open(address).and_then(|redis| {
            let members = redis.execute("SMEMBERS", &[Arg::from(ACTIVITY_INDEX)])?;
            Ok((redis, members))
        });
        let Ok((redis, members)) = members else {
            health.redis = false;
            health.redis_down.push(label(&shards, index));
            continue;
        };
        // A Sentinel group's primary, or each primary of a cluster's slot map, and whether
        // its replicas are in sync.
        let mut primaries = redis.on_each_primary("INFO", &[Arg::from("replication")]);
        if redis.is_group() {
            let info = redis.execute("INFO", &[Arg::from("replication")]);
            primaries.push((redis.node().to_string(), info));
        }
        for (primary, info) in primaries {
            let text = info
                .ok()
                .and_then(|r| r.first().and_then(Reply::as_text).map(str::to_string))
                .unwrap_or_default();
            health.redis_groups.push(GroupHealth {
                shard: label(&shards, index),
                primary,
                replication: topology::replication(&text),
            });
        }
        for id in members
            .iter()
            .filter_map(Reply::as_text)
            .filter_map(|t| ActivityId::parse(t).ok())
        {
            let Ok(buckets) = glue::bucket_keys(&redis, id) else {
                health.redis = false;
                continue;
            };
            for log in buckets.iter().map(ActivityKeys::log) {
                let len = redis.execute("XLEN", &[Arg::from(log.as_str())]);
                let first = redis.execute(
                    "XRANGE",
                    &[
                        Arg::from(log.as_str()),
                        Arg::from("-"),
                        Arg::from("+"),
                        Arg::from("COUNT"),
                        Arg::Int(1),
                    ],
                );
                let (Ok(len), Ok(first)) = (len, first) else {
                    health.redis = false;
                    continue;
                };
                health.backlog += len.first().and_then(Reply::as_int).unwrap_or(0);
                if let Some(at) = first
                    .first()
                    .and_then(Reply::as_text)
                    .and_then(drain::entry_millis)
                {
                    let age = now - at;
                    health.oldest_entry_age_ms =
                        Some(health.oldest_entry_age_ms.map_or(age, |a| a.max(age)));
                }
            }
        }
    }
    health
}

/// A drain run, counted for `/metrics` and logged when it did something or failed.
fn counted_run() -> Result<DrainReport, ApiError> {
    let run = drain_all();
    metrics::note_run(&run);
    run
}

/// One drain run over every activity with a log, on every Redis endpoint, until every log
/// is empty or the run's time bound has passed (then the rest only counted as backlog).
fn drain_all() -> Result<DrainReport, ApiError> {
    let reclaim_after = glue::optional_var("drain_reclaim_after_ms")
        .and_then(|v| v.parse().ok())
        .unwrap_or(drain::RECLAIM_AFTER_MS);
    // Only the tests' copy of the manifest declares a shorter bound (`with_test_hooks`).
    let bound = glue::optional_var("drain_run_bound_ms")
        .and_then(|v| v.parse().ok())
        .unwrap_or(drain::RUN_BOUND_MS);
    let run = Run {
        consumer: format!("run-{}", hex(&glue::random_bytes::<8>())),
        reclaim_after,
        started: glue::now().0,
        bound,
    };
    // Postgres first: when it is down, nothing is taken from the log.
    let pg = glue::pg_open()?;
    let shards = glue::redis_shards()?;
    let mut report = DrainReport {
        complete: true,
        ..DrainReport::default()
    };
    let mut unreachable = None;
    for (index, address) in shards.all().iter().enumerate() {
        // A shard that is down holds its log until it is back; the others drain meanwhile.
        let members = SpinRedis::open(address).and_then(|redis| {
            let members = redis.execute("SMEMBERS", &[Arg::from(ACTIVITY_INDEX)])?;
            Ok((redis, members))
        });
        let (redis, members) = match members {
            Ok(found) => found,
            Err(e) => {
                let shard = label(&shards, index);
                // The label names host:port only; the failure's text may name the address.
                let fields = [("shard", shard.clone().into())];
                eprintln!(
                    "{}",
                    log::line(run.started, "drain_shard_unreachable", &fields)
                );
                report.errors.push(format!("{shard} is unreachable"));
                unreachable.get_or_insert(e);
                continue;
            }
        };
        for id in members
            .iter()
            .filter_map(Reply::as_text)
            .filter_map(|t| ActivityId::parse(t).ok())
        {
            report.activities += 1;
            if let Err(e) = drain_activity(&redis, &pg, id, &run, &mut report) {
                report.errors.push(format!("activity {id}: {e}"));
            }
        }
    }
    match unreachable {
        // No shard answered: nothing could be drained at all.
        Some(e) if report.errors.len() == shards.all().len() && report.activities == 0 => {
            Err(glue::redis_unavailable("drain", e))
        }
        _ => Ok(report),
    }
}

/// What every activity of one run shares.
struct Run {
    consumer: String,
    reclaim_after: i64,
    started: i64,
    bound: i64,
}

/// Every stock bucket's log of the activity (`flashclaim_core::buckets`), then the loans
/// between its buckets that their claims left open.
fn drain_activity(
    redis: &SpinRedis,
    pg: &pg4::Connection,
    id: ActivityId,
    run: &Run,
    report: &mut DrainReport,
) -> Result<(), String> {
    let buckets = glue::bucket_keys(redis, id).map_err(|e| e.to_string())?;
    for keys in &buckets {
        drain_log(redis, pg, id, keys.log(), run, report)?;
    }
    if buckets.len() > 1 {
        settle_loans(redis, &buckets).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Credits each loan whose claim did not (credit.lua: at most once, whoever else does),
/// then closes it.
fn settle_loans(
    redis: &SpinRedis,
    buckets: &[ActivityKeys],
) -> Result<(), flashclaim_core::scripts::RedisFailure> {
    let now = glue::now();
    for lender in buckets {
        let state = redis.execute("HGETALL", &[Arg::from(lender.bucket())])?;
        for loan in flashclaim_core::buckets::due_loans(&state, now) {
            let Some(home) = usize::try_from(loan.home).ok().and_then(|h| buckets.get(h)) else {
                continue;
            };
            redis.run_confirmed(
                &CREDIT,
                &[home.stocks(), home.bucket()],
                &[
                    Arg::from(loan.move_id.as_str()),
                    Arg::from(loan.ticket_type.as_str()),
                    Arg::Int(loan.amount),
                ],
                scripts::status_is_success,
            )?;
            redis.execute("HDEL", &[Arg::from(lender.bucket()), Arg::from(loan.field)])?;
        }
    }
    Ok(())
}

fn drain_log(
    redis: &SpinRedis,
    pg: &pg4::Connection,
    id: ActivityId,
    log: String,
    run: &Run,
    report: &mut DrainReport,
) -> Result<(), String> {
    let log = vec![log];
    loop {
        if !drain::may_take_another_batch(run.started, glue::now().0, run.bound) {
            // Past the bound: what is left waits for the next call, and is said.
            let len = redis
                .execute("XLEN", &[Arg::from(log[0].as_str())])
                .map_err(|e| e.to_string())?;
            report.backlog += len.first().and_then(Reply::as_int).unwrap_or(0);
            report.complete = false;
            return Ok(());
        }
        let reply = redis
            .run(
                &DRAIN_READ,
                &log,
                &[
                    Arg::from(DRAIN_GROUP),
                    Arg::from(run.consumer.as_str()),
                    Arg::Int(drain::BATCH_SIZE),
                    Arg::Int(run.reclaim_after),
                ],
            )
            .map_err(|e| e.to_string())?;
        let batch = Batch::decode(&reply);
        crash_at("after_read");
        let taken = batch.entries.len() + batch.malformed.len();
        if taken == 0 {
            let len = redis
                .execute("XLEN", &[Arg::from(log[0].as_str())])
                .map_err(|e| e.to_string())?;
            report.backlog += len.first().and_then(Reply::as_int).unwrap_or(0);
            return Ok(());
        }
        for (entry, payload) in &batch.malformed {
            let fields = [
                ("activity", id.get().into()),
                ("entry", entry.as_str().into()),
                ("payload", payload.as_str().into()),
            ];
            eprintln!(
                "{}",
                log::line(glue::now().0, "drain_malformed_entry", &fields)
            );
        }
        let steps = batch.steps();
        write(pg, &steps)?;
        crash_at("after_commit");
        let mut ack = vec![Arg::from(DRAIN_GROUP)];
        ack.extend(batch.ids().into_iter().map(Arg::from));
        let acked = redis
            .run_confirmed(&DRAIN_ACK, &log, &ack, scripts::always)
            .map_err(|e| e.to_string())?;
        report.entries += taken;
        for step in &steps {
            if let Step::Insert(rows) = step {
                report.claims += rows.claim_ids.len();
                report.tickets += rows.ticket_codes.len();
            }
        }
        report.malformed += batch.malformed.len();
        if taken < drain::BATCH_SIZE as usize {
            report.backlog += drain::decode_ack(&acked).map_or(0, |(_, left)| left);
            return Ok(());
        }
    }
}

/// One transaction per batch, its steps in log order; replaying a batch changes nothing:
/// inserts skip existing (claim, code) rows and status changes only touch active tickets.
/// A batch of claims only (the usual case) is one statement, atomic on its own: one round
/// trip to Postgres instead of four (BEGIN, two inserts, COMMIT).
fn write(pg: &pg4::Connection, steps: &[Step]) -> Result<(), String> {
    match steps {
        [] => Ok(()),
        [Step::Insert(rows)] => insert_claims(pg, rows).map_err(|e| glue::pg_error_text(&e)),
        _ => in_transaction(pg, steps),
    }
}

fn in_transaction(pg: &pg4::Connection, steps: &[Step]) -> Result<(), String> {
    // PgError is spin-sdk's own type; the closure only shortens the transaction's `?`s.
    #[allow(clippy::result_large_err)]
    let run = || -> Result<(), pg4::PgError> {
        pg.execute("BEGIN", &[])?;
        for step in steps {
            match step {
                Step::Insert(rows) => insert_claims(pg, rows)?,
                Step::Change(changes) => change_tickets(pg, changes)?,
            }
        }
        pg.execute("COMMIT", &[])?;
        Ok(())
    };
    run().map_err(|e| {
        let _ = pg.execute("ROLLBACK", &[]);
        glue::pg_error_text(&e)
    })
}

/// Claims and their tickets in one statement: the claims' insert is a data-modifying CTE,
/// and the tickets' foreign key is checked at the end of the statement, when both exist.
#[allow(clippy::result_large_err)]
fn insert_claims(pg: &pg4::Connection, rows: &Rows) -> Result<(), pg4::PgError> {
    pg.execute(
        "WITH new_claims AS ( \
           INSERT INTO claims (id, activity_id, user_id, quantity, claimed_at, client_addr) \
           SELECT c.id, c.activity_id, c.user_id, c.quantity, to_timestamp(c.at / 1000.0), \
                  NULLIF(c.addr, '') \
           FROM unnest($1::text[], $2::int8[], $3::text[], $4::int8[], $5::int8[], $12::text[]) \
                AS c(id, activity_id, user_id, quantity, at, addr) \
           ON CONFLICT (id) DO NOTHING) \
         INSERT INTO tickets (claim_id, activity_id, user_id, code, status, claimed_at, ticket_type) \
         SELECT t.claim_id, t.activity_id, t.user_id, t.code, 'active', to_timestamp(t.at / 1000.0), t.ticket_type \
         FROM unnest($6::text[], $7::int8[], $8::text[], $9::text[], $10::int8[], $11::text[]) \
              AS t(claim_id, activity_id, user_id, code, at, ticket_type) \
         ON CONFLICT (claim_id, code) DO NOTHING",
        &[
            glue::str_array(&rows.claim_ids),
            glue::int_array(&rows.claim_activities),
            glue::str_array(&rows.claim_users),
            glue::int_array(&rows.claim_quantities),
            glue::int_array(&rows.claim_at_ms),
            glue::str_array(&rows.ticket_claims),
            glue::int_array(&rows.ticket_activities),
            glue::str_array(&rows.ticket_users),
            glue::str_array(&rows.ticket_codes),
            glue::int_array(&rows.ticket_at_ms),
            glue::str_array(&rows.ticket_types),
            glue::str_array(&rows.claim_addrs),
        ],
    )?;
    Ok(())
}

#[allow(clippy::result_large_err)]
fn change_tickets(pg: &pg4::Connection, changes: &Changes) -> Result<(), pg4::PgError> {
    pg.execute(
        "UPDATE tickets t SET status = u.status, \
           returned_at = CASE WHEN u.status = 'returned' THEN to_timestamp(u.at / 1000.0) ELSE t.returned_at END, \
           redeemed_at = CASE WHEN u.status = 'redeemed' THEN to_timestamp(u.at / 1000.0) ELSE t.redeemed_at END \
         FROM unnest($1::int8[], $2::text[], $3::text[], $4::text[], $5::int8[]) \
              AS u(activity_id, code, claim_id, status, at) \
         WHERE t.activity_id = u.activity_id AND t.code = u.code AND t.claim_id = u.claim_id \
           AND t.status = 'active'",
        &[
            glue::int_array(&changes.activities),
            glue::str_array(&changes.codes),
            glue::str_array(&changes.claims),
            glue::str_array(&changes.statuses),
            glue::int_array(&changes.at_ms),
        ],
    )?;
    Ok(())
}

/// Fault injection for the recovery tests: with the variable `drain_failpoint` set to a
/// point's name, the run dies there as a crashed host would leave it (a trap: no unwinding,
/// no clean-up). Only the tests' copy of the manifest declares it (`flashclaim_tests::
/// with_test_hooks`): on Spin every application variable costs each fresh WASIp2 instance
/// that connects out, so a testing hook has no place in the deployed manifests.
fn crash_at(point: &str) {
    if glue::optional_var("drain_failpoint").as_deref() == Some(point) {
        panic!("drain_failpoint: dying {point}");
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
