//! What an operator reads about an activity: stats, the claims export and reconciliation.

use flashclaim_core::activity::{Activity, TypeStocks};
use flashclaim_core::admin::{self, StoredTicket, TypeStock};
use flashclaim_core::codes::csv_escape;
use flashclaim_core::ids::ActivityId;
use flashclaim_core::keys::ActivityKeys;
use flashclaim_core::scripts::{Arg, RedisCommands, Reply};
use flashclaim_core::ticket::TicketRecord;
use flashclaim_core::time::Millis;
use flashclaim_core::{ApiError, HttpResponse};
use futures::SinkExt;
use spin_sdk::http::{Fields, OutgoingResponse, ResponseOutparam};
use spin_sdk::pg4::{DbValue, ParameterValue};

use crate::glue::{self, SpinRedis};

/// Redis's live counters of one activity: each type's stock and pool, the log's backlog
/// and the passes handed out.
struct LiveCounters {
    stocks: TypeStocks,
    pools: TypeStocks,
    backlog: i64,
    passes: i64,
}

/// The live counters of every stock bucket of the activity (`flashclaim_core::buckets`;
/// one for most), summed: the operator sees one activity.
fn live_counters(
    redis: &SpinRedis,
    buckets: &[ActivityKeys],
    activity: &Activity,
) -> Result<LiveCounters, ApiError> {
    let mut sum = LiveCounters {
        stocks: TypeStocks::new(),
        pools: TypeStocks::new(),
        backlog: 0,
        passes: 0,
    };
    for keys in buckets {
        let one = bucket_counters(redis, keys, activity)?;
        for (into, from) in [(&mut sum.stocks, one.stocks), (&mut sum.pools, one.pools)] {
            for (key, n) in from {
                *into.entry(key).or_default() += n;
            }
        }
        sum.backlog += one.backlog;
        sum.passes += one.passes;
    }
    Ok(sum)
}

fn bucket_counters(
    redis: &SpinRedis,
    keys: &ActivityKeys,
    activity: &Activity,
) -> Result<LiveCounters, ApiError> {
    let unavailable = |e| glue::redis_unavailable("stats", e);
    let one = |command: &str, key: String| -> Result<Option<i64>, ApiError> {
        Ok(redis
            .execute(command, &[Arg::from(key)])
            .map_err(unavailable)?
            .first()
            .and_then(Reply::as_int))
    };
    let stocks = redis
        .execute("HGETALL", &[Arg::from(keys.stocks())])
        .map_err(unavailable)?;
    let stocks: TypeStocks = stocks
        .chunks(2)
        .filter_map(|p| Some((p[0].as_text()?.to_string(), p.get(1)?.as_int()?)))
        .collect();
    // A pool's length is its tail less its head (see lua/claim.lua).
    let mut fields = vec![Arg::from(keys.pools())];
    for t in &activity.ticket_types {
        fields.push(Arg::from(format!("{}:head", t.key)));
        fields.push(Arg::from(format!("{}:tail", t.key)));
    }
    let ends = redis.execute("HMGET", &fields).map_err(unavailable)?;
    let pools: TypeStocks = activity
        .ticket_types
        .iter()
        .zip(ends.chunks(2))
        .map(|(t, e)| {
            let at = |i: usize| e.get(i).and_then(Reply::as_int).unwrap_or(0);
            (t.key.to_string(), at(1) - at(0))
        })
        .collect();
    Ok(LiveCounters {
        stocks,
        pools,
        backlog: one("XLEN", keys.log())?.unwrap_or(0),
        passes: one("GET", keys.passes())?.unwrap_or(0),
    })
}

