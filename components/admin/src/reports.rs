//! What an operator reads about an activity: stats, the claims export and reconciliation.

use flashclaim_core::admin::{self, StoredTicket};
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

/// Redis's live counters of one activity.
struct LiveCounters {
    stock_left: Option<i64>,
    backlog: i64,
    pool_left: i64,
    passes: i64,
}

fn live_counters(redis: &SpinRedis, keys: &ActivityKeys) -> Result<LiveCounters, ApiError> {
    let unavailable = |e| glue::redis_unavailable("stats", e);
    let one = |command: &str, key: String| -> Result<Option<i64>, ApiError> {
        Ok(redis
            .execute(command, &[Arg::from(key)])
            .map_err(unavailable)?
            .first()
            .and_then(Reply::as_int))
    };
    Ok(LiveCounters {
        stock_left: one("GET", keys.stock())?,
        backlog: one("XLEN", keys.log())?.unwrap_or(0),
        pool_left: one("LLEN", keys.pool())?.unwrap_or(0),
        passes: one("GET", keys.passes())?.unwrap_or(0),
    })
}

/// `GET .../stats`: Redis's live counters beside Postgres's drained record.
pub fn stats(id: &str) -> Result<HttpResponse, ApiError> {
    let id = ActivityId::parse(id)?;
    let pg = glue::pg_open()?;
    let activity = glue::load_activity(&pg, id)?.ok_or(ApiError::NotFound)?;
    let live = live_counters(&glue::redis_for(id, "stats")?, &ActivityKeys::new(id))?;
    let stock_left = live.stock_left.unwrap_or(activity.stock_total);
    let counts = pg
        .query(
            "SELECT count(*)::int8, \
                    count(*) FILTER (WHERE status = 'returned')::int8, \
                    count(*) FILTER (WHERE status = 'redeemed')::int8, \
                    (SELECT count(*)::int8 FROM claims WHERE activity_id = $1) \
             FROM tickets WHERE activity_id = $1",
            &[ParameterValue::Int64(id.get())],
        )
        .map_err(|e| glue::pg_internal("stats", e))?;
    let count = |i: usize| {
        counts
            .rows
            .first()
            .and_then(|r| glue::int(&r[i]))
            .unwrap_or(0)
    };
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
    Ok(HttpResponse::json(
        200,
        &serde_json::json!({
            "activity_id": id,
            "status": activity.status,
            "stock_total": activity.stock_total,
            "stock_left": stock_left,
            "sold": activity.stock_total - stock_left,
            "returned": count(1),
            "redeemed": count(2),
            "drained_tickets": count(0),
            "drained_claims": count(3),
            "backlog": live.backlog,
            "pool_left": live.pool_left,
            "passes_issued": live.passes,
            "claims_per_minute": claims_per_minute,
        }),
    ))
}

/// `GET .../reconcile`: every ticket Redis holds against every row Postgres holds.
pub fn reconcile(id: &str) -> Result<HttpResponse, ApiError> {
    let id = ActivityId::parse(id)?;
    let pg = glue::pg_open()?;
    let activity = glue::load_activity(&pg, id)?.ok_or(ApiError::NotFound)?;
    let keys = ActivityKeys::new(id);
    let redis = glue::redis_for(id, "reconcile")?;
    let live = live_counters(&redis, &keys)?;
    let pairs = redis
        .execute("HGETALL", &[Arg::from(keys.tickets())])
        .map_err(|e| glue::redis_unavailable("reconcile", e))?;
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
    // An activity never loaded into Redis has its whole stock left there.
    let stock_left = live.stock_left.unwrap_or(activity.stock_total);
    let report = admin::reconcile(
        activity.stock_total,
        stock_left,
        live.backlog,
        &redis_tickets,
        &stored,
    );
    Ok(HttpResponse::json(200, &report))
}

/// Rows fetched per query while exporting: memory stays bounded whatever the activity size.
const EXPORT_PAGE: i64 = 2000;
const EXPORT_HEADER: &str =
    "claim_id,activity_id,user_id,code,status,claimed_at,returned_at,redeemed_at,drained_at\r\n";

/// Errors must be answered before the streamed 200 starts, so the activity is checked here.
pub fn check_export(id: &str) -> Result<ActivityId, ApiError> {
    let id = ActivityId::parse(id)?;
    glue::load_activity(&glue::pg_open()?, id)?.ok_or(ApiError::NotFound)?;
    Ok(id)
}

/// `GET .../claims.csv`: every ticket Postgres holds for the activity, one row each, in
/// the order they were recorded; streamed page by page (keyset pagination on the row id).
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
                        array_agg(drained_at ORDER BY id) \
                 FROM (SELECT t.id, t.claim_id, t.user_id, t.code, t.status, \
                              (extract(epoch FROM t.claimed_at) * 1000)::int8 AS claimed_at, \
                              (extract(epoch FROM t.returned_at) * 1000)::int8 AS returned_at, \
                              (extract(epoch FROM t.redeemed_at) * 1000)::int8 AS redeemed_at, \
                              (extract(epoch FROM c.drained_at) * 1000)::int8 AS drained_at \
                       FROM tickets t JOIN claims c ON c.id = t.claim_id \
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
                "{},{id},{},{id}-{},{},{},{},{},{}\r\n",
                text(&row[1]),
                text(&row[2]),
                text(&row[3]),
                text(&row[4]),
                time(&row[5]),
                time(&row[6]),
                time(&row[7]),
                time(&row[8]),
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