/// `GET .../stats`: Redis's live counters beside Postgres's drained record, for the
/// activity and for each ticket type.
pub fn stats(id: &str) -> Result<HttpResponse, ApiError> {
    let id = ActivityId::parse(id)?;
    let pg = glue::pg_open()?;
    let activity = glue::load_activity(&pg, id)?.ok_or(ApiError::NotFound)?;
    let redis = glue::redis_for(id, "stats")?;
    let buckets = glue::bucket_keys(&redis, id).map_err(|e| glue::redis_unavailable("stats", e))?;
    let live = live_counters(&redis, &buckets, &activity)?;
    // One row whatever the tickets: the counts per type as one JSON object.
    let counts = pg
        .query(
            "SELECT coalesce(json_object_agg(ticket_type, json_build_array(n, returned, redeemed)), '{}')::text, \
                    (SELECT count(*)::int8 FROM claims WHERE activity_id = $1) \
             FROM (SELECT ticket_type, count(*)::int8 AS n, \
                          count(*) FILTER (WHERE status = 'returned')::int8 AS returned, \
                          count(*) FILTER (WHERE status = 'redeemed')::int8 AS redeemed \
                   FROM tickets WHERE activity_id = $1 GROUP BY ticket_type) AS per_type",
            &[ParameterValue::Int64(id.get())],
        )
        .map_err(|e| glue::pg_internal("stats", e))?;
    let row = counts.rows.first().ok_or(ApiError::Internal)?;
    let per_type: std::collections::HashMap<String, [i64; 3]> = glue::text(&row[0])
        .and_then(|json| serde_json::from_str(&json).ok())
        .ok_or(ApiError::Internal)?;
    let drained_claims = glue::int(&row[1]).unwrap_or(0);
    // One row of arrays, even without claims in the last hour (glue::list_rows).
    let per_minute = pg
        .query(
            "SELECT array_agg(minute ORDER BY minute), array_agg(claims ORDER BY minute) \
             FROM (SELECT (extract(epoch FROM date_trunc('minute', claimed_at)) * 1000)::int8 AS minute, \
                          count(*)::int8 AS claims \
                   FROM claims WHERE activity_id = $1 AND claimed_at > now() - interval '1 hour' \
                   GROUP BY 1) AS per_minute",
            &[ParameterValue::Int64(id.get())],
        )
        .map_err(|e| glue::pg_internal("stats", e))?;
    let claims_per_minute: Vec<serde_json::Value> = glue::list_rows(per_minute, "stats")?
        .iter()
        .filter_map(|r| {
            Some(serde_json::json!({ "minute": Millis(glue::int(&r[0])?), "claims": glue::int(&r[1])? }))
        })
        .collect();
    let client_addresses = client_addresses(&pg, id)?;
    let types: Vec<serde_json::Value> = activity
        .ticket_types
        .iter()
        .map(|t| {
            let key = t.key.as_str();
            // A type Redis does not hold (a draft) has its whole stock left.
            let left = live.stocks.get(key).copied().unwrap_or(t.stock_total);
            let [drained, returned, redeemed] = per_type.get(key).copied().unwrap_or_default();
            serde_json::json!({
                "key": key,
                "stock_total": t.stock_total,
                "stock_left": left,
                "sold": t.stock_total - left,
                "returned": returned,
                "redeemed": redeemed,
                "drained_tickets": drained,
                "pool_left": live.pools.get(key).copied().unwrap_or(0),
            })
        })
        .collect();
    let sum = |field: &str| -> i64 { types.iter().filter_map(|t| t[field].as_i64()).sum() };
    Ok(HttpResponse::json(
        200,
        &serde_json::json!({
            "activity_id": id,
            "status": activity.status,
            "stock_total": activity.stock_total(),
            "stock_left": sum("stock_left"),
            "sold": sum("sold"),
            "returned": sum("returned"),
            "redeemed": sum("redeemed"),
            "drained_tickets": sum("drained_tickets"),
            "drained_claims": drained_claims,
            "backlog": live.backlog,
            "pool_left": sum("pool_left"),
            "passes_issued": live.passes,
            "claims_per_minute": claims_per_minute,
            "ticket_types": types,
            "client_addresses": client_addresses,
        }),
    ))
}

/// The bot-farm signal: the addresses (stored hashed) this activity's claims came from
/// most, with how many users claimed from each and how many accounts were created there.
/// An operator who sees 300 claims by 300 fresh accounts from one address can blacklist
/// them (`users.created_addr`, `claims.client_addr`).
fn client_addresses(
    pg: &spin_sdk::pg4::Connection,
    id: ActivityId,
) -> Result<serde_json::Value, ApiError> {
    // One row whatever the claims: the top addresses as one JSON array.
    let rows = pg
        .query(
            "SELECT coalesce(json_agg(json_build_object( \
                      'client_addr', a.client_addr, 'claims', a.claims, 'users', a.users, \
                      'accounts_created', (SELECT count(*) FROM users u \
                                           WHERE u.created_addr = a.client_addr)) \
                    ORDER BY a.claims DESC, a.client_addr), '[]')::text \
             FROM (SELECT client_addr, count(*)::int8 AS claims, \
                          count(DISTINCT user_id)::int8 AS users \
                   FROM claims WHERE activity_id = $1 AND client_addr IS NOT NULL \
                   GROUP BY client_addr ORDER BY claims DESC, client_addr LIMIT $2) AS a",
            &[
                ParameterValue::Int64(id.get()),
                ParameterValue::Int64(TOP_ADDRESSES),
            ],
        )
        .map_err(|e| glue::pg_internal("stats: client addresses", e))?;
    rows.rows
        .first()
        .and_then(|r| glue::text(&r[0]))
        .and_then(|json| serde_json::from_str(&json).ok())
        .ok_or(ApiError::Internal)
}

/// Addresses listed in the stats, the most claims first.
const TOP_ADDRESSES: i64 = 20;

/// `GET .../reconcile`: every ticket Redis holds against every row Postgres holds.
pub fn reconcile(id: &str) -> Result<HttpResponse, ApiError> {
    let id = ActivityId::parse(id)?;
    let pg = glue::pg_open()?;
    let activity = glue::load_activity(&pg, id)?.ok_or(ApiError::NotFound)?;
    let redis = glue::redis_for(id, "reconcile")?;
    let unavailable = |e| glue::redis_unavailable("reconcile", e);
    let buckets = glue::bucket_keys(&redis, id).map_err(unavailable)?;
    let live = live_counters(&redis, &buckets, &activity)?;
    let mut pairs = Vec::new();
    for keys in &buckets {
        pairs.extend(
            redis
                .execute("HGETALL", &[Arg::from(keys.tickets())])
                .map_err(unavailable)?,
        );
    }
    let redis_tickets: Vec<(String, TicketRecord)> = pairs
        .chunks(2)
        .filter_map(|p| {
            let record = TicketRecord::parse(p.get(1)?.as_text()?)?;
            Some((p[0].as_text()?.to_string(), record))
        })
        .collect();
    // One row of arrays, even for an activity nothing was drained for (glue::list_rows).
    let rows = pg
        .query(
            "SELECT array_agg(code ORDER BY id), array_agg(claim_id ORDER BY id), \
                    array_agg(status ORDER BY id) \
             FROM tickets WHERE activity_id = $1",
            &[ParameterValue::Int64(id.get())],
        )
        .map_err(|e| glue::pg_internal("reconcile", e))?;
    let stored: Vec<StoredTicket> = glue::list_rows(rows, "reconcile")?
        .iter()
        .filter_map(|r| {
            Some(StoredTicket {
                code: glue::text(&r[0])?,
                claim_id: glue::text(&r[1])?,
                status: glue::text(&r[2])?,
            })
        })
        .collect();
    // A type never loaded into Redis has its whole stock left there.
    let types: Vec<TypeStock> = activity
        .ticket_types
        .iter()
        .map(|t| TypeStock {
            key: t.key.to_string(),
            stock_total: t.stock_total,
            stock_left: live
                .stocks
                .get(t.key.as_str())
                .copied()
                .unwrap_or(t.stock_total),
        })
        .collect();
    let report = admin::reconcile(&types, live.backlog, &redis_tickets, &stored);
    Ok(HttpResponse::json(200, &report))
}

/// Rows fetched per query while exporting: memory stays bounded whatever the activity size.
const EXPORT_PAGE: i64 = 2000;
const EXPORT_HEADER: &str =
    "claim_id,activity_id,user_id,code,status,claimed_at,returned_at,redeemed_at,drained_at,ticket_type,client_addr\r\n";

/// Errors must be answered before the streamed 200 starts, so the activity is checked here.
pub fn check_export(id: &str) -> Result<ActivityId, ApiError> {
    let id = ActivityId::parse(id)?;
    glue::load_activity(&glue::pg_open()?, id)?.ok_or(ApiError::NotFound)?;
    Ok(id)
}

/// `GET .../claims.csv`: every ticket Postgres holds for the activity, one row each, in
/// the order they were recorded, its code as its holder shows it (an uploaded pool code as
/// uploaded) and its ticket type last; streamed page by page (keyset pagination on the row id).
/// `common` are the CORS and caching headers every admin answer carries.
pub async fn export_claims(
    id: ActivityId,
    common: Vec<(&'static str, String)>,
    out: ResponseOutparam,
) {
    let mut headers = vec![
        (
            "content-type".to_string(),
            b"text/csv; charset=utf-8".to_vec(),
        ),
        (
            "content-disposition".to_string(),
            format!("attachment; filename=\"activity-{id}-claims.csv\"").into_bytes(),
        ),
    ];
    headers.extend(
        common
            .into_iter()
            .map(|(name, value)| (name.to_string(), value.into_bytes())),
    );
    let response =
        OutgoingResponse::new(Fields::from_list(&headers).unwrap_or_else(|_| Fields::new()));
    let _ = response.set_status_code(200);
    let mut body = response.take_body();
    out.set(response);
    if body.send(EXPORT_HEADER.as_bytes().to_vec()).await.is_err() {
        return;
    }
    let pg = match glue::pg_open() {
        Ok(pg) => pg,
        Err(_) => return,
    };
    let mut after = 0i64;
    loop {
        // A page is one row of arrays, so the last (empty) page is a row too (glue::list_rows).
        let page = pg
            .query(
                "SELECT array_agg(id ORDER BY id), array_agg(claim_id ORDER BY id), \
                        array_agg(user_id ORDER BY id), array_agg(code ORDER BY id), \
                        array_agg(status ORDER BY id), array_agg(claimed_at ORDER BY id), \
                        array_agg(returned_at ORDER BY id), array_agg(redeemed_at ORDER BY id), \
                        array_agg(drained_at ORDER BY id), array_agg(ticket_type ORDER BY id), \
                        array_agg(client_addr ORDER BY id) \
                 FROM (SELECT t.id, t.claim_id, t.user_id, t.status, t.ticket_type, c.client_addr, \
                              CASE WHEN tt.kind = 'codes' THEN t.code \
                                   ELSE t.activity_id || '-' || t.code END AS code, \
                              (extract(epoch FROM t.claimed_at) * 1000)::int8 AS claimed_at, \
                              (extract(epoch FROM t.returned_at) * 1000)::int8 AS returned_at, \
                              (extract(epoch FROM t.redeemed_at) * 1000)::int8 AS redeemed_at, \
                              (extract(epoch FROM c.drained_at) * 1000)::int8 AS drained_at \
                       FROM tickets t JOIN claims c ON c.id = t.claim_id \
                       JOIN ticket_types tt ON tt.activity_id = t.activity_id AND tt.key = t.ticket_type \
                       WHERE t.activity_id = $1 AND t.id > $2 ORDER BY t.id LIMIT $3) AS page",
                &[
                    ParameterValue::Int64(id.get()),
                    ParameterValue::Int64(after),
                    ParameterValue::Int64(EXPORT_PAGE),
                ],
            )
            .map_err(|e| glue::pg_error_text(&e))
            .and_then(|page| {
                glue::list_rows(page, "export").map_err(|_| "unreadable page".to_string())
            });
        let page = match page {
            Ok(page) => page,
            Err(e) => {
                // The 200 is already sent: end the body early so the client sees a short
                // file (no final row terminator) rather than a silently complete one.
                eprintln!("flashclaim: export: {e}");
                return;
            }
        };
        let mut chunk = String::with_capacity(page.len() * 128);
        for row in &page {
            after = glue::int(&row[0]).unwrap_or(after);
            let text = |v: &DbValue| glue::text(v).map(|t| csv_escape(&t)).unwrap_or_default();
            let time = |v: &DbValue| {
                glue::int(v)
                    .map(|ms| Millis(ms).to_string())
                    .unwrap_or_default()
            };
            chunk.push_str(&format!(
                "{},{id},{},{},{},{},{},{},{},{},{}\r\n",
                text(&row[1]),
                text(&row[2]),
                text(&row[3]),
                text(&row[4]),
                time(&row[5]),
                time(&row[6]),
                time(&row[7]),
                time(&row[8]),
                text(&row[9]),
                text(&row[10]),
            ));
        }
        if !chunk.is_empty() && body.send(chunk.into_bytes()).await.is_err() {
            return;
        }
        if (page.len() as i64) < EXPORT_PAGE {
            return;
        }
    }
}
